//! What the planner keeps across restarts, in an embedded database (`redb`) under
//! its data directory: the hosts that joined, the next host id, the app budgets,
//! where it serves the cluster's global state tier, and the gateways' deployments
//! with their modules.
//!
//! Every call blocks on the disk (a write ends with an fsync): async callers run
//! them on blocking threads.

use std::path::{Path, PathBuf};

use nimbus_core::HostId;
use nimbus_planner::HostInfo;
use nimbus_wire::apps::Deployment;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

/// Host id → its `HostInfo` as JSON.
const HOSTS: TableDefinition<u32, &[u8]> = TableDefinition::new("hosts");
/// App → the most processes it may run across the cluster.
const BUDGETS: TableDefinition<&str, u64> = TableDefinition::new("budgets");
/// App name → its `Deployment` as JSON.
const APPS: TableDefinition<&str, &[u8]> = TableDefinition::new("apps");
/// Module sha256 (hex) → the module, while a deployment names it.
const MODULES: TableDefinition<&str, &[u8]> = TableDefinition::new("modules");
/// Single values, by name.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const NEXT_HOST: &str = "next_host";
const STATE_ADDRESS: &str = "state_address";

/// The planner's store could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("planner store {path}: {reason}")]
pub struct StoreError {
    path: PathBuf,
    reason: String,
}

/// What a planner finds in its store when it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    /// The first host id never assigned.
    pub next_host: u32,
    /// The hosts that joined and were not dropped, by id.
    pub hosts: Vec<(HostId, HostInfo)>,
    /// The app budgets.
    pub budgets: Vec<(String, usize)>,
    /// Where the global state tier was served.
    pub state_address: Option<String>,
}

/// The planner's embedded database.
pub struct Store {
    path: PathBuf,
    db: Database,
}

impl Store {
    /// Opens (or creates) the store in `dir`. One planner at a time: a second
    /// one on the same directory is refused while the first holds it.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join("planner.redb");
        let fail = |reason: String| StoreError {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        let db = Database::create(&path).map_err(|e| fail(e.to_string()))?;
        let store = Store { path, db };
        // Every table exists from the first open on, so reads never meet a missing one.
        store.write(|txn| {
            txn.open_table(HOSTS)?;
            txn.open_table(BUDGETS)?;
            txn.open_table(META)?;
            txn.open_table(APPS)?;
            txn.open_table(MODULES)?;
            Ok(())
        })?;
        Ok(store)
    }

    /// Everything stored.
    pub fn load(&self) -> Result<Stored, StoreError> {
        let read = || -> Result<Stored, redb::Error> {
            let txn = self.db.begin_read()?;
            let mut stored = Stored::default();
            for entry in txn.open_table(HOSTS)?.iter()? {
                let (host, info) = entry?;
                let info = serde_json::from_slice(info.value())
                    .map_err(|e| redb::Error::Corrupted(format!("host {}: {e}", host.value())))?;
                stored.hosts.push((HostId(host.value()), info));
            }
            for entry in txn.open_table(BUDGETS)?.iter()? {
                let (app, processes) = entry?;
                stored
                    .budgets
                    .push((app.value().to_owned(), processes.value() as usize));
            }
            let meta = txn.open_table(META)?;
            if let Some(next) = meta.get(NEXT_HOST)? {
                let bytes: [u8; 4] = next
                    .value()
                    .try_into()
                    .map_err(|_| redb::Error::Corrupted("next host id".into()))?;
                stored.next_host = u32::from_le_bytes(bytes);
            }
            if let Some(address) = meta.get(STATE_ADDRESS)? {
                stored.state_address = Some(String::from_utf8_lossy(address.value()).into_owned());
            }
            Ok(stored)
        };
        read().map_err(|e| self.error(e))
    }

