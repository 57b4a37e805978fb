//! The control plane between the planner and its workers, over gRPC
//! (`nimbus.control.v1` in the wire crate).
//!
//! Owns: the planner's server around the pure [`nimbus_planner::Registry`] (joins,
//! heartbeats, dropping workers silent for longer than the timeout, the host list
//! behind `nimbus hosts`), its durable [`Store`], and the clients: [`Planner`] for
//! placements and the host list, [`PlannerLink`] for a worker's membership.
//!
//! Every call has a deadline and is cancel-safe (each is its own HTTP/2 stream:
//! dropping it resets that stream and nothing else), connections carry HTTP/2
//! keepalives, and a planner refuses a caller of another wire version with a
//! message saying so.
//!
//! Must not: run processes, or decide placement itself (that is the planner
//! crate's policy).

mod client;
mod convert;
mod server;
mod store;

pub use client::{Planner, PlannerLink, hosts};
pub use server::{PlannerConfig, serve_planner};
pub use store::{Store, StoreError, Stored};

use std::time::Duration;

/// How long a call to the planner may take, connecting included.
pub const CALL_DEADLINE: Duration = Duration::from_secs(5);

/// How long a connection to the planner may take to open.
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(2);

/// How often an idle connection is probed, either way.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// How long a probe may go unanswered before its connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// A control-plane call failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The planner could not be reached, the connection broke, or the call ran
    /// past its deadline: worth trying again.
    #[error("planner {addr}: {message}")]
    Unreachable {
        /// The planner's address.
        addr: String,
        /// What failed.
        message: String,
    },
    /// The planner has no room: every host is full, or the app is at its budget.
    #[error("planner {addr} refused: {message}")]
    Refused {
        /// The planner's address.
        addr: String,
        /// Its reason.
        message: String,
    },
    /// The planner does not know this host: it was silent past the timeout and
    /// its processes were reported lost.
    #[error("planner {addr}: {message}")]
    UnknownHost {
        /// The planner's address.
        addr: String,
        /// The planner's words.
        message: String,
    },
    /// The planner and this node are not of one cluster: a certificate of another
    /// CA on either side, or none. Not worth trying again.
    #[error(
        "planner {addr} and this node are not of one cluster (a certificate from another \
         CA, or none: give both a copy of the same cluster directory): {message}"
    )]
    Untrusted {
        /// The planner's address.
        addr: String,
        /// How the handshake failed.
        message: String,
    },
    /// The other side speaks another wire version, or broke the protocol.
    #[error("planner {addr}: {reason}")]
    Protocol {
        /// The planner's address.
        addr: String,
        /// What was wrong.
        reason: String,
    },
}

impl ControlError {
    fn from_status(addr: &str, status: tonic::Status) -> ControlError {
        use tonic::Code;
        let addr = addr.to_owned();
        if let Some(reason) = nimbus_wire::version_mismatch(&status) {
            return ControlError::Protocol { addr, reason };
        }
        if failed_handshake(&status) {
            let message = unreachable_message(&status);
            return ControlError::Untrusted { addr, message };
        }
        let message = status.message().to_owned();
        match status.code() {
            Code::ResourceExhausted => ControlError::Refused { addr, message },
            Code::NotFound => ControlError::UnknownHost { addr, message },
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                ControlError::Unreachable {
                    addr,
                    message: unreachable_message(&status),
                }
            }
            _ => ControlError::Protocol {
                addr,
                reason: format!("{:?}: {message}", status.code()),
            },
        }
    }
}

/// Whether the call failed for TLS: a certificate refused by either side.
fn failed_handshake(status: &tonic::Status) -> bool {
    use std::error::Error;
    let mut cause = status.source();
    while let Some(error) = cause {
        // An I/O error's source is its inner error's source: look at the inner one.
        let inner = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref());
        if error.is::<rustls::Error>() || inner.is_some_and(|inner| inner.is::<rustls::Error>()) {
            return true;
        }
        cause = error.source();
    }
    false
}

/// What a transport failure says, with its cause (tonic's own message is only
/// "transport error").
fn unreachable_message(status: &tonic::Status) -> String {
    use std::error::Error;
    let mut message = status.message().to_owned();
    let mut cause = status.source();
    while let Some(error) = cause {
        message = format!("{message}: {error}");
        cause = error.source();
    }
    message
}

#[cfg(test)]
mod tests;
