//! The control plane between the planner and its workers, as calls over the
//! mesh (`nimbus-mesh`; their shapes are `nimbus_wire::control`), the one RPC
//! layer between nodes.
//!
//! Owns: the planner's server around the pure [`nimbus_planner::Registry`] (joins,
//! heartbeats, dropping workers silent for longer than the timeout, the host list
//! behind `nimbus hosts`), its durable [`Store`] (which also keeps the gateways'
//! deployments and the worker each app runs on), and the clients: [`Planner`] for
//! placements, the host list and deployments, [`PlannerLink`] for a worker's
//! membership.
//!
//! Every call has a deadline ([`CALL_DEADLINE`]) and is cancel-safe (the mesh
//! writes each request whole from a task of its own; a dropped call only stops
//! waiting), connections are TLS with both ends certified by the cluster's CA and
//! carry the mesh's keepalive, and a node of another release is refused in the
//! handshake with a message saying so.
//!
//! Must not: run processes, or decide placement itself (that is the planner
//! crate's policy).

mod client;
mod metrics;
mod server;
mod store;

pub use client::{Planner, PlannerLink, hosts};
pub use metrics::{PlannerMetrics, metrics};
pub use server::{PlannerConfig, serve_planner};
pub use store::{Recorded, Store, StoreError, Stored};

use std::time::Duration;

/// How long a call to the planner may take, connecting included.
pub const CALL_DEADLINE: Duration = Duration::from_secs(5);

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
    /// The planner and this node are of one cluster, but one of their certificates
    /// is revoked: this node's (the planner's copy of the CA's `crl.pem` lists it)
    /// or the planner's (this node's copy does). Not worth trying again.
    #[error(
        "planner {addr} and this node refuse each other: a certificate is revoked by the \
         cluster's CA (this node's, or the planner's: issue the node a new one with `nimbus \
         cluster issue`): {message}"
    )]
    Revoked {
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
    fn from_mesh(addr: &str, error: nimbus_mesh::MeshError) -> ControlError {
        use nimbus_mesh::MeshError;
        let addr = addr.to_owned();
        match error {
            MeshError::Untrusted { source, .. } if nimbus_trust::is_revoked(&source) => {
                ControlError::Revoked {
                    addr,
                    message: source.to_string(),
                }
            }
            MeshError::Untrusted { source, .. } => ControlError::Untrusted {
                addr,
                message: source.to_string(),
            },
            error @ MeshError::AnotherVersion { .. } => ControlError::Protocol {
                addr,
                reason: error.to_string(),
            },
            MeshError::Malformed(reason) => ControlError::Protocol { addr, reason },
            error @ (MeshError::Connect { .. } | MeshError::Lost { .. }) => {
                ControlError::Unreachable {
                    addr,
                    message: error.to_string(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
