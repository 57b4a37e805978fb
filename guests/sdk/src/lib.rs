//! `nimbus-sdk`: the guest side of the nimbus host ABI, version 0.
//!
//! A nimbus process is a `wasm32-wasip1` command module. Besides WASI preview 1 it may
//! import a handful of functions from the import module `nimbus` to learn its own process
//! id, spawn child processes, wait for them, and exchange messages with any process in
//! the cluster. This crate wraps those imports in a safe API; the ABI itself is specified
//! in `docs/abi.md` at the root of the nimbus repository.
//!
//! ```no_run
//! use nimbus_sdk::{recv, send, spawn_self, wait};
//!
//! # fn main() -> Result<(), nimbus_sdk::Error> {
//! let child = spawn_self(&["worker"])?;
//! send(child, b"ping")?;
//! let reply = recv()?;
//! assert_eq!(reply.from, child);
//! assert_eq!(wait(child)?, 0);
//! # Ok(())
//! # }
//! ```
//!
//! The imports are only declared when compiling for `wasm32`. On any other target the
//! crate still compiles (so `cargo doc`, `cargo test` and host builds work), but every
//! call fails with [`Error::Unsupported`] and [`pid`] panics.
//!
//! Only the imports a program actually calls end up in its module, so a program that
//! uses nothing from this crate imports nothing from `nimbus`.

use std::fmt;
use std::str::FromStr;

pub mod service;
pub mod state;

/// The raw ABI: error codes and, on `wasm32`, the imported functions.
///
/// Prefer the safe wrappers at the crate root; this module is public for programs that
/// need the exact codes (for example to report them).
pub mod abi {
    /// Bad pointer, length, UTF-8 or argument.
    pub const ERR_INVALID: i32 = -1;
    /// No live process has that pid.
    pub const ERR_NO_SUCH_PROCESS: i32 = -2;
    /// `wait` on a pid that is not an unreaped child of the caller.
    pub const ERR_NOT_CHILD: i32 = -3;
    /// The waited child failed; the status holds the failure's exit code.
    pub const ERR_CHILD_FAILED: i32 = -4;
    /// `spawn`: the module is missing, not WebAssembly, invalid, has no `_start`, or
    /// imports something unknown.
    pub const ERR_MODULE: i32 = -5;
    /// `spawn`: the process quota of the host or app is used up.
    pub const ERR_QUOTA: i32 = -6;
    /// `send`: message over 16 MiB.
    pub const ERR_TOO_LARGE: i32 = -7;
    /// `recv`: message longer than the buffer; the needed length was written.
    pub const ERR_BUFFER_TOO_SMALL: i32 = -8;
    /// The platform failed; the host log says more.
    pub const ERR_INTERNAL: i32 = -9;
    /// State: no value under that key.
    pub const ERR_NOT_FOUND: i32 = -10;
    /// `state_lock`: the lock stayed taken past the timeout.
    pub const ERR_TIMED_OUT: i32 = -11;

    /// The largest message `send` accepts (16 MiB).
    pub const MAX_MESSAGE_LEN: usize = 16 << 20;

    #[cfg(target_arch = "wasm32")]
    #[link(wasm_import_module = "nimbus")]
    unsafe extern "C" {
        /// `pid() -> i64`: the caller's own process id.
        #[link_name = "pid"]
        pub fn nimbus_pid() -> i64;

        /// `spawn(module_ptr, module_len, argv_ptr, argv_len: i32) -> i64`: starts a child
        /// and returns its pid (> 0) or an error code (< 0).
        #[link_name = "spawn"]
        pub fn nimbus_spawn(
            module_ptr: *const u8,
            module_len: i32,
            argv_ptr: *const u8,
            argv_len: i32,
        ) -> i64;

        /// `wait(pid: i64, status_ptr: i32) -> i32`: blocks until child `pid` ends and
        /// reaps it.
        #[link_name = "wait"]
        pub fn nimbus_wait(pid: i64, status_ptr: *mut i32) -> i32;

        /// `send(pid: i64, data_ptr, data_len: i32) -> i32`: sends `data` to `pid`.
        #[link_name = "send"]
        pub fn nimbus_send(pid: i64, data_ptr: *const u8, data_len: i32) -> i32;

        /// `recv(buf_ptr, buf_cap, sender_ptr, len_ptr: i32) -> i32`: blocks until the
        /// next message arrives.
        #[link_name = "recv"]
        pub fn nimbus_recv(
            buf_ptr: *mut u8,
            buf_cap: i32,
            sender_ptr: *mut i64,
            len_ptr: *mut i32,
        ) -> i32;
    }
}

