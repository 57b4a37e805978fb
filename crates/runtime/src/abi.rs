//! The nimbus host ABI v0 (import module `nimbus`), specified in `docs/abi.md`.
//!
//! Guest pointers are checked against linear memory; a bad one is `ERR_INVALID`,
//! never a trap or a host panic.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use nimbus_core::{ExitStatus, Pid};
use wasmtime::{Caller, Extern, Linker, Memory};

use crate::abi_state::{StateCall, StateReply};
use crate::process::ProcessCtx;

/// A boxed, sendable future, the return type of [`Kernel`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the runtime needs from the platform to serve the host ABI. Implemented by
/// the worker, which knows the process table, the other hosts and the planner.
pub trait Kernel: Send + Sync + 'static {
    /// Starts a child of `parent` from `module` ("" for the parent's own module).
    fn spawn(
        &self,
        parent: Pid,
        module: String,
        args: Vec<String>,
    ) -> BoxFuture<'_, Result<Pid, AbiError>>;
    /// Waits for child `child` of `parent` to end, and reaps it.
    fn wait(&self, parent: Pid, child: Pid) -> BoxFuture<'_, Result<ExitStatus, AbiError>>;
    /// Sends `data` from `from` to `to`, waiting while `to`'s mailbox is full.
    fn send(&self, from: Pid, to: Pid, data: Vec<u8>) -> BoxFuture<'_, Result<(), AbiError>>;
    /// The processes of the world `pid` is a rank of, by rank, once every rank has
    /// started; `None` if `pid` is a rank of no world.
    fn world(&self, pid: Pid) -> BoxFuture<'_, Option<Arc<[Pid]>>>;
    /// Performs a state operation for `pid`, on its app's state.
    fn state(&self, pid: Pid, call: StateCall) -> BoxFuture<'_, Result<StateReply, AbiError>>;
}

/// The kernel of a process alone in the world: it may not spawn, wait or send.
/// For sandboxed one-off runs, tests and benchmarks.
pub struct Isolated;

impl Kernel for Isolated {
    fn spawn(&self, _: Pid, _: String, _: Vec<String>) -> BoxFuture<'_, Result<Pid, AbiError>> {
        Box::pin(async { Err(AbiError::Quota) })
    }
    fn wait(&self, _: Pid, _: Pid) -> BoxFuture<'_, Result<ExitStatus, AbiError>> {
        Box::pin(async { Err(AbiError::NotChild) })
    }
    fn send(&self, _: Pid, _: Pid, _: Vec<u8>) -> BoxFuture<'_, Result<(), AbiError>> {
        Box::pin(async { Err(AbiError::NoSuchProcess) })
    }
    fn world(&self, _: Pid) -> BoxFuture<'_, Option<Arc<[Pid]>>> {
        Box::pin(async { None })
    }
    fn state(&self, _: Pid, _: StateCall) -> BoxFuture<'_, Result<StateReply, AbiError>> {
        Box::pin(async { Err(AbiError::Internal) })
    }
}

/// An error a host call returns to the guest as a negative code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AbiError {
    /// Bad pointer, length, UTF-8 or argument.
    #[error("invalid argument")]
    Invalid,
    /// No live process has that pid.
    #[error("no such process")]
    NoSuchProcess,
    /// Not an unreaped child of the caller.
    #[error("not a child of the caller")]
    NotChild,
    /// The waited child failed.
    #[error("child failed")]
    ChildFailed,
    /// The module to spawn is missing or not runnable.
    #[error("module missing or not runnable")]
    Module,
    /// A process quota is used up.
    #[error("process quota exhausted")]
    Quota,
    /// The message is over the size limit.
    #[error("message too large")]
    TooLarge,
    /// The guest's buffer is too small for the message.
    #[error("buffer too small")]
    BufferTooSmall,
    /// The platform failed.
    #[error("internal error")]
    Internal,
    /// No value under that key.
    #[error("no such key")]
    NotFound,
    /// A wait (for a lock) ran out of time.
    #[error("timed out")]
    TimedOut,
}

impl AbiError {
    /// The code the guest sees.
    pub fn code(self) -> i32 {
        match self {
            AbiError::Invalid => -1,
            AbiError::NoSuchProcess => -2,
            AbiError::NotChild => -3,
            AbiError::ChildFailed => -4,
            AbiError::Module => -5,
            AbiError::Quota => -6,
            AbiError::TooLarge => -7,
            AbiError::BufferTooSmall => -8,
            AbiError::Internal => -9,
            AbiError::NotFound => -10,
            AbiError::TimedOut => -11,
        }
    }

