//! The control plane between the planner and the nodes of its cluster: mesh calls
//! whose frame heads are a [`Request`] and its [`Reply`] (as JSON, like every mesh
//! call; versioned with the mesh's protocol).

use nimbus_core::HostId;
use nimbus_planner::{HostInfo, HostReport, HostStatus};
use serde::{Deserialize, Serialize};

use crate::apps::Deployment;

/// A call to the planner. (Each variant's doc names its fields.)
#[allow(missing_docs)]
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// A new worker, described by `info`, joins and is assigned its host id.
    Join { info: HostInfo },
    /// The worker `host` reports its load.
    Heartbeat { host: HostId, report: HostReport },
    /// The host for a new process of `app`; `near`, the parent's host, is
    /// preferred on ties.
    Place {
        near: Option<HostId>,
        app: Option<String>,
    },
    /// Every registered host.
    Hosts,
    /// Keeps `deployment`, its module the call's body, in place of any earlier
    /// deployment of the app's name (a gateway's deploy, once a worker took it).
    RecordApp { deployment: Deployment },
    /// Every deployment kept.
    Deployments,
    /// The module whose sha256 is `hash` (hex), in the answer's body.
    Module { hash: String },
}

/// The planner's answer. (Each variant's doc names its fields.)
#[allow(missing_docs)]
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The worker joined as `host`; it reports every `heartbeat_ms`, and finds the
    /// cluster's global state tier served at `state`, if the planner serves one.
    Joined {
        host: HostId,
        heartbeat_ms: u64,
        state: Option<String>,
    },
    /// The report was taken.
    Reported,
    /// The process goes to `host`, reached at `address`.
    Placed { host: HostId, address: String },
    /// The registered hosts.
    Hosts(Vec<HostStatus>),
    /// The deployment is kept.
    Recorded,
    /// The deployments kept.
    Deployments(Vec<Deployment>),
    /// The module asked for is the answer's body.
    Module,
    /// No room: every host is full, or the app is at its budget.
    Refused(String),
    /// The planner does not know the host: it was silent past the timeout and its
    /// processes were reported lost.
    UnknownHost(String),
    /// The planner could not serve the call now (its store failed): worth trying
    /// again.
    Unavailable(String),
    /// The call was not one the planner understands.
    Invalid(String),
}