    /// Records that `host` joined with `info`; ids below `next_host` are taken.
    pub fn add_host(
        &self,
        host: HostId,
        info: &HostInfo,
        next_host: u32,
    ) -> Result<(), StoreError> {
        let info = serde_json::to_vec(info).expect("host infos serialise");
        self.write(|txn| {
            txn.open_table(HOSTS)?.insert(host.0, info.as_slice())?;
            let mut meta = txn.open_table(META)?;
            let stored = meta
                .get(NEXT_HOST)?
                .and_then(|next| <[u8; 4]>::try_from(next.value()).ok())
                .map_or(0, u32::from_le_bytes);
            // Joins persisted out of order never move the counter back.
            let next = stored.max(next_host);
            meta.insert(NEXT_HOST, next.to_le_bytes().as_slice())?;
            Ok(())
        })
    }

    /// Forgets hosts that were dropped.
    pub fn remove_hosts(&self, hosts: &[HostId]) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(HOSTS)?;
            for host in hosts {
                table.remove(host.0)?;
            }
            Ok(())
        })
    }

    /// Sets the budgets of the apps listed (the others keep theirs).
    pub fn set_budgets(&self, budgets: &[(String, usize)]) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(BUDGETS)?;
            for (app, processes) in budgets {
                table.insert(app.as_str(), *processes as u64)?;
            }
            Ok(())
        })
    }

    /// Records where the global state tier is served.
    pub fn set_state_address(&self, address: &str) -> Result<(), StoreError> {
        self.write(|txn| {
            txn.open_table(META)?
                .insert(STATE_ADDRESS, address.as_bytes())?;
            Ok(())
        })
    }

    /// Keeps `deployment` with its `module` in place of any earlier deployment of
    /// its name, dropping a module no deployment names any more. `false`, and
    /// nothing changed, if that would keep more than [`MAX_DEPLOYMENTS`].
    pub fn record_app(&self, deployment: &Deployment, module: &[u8]) -> Result<bool, StoreError> {
        let record = serde_json::to_vec(deployment).expect("deployments serialise");
        let name = deployment.config.name.as_str();
        let mut recorded = true;
        self.write(|txn| {
            let mut apps = txn.open_table(APPS)?;
            let earlier = match apps.get(name)? {
                Some(earlier) => Some(deployment_of(name, earlier.value())?.module),
                None if apps.len()? >= MAX_DEPLOYMENTS => {
                    recorded = false;
                    return Ok(());
                }
                None => None,
            };
            apps.insert(name, record.as_slice())?;
            let mut modules = txn.open_table(MODULES)?;
            modules.insert(deployment.module.as_str(), module)?;
            if let Some(earlier) = earlier.filter(|hash| *hash != deployment.module) {
                let mut named = false;
                for entry in apps.iter()? {
                    let (app, record) = entry?;
                    named |= deployment_of(app.value(), record.value())?.module == earlier;
                }
                if !named {
                    modules.remove(earlier.as_str())?;
                }
            }
            Ok(())
        })?;
        Ok(recorded)
    }

    /// Every deployment kept, by app name.
    pub fn deployments(&self) -> Result<Vec<Deployment>, StoreError> {
        let read = || -> Result<Vec<Deployment>, redb::Error> {
            let txn = self.db.begin_read()?;
            let mut deployments = Vec::new();
            for entry in txn.open_table(APPS)?.iter()? {
                let (app, record) = entry?;
                deployments.push(deployment_of(app.value(), record.value())?);
            }
            Ok(deployments)
        };
        read().map_err(|e| self.error(e))
    }

    /// The module whose sha256 is `hash`, if a deployment names it.
    pub fn module(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let read = || -> Result<Option<Vec<u8>>, redb::Error> {
            let txn = self.db.begin_read()?;
            let module = txn.open_table(MODULES)?.get(hash)?;
            Ok(module.map(|module| module.value().to_vec()))
        };
        read().map_err(|e| self.error(e))
    }

    /// Runs `change` in one transaction, committed durably.
    fn write(
        &self,
        change: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let written = || -> Result<(), redb::Error> {
            let txn = self.db.begin_write()?;
            change(&txn)?;
            txn.commit()?;
            Ok(())
        };
        written().map_err(|e| self.error(e))
    }

    fn error(&self, e: redb::Error) -> StoreError {
        StoreError {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }
}