/// A cluster-unique process id. Valid ids are always positive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid(pub i64);

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Pid {
    type Err = std::num::ParseIntError;

    /// Parses the decimal form that [`Pid`]'s `Display` produces.
    fn from_str(s: &str) -> Result<Pid, Self::Err> {
        s.parse().map(Pid)
    }
}

/// A received message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The process that sent it.
    pub from: Pid,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// Why a nimbus call failed: one variant per ABI error code, plus [`Error::Unsupported`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// `ERR_INVALID` (-1): bad pointer, length, UTF-8 or argument. Also returned without
    /// calling the host for arguments that cannot be encoded (an argument containing a
    /// NUL byte, or a length that does not fit an `i32`).
    Invalid,
    /// `ERR_NO_SUCH_PROCESS` (-2): no live process has that pid.
    NoSuchProcess,
    /// `ERR_NOT_CHILD` (-3): `wait` on a pid that is not an unreaped child of the caller.
    NotChild,
    /// `ERR_CHILD_FAILED` (-4): the waited child failed (trap, memory limit, deadline).
    ChildFailed {
        /// The nimbus exit code of the failure (132 trap, 133 memory limit,
        /// 134 deadline; see the README's exit code table).
        code: i32,
    },
    /// `ERR_MODULE` (-5): `spawn` could not use the module: it is missing, not
    /// WebAssembly, invalid, has no `_start`, or imports something unknown.
    Module,
    /// `ERR_QUOTA` (-6): `spawn` hit the process quota of the host or app, or `send`
    /// needed a new channel while the sender or the receiver holds 1,024.
    Quota,
    /// `ERR_TOO_LARGE` (-7): `send` of a message over 16 MiB.
    TooLarge,
    /// `ERR_BUFFER_TOO_SMALL` (-8): a received message did not fit the buffer. [`recv`]
    /// handles this itself by retrying with a larger buffer.
    BufferTooSmall,
    /// `ERR_INTERNAL` (-9): the platform failed; the host log says more. Also used for
    /// a code this version of the SDK does not know.
    Internal,
    /// `ERR_NOT_FOUND` (-10): no state value under that key.
    NotFound,
    /// `ERR_TIMED_OUT` (-11): a state lock stayed taken past the timeout.
    TimedOut,
    /// Not running on nimbus: the crate was compiled for a target without the nimbus
    /// imports (anything but `wasm32`).
    Unsupported,
}

impl Error {
    /// Maps a negative ABI return value to its error. `status` is the value written to
    /// `status_ptr` and is only used for [`Error::ChildFailed`]. Unknown codes become
    /// [`Error::Internal`].
    pub fn from_code(code: i64, status: i32) -> Error {
        match i32::try_from(code) {
            Ok(abi::ERR_INVALID) => Error::Invalid,
            Ok(abi::ERR_NO_SUCH_PROCESS) => Error::NoSuchProcess,
            Ok(abi::ERR_NOT_CHILD) => Error::NotChild,
            Ok(abi::ERR_CHILD_FAILED) => Error::ChildFailed { code: status },
            Ok(abi::ERR_MODULE) => Error::Module,
            Ok(abi::ERR_QUOTA) => Error::Quota,
            Ok(abi::ERR_TOO_LARGE) => Error::TooLarge,
            Ok(abi::ERR_BUFFER_TOO_SMALL) => Error::BufferTooSmall,
            Ok(abi::ERR_NOT_FOUND) => Error::NotFound,
            Ok(abi::ERR_TIMED_OUT) => Error::TimedOut,
            _ => Error::Internal,
        }
    }

