//! The host-to-host data plane: how nimbus nodes (workers, and a client that
//! submits a process tree) talk to each other over TCP.
//!
//! Owns: the frame format, calls multiplexed over one reused connection per peer
//! ([`Link`]), replies that may come as a stream of frames ending with a last one
//! (a spawn answers "started", then "ended"), the server loop that hands each
//! request to a [`Handler`] on its own task ([`serve`]), and reporting a broken
//! connection to every call waiting on it ([`MeshError::Lost`]), and connections
//! handed over whole after a hello and its answer ([`open_stream`]), for byte
//! streams whose owners read and write them directly, and message channels
//! admitted by one-time tickets ([`open_channel`]).
//!
//! Trust: every connection between nodes is TLS with both ends certified by the
//! cluster's CA (`nimbus-trust`), checked before a request is read; the only plain
//! connections are message channels, each admitted once on a ticket its opener
//! got over such a connection.
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
//! within the timeout, as one that died is. [`Links`] then takes it for lost for the
//! timeout more, failing new calls to it at once instead of each waiting out a new
//! connection's handshake deadline (3 s) to find it still frozen.

mod channel;
mod frame;
mod link;
mod stream;

pub use channel::{MAX_TICKETS, TICKET_LIFETIME, Ticket, Tickets, accept_channel, open_channel};
pub use frame::{Frame, MAX_BODY, MAX_FRAME};
pub use link::{Connection, Handler, HandlerFuture, Link, Links, Replier, Replies, serve};
pub use stream::{Adoption, open_stream, peer_revoked, read_frame, write_frame};

/// The mesh's protocol and version, named in each connection's TLS handshake
/// (ALPN), so that a node of another release is refused before a frame is read.
/// Raised with every change an older node would misread: of the frames, or of what
/// nodes send in them (`nimbus-wire`'s `peer` and `control`, the served state tier's
/// calls).
pub const PROTOCOL: &str = "nimbus-mesh/3";

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
    /// The peer did not prove it is a node of this cluster (or refused us): TLS
    /// with certificates from another CA, none, or no TLS at all.
    #[error("{addr} is not a node of this cluster, or does not take this node for one: {source}")]
    Untrusted {
        /// Its address.
        addr: String,
        /// How the handshake failed.
        source: std::io::Error,
    },
    /// The peer is a node of this cluster that speaks another version of the mesh.
    #[error(
        "{addr} does not speak {PROTOCOL}: it runs another nimbus release, or is no nimbus node (run the same release on every node)"
    )]
    AnotherVersion {
        /// Its address.
        addr: String,
    },
    /// The connection broke before the call was answered, or the peer did not
    /// finish a new connection's handshake in time (or was found silent so lately
    /// that [`Links`] did not try): the peer is gone or frozen.
    #[error("lost the connection to {addr}")]
    Lost {
        /// The peer's address.
        addr: String,
    },
    /// A frame's head was not what the receiver expected.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// One cluster's TLS for the tests of this crate, made once per test binary.
#[cfg(test)]
pub(crate) fn test_tls() -> std::sync::Arc<nimbus_trust::Tls> {
    static TLS: std::sync::OnceLock<std::sync::Arc<nimbus_trust::Tls>> = std::sync::OnceLock::new();
    TLS.get_or_init(|| nimbus_trust::Tls::ephemeral().unwrap())
        .clone()
}

/// A cluster CA in a temporary directory and a node certificate of it for each of
/// `names`, loaded: for the tests of revocation, which need nodes of their own.
#[cfg(test)]
pub(crate) fn test_nodes(
    names: &[&str],
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    Vec<(std::sync::Arc<nimbus_trust::Tls>, std::path::PathBuf)>,
) {
    let parent = tempfile::tempdir().unwrap();
    let ca = parent.path().join("ca");
    nimbus_trust::init(&ca).unwrap();
    let nodes = names
        .iter()
        .map(|name| {
            let dir = parent.path().join(name);
            nimbus_trust::issue(&ca, name, &dir).unwrap();
            (nimbus_trust::Tls::load(&dir).unwrap(), dir)
        })
        .collect();
    (parent, ca, nodes)
}
