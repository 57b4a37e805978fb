//! The host-to-host data plane: how nimbus nodes (workers, and a client that
//! submits a process tree) talk to each other over TCP.
//!
//! Owns: the frame format, calls multiplexed over one reused connection per peer
//! ([`Link`]), replies that may come as a stream of frames ending with a last one
//! (a spawn answers "started", then "ended"), the server loop that hands each
//! request to a [`Handler`] on its own task ([`serve`]), and reporting a broken
//! connection to every call waiting on it ([`MeshError::Lost`]), and connections
//! handed over whole after a hello and its answer ([`open_stream`]), for byte
//! streams whose owners read and write them directly.
//!
//! Must not: know what the frames mean (the worker defines its requests), or hold
//! process state. Ordering: frames on one connection arrive in the order they were
//! written; requests are handled concurrently, so a caller that needs order between
//! two calls waits for the first one's reply before making the second.
//!
//! A frame on the wire: `u32` length of the rest, `u64` call id, `u8` flags
//! (request, last, ping), `u32` head length, the head (JSON), the body (raw bytes).
//!
//! Keepalive: a [`Link`] probes its peer every [`KEEPALIVE_INTERVAL`] and the peer
//! answers at once; either side that hears nothing for [`KEEPALIVE_TIMEOUT`]
//! closes the connection, failing every call on it. So a peer that is frozen
//! (SIGSTOP, a cable pulled: its kernel may still acknowledge TCP) is declared lost
//! within the timeout, as one that died is.

mod frame;
mod link;
mod stream;

pub use frame::{Frame, MAX_BODY, MAX_FRAME};
pub use link::{Handler, HandlerFuture, Link, Links, Replier, Replies, serve};
pub use stream::{Adoption, open_stream, read_frame, write_frame};

/// How often a link probes its peer.
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// How long either end of a connection waits for the next frame (a probe comes
/// every [`KEEPALIVE_INTERVAL`]) before it closes the connection as lost.
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Bytes this process has received and sent over the mesh since it started, frames
/// whole (for load reports).
pub fn traffic() -> (u64, u64) {
    use std::sync::atomic::Ordering;
    (
        frame::RECEIVED.load(Ordering::Relaxed),
        frame::SENT.load(Ordering::Relaxed),
    )
}

/// A mesh exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The peer could not be reached.
    #[error("cannot reach {addr}: {source}")]
    Connect {
        /// Its address.
        addr: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The connection broke before the call was answered: the peer is gone.
    #[error("lost the connection to {addr}")]
    Lost {
        /// The peer's address.
        addr: String,
    },
    /// A frame's head was not what the receiver expected.
    #[error("malformed frame: {0}")]
    Malformed(String),
}