    /// The ABI error code of this error, or `None` for [`Error::Unsupported`].
    pub fn code(&self) -> Option<i32> {
        Some(match self {
            Error::Invalid => abi::ERR_INVALID,
            Error::NoSuchProcess => abi::ERR_NO_SUCH_PROCESS,
            Error::NotChild => abi::ERR_NOT_CHILD,
            Error::ChildFailed { .. } => abi::ERR_CHILD_FAILED,
            Error::Module => abi::ERR_MODULE,
            Error::Quota => abi::ERR_QUOTA,
            Error::TooLarge => abi::ERR_TOO_LARGE,
            Error::BufferTooSmall => abi::ERR_BUFFER_TOO_SMALL,
            Error::Internal => abi::ERR_INTERNAL,
            Error::NotFound => abi::ERR_NOT_FOUND,
            Error::TimedOut => abi::ERR_TIMED_OUT,
            Error::Unsupported => return None,
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid => f.write_str("invalid argument"),
            Error::NoSuchProcess => f.write_str("no such process"),
            Error::NotChild => f.write_str("not an unreaped child of this process"),
            Error::ChildFailed { code } => write!(f, "child failed with exit code {code}"),
            Error::Module => f.write_str("module missing, invalid or not runnable"),
            Error::Quota => f.write_str("process or channel quota exhausted"),
            Error::TooLarge => f.write_str("message too large (over 16 MiB)"),
            Error::BufferTooSmall => f.write_str("receive buffer too small"),
            Error::Internal => f.write_str("internal platform error"),
            Error::NotFound => f.write_str("no such state key"),
            Error::TimedOut => f.write_str("timed out waiting for a state lock"),
            Error::Unsupported => f.write_str("not running on nimbus (no nimbus imports)"),
        }
    }
}

impl std::error::Error for Error {}

/// Turns a raw return value into `Ok(value)` if it is not negative, else the error.
// Only the wasm32 calls use it; the host build keeps it for its unit tests.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
fn check(ret: i64, status: i32) -> Result<i64, Error> {
    if ret >= 0 {
        Ok(ret)
    } else {
        Err(Error::from_code(ret, status))
    }
}

/// A length as the ABI's `i32`, or `err` if it does not fit.
fn abi_len(len: usize, err: Error) -> Result<i32, Error> {
    i32::try_from(len).map_err(|_| err)
}

/// Encodes arguments for `spawn`: each argument followed by a NUL byte. Fails with
/// [`Error::Invalid`] if an argument contains a NUL byte.
pub fn encode_argv(args: &[&str]) -> Result<Vec<u8>, Error> {
    let mut buf = Vec::with_capacity(args.iter().map(|a| a.len() + 1).sum());
    for arg in args {
        if arg.as_bytes().contains(&0) {
            return Err(Error::Invalid);
        }
        buf.extend_from_slice(arg.as_bytes());
        buf.push(0);
    }
    Ok(buf)
}

/// The buffer size [`recv`] starts with.
pub const RECV_INITIAL_CAPACITY: usize = 64 << 10;

/// The caller's own process id.
///
/// # Panics
///
/// When not compiled for `wasm32` (there is no nimbus to ask).
pub fn pid() -> Pid {
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: `pid` takes no arguments and touches no guest memory.
        Pid(unsafe { abi::nimbus_pid() })
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        panic!("nimbus_sdk::pid: {}", Error::Unsupported)
    }
}