    /// Every error, in the order of their codes.
    pub const ALL: [AbiError; 11] = [
        AbiError::Invalid,
        AbiError::NoSuchProcess,
        AbiError::NotChild,
        AbiError::ChildFailed,
        AbiError::Module,
        AbiError::Quota,
        AbiError::TooLarge,
        AbiError::BufferTooSmall,
        AbiError::Internal,
        AbiError::NotFound,
        AbiError::TimedOut,
    ];

    /// The error with this code (as [`AbiError::code`] gives it); `Internal` for a
    /// code that names none.
    pub fn from_code(code: i32) -> AbiError {
        AbiError::ALL
            .into_iter()
            .find(|e| e.code() == code)
            .unwrap_or(AbiError::Internal)
    }
}

pub(crate) const MODULE: &str = "nimbus";
/// Longest argv buffer a guest may pass to `spawn`.
const MAX_ARGV_BYTES: usize = 1 << 20;

/// Adds the nimbus functions to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<ProcessCtx>) -> wasmtime::Result<()> {
    linker.func_wrap(MODULE, "pid", |caller: Caller<'_, ProcessCtx>| {
        caller.data().pid.to_guest()
    })?;

    linker.func_wrap_async(
        MODULE,
        "spawn",
        |mut caller: Caller<'_, ProcessCtx>,
         (module_ptr, module_len, argv_ptr, argv_len): (i32, i32, i32, i32)| {
            Box::new(async move {
                let request = GuestMemory::of(&mut caller).and_then(|memory| {
                    let module = memory.read_str(&caller, module_ptr, module_len)?;
                    let argv = memory.read(&caller, argv_ptr, argv_len, MAX_ARGV_BYTES)?;
                    Ok((module, decode_argv(&argv)?))
                });
                let (module, args) = match request {
                    Ok(request) => request,
                    Err(e) => return i64::from(e.code()),
                };
                let (kernel, pid) = (caller.data().kernel.clone(), caller.data().pid);
                match kernel.spawn(pid, module, args).await {
                    Ok(child) => child.to_guest(),
                    Err(e) => i64::from(e.code()),
                }
            })
        },
    )?;

    linker.func_wrap_async(
        MODULE,
        "wait",
        |mut caller: Caller<'_, ProcessCtx>, (child, status_ptr): (i64, i32)| {
            Box::new(async move {
                let result = async {
                    let memory = GuestMemory::of(&mut caller)?;
                    memory.check(&caller, status_ptr, 4)?;
                    let child = Pid::from_guest(child).ok_or(AbiError::NotChild)?;
                    let (kernel, pid) = (caller.data().kernel.clone(), caller.data().pid);
                    let gauges = caller.data().gauges();
                    let (status, result) =
                        match ProcessCtx::waiting(gauges, kernel.wait(pid, child)).await? {
                            ExitStatus::Exited(code) => (code, Ok(())),
                            ExitStatus::Failed(failure) => {
                                (failure.exit_code(), Err(AbiError::ChildFailed))
                            }
                        };
                    memory.write(&mut caller, status_ptr, &status.to_le_bytes())?;
                    result
                };
                code_of(result.await)
            })
        },
    )?;

    linker.func_wrap_async(
        MODULE,
        "send",
        |mut caller: Caller<'_, ProcessCtx>, (to, data_ptr, data_len): (i64, i32, i32)| {
            Box::new(async move { send(&mut caller, to, [(data_ptr, data_len), (0, 0)]).await })
        },
    )?;

    linker.func_wrap_async(
        MODULE,
        "send_parts",
        |mut caller: Caller<'_, ProcessCtx>,
         (to, head_ptr, head_len, body_ptr, body_len): (i64, i32, i32, i32, i32)| {
            Box::new(async move {
                send(
                    &mut caller,
                    to,
                    [(head_ptr, head_len), (body_ptr, body_len)],
                )
                .await
            })
        },
    )?;

    linker.func_wrap_async(
        MODULE,
        "recv",
        |mut caller: Caller<'_, ProcessCtx>,
         (buf_ptr, buf_cap, sender_ptr, len_ptr): (i32, i32, i32, i32)| {
            Box::new(async move {
                let parts = [(buf_ptr, buf_cap), (0, 0)];
                code_of(receive(&mut caller, parts, sender_ptr, len_ptr).await)
            })
        },
    )?;

    linker.func_wrap_async(
        MODULE,
        "recv_parts",
        |mut caller: Caller<'_, ProcessCtx>,
         (head_ptr, head_cap, body_ptr, body_cap, sender_ptr, len_ptr): (
            i32,
            i32,
            i32,
            i32,
            i32,
            i32,
        )| {
            Box::new(async move {
                let parts = [(head_ptr, head_cap), (body_ptr, body_cap)];
                code_of(receive(&mut caller, parts, sender_ptr, len_ptr).await)
            })
        },
    )?;

    linker.func_wrap_async(
        MODULE,
        "world_size",
        |caller: Caller<'_, ProcessCtx>, ()| {
            let world = world_of(&caller);
            Box::new(async move { world.await.map_or(1, |world| world.len() as i32) })
        },
    )?;

    linker.func_wrap_async(
        MODULE,
        "world_rank",
        |caller: Caller<'_, ProcessCtx>, ()| {
            let (pid, world) = (caller.data().pid, world_of(&caller));
            Box::new(async move {
                world
                    .await
                    .and_then(|world| world.iter().position(|&rank| rank == pid))
                    .map_or(0, |rank| rank as i32)
            })
        },
    )?;

    linker.func_wrap_async(
        MODULE,
        "world_pid",
        |caller: Caller<'_, ProcessCtx>, (rank,): (i32,)| {
            let (own, world) = (caller.data().pid, world_of(&caller));
            Box::new(async move {
                let world = world.await.unwrap_or_else(|| Arc::from([own]));
                usize::try_from(rank)
                    .ok()
                    .and_then(|rank| world.get(rank))
                    .map_or(i64::from(AbiError::Invalid.code()), |pid| pid.to_guest())
            })
        },
    )?;
    crate::abi_state::add_to_linker(linker)
}

