//! The wire formats between nimbus nodes: what their calls over the mesh
//! (`nimbus-mesh`, whose frames carry these as JSON heads) say.
//!
//! - [`peer`]: between nodes (start a process, grant a channel, a tree's output,
//!   the apps placed on a worker);
//! - [`control`]: to the planner (join, heartbeat, placement, the host list);
//! - [`apps`]: the vocabulary of deployed apps that travels in them.
//!
//! Versioned with the mesh's protocol (`nimbus_mesh::PROTOCOL`, named in each
//! connection's TLS handshake): a change an older node would misread raises it, so
//! a node of another release is refused before it reads a byte of these.
//!
//! Owns: the shapes of requests and replies.
//! Must not: hold connections, or know what a node does with a call.

pub mod apps;
pub mod control;
pub mod peer;