/// Starts a child process running `module` with arguments `args` and returns its pid.
///
/// `module` is a module of the caller's app (for `nimbus run PROG.wasm`, a file name
/// such as `child.wasm` next to `PROG.wasm`), or `""` for the caller's own module (see
/// [`spawn_self`]). The host sets the child's `argv[0]` to the module name, so `args`
/// become `argv[1..]`. The child inherits environment, preopens, stdout/stderr, limits
/// and deadline; its stdin is empty. Returns as soon as the child is admitted.
pub fn spawn(module: &str, args: &[&str]) -> Result<Pid, Error> {
    let argv = encode_argv(args)?;
    let module_len = abi_len(module.len(), Error::Invalid)?;
    let argv_len = abi_len(argv.len(), Error::Invalid)?;
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: both pointers come from live borrows (`module`, `argv`) that are valid
        // for reads of the given lengths for the duration of the call; the host only
        // reads them.
        let ret =
            unsafe { abi::nimbus_spawn(module.as_ptr(), module_len, argv.as_ptr(), argv_len) };
        check(ret, 0).map(Pid)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (module_len, argv_len);
        Err(Error::Unsupported)
    }
}

/// Starts a child process running the caller's own module (`spawn("", args)`).
pub fn spawn_self(args: &[&str]) -> Result<Pid, Error> {
    spawn("", args)
}

/// Blocks until child `pid` ends, reaps it and returns its exit code.
///
/// A child that failed (trap, memory limit, deadline) gives
/// `Err(Error::ChildFailed { code })` with the nimbus exit code of the failure. A child
/// can be waited for once; afterwards its pid is unknown ([`Error::NotChild`]).
pub fn wait(pid: Pid) -> Result<i32, Error> {
    #[cfg(target_arch = "wasm32")]
    {
        let mut status: i32 = 0;
        // SAFETY: `status` is a live, aligned `i32` the host may write for the duration
        // of the call.
        let ret = unsafe { abi::nimbus_wait(pid.0, &mut status) };
        check(i64::from(ret), status).map(|_| status)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = pid;
        Err(Error::Unsupported)
    }
}

/// Sends `data` (at most 16 MiB) to process `to`, blocking while its mailbox is full.
///
/// Messages are delivered in order per sender/receiver pair.
pub fn send(to: Pid, data: &[u8]) -> Result<(), Error> {
    let len = abi_len(data.len(), Error::TooLarge)?;
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: `data` is a live borrow valid for reads of `len` bytes during the
        // call; the host only reads it.
        let ret = unsafe { abi::nimbus_send(to.0, data.as_ptr(), len) };
        check(i64::from(ret), 0).map(|_| ())
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (to, len);
        Err(Error::Unsupported)
    }
}

/// Blocks until the next message arrives and returns it.
///
/// Starts with a [`RECV_INITIAL_CAPACITY`] (64 KiB) buffer and retries with the needed
/// length if the message is longer.
pub fn recv() -> Result<Message, Error> {
    let mut data = Vec::with_capacity(RECV_INITIAL_CAPACITY);
    let from = recv_into(&mut data)?;
    if data.capacity() > data.len().saturating_mul(2) {
        data.shrink_to_fit();
    }
    Ok(Message { from, data })
}

