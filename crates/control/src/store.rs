//! What the planner keeps across restarts, in an embedded database (`redb`) under
//! its data directory: the hosts that joined, the next host id, the app budgets,
//! where it serves the cluster's global state tier, and the gateways' deployments
//! with their modules and the worker each runs on (set by compare-and-set, so that
//! every gateway routes an app to the same worker), each change one transaction.
//!
//! Every call blocks on the disk (a write ends with an fsync): async callers run
//! them on blocking threads.

use std::path::{Path, PathBuf};

use nimbus_core::HostId;
use nimbus_planner::HostInfo;
use nimbus_wire::apps::Placement;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

/// Host id → its `HostInfo` as JSON.
const HOSTS: TableDefinition<u32, &[u8]> = TableDefinition::new("hosts");
/// App → the most processes it may run across the cluster.
const BUDGETS: TableDefinition<&str, u64> = TableDefinition::new("budgets");
/// App name → its `Placement` (deployment, generation, worker) as JSON.
const APPS: TableDefinition<&str, &[u8]> = TableDefinition::new("apps");
/// Module sha256 (hex) → the module, while a deployment names it.
const MODULES: TableDefinition<&str, &[u8]> = TableDefinition::new("modules");
/// Single values, by name.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const NEXT_HOST: &str = "next_host";
const STATE_ADDRESS: &str = "state_address";
const NEXT_GENERATION: &str = "next_generation";

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

    /// A generation for a new deployment of `app`, above every one drawn before
    /// (the counter moves on durably first, so none is drawn twice, restarts
    /// included), and the app as it is kept now. `None`, and nothing changed, if
    /// `app` is new and [`MAX_DEPLOYMENTS`] are kept.
    pub fn new_deployment(
        &self,
        app: &str,
    ) -> Result<Option<(u64, Option<Placement>)>, StoreError> {
        self.write(|txn| {
            let apps = txn.open_table(APPS)?;
            let placed = match apps.get(app)? {
                Some(record) => Some(placement_of(app, record.value())?),
                None => None,
            };
            if placed.is_none() && apps.len()? >= MAX_DEPLOYMENTS {
                return Ok(None);
            }
            let mut meta = txn.open_table(META)?;
            let generation = next_generation(&meta)?;
            meta.insert(NEXT_GENERATION, (generation + 1).to_le_bytes().as_slice())?;
            Ok(Some((generation, placed)))
        })
    }

    /// Keeps `placement` with its `module` in place of any earlier deployment of
    /// its name, dropping a module no deployment names any more, unless the one
    /// kept is of the same generation or a later one, or `placement` is of a new
    /// name and [`MAX_DEPLOYMENTS`] are kept.
    pub fn record_app(&self, placement: &Placement, module: &[u8]) -> Result<Recorded, StoreError> {
        let record = serde_json::to_vec(placement).expect("placements serialise");
        let name = placement.deployment.config.name.as_str();
        let hash = placement.deployment.module.as_str();
        self.write(|txn| {
            let mut apps = txn.open_table(APPS)?;
            let earlier = match apps.get(name)? {
                Some(record) => Some(placement_of(name, record.value())?),
                None => None,
            };
            match earlier {
                Some(kept) if kept.generation >= placement.generation => {
                    return Ok(Recorded::Superseded(kept));
                }
                None if apps.len()? >= MAX_DEPLOYMENTS => return Ok(Recorded::Full),
                _ => {}
            }
            apps.insert(name, record.as_slice())?;
            let mut modules = txn.open_table(MODULES)?;
            modules.insert(hash, module)?;
            if let Some(earlier) = earlier.filter(|kept| kept.deployment.module != hash) {
                let earlier = earlier.deployment.module;
                let mut named = false;
                for entry in apps.iter()? {
                    let (app, record) = entry?;
                    named |=
                        placement_of(app.value(), record.value())?.deployment.module == earlier;
                }
                if !named {
                    modules.remove(earlier.as_str())?;
                }
            }
            // A generation no planner drew (from another planner's store, say)
            // still leaves the counter above it.
            let mut meta = txn.open_table(META)?;
            if next_generation(&meta)? <= placement.generation {
                let next = placement.generation + 1;
                meta.insert(NEXT_GENERATION, next.to_le_bytes().as_slice())?;
            }
            Ok(Recorded::Kept(placement.clone()))
        })
    }

    /// Moves `app`, at the deployment of `generation`, from the worker `expected`
    /// to `worker`, in one transaction, unless it was deployed or moved anew
    /// meanwhile; the app as it is kept now (`None`: no deployment of that name).
    pub fn place_app(
        &self,
        app: &str,
        generation: u64,
        expected: Option<&str>,
        worker: &str,
    ) -> Result<Option<Placement>, StoreError> {
        self.write(|txn| {
            let mut apps = txn.open_table(APPS)?;
            let placed = match apps.get(app)? {
                Some(record) => placement_of(app, record.value())?,
                None => return Ok(None),
            };
            let current = placed.generation == generation && placed.worker.as_deref() == expected;
            if !current || expected == Some(worker) {
                return Ok(Some(placed));
            }
            let moved = Placement {
                worker: Some(worker.to_owned()),
                moves: placed.moves + 1,
                ..placed
            };
            let record = serde_json::to_vec(&moved).expect("placements serialise");
            apps.insert(app, record.as_slice())?;
            Ok(Some(moved))
        })
    }

    /// The deployment of `app`, and where it runs, if it is kept.
    pub fn app(&self, app: &str) -> Result<Option<Placement>, StoreError> {
        let read = || -> Result<Option<Placement>, redb::Error> {
            let txn = self.db.begin_read()?;
            let apps = txn.open_table(APPS)?;
            let record = apps.get(app)?;
            record.map(|r| placement_of(app, r.value())).transpose()
        };
        read().map_err(|e| self.error(e))
    }

    /// Every deployment kept, by app name.
    pub fn deployments(&self) -> Result<Vec<Placement>, StoreError> {
        let read = || -> Result<Vec<Placement>, redb::Error> {
            let txn = self.db.begin_read()?;
            let mut deployments = Vec::new();
            for entry in txn.open_table(APPS)?.iter()? {
                let (app, record) = entry?;
                deployments.push(placement_of(app.value(), record.value())?);
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
    fn write<T>(
        &self,
        change: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let written = || -> Result<T, redb::Error> {
            let txn = self.db.begin_write()?;
            let changed = change(&txn)?;
            txn.commit()?;
            Ok(changed)
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

/// What [`Store::record_app`] made of a deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// It is kept, as this.
    Kept(Placement),
    /// It is of a new name, and [`MAX_DEPLOYMENTS`] are kept.
    Full,
    /// This deployment, of the same generation or a later one, is kept.
    Superseded(Placement),
}

/// The deployment recorded for `app`, and where it runs (a record written before
/// placements were kept is a bare `Deployment`, read with none).
fn placement_of(app: &str, record: &[u8]) -> Result<Placement, redb::Error> {
    serde_json::from_slice(record)
        .map_err(|e| redb::Error::Corrupted(format!("deployment of `{app}`: {e}")))
}

/// The first generation not drawn yet.
fn next_generation(meta: &redb::Table<&str, &[u8]>) -> Result<u64, redb::Error> {
    match meta.get(NEXT_GENERATION)? {
        Some(next) => <[u8; 8]>::try_from(next.value())
            .map(u64::from_le_bytes)
            .map_err(|_| redb::Error::Corrupted("next generation".into())),
        // 0 is a record's from before generations were drawn.
        None => Ok(1),
    }
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

    /// App `name` running `module`, deployed at `generation` on `worker`.
    fn placement(name: &str, module: &str, generation: u64, worker: &str) -> Placement {
        Placement {
            deployment: nimbus_wire::apps::Deployment {
                config: nimbus_wire::apps::AppConfig::new(name),
                module: module.into(),
            },
            generation,
            worker: Some(worker.into()),
            moves: 0,
        }
    }

    /// Records `placement`, which must be kept.
    fn keep(store: &Store, placement: &Placement, module: &[u8]) {
        let kept = store.record_app(placement, module).unwrap();
        assert_eq!(kept, Recorded::Kept(placement.clone()));
    }

    #[test]
    fn deployments_are_kept_with_the_modules_they_name_and_no_others() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            keep(&store, &placement("a", "m1", 1, "w:1"), b"one");
            keep(&store, &placement("b", "m1", 2, "w:1"), b"one");
            // `a` moves on; `b` still names m1.
            keep(&store, &placement("a", "m2", 3, "w:1"), b"two");
            assert_eq!(store.module("m1").unwrap().as_deref(), Some(&b"one"[..]));
            // Once nothing names m1, it goes.
            keep(&store, &placement("b", "m2", 4, "w:1"), b"two");
            assert_eq!(store.module("m1").unwrap(), None);
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.deployments().unwrap(),
            vec![
                placement("a", "m2", 3, "w:1"),
                placement("b", "m2", 4, "w:1")
            ]
        );
        assert_eq!(store.module("m2").unwrap().as_deref(), Some(&b"two"[..]));
    }

    #[test]
    fn generations_only_grow_and_an_older_deployment_never_replaces_a_newer() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = {
            let store = Store::open(dir.path()).unwrap();
            let (first, none) = store.new_deployment("a").unwrap().unwrap();
            assert_eq!(none, None);
            let (second, _) = store.new_deployment("a").unwrap().unwrap();
            assert!(second > first);
            // Two deployments drawn at once: the later one recorded first wins,
            // and the earlier one, recorded after it, is refused.
            keep(&store, &placement("a", "new", second, "w:2"), b"new");
            let refused = store
                .record_app(&placement("a", "old", first, "w:1"), b"old")
                .unwrap();
            assert_eq!(
                refused,
                Recorded::Superseded(placement("a", "new", second, "w:2"))
            );
            assert_eq!(store.module("old").unwrap(), None);
            (first, second)
        };
        // After a restart, no generation is drawn again.
        let store = Store::open(dir.path()).unwrap();
        let (third, placed) = store.new_deployment("a").unwrap().unwrap();
        assert!(third > first && third > second, "{third}");
        assert_eq!(placed, Some(placement("a", "new", second, "w:2")));
    }

    #[test]
    fn an_app_moves_only_from_the_worker_expected_at_its_deployment() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.place_app("a", 1, None, "w:1").unwrap(), None);
        keep(&store, &placement("a", "m", 5, "w:1"), b"m");
        // Two gateways found w:1 lost: the first moves the app, the second is
        // answered with the first one's pick.
        let moved = Placement {
            worker: Some("w:2".into()),
            moves: 1,
            ..placement("a", "m", 5, "w:1")
        };
        let won = store.place_app("a", 5, Some("w:1"), "w:2").unwrap();
        assert_eq!(won.as_ref(), Some(&moved));
        let lost = store.place_app("a", 5, Some("w:1"), "w:3").unwrap();
        assert_eq!(lost.as_ref(), Some(&moved));
        // A placement for an older deployment changes nothing.
        let stale = store.place_app("a", 4, Some("w:2"), "w:3").unwrap();
        assert_eq!(stale.as_ref(), Some(&moved));
        assert_eq!(store.app("a").unwrap(), Some(moved.clone()));
        assert!(moved.is_later_than(&placement("a", "m", 5, "w:1")));
        // A deployment anew replaces the placement with its own.
        keep(&store, &placement("a", "m", 6, "w:3"), b"m");
        assert_eq!(store.app("a").unwrap(), Some(placement("a", "m", 6, "w:3")));
        assert_eq!(store.app("b").unwrap(), None);
    }

    #[test]
    fn a_deployment_kept_before_placements_were_reads_as_placed_nowhere() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let bare = nimbus_wire::apps::Deployment {
            config: nimbus_wire::apps::AppConfig::new("old"),
            module: "m".into(),
        };
        let record = serde_json::to_vec(&bare).unwrap();
        store
            .write(|txn| {
                txn.open_table(APPS)?.insert("old", record.as_slice())?;
                Ok(())
            })
            .unwrap();
        let read = store.app("old").unwrap().unwrap();
        assert_eq!(
            (read.generation, read.worker, read.deployment),
            (0, None, bare)
        );
        // Any deployment drawn from now on is later.
        let (generation, _) = store.new_deployment("old").unwrap().unwrap();
        keep(&store, &placement("old", "m", generation, "w:1"), b"m");
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
                    let name = format!("app{n}");
                    let record = serde_json::to_vec(&placement(&name, "m", 0, "w:1")).unwrap();
                    apps.insert(name.as_str(), record.as_slice())?;
                }
                Ok(())
            })
            .unwrap();
        // A new name is refused before it is placed, and when it is recorded.
        assert_eq!(store.new_deployment("one-more").unwrap(), None);
        let refused = store
            .record_app(&placement("one-more", "m", 2, "w:1"), b"m")
            .unwrap();
        assert_eq!(refused, Recorded::Full);
        assert_eq!(store.module("m").unwrap(), None);
        // An app already kept may still be deployed anew.
        let (generation, _) = store.new_deployment("app7").unwrap().unwrap();
        keep(&store, &placement("app7", "m", generation, "w:1"), b"m");
    }

    #[test]
    fn a_second_planner_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let second = Store::open(dir.path());
        assert!(second.is_err());
    }
}
