//! `nimbus cluster init`, `issue` and `revoke`, and where every node and cluster
//! client finds the cluster's credentials (`--cluster-dir`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use nimbus_core::exit_code;
use nimbus_trust::Tls;

use crate::Failure;

/// The cluster directory of a node or of a client of the cluster.
#[derive(Args, Clone)]
pub(crate) struct ClusterDir {
    /// The cluster's credentials (made by `nimbus cluster init`, or for this node
    /// by `nimbus cluster issue`): its CA, this node's certificate and key, and the
    /// CA's revocation list `crl.pem` if it revoked any (read again when replaced).
    /// Default: `cluster` in the data directory.
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
        self.create_if_absent(data_dir)?;
        self.load(data_dir)
    }

    /// The directory, with a new cluster created there first if it holds none.
    fn create_if_absent(&self, data_dir: &Path) -> Result<PathBuf, Failure> {
        let dir = self.path(data_dir);
        let created = nimbus_trust::ensure(&dir)
            .map_err(|e| Failure::new(exit_code::INTERNAL, e.to_string()))?;
        if created {
            eprintln!(
                "nimbus: created the cluster's credentials in {}: give every other node a copy",
                dir.display()
            );
        }
        Ok(dir)
    }

    /// The credentials of `nimbus up --workers`'s node `name`, a certificate of its
    /// own issued from the CA here (creating the cluster first if there is none),
    /// so that `nimbus cluster revoke DIR NAME` revokes that node alone.
    pub(crate) fn local_node(&self, data_dir: &Path, name: &str) -> Result<PathBuf, Failure> {
        let dir = self.create_if_absent(data_dir)?;
        nimbus_trust::local_node(&dir, name).map_err(|e| Failure::new(2, e.to_string()))
    }
}

/// `nimbus cluster …`.
#[derive(Subcommand)]
pub(crate) enum ClusterCommand {
    /// Create a cluster's credentials in DIR: a new CA (`ca.pem`, `ca-key.pem`) and a
    /// node certificate it signs (`node.pem`, `node-key.pem`). Give every node a copy
    /// of DIR without `ca-key.pem` (`--cluster-dir DIR`), or each its own
    /// certificate (`nimbus cluster issue`); nodes accept only peers whose
    /// certificate this CA signed and did not revoke.
    Init {
        /// The directory to create.
        dir: PathBuf,
    },
    /// Issue node NAME a certificate of its own from the CA in DIR, and write the
    /// node's credentials (`ca.pem`, `node.pem`, `node-key.pem`, and the CA's
    /// `crl.pem` if it has one; never the CA's key) into the new directory NODEDIR,
    /// for that node's `--cluster-dir`. DIR records the name (`issued.json`), for
    /// `nimbus cluster revoke`.
    Issue {
        /// The cluster directory holding the CA (`ca.pem`, `ca-key.pem`).
        dir: PathBuf,
        /// The node's name: 1 to 64 letters, digits, '-', '_' or '.'.
        name: String,
        /// The node directory to create.
        #[arg(long, value_name = "NODEDIR")]
        out: PathBuf,
    },
    /// Revoke node NAME's certificate: write DIR/crl.pem, the CA's list of revoked
    /// certificates. Copy it into every node's cluster directory (nodes sharing DIR,
    /// and `nimbus up --workers`'s, read it there); within a second of it being
    /// replaced, a node refuses the certificates it lists and ends its open
    /// connections with them.
    Revoke {
        /// The cluster directory holding the CA.
        dir: PathBuf,
        /// The node's name, as issued.
        name: String,
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
        ClusterCommand::Issue { dir, name, out } => {
            let issued = nimbus_trust::issue(&dir, &name, &out)
                .map_err(|e| Failure::new(1, e.to_string()))?;
            println!(
                "nimbus: issued node {} a certificate (serial {}) in {}: start it with \
                 --cluster-dir pointing at that directory",
                issued.name,
                issued.serial,
                out.display()
            );
            Ok(0)
        }
        ClusterCommand::Revoke { dir, name } => {
            let revoked =
                nimbus_trust::revoke(&dir, &name).map_err(|e| Failure::new(1, e.to_string()))?;
            let crl = dir.join(nimbus_trust::CRL_FILE);
            println!(
                "nimbus: {} node {name}'s certificate (serial {}); {} lists {} revoked: copy it \
                 into every node's cluster directory",
                match revoked.before {
                    true => "had already revoked",
                    false => "revoked",
                },
                revoked.serial,
                crl.display(),
                revoked.listed
            );
            Ok(0)
        }
    }
}
