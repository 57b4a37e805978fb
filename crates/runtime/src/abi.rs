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
use crate::mailbox::Arrival;
use crate::process::ProcessCtx;
use crate::stream::{ChannelSlot, Outlet, channel};

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
    /// Sends `data` from `from` to `to` when [`Kernel::route`] said [`Route::Kernel`],
    /// waiting while `to`'s mailbox is full.
    fn send(&self, from: Pid, to: Pid, data: Vec<u8>) -> BoxFuture<'_, Result<(), AbiError>>;
    /// How messages from `from` reach `to`. Asked on `from`'s first send to `to`;
    /// a stream it opens is kept by the sending process until one of the two ends.
    fn route(&self, from: Pid, to: Pid) -> BoxFuture<'_, Result<Route, AbiError>> {
        let _ = (from, to);
        Box::pin(async { Ok(Route::Kernel) })
    }
    /// Whether `pid` would be reached through [`Kernel::send`], with no channel of
    /// its own (it runs on this node, or there is no other): asked only of a process
    /// that holds as many channels as it may.
    fn is_local(&self, pid: Pid) -> bool {
        let _ = pid;
        true
    }
    /// The processes of the world `pid` is a rank of, by rank, once every rank has
    /// started; `None` if `pid` is a rank of no world.
    fn world(&self, pid: Pid) -> BoxFuture<'_, Option<Arc<[Pid]>>>;
    /// Performs a state operation for `pid`, on its app's state.
    fn state(&self, pid: Pid, call: StateCall) -> BoxFuture<'_, Result<StateReply, AbiError>>;
}

