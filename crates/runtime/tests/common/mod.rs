//! Helpers shared by the runtime's tests: a process description for an isolated
//! process.

use std::sync::Arc;

use nimbus_core::{HostId, Limits, Pid};
use nimbus_runtime::{Input, Isolated, MailboxSender, Output, ProcessSpec, mailbox};

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
        kernel: Arc::new(Isolated),
        capture: None,
    };
    (spec, sender)
}