/// Like [`recv`], but receives into `buf` (replacing its contents) and returns the
/// sender, so a loop can reuse one buffer. Uses `buf`'s capacity as is (64 KiB if it
/// has none) and grows it if a message is longer.
pub fn recv_into(buf: &mut Vec<u8>) -> Result<Pid, Error> {
    buf.clear();
    if buf.capacity() == 0 {
        buf.reserve(RECV_INITIAL_CAPACITY);
    }
    #[cfg(target_arch = "wasm32")]
    loop {
        // The ABI takes an i32 capacity; larger buffers are simply offered partially.
        let cap = i32::try_from(buf.capacity()).unwrap_or(i32::MAX);
        let mut sender: i64 = 0;
        let mut len: i32 = 0;
        // SAFETY: `buf`'s spare capacity is valid for writes of `cap` bytes, and
        // `sender` / `len` are live, aligned locals; the host writes only within them.
        let ret = unsafe {
            abi::nimbus_recv(
                buf.spare_capacity_mut().as_mut_ptr().cast::<u8>(),
                cap,
                &mut sender,
                &mut len,
            )
        };
        let len = usize::try_from(len).map_err(|_| Error::Internal)?;
        match ret {
            0 => {
                if len > buf.capacity() {
                    return Err(Error::Internal);
                }
                // SAFETY: the host returned 0, so it initialized the first `len` bytes
                // of the spare capacity, and `len` was checked against the capacity.
                unsafe { buf.set_len(len) };
                return Ok(Pid(sender));
            }
            abi::ERR_BUFFER_TOO_SMALL => {
                if len <= buf.capacity() {
                    // The host must ask for more than it was offered; avoid spinning.
                    return Err(Error::Internal);
                }
                buf.reserve_exact(len);
            }
            err => return Err(Error::from_code(i64::from(err), 0)),
        }
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        Err(Error::Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_is_nul_terminated_and_concatenated() {
        assert_eq!(encode_argv(&[]).unwrap(), b"");
        assert_eq!(encode_argv(&[""]).unwrap(), b"\0");
        assert_eq!(
            encode_argv(&["worker", "42", "ü"]).unwrap(),
            "worker\u{0}42\u{0}ü\u{0}".as_bytes()
        );
    }

    #[test]
    fn argv_with_nul_is_invalid() {
        assert_eq!(encode_argv(&["a\0b"]), Err(Error::Invalid));
    }

    #[test]
    fn every_code_maps_back_to_itself() {
        for code in -11..=-1 {
            let err = Error::from_code(i64::from(code), 0);
            assert_eq!(err.code(), Some(code), "{err:?}");
        }
        assert_eq!(Error::Unsupported.code(), None);
    }

    #[test]
    fn codes_map_to_their_variants() {
        assert_eq!(Error::from_code(-1, 0), Error::Invalid);
        assert_eq!(Error::from_code(-2, 0), Error::NoSuchProcess);
        assert_eq!(Error::from_code(-3, 0), Error::NotChild);
        assert_eq!(Error::from_code(-4, 132), Error::ChildFailed { code: 132 });
        assert_eq!(Error::from_code(-5, 0), Error::Module);
        assert_eq!(Error::from_code(-6, 0), Error::Quota);
        assert_eq!(Error::from_code(-7, 0), Error::TooLarge);
        assert_eq!(Error::from_code(-8, 0), Error::BufferTooSmall);
        assert_eq!(Error::from_code(-9, 0), Error::Internal);
        assert_eq!(Error::from_code(-100, 0), Error::Internal);
        assert_eq!(Error::from_code(i64::MIN, 0), Error::Internal);
    }

    #[test]
    fn check_passes_non_negative_values() {
        assert_eq!(check(0, 0), Ok(0));
        assert_eq!(check(1 << 50, 0), Ok(1 << 50));
        assert_eq!(check(-4, 134), Err(Error::ChildFailed { code: 134 }));
    }

    #[test]
    fn pid_round_trips_through_text() {
        let pid = Pid(140737488355329);
        assert_eq!(pid.to_string(), "140737488355329");
        assert_eq!(pid.to_string().parse::<Pid>(), Ok(pid));
        assert!("x".parse::<Pid>().is_err());
    }

    #[test]
    fn errors_display() {
        assert_eq!(
            Error::ChildFailed { code: 133 }.to_string(),
            "child failed with exit code 133"
        );
        assert!(!Error::Unsupported.to_string().is_empty());
    }

    #[test]
    fn calls_are_unsupported_off_wasm() {
        if cfg!(not(target_arch = "wasm32")) {
            assert_eq!(spawn_self(&[]), Err(Error::Unsupported));
            assert_eq!(wait(Pid(1)), Err(Error::Unsupported));
            assert_eq!(send(Pid(1), b"x"), Err(Error::Unsupported));
            assert_eq!(recv(), Err(Error::Unsupported));
        }
    }
}