/// The most deployments a planner keeps (each module at most a mesh frame's body).
pub const MAX_DEPLOYMENTS: u64 = 4096;

/// The deployment recorded for `app`.
fn deployment_of(app: &str, record: &[u8]) -> Result<Deployment, redb::Error> {
    serde_json::from_slice(record)
        .map_err(|e| redb::Error::Corrupted(format!("deployment of `{app}`: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(address: &str) -> HostInfo {
        HostInfo {
            cpus: 2,
            memory: 1 << 30,
            capacity: 10,
            address: address.into(),
        }
    }

    #[test]
    fn what_is_stored_is_found_again_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.load().unwrap(), Stored::default());
            store.add_host(HostId(1), &info("a:1"), 2).unwrap();
            store.add_host(HostId(3), &info("c:3"), 4).unwrap();
            // A join persisted late does not move the counter back.
            store.add_host(HostId(2), &info("b:2"), 3).unwrap();
            store.remove_hosts(&[HostId(1)]).unwrap();
            store.set_budgets(&[("small".into(), 2)]).unwrap();
            store.set_budgets(&[("other".into(), 5)]).unwrap();
            store.set_state_address("127.0.0.1:4000").unwrap();
        }
        let stored = Store::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(
            stored,
            Stored {
                next_host: 4,
                hosts: vec![(HostId(2), info("b:2")), (HostId(3), info("c:3"))],
                budgets: vec![("other".into(), 5), ("small".into(), 2)],
                state_address: Some("127.0.0.1:4000".into()),
            }
        );
    }

    fn deployment(name: &str, module: &str) -> Deployment {
        Deployment {
            config: nimbus_wire::apps::AppConfig::new(name),
            module: module.into(),
        }
    }

    #[test]
    fn deployments_are_kept_with_the_modules_they_name_and_no_others() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert!(store.record_app(&deployment("a", "m1"), b"one").unwrap());
            assert!(store.record_app(&deployment("b", "m1"), b"one").unwrap());
            // `a` moves on; `b` still names m1.
            assert!(store.record_app(&deployment("a", "m2"), b"two").unwrap());
            assert_eq!(store.module("m1").unwrap().as_deref(), Some(&b"one"[..]));
            // Once nothing names m1, it goes.
            assert!(store.record_app(&deployment("b", "m2"), b"two").unwrap());
            assert_eq!(store.module("m1").unwrap(), None);
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.deployments().unwrap(),
            vec![deployment("a", "m2"), deployment("b", "m2")]
        );
        assert_eq!(store.module("m2").unwrap().as_deref(), Some(&b"two"[..]));
    }

    #[test]
    fn no_more_than_the_most_deployments_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Filled in one transaction, as recording each would fsync 4,096 times.
        store
            .write(|txn| {
                let mut apps = txn.open_table(APPS)?;
                for n in 0..MAX_DEPLOYMENTS {
                    let record = serde_json::to_vec(&deployment(&format!("app{n}"), "m")).unwrap();
                    apps.insert(format!("app{n}").as_str(), record.as_slice())?;
                }
                Ok(())
            })
            .unwrap();
        assert!(
            !store
                .record_app(&deployment("one-more", "m"), b"m")
                .unwrap()
        );
        assert_eq!(store.module("m").unwrap(), None);
        // An app already kept may still be deployed anew.
        assert!(store.record_app(&deployment("app7", "m"), b"m").unwrap());
    }

    #[test]
    fn a_second_planner_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let second = Store::open(dir.path());
        assert!(second.is_err());
    }
}
