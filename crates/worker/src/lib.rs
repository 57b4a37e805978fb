//! A nimbus host and the embedded cluster.
//!
//! Owns: the process table of each host (who runs here, their parents, children,
//! states and mailboxes), the life cycle of a process from admission to exit, the
//! resolution of module names a guest spawns, the [`Cluster`] that joins hosts and
//! the planner's placement decisions into the [`nimbus_runtime::Kernel`] the guests
//! call, and [`Services`]: deployed apps, their instances, queues, sessions, and
//! swapping to and from disk; and a worker's part in a cluster of many: what
//! hosts ask each other over the mesh (start, send, kill, list) and the home node
//! of a tree submitted from outside, which receives its output.
//!
//! Must not: execute WebAssembly itself (that is the runtime's job) or decide
//! placement policy (that is the planner's).

mod cluster;
mod host;
mod lineage;
mod mesh;
mod node;
mod placed;
mod services;
mod state;

pub use cluster::{Cluster, ClusterConfig, ClusterError, GlobalState, RootProcess};
pub use host::ProcessInfo;
pub use lineage::ModuleSource;
pub use mesh::MeshConfig;
pub use node::{cluster_processes, run_on_cluster, serve_worker};
pub use placed::PlacedServices;
pub use services::{AppConfig, AppInfo, ServiceError, ServiceFront, Services};
