//! Runs WebAssembly processes on one host.
//!
//! Owns: the wasmtime engines and their configuration (for commands: pooling
//! allocator, copy-on-write memory images; for services: memories that commit and
//! roll back; for both: epoch interruption), the module cache (precompiled artifacts keyed
//! by sha256, of modules instrumented to export their mutable globals), per-process
//! limits, WASI preview 1 and the nimbus host ABI, the mailbox a process receives
//! from, the message channels it writes to and reads from (connected sockets the
//! kernel hands it), long-lived service instances with the capture and restore
//! of their state as snapshots, and the capture of a running command at a
//! blocking host call and its restore in another OS process.
//!
//! Must not: decide where a process runs, keep a process table, or know about other
//! hosts. Everything a guest asks of the platform beyond its own mailbox and channels
//! (spawn, wait, where a message goes) goes up through the [`Kernel`] trait, which the
//! worker implements.

mod abi;
mod abi_state;
mod asyncify;
mod cache;
mod capture;
mod engine;
mod instrument;
mod log;
mod mailbox;
mod memory;
mod process;
mod service;
mod stream;

pub use abi::{AbiError, BoxFuture, Isolated, Kernel, Route};
pub use abi_state::{StateCall, StateReply, Tier};
pub use asyncify::AsyncifyError;
pub use cache::{CacheStats, LoadError, ModuleBytes, ModuleHash, WeakModule};
pub use capture::{Capture, CaptureError, Checkpoint, UNWIND_BUFFER};
pub use engine::{MAX_PROGRAMS, Program, Runtime, RuntimeConfig, RuntimeError, RuntimeLoad, Slot};
pub use log::LogBuffer;
pub use mailbox::{
    Arrival, MAILBOX_CAPACITY, MAX_CHANNELS, MAX_MESSAGE_SIZE, MESSAGE_OVERHEAD, Mailbox,
    MailboxSender, Message, mailbox,
};
pub use nimbus_core::InvokeError;
pub use process::{Input, InputStream, Output, OutputSink, Preopen, ProcessSpec};
pub use service::{Committed, INLINE_COMMIT, Invocation, ServiceInstance};
pub use stream::ChannelSlot;
