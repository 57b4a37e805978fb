//! Service processes: apps deployed once and invoked many times, whose instances
//! keep state in memory between invocations ([`Services`], on this node), or the
//! same apps placed on the workers of a cluster ([`PlacedServices`]); both are a
//! [`ServiceFront`], what a gateway serves.
//!
//! Owns: deployed apps, their instances, queues, sessions, and swapping to and from
//! disk; on a cluster, placing each app on a worker and routing its requests to
//! the worker the planner records for it.
//! Must not: run processes itself (instances are started on the node's hosts,
//! `nimbus-node`), or speak HTTP (the gateway's job).

mod metrics;
mod placed;
mod services;

pub use metrics::{ServiceMetrics, metrics};
pub use nimbus_wire::apps::{AppConfig, AppInfo, ServiceError};
pub use placed::PlacedServices;
pub use services::{ServiceFront, Services};