/// Sends the concatenation of `parts` to `to`, then yields.
async fn send(caller: &mut Caller<'_, ProcessCtx>, to: i64, parts: [(i32, i32); 2]) -> i32 {
    let result = async {
        let memory = GuestMemory::of(caller)?;
        let to = Pid::from_guest(to).ok_or(AbiError::NoSuchProcess)?;
        let mut data = memory.read(caller, parts[0].0, parts[0].1, crate::MAX_MESSAGE_SIZE)?;
        let rest = crate::MAX_MESSAGE_SIZE - data.len();
        data.extend_from_slice(&memory.read(caller, parts[1].0, parts[1].1, rest)?);
        let (kernel, pid) = (caller.data().kernel.clone(), caller.data().pid);
        kernel.send(pid, to, data).await
    };
    let sent = code_of(result.await);
    // A receiver this send woke waits in this thread's next-task slot, which no other
    // thread may take: step aside so the sender, not the receiver, is the one left
    // for an idle thread to pick up.
    tokio::task::yield_now().await;
    sent
}

/// Receives the next message: its first bytes fill `parts[0]`, the rest `parts[1]`.
async fn receive(
    caller: &mut Caller<'_, ProcessCtx>,
    parts: [(i32, i32); 2],
    sender_ptr: i32,
    len_ptr: i32,
) -> Result<(), AbiError> {
    let memory = GuestMemory::of(caller)?;
    for (ptr, cap) in parts {
        memory.check(caller, ptr, cap)?;
    }
    memory.check(caller, sender_ptr, 8)?;
    memory.check(caller, len_ptr, 4)?;
    let gauges = caller.data().gauges();
    let next = caller.data_mut().mailbox.next();
    let message = ProcessCtx::waiting(gauges, next)
        .await
        .ok_or(AbiError::Internal)?;
    let len = message.data.len();
    memory.write(caller, len_ptr, &(len as i32).to_le_bytes())?;
    let (head_cap, body_cap) = (parts[0].1 as usize, parts[1].1 as usize);
    if len > head_cap + body_cap {
        caller.data_mut().mailbox.hold_back(message);
        return Err(AbiError::BufferTooSmall);
    }
    let (head, body) = message.data.split_at(len.min(head_cap));
    memory.write(caller, parts[0].0, head)?;
    memory.write(caller, parts[1].0, body)?;
    memory.write(caller, sender_ptr, &message.from.to_guest().to_le_bytes())
}

