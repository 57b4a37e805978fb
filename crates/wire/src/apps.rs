//! Deployed apps as clients, gateways and workers name them: how an app is run, how
//! it is listed, and why a deployment or an invocation failed.

use std::time::Duration;

use nimbus_core::{InvokeError, Pid};
use serde::{Deserialize, Serialize};

/// How an app is run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppConfig {
    /// The app's name: 1 to 64 of `[A-Za-z0-9_-]`.
    pub name: String,
    /// Linear memory limit of each instance, in bytes.
    pub memory: u64,
    /// How long an instance stays in memory without a request before it is
    /// swapped out.
    pub idle: Duration,
    /// Most instances the app runs.
    pub max_instances: usize,
    /// Most requests waiting for one instance.
    pub queue_depth: usize,
    /// How long one invocation may run.
    pub timeout: Duration,
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Largest response body, in bytes.
    pub max_response: usize,
}

impl AppConfig {
    /// Defaults for an app named `name`.
    pub fn new(name: impl Into<String>) -> AppConfig {
        AppConfig {
            name: name.into(),
            memory: 256 << 20,
            idle: Duration::from_secs(60),
            max_instances: 4,
            queue_depth: 64,
            timeout: Duration::from_secs(30),
            max_body: 8 << 20,
            max_response: 8 << 20,
        }
    }
}

impl AppConfig {
    /// Refuses a name or limits no app may have.
    pub fn check(&self) -> Result<(), ServiceError> {
        let valid_name = (1..=64).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            return Err(ServiceError::InvalidName(self.name.clone()));
        }
        if self.max_instances == 0 || self.queue_depth == 0 {
            return Err(ServiceError::InvalidConfig(
                "max instances and queue depth must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// A deployment as the planner keeps it for the gateways of its cluster: how the
/// app is run and which module it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// How the app is run.
    pub config: AppConfig,
    /// The sha256 of its module, in hex.
    pub module: String,
}

/// A deployment as the planner keeps it, with where it runs: the one answer every
/// gateway of a cluster routes by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The app and its module.
    #[serde(flatten)]
    pub deployment: Deployment,
    /// Drawn from the planner's counter for each deployment and never reused, so
    /// of two deployments of a name the later has the higher one, even with the
    /// same module and configuration (0: recorded by a release before generations).
    #[serde(default)]
    pub generation: u64,
    /// The mesh address of the worker it runs on (none: recorded by a release
    /// before placements were kept).
    #[serde(default)]
    pub worker: Option<String>,
    /// How often it was placed anew since it was deployed.
    #[serde(default)]
    pub moves: u64,
}

impl Placement {
    /// Whether the planner answered `self` after `other`, both of one app: a later
    /// deployment, or the same one placed anew since.
    pub fn is_later_than(&self, other: &Placement) -> bool {
        (self.generation, self.moves) > (other.generation, other.moves)
    }
}

/// An app as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppInfo {
    /// Its configuration.
    pub config: AppConfig,
    /// The sha256 of its module.
    pub module: String,
    /// Instances, live or swapped out.
    pub instances: usize,
    /// Instances in memory now.
    pub live: usize,
    /// Requests being served or waiting, over all instances.
    pub queued: usize,
    /// The pids of its instances.
    pub pids: Vec<Pid>,
    /// Snapshots refused since the app was opened (damaged, of another app or
    /// instance, or not restorable) and set aside: their instances started afresh.
    #[serde(default)]
    pub rejected_snapshots: u64,
}

/// Why a deployment or an invocation failed.
#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
pub enum ServiceError {
    /// No app has that name.
    #[error("no app named `{0}`")]
    UnknownApp(String),
    /// The name is not acceptable.
    #[error("invalid app name `{0}`: use 1 to 64 letters, digits, `-` or `_`")]
    InvalidName(String),
    /// The configuration is not acceptable.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The module cannot serve.
    #[error("{0}")]
    Module(String),
    /// The request body is over the app's limit.
    #[error("request body of {size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// The body's size.
        size: usize,
        /// The app's limit.
        limit: usize,
    },
    /// Every instance's queue is full.
    #[error("all {instances} instances of `{app}` are busy; retry later")]
    Busy {
        /// The app.
        app: String,
        /// How many instances it runs.
        instances: usize,
    },
    /// The handler did not produce a response.
    #[error(transparent)]
    Handler(#[from] InvokeError),
    /// No instance could be started or restored.
    #[error("cannot start an instance: {0}")]
    Unavailable(String),
    /// The data directory failed.
    #[error("storage: {0}")]
    Storage(String),
}
