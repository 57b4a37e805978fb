//! Helpers shared by the runtime's tests: a kernel for a process alone in the world
//! and a process description around it.

use std::sync::Arc;

use nimbus_core::{ExitStatus, HostId, Limits, Pid};
use nimbus_runtime::{
    AbiError, BoxFuture, Input, Kernel, MailboxSender, Output, ProcessSpec, mailbox,
};

/// A kernel for a process alone in the world: every request fails.
pub struct Alone;

impl Kernel for Alone {
    fn spawn(&self, _: Pid, _: String, _: Vec<String>) -> BoxFuture<'_, Result<Pid, AbiError>> {
        Box::pin(async { Err(AbiError::Quota) })
    }
    fn wait(&self, _: Pid, _: Pid) -> BoxFuture<'_, Result<ExitStatus, AbiError>> {
        Box::pin(async { Err(AbiError::NotChild) })
    }
    fn send(&self, _: Pid, _: Pid, _: Vec<u8>) -> BoxFuture<'_, Result<(), AbiError>> {
        Box::pin(async { Err(AbiError::NoSuchProcess) })
    }
}

/// A process with no args, env, dirs or stdin, output to `stdout`, under `limits`,
/// and the sending half of its mailbox: while that lives, `recv` blocks.
pub fn spec(limits: Limits, stdout: Output) -> (ProcessSpec, MailboxSender) {
    let (sender, mailbox) = mailbox();
    let spec = ProcessSpec {
        pid: Pid::new(HostId(1), 1),
        args: vec!["test".into()],
        env: vec![],
        dirs: vec![],
        stdin: Input::Null,
        stdout,
        stderr: Output::Null,
        deadline: limits.timeout.map(|t| std::time::Instant::now() + t),
        limits,
        mailbox,
        kernel: Arc::new(Alone),
    };
    (spec, sender)
}