/// How a process's messages reach a receiver.
#[derive(Debug)]
pub enum Route {
    /// Through [`Kernel::send`]: the receiver is on this host.
    Kernel,
    /// Over a connection of their own to the receiver's host, whose other end the
    /// kernel has attached to the receiver's mailbox (see [`crate::stream`]).
    Stream(std::net::TcpStream),
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
                    Ok(child) => {
                        crate::capture::bind(caller.data_mut(), "it has spawned children");
                        child.to_guest()
                    }
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
                    // An ended child's stream is closed: the next send asks the kernel,
                    // which knows the child is gone.
                    caller.data_mut().outlets.remove(&child);
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
        |mut caller: Caller<'_, ProcessCtx>, ()| {
            let world = world_of(&mut caller);
            Box::new(async move { world.await.map_or(1, |world| world.len() as i32) })
        },
    )?;

    linker.func_wrap_async(
        MODULE,
        "world_rank",
        |mut caller: Caller<'_, ProcessCtx>, ()| {
            let (pid, world) = (caller.data().pid, world_of(&mut caller));
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
        |mut caller: Caller<'_, ProcessCtx>, (rank,): (i32,)| {
            let (own, world) = (caller.data().pid, world_of(&mut caller));
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

/// A place for a new channel of the calling process, if it holds fewer than
/// [`crate::MAX_CHANNELS`]. Its outlets of channels whose other side it has found ended
/// are dropped first once they are as many as the bound, so that they never pile up.
fn new_channel_slot(caller: &mut Caller<'_, ProcessCtx>) -> Option<ChannelSlot> {
    if caller.data().outlets.len() >= crate::MAX_CHANNELS {
        let peers = caller.data().mailbox.peers();
        caller
            .data_mut()
            .outlets
            .retain(|pid, _| peers.contains(pid));
    }
    caller.data().mailbox.reserve_channel()
}

/// Sends the concatenation of `parts` to `to`.
async fn send(caller: &mut Caller<'_, ProcessCtx>, to: i64, parts: [(i32, i32); 2]) -> i32 {
    let result = async {
        let memory = GuestMemory::of(caller)?;
        let to = Pid::from_guest(to).ok_or(AbiError::NoSuchProcess)?;
        let [head, body] = parts.map(|(ptr, len)| memory.range(caller, ptr, len));
        let (head, body) = (head?, body?);
        if head.len() + body.len() > crate::MAX_MESSAGE_SIZE {
            return Err(AbiError::TooLarge);
        }
        let (kernel, pid) = (caller.data().kernel.clone(), caller.data().pid);
        let outlet = match caller.data().outlets.get(&to) {
            Some(outlet) => outlet.clone(),
            None => {
                let channel = match caller.data().mailbox.channel_with(to) {
                    Some(channel) => channel,
                    None => {
                        let slot = new_channel_slot(caller);
                        if slot.is_none() && !kernel.is_local(to) {
                            return Err(AbiError::Quota);
                        }
                        match kernel.route(pid, to).await? {
                            Route::Kernel => {
                                let data = [head, body]
                                    .map(|range| &memory.0.data(&*caller)[range])
                                    .concat();
                                kernel.send(pid, to, data).await?;
                                return Ok(Delivered::Here);
                            }
                            Route::Stream(stream) => {
                                // Dropping the stream tells its receiver's host at once.
                                let slot = slot.ok_or(AbiError::Quota)?;
                                let channel = channel(stream).map_err(|_| AbiError::Internal)?;
                                caller
                                    .data_mut()
                                    .mailbox
                                    .add_channel(to, channel.clone(), slot);
                                channel
                            }
                        }
                    }
                };
                let outlet = Arc::new(Outlet::new(channel));
                caller.data_mut().outlets.insert(to, outlet.clone());
                outlet
            }
        };
        let written = if outlet.is_closed() {
            Err(AbiError::NoSuchProcess)
        } else {
            let gauges = caller.data().gauges();
            let writing = outlet.send(&mut *caller, |caller| memory.0.data(caller), [head, body]);
            ProcessCtx::waiting(gauges, writing)
                .await
                .map_err(|_| AbiError::NoSuchProcess)
        };
        if written.is_err() {
            caller.data_mut().outlets.remove(&to);
        }
        written.map(|()| Delivered::Away)
    };
    match result.await {
        Ok(Delivered::Here) => {
            // A receiver this send woke waits in this thread's next-task slot, which
            // no other thread may take: step aside so the sender, not the receiver,
            // is the one left for an idle thread to pick up.
            tokio::task::yield_now().await;
            0
        }
        Ok(Delivered::Away) => 0,
        Err(error) => error.code(),
    }
}

/// Where a sent message went.
enum Delivered {
    /// Into a mailbox on this host.
    Here,
    /// Into a stream to another host.
    Away,
}

/// Receives the next message: its first bytes fill `parts[0]`, the rest `parts[1]`.
async fn receive(
    caller: &mut Caller<'_, ProcessCtx>,
    parts: [(i32, i32); 2],
    sender_ptr: i32,
    len_ptr: i32,
) -> Result<(), AbiError> {
    let memory = GuestMemory::of(caller)?;
    let [head, body] = parts.map(|(ptr, cap)| memory.range(caller, ptr, cap));
    let (head, body) = (head?, body?);
    memory.check(caller, sender_ptr, 8)?;
    memory.check(caller, len_ptr, 4)?;
    let capacity = head.len() + body.len();
    // The ranges a message of `len` bytes fills.
    let split = |len: usize| {
        let in_head = len.min(head.len());
        [
            head.start..head.start + in_head,
            body.start..body.start + len - in_head,
        ]
    };
    let gauges = caller.data().gauges();
    let (from, len) = loop {
        let next = caller.data_mut().mailbox.next();
        let arrival = ProcessCtx::waiting(gauges.clone(), next)
            .await
            .ok_or(AbiError::Internal)?;
        let incoming = match arrival {
            Arrival::Queued(message) => {
                let len = message.data.len();
                if len > capacity {
                    memory.write(caller, len_ptr, &(len as i32).to_le_bytes())?;
                    caller.data_mut().mailbox.hold_back(message);
                    return Err(AbiError::BufferTooSmall);
                }
                let guest = memory.0.data_mut(&mut *caller);
                let (first, rest) = message.data.split_at(len.min(head.len()));
                let [into_head, into_body] = split(len);
                guest[into_head].copy_from_slice(first);
                guest[into_body].copy_from_slice(rest);
                break (message.from, len);
            }
            Arrival::Streamed(incoming) => incoming,
        };
        let mut incoming = incoming;
        let read = if incoming.len > capacity {
            match ProcessCtx::waiting(gauges.clone(), incoming.read_all()).await {
                Ok(data) => {
                    memory.write(caller, len_ptr, &(incoming.len as i32).to_le_bytes())?;
                    caller
                        .data_mut()
                        .mailbox
                        .hold_back_streamed(incoming.from, data);
                    return Err(AbiError::BufferTooSmall);
                }
                Err(e) => Err(e),
            }
        } else {
            let reading = async {
                for range in split(incoming.len) {
                    incoming
                        .read_into(&mut *caller, |caller| {
                            &mut memory.0.data_mut(caller)[range.clone()]
                        })
                        .await?;
                }
                Ok(())
            };
            ProcessCtx::waiting(gauges.clone(), reading).await
        };
        match read {
            Ok(()) => break (incoming.from, incoming.len),
            // Its sender ended halfway through it: the message is lost with the
            // sender, and the stream with both.
            Err(_) => continue,
        }
    };
    memory.write(caller, len_ptr, &(len as i32).to_le_bytes())?;
    memory.write(caller, sender_ptr, &from.to_guest().to_le_bytes())
}

/// The world the caller is a rank of, waiting until all its ranks have started.
/// The caller's world, once every rank has started. A rank's place in its world
/// does not travel in a capture.
fn world_of(
    caller: &mut Caller<'_, ProcessCtx>,
) -> impl Future<Output = Option<Arc<[Pid]>>> + Send + 'static {
    crate::capture::bind(caller.data_mut(), "it asked for its world");
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

    pub(crate) fn range(
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
