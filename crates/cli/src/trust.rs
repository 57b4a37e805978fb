//! `nimbus cluster init`, and where every node and cluster client finds the
//! cluster's credentials (`--cluster-dir`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use nimbus_core::exit_code;
use nimbus_trust::Tls;

use crate::Failure;

/// The cluster directory of a node or of a client of the cluster.
#[derive(Args, Clone)]
pub(crate) struct ClusterDir {
    /// The cluster's credentials (made by `nimbus cluster init`): its CA, and this
    /// node's certificate and key. Default: `cluster` in the data directory.
    #[arg(long = "cluster-dir", env = "NIMBUS_CLUSTER_DIR", value_name = "DIR")]
    dir: Option<PathBuf>,
}

impl ClusterDir {
    /// These, or `dir` if none was given.
    pub(crate) fn or_else(self, dir: Option<PathBuf>) -> ClusterDir {
        ClusterDir {
            dir: self.dir.or(dir),
        }
    }

    /// The directory, given or under `data_dir`.
    pub(crate) fn path(&self, data_dir: &Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| data_dir.join("cluster"))
    }

    /// Loads the credentials; their absence is a clear error naming the command
    /// that makes them.
    pub(crate) fn load(&self, data_dir: &Path) -> Result<Arc<Tls>, Failure> {
        Tls::load(&self.path(data_dir)).map_err(|e| Failure::new(2, e.to_string()))
    }

    /// Loads the credentials, creating a new cluster there first if there is none:
    /// what the first node of a cluster (the planner, `nimbus up`) does, so a
    /// cluster on one machine needs no setup.
    pub(crate) fn load_or_create(&self, data_dir: &Path) -> Result<Arc<Tls>, Failure> {
        let dir = self.path(data_dir);
        let created = nimbus_trust::ensure(&dir)
            .map_err(|e| Failure::new(exit_code::INTERNAL, e.to_string()))?;
        if created {
            eprintln!(
                "nimbus: created the cluster's credentials in {}: give every other node a copy",
                dir.display()
            );
        }
        self.load(data_dir)
    }
}

/// `nimbus cluster …`.
#[derive(Subcommand)]
pub(crate) enum ClusterCommand {
    /// Create a cluster's credentials in DIR: a new CA (`ca.pem`, `ca-key.pem`) and a
    /// node certificate it signs (`node.pem`, `node-key.pem`). Give every node a copy
    /// of DIR without `ca-key.pem` (`--cluster-dir DIR`); nodes accept only peers
    /// whose certificate this CA signed.
    Init {
        /// The directory to create.
        dir: PathBuf,
    },
}

pub(crate) fn cluster(command: ClusterCommand) -> Result<i32, Failure> {
    match command {
        ClusterCommand::Init { dir } => {
            nimbus_trust::init(&dir).map_err(|e| Failure::new(1, e.to_string()))?;
            println!(
                "nimbus: created the cluster's credentials in {}; start every node with \
                 --cluster-dir pointing at a copy (ca-key.pem stays here)",
                dir.display()
            );
            Ok(0)
        }
    }
}
