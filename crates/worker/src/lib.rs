//! A nimbus host and the embedded cluster.
//!
//! Owns: the process table of each host (who runs here, their parents, children,
//! states and mailboxes), the life cycle of a process from admission to exit, the
//! resolution of module names a guest spawns, the [`Cluster`] that joins hosts and
//! the planner's placement decisions into the [`nimbus_runtime::Kernel`] the guests
//! call, and [`Services`]: deployed apps, their instances, queues, sessions, and
//! swapping to and from disk.
//!
//! Must not: execute WebAssembly itself (that is the runtime's job) or decide
//! placement policy (that is the planner's).

mod cluster;
mod host;
mod lineage;
mod services;
mod state;

pub use cluster::{Cluster, ClusterConfig, ClusterError, GlobalState, RootProcess};
pub use host::ProcessInfo;
pub use lineage::ModuleSource;
pub use services::{AppConfig, AppInfo, ServiceError, Services};
