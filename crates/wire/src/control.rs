//! The control plane between the planner and the nodes of its cluster: mesh calls
//! whose frame heads are a [`Request`] and its [`Reply`] (as JSON, like every mesh
//! call; versioned with the mesh's protocol).

use nimbus_core::HostId;
use nimbus_planner::{HostInfo, HostReport, HostStatus};
use serde::{Deserialize, Serialize};

use crate::apps::Placement;

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
    /// A generation for a new deployment of `app`, above every one drawn before,
    /// and its deployment now: what a gateway asks before it places one.
    /// Refused when `app` is new and the planner keeps all the deployments it may.
    NewDeployment { app: String },
    /// Keeps `placement`, its module the call's body, in place of any earlier
    /// deployment of the app's name (a gateway's deploy, once the worker named
    /// took it). Refused when a deployment of a higher generation is kept.
    RecordApp { placement: Placement },
    /// The deployment of `app`, and where it runs.
    App { app: String },
    /// Moves `app`, at the deployment of `generation`, from the worker `expected`
    /// (as the caller last saw it, none if it saw none) to `worker`, unless it was
    /// deployed or moved anew meanwhile. Answered with the app as it is now: on
    /// `worker` if the call won, on another gateway's pick if that one came first.
    PlaceApp {
        app: String,
        generation: u64,
        expected: Option<String>,
        worker: String,
    },
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
    /// The generation drawn for a new deployment, and the app as it is kept now,
    /// if it is.
    NewDeployment {
        generation: u64,
        placed: Option<Placement>,
    },
    /// The app as it is kept now, if it is.
    App(Option<Placement>),
    /// The deployments kept.
    Deployments(Vec<Placement>),
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
