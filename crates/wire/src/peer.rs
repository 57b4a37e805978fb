//! The mesh's calls between nodes (`nimbus-mesh` carries them as frames: the head is
//! a [`Request`] or a [`Reply`] as JSON, big payloads go in the frame's body).
//!
//! A worker is asked to start a process, grant a message channel, kill a process,
//! list its processes or end a tree; the node a tree was started from (its home) is
//! asked for the tree's output, stdin, world and modules; the apps placed on a
//! worker are reached through [`AppRequest`]s, which the worker hands to its service
//! manager unread.

use std::path::PathBuf;

use nimbus_core::{ExitStatus, HostId, Pid, ProcessState};
use serde::{Deserialize, Serialize};

use crate::apps::{AppConfig, AppInfo, ServiceError};

/// The node a process tree was started from, and the tree's id there.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Home {
    /// The node's mesh address.
    pub address: String,
    /// The tree's id at that node.
    pub id: u64,
}

/// What a process tree shares, as it travels between hosts. Directories and module
/// directories are paths on the home node's machine: hosts are assumed to share its
/// file system, as MPI's hosts do, and a receiving worker opens only those under the
/// directories it allows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LineageWire {
    /// Where the tree's output and world questions go.
    pub home: Home,
    /// The app whose state the tree's processes share.
    pub app: String,
    /// The directory of modules the tree may spawn by name.
    pub modules: Option<PathBuf>,
    /// The environment.
    pub env: Vec<(String, String)>,
    /// Preopened directories: host path, guest path.
    pub dirs: Vec<(PathBuf, String)>,
    /// Linear memory limit of each process, in bytes.
    pub memory: u64,
    /// The tree's timeout.
    pub timeout_ms: Option<u64>,
    /// Time left until the tree's deadline when the lineage was sent.
    pub remaining_ms: Option<u64>,
    /// Whether the tree's root processes are the ranks of a world.
    pub world: bool,
}

/// A process as `ps` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Its id.
    pub pid: Pid,
    /// Its parent, if a process started it.
    pub parent: Option<Pid>,
    /// Where it is in its life cycle.
    pub state: ProcessState,
    /// The host it runs on.
    pub host: HostId,
}

/// A request between nodes. (Each variant's doc names its fields.)
#[allow(missing_docs)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// To a worker: start a process of `lineage` from the module with hash
    /// `module`, fetched from the node at `from` if this one lacks it, with `args`,
    /// as a child of `parent`; `stdin` says whether it reads its stdin from the
    /// home (the root, or rank 0). Answered with `Started`, then `Ended` once it
    /// ends (after its output went home).
    Start {
        lineage: Box<LineageWire>,
        module: String,
        from: String,
        args: Vec<String>,
        parent: Option<Pid>,
        #[serde(default)]
        stdin: bool,
    },
    /// To a worker: grant a channel of messages from `from` to `to`, a process
    /// there. Answered with a `Ticket` to open it with, which attaches it to the
    /// mailbox of `to`.
    Stream { from: Pid, to: Pid },
    /// To a worker: stop process `pid`.
    Kill { pid: Pid },
    /// To a worker: its processes.
    Processes,
    /// To a worker: stop every process of the tree homed at `home` (its root
    /// ended, and with it the run).
    EndTree { home: Home },
    /// To any node: the module with this hash, as the body.
    Fetch { module: String },
    /// To a home: the body is output (`stderr` or stdout) of the tree `tree`'s
    /// processes.
    Output { tree: u64, stderr: bool },
    /// To a home: the pids of tree `tree`'s world, once every rank started.
    World { tree: u64 },
    /// To a home: the next bytes of tree `tree`'s stdin, as the body; none at its end.
    Stdin { tree: u64 },
    /// To a worker: about the apps placed there.
    App(AppRequest),
}

/// A request about the apps placed on a worker. (Each variant's doc names its
/// fields.)
#[allow(missing_docs)]
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppRequest {
    /// Deploy the app `config` there at the deployment of `generation` (see
    /// `apps::Placement`), its module the body. An app there of a later
    /// generation, or of this one with the same module and configuration, is kept
    /// as it is (with its instances' saved state).
    Deploy { config: AppConfig, generation: u64 },
    /// Invoke `handler` of the app `app` with the body, in `session` if one is named.
    Invoke {
        app: String,
        handler: String,
        session: Option<String>,
    },
    /// The apps deployed there.
    Apps,
    /// The recent stderr of the service instance `pid`, as the body.
    Logs { pid: Pid },
    /// Stop the service instance `pid`.
    KillInstance { pid: Pid },
    /// Swap every service instance out to disk.
    SwapOut,
}

/// An answer to a [`Request`]. (Each variant's doc names its fields.)
#[allow(missing_docs)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The process asked for started as `pid`.
    Started { pid: Pid },
    /// The process started ended with `status`.
    Ended { status: ExitStatus },
    /// Done, nothing to say.
    Done,
    /// The processes there.
    Processes(Vec<ProcessInfo>),
    /// The module asked for, as the body.
    Module,
    /// The ranks of the world asked for.
    World { pids: Vec<Pid> },
    /// Stdin, as the body (empty at its end).
    Input,
    /// The request failed with this guest ABI error code.
    Error { code: i32 },
    /// The app was deployed.
    Deployed(AppInfo),
    /// An invocation's response, as the body.
    Response,
    /// The apps there.
    Apps(Vec<AppInfo>),
    /// The log asked for, as the body, if the instance was `found`.
    Log { found: bool },
    /// Whether the instance to kill was `found` (and is stopped).
    Killed { found: bool },
    /// The app request failed.
    ServiceFailed(ServiceError),
    /// A one-time ticket (`nimbus_mesh::Ticket`'s bytes) for the channel asked for.
    Ticket([u8; 16]),
}