/// The world the caller is a rank of, waiting until all its ranks have started.
fn world_of(
    caller: &Caller<'_, ProcessCtx>,
) -> impl Future<Output = Option<Arc<[Pid]>>> + Send + 'static {
    let data = caller.data();
    let (kernel, pid, gauges) = (data.kernel.clone(), data.pid, data.gauges());
    async move { ProcessCtx::waiting(gauges, kernel.world(pid)).await }
}

pub(crate) fn code_of(result: Result<(), AbiError>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => e.code(),
    }
}

/// Splits a buffer of NUL-terminated UTF-8 strings.
fn decode_argv(buf: &[u8]) -> Result<Vec<String>, AbiError> {
    if buf.is_empty() {
        return Ok(Vec::new());
    }
    let body = buf.strip_suffix(&[0]).ok_or(AbiError::Invalid)?;
    body.split(|b| *b == 0)
        .map(|arg| String::from_utf8(arg.to_vec()).map_err(|_| AbiError::Invalid))
        .collect()
}

/// The guest's exported linear memory, with bounds-checked access.
#[derive(Clone, Copy)]
pub(crate) struct GuestMemory(Memory);

impl GuestMemory {
    pub(crate) fn of(caller: &mut Caller<'_, ProcessCtx>) -> Result<GuestMemory, AbiError> {
        match caller.get_export("memory") {
            Some(Extern::Memory(memory)) => Ok(GuestMemory(memory)),
            _ => Err(AbiError::Invalid),
        }
    }

    fn range(
        &self,
        caller: &Caller<'_, ProcessCtx>,
        ptr: i32,
        len: i32,
    ) -> Result<std::ops::Range<usize>, AbiError> {
        let (ptr, len) = (
            usize::try_from(ptr).map_err(|_| AbiError::Invalid)?,
            usize::try_from(len).map_err(|_| AbiError::Invalid)?,
        );
        let end = ptr.checked_add(len).ok_or(AbiError::Invalid)?;
        if end > self.0.data_size(caller) {
            return Err(AbiError::Invalid);
        }
        Ok(ptr..end)
    }

    pub(crate) fn check(
        &self,
        caller: &Caller<'_, ProcessCtx>,
        ptr: i32,
        len: i32,
    ) -> Result<(), AbiError> {
        self.range(caller, ptr, len).map(drop)
    }

    pub(crate) fn read(
        &self,
        caller: &Caller<'_, ProcessCtx>,
        ptr: i32,
        len: i32,
        max: usize,
    ) -> Result<Vec<u8>, AbiError> {
        let range = self.range(caller, ptr, len)?;
        if range.len() > max {
            return Err(AbiError::TooLarge);
        }
        Ok(self.0.data(caller)[range].to_vec())
    }

    fn read_str(
        &self,
        caller: &Caller<'_, ProcessCtx>,
        ptr: i32,
        len: i32,
    ) -> Result<String, AbiError> {
        let bytes = self.read(caller, ptr, len, MAX_ARGV_BYTES)?;
        String::from_utf8(bytes).map_err(|_| AbiError::Invalid)
    }

    pub(crate) fn write(
        &self,
        caller: &mut Caller<'_, ProcessCtx>,
        ptr: i32,
        bytes: &[u8],
    ) -> Result<(), AbiError> {
        let range = self.range(caller, ptr, bytes.len() as i32)?;
        self.0.data_mut(caller)[range].copy_from_slice(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_decoding() {
        assert_eq!(decode_argv(b""), Ok(vec![]));
        assert_eq!(decode_argv(b"a\0bc\0"), Ok(vec!["a".into(), "bc".into()]));
        assert_eq!(decode_argv(b"\0"), Ok(vec![String::new()]));
        assert_eq!(decode_argv(b"no-terminator"), Err(AbiError::Invalid));
        assert_eq!(decode_argv(b"\xff\0"), Err(AbiError::Invalid));
    }

    #[test]
    fn codes_match_the_spec() {
        let codes: Vec<i32> = AbiError::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(codes, (1..=11).map(|c| -c).collect::<Vec<_>>());
        for error in AbiError::ALL {
            assert_eq!(AbiError::from_code(error.code()), error);
        }
        assert_eq!(AbiError::from_code(-99), AbiError::Internal);
    }
}
