//! A nimbus node: its hosts and the cluster kernel the guests call.
//!
//! Owns: the process table of each host (who runs here, their parents, children,
//! states and mailboxes), the life cycle of a process from admission to exit, the
//! resolution of module names a guest spawns, the [`Cluster`] that joins hosts and
//! the planner's placement decisions into the [`nimbus_runtime::Kernel`] the guests
//! call, the state calls of guests and their locks, and a worker's part in a cluster
//! of many: the peer side of the mesh (start, send, kill, list; [`serve_worker`]) and
//! the home node of a tree submitted from outside, which receives its output
//! ([`run_on_cluster`]).
//!
//! Must not: execute WebAssembly itself (that is the runtime's job), decide
//! placement policy (the planner's), or know what deployed apps are: requests
//! about them reach the service manager above through [`AppRequests`], and a
//! service instance is to the node a process it was asked to register.

mod cluster;
mod host;
mod lineage;
mod mesh;
mod metrics;
mod serve;
mod state;

pub use cluster::{Cluster, ClusterConfig, ClusterError, GlobalState, RootProcess};
pub use host::Host;
pub use lineage::{Lineage, ModuleSource};
pub use mesh::MeshConfig;
pub use metrics::{NodeMetrics, metrics, register as register_metrics};
pub use nimbus_wire::peer::ProcessInfo;
pub use serve::{AppRequests, cluster_processes, run_on_cluster, serve_worker};
