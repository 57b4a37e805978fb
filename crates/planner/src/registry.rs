//! The planner's registry of worker hosts: who joined, what each reported last, and
//! who went silent. Pure state: time is passed in, so expiry is tested without
//! waiting.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nimbus_core::HostId;

use crate::HostLoad;

/// What a worker says about itself when it joins.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostInfo {
    /// Cores it offers.
    pub cpus: u32,
    /// Memory it offers, in bytes.
    pub memory: u64,
    /// The most processes it admits.
    pub capacity: usize,
    /// Where other nodes reach it (its mesh listener); empty for a host that runs
    /// nothing for others.
    #[serde(default)]
    pub address: String,
}

/// What a worker reports with each heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct HostReport {
    /// Processes admitted (queued or running).
    pub processes: usize,
    /// Processes holding an instance.
    pub instantiated: usize,
    /// Of those, processes blocked in `recv` or `wait`.
    pub waiting: usize,
    /// Memory the worker uses (its resident set), in bytes.
    pub memory_used: u64,
    /// CPU the worker used since its last report, in percent of one core.
    pub cpu_percent: u32,
    /// Bytes it received and sent over the mesh since it started.
    pub network: (u64, u64),
    /// Its processes, by app.
    pub apps: BTreeMap<String, usize>,
    /// Bytes of local-tier state it holds, by app (apps holding none are left out).
    pub local_state: BTreeMap<String, u64>,
}

/// A registered host as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostStatus {
    /// Its id, assigned at registration; the top bits of every pid it mints.
    pub host: HostId,
    /// What it said when it joined.
    pub info: HostInfo,
    /// What it reported last.
    pub report: HostReport,
    /// How long ago it was last heard from, in milliseconds.
    pub silent_ms: u64,
    /// Known from before the planner restarted and not heard from since: nothing
    /// is placed on it until it reports again.
    #[serde(default)]
    pub awaiting_rejoin: bool,
}

/// The host is not (or no longer) registered: it must register again.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("host {0} is not registered (it was silent too long, or never joined)")]
pub struct UnknownHost(pub HostId);

/// No host id is left to assign.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("every host id is in use")]
pub struct RegistryFull;

struct Entry {
    info: HostInfo,
    report: HostReport,
    /// Processes placed here (when, and of which app) that its reports may not count
    /// yet: without them a burst of spawns would all land on one host, and an app
    /// could overrun its budget.
    placed: Vec<(Instant, Option<String>)>,
    heard: Instant,
    /// Restored from the planner's store and not heard from since.
    awaiting_rejoin: bool,
}

/// How long a placement still counts after a report arrives: the report may have
/// been taken before the process reached its host.
const REPORT_LAG: Duration = Duration::from_millis(50);

/// Why the registry could not place a process.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlaceError {
    /// Every host is full.
    #[error(transparent)]
    NoCapacity(#[from] crate::NoCapacity),
    /// The app already runs as many processes as its budget allows, cluster-wide.
    #[error("app {app} is at its budget of {budget} processes across the cluster")]
    OverBudget {
        /// The app.
        app: String,
        /// Its budget.
        budget: usize,
    },
}

/// The hosts that joined and have not gone silent for longer than the timeout.
pub struct Registry {
    hosts: BTreeMap<HostId, Entry>,
    /// Ids are never reused, so a pid never names two hosts; they stop below
    /// [`HostId::BESIDE_CLUSTER`].
    next_id: u32,
    timeout: Duration,
    /// The most processes each app with a budget may run across all hosts.
    budgets: BTreeMap<String, usize>,
}

impl Registry {
    /// An empty registry dropping hosts silent for longer than `timeout`.
    pub fn new(timeout: Duration) -> Registry {
        Registry {
            hosts: BTreeMap::new(),
            next_id: 1,
            timeout,
            budgets: BTreeMap::new(),
        }
    }

    /// A registry as a planner restarted on its store finds it: ids from
    /// `next_id` on are free, and `hosts` joined before. Each of those is listed but
    /// not placed on until it reports again, and expires like any host if it stays
    /// silent for the timeout from `now`.
    pub fn restore(
        timeout: Duration,
        next_id: u32,
        hosts: impl IntoIterator<Item = (HostId, HostInfo)>,
        now: Instant,
    ) -> Registry {
        let mut registry = Registry::new(timeout);
        registry.next_id = next_id.max(1);
        for (host, info) in hosts {
            registry.next_id = registry.next_id.max(host.0 + 1);
            registry.hosts.insert(
                host,
                Entry {
                    info,
                    report: HostReport::default(),
                    placed: Vec::new(),
                    heard: now,
                    awaiting_rejoin: true,
                },
            );
        }
        registry
    }

    /// The first id not yet assigned.
    pub fn next_id(&self) -> u32 {
        self.next_id
    }

    /// Caps the processes `app` may run across all hosts at `processes`.
    pub fn set_budget(&mut self, app: &str, processes: usize) {
        self.budgets.insert(app.to_owned(), processes);
    }

    /// The processes of `app` across all hosts: as reported, plus placed since.
    fn app_processes(&self, app: &str) -> usize {
        self.hosts
            .values()
            .map(|entry| {
                let placed = entry.placed.iter();
                entry.report.apps.get(app).copied().unwrap_or(0)
                    + placed.filter(|(_, of)| of.as_deref() == Some(app)).count()
            })
            .sum()
    }

    /// Adds a host and assigns its id.
    pub fn register(&mut self, info: HostInfo, now: Instant) -> Result<HostId, RegistryFull> {
        let id = HostId(self.next_id);
        if id == HostId::BESIDE_CLUSTER {
            return Err(RegistryFull);
        }
        self.next_id += 1;
        let report = HostReport::default();
        self.hosts.insert(
            id,
            Entry {
                info,
                report,
                placed: Vec::new(),
                heard: now,
                awaiting_rejoin: false,
            },
        );
        Ok(id)
    }

    /// What `host` said when it joined, if it is registered.
    pub fn info(&self, host: HostId) -> Option<&HostInfo> {
        self.hosts.get(&host).map(|entry| &entry.info)
    }

    /// Records a heartbeat. The first of a host restored from before a restart is
    /// its rejoining: then it returns `true`.
    pub fn heartbeat(
        &mut self,
        host: HostId,
        report: HostReport,
        now: Instant,
    ) -> Result<bool, UnknownHost> {
        let entry = self.hosts.get_mut(&host).ok_or(UnknownHost(host))?;
        entry.report = report;
        entry
            .placed
            .retain(|(when, _)| now.saturating_duration_since(*when) < REPORT_LAG);
        entry.heard = now;
        Ok(std::mem::take(&mut entry.awaiting_rejoin))
    }

    /// Drops the hosts silent for longer than the timeout; returns them.
    pub fn expire(&mut self, now: Instant) -> Vec<HostId> {
        let silent: Vec<HostId> = self
            .hosts
            .iter()
            .filter(|(_, entry)| now.duration_since(entry.heard) > self.timeout)
            .map(|(&host, _)| host)
            .collect();
        for host in &silent {
            self.hosts.remove(host);
        }
        silent
    }

    /// Every registered host, by id.
    pub fn hosts(&self, now: Instant) -> Vec<HostStatus> {
        self.hosts
            .iter()
            .map(|(&host, entry)| HostStatus {
                host,
                info: entry.info.clone(),
                report: entry.report.clone(),
                silent_ms: now.duration_since(entry.heard).as_millis() as u64,
                awaiting_rejoin: entry.awaiting_rejoin,
            })
            .collect()
    }

    /// The hosts' loads for placing a process of `app`, for [`crate::place`]: what
    /// each reported plus what was placed on it since.
    /// Hosts awaiting their rejoin are left out: they may not be there.
    pub fn loads(&self, app: Option<&str>) -> Vec<HostLoad> {
        self.hosts
            .iter()
            .filter(|(_, entry)| !entry.awaiting_rejoin)
            .map(|(&host, entry)| HostLoad {
                host,
                processes: entry.report.processes + entry.placed.len(),
                capacity: entry.info.capacity,
                memory_left: entry.report.memory_used < entry.info.memory,
                has_app: app.is_some_and(|app| {
                    entry.report.apps.contains_key(app)
                        || entry.report.local_state.contains_key(app)
                }),
            })
            .collect()
    }

    /// Places a process of `app` by [`crate::place`], within the app's budget, and
    /// counts it against the chosen host (and the app) until a report of that host
    /// taken after it arrives.
    /// Returns the host and its address.
    pub fn place(
        &mut self,
        near: Option<HostId>,
        app: Option<&str>,
        now: Instant,
    ) -> Result<(HostId, String), PlaceError> {
        if let Some(app) = app
            && let Some(&budget) = self.budgets.get(app)
            && self.app_processes(app) >= budget
        {
            return Err(PlaceError::OverBudget {
                app: app.to_owned(),
                budget,
            });
        }
        let host = crate::place(&self.loads(app), near)?;
        let entry = self
            .hosts
            .get_mut(&host)
            .expect("placed on a registered host");
        entry.placed.push((now, app.map(str::to_owned)));
        Ok((host, entry.info.address.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> HostInfo {
        HostInfo {
            cpus: 2,
            memory: 1 << 30,
            capacity: 100,
            address: String::new(),
        }
    }

    #[test]
    fn hosts_join_report_and_expire_when_silent() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut registry = Registry::new(3 * second);
        let a = registry.register(info(), start).unwrap();
        let b = registry.register(info(), start).unwrap();
        assert_eq!((a, b), (HostId(1), HostId(2)));
        let report = HostReport {
            processes: 7,
            instantiated: 5,
            waiting: 1,
            memory_used: 1 << 20,
            apps: [("app".to_owned(), 7)].into(),
            ..HostReport::default()
        };
        registry
            .heartbeat(b, report.clone(), start + 2 * second)
            .unwrap();
        assert_eq!(registry.expire(start + 3 * second), []);
        assert_eq!(registry.expire(start + 4 * second), [a]);
        let hosts = registry.hosts(start + 4 * second);
        assert_eq!(hosts.len(), 1);
        assert_eq!(
            (hosts[0].host, &hosts[0].report, hosts[0].silent_ms),
            (b, &report, 2000)
        );
        let load = registry.loads(Some("app"))[0];
        assert_eq!(
            (load.processes, load.has_app, load.memory_left),
            (7, true, true)
        );
        assert!(!registry.loads(Some("other"))[0].has_app);
        // Holding an app's local state counts as having the app.
        let holding = HostReport {
            local_state: [("other".to_owned(), 10)].into(),
            ..report.clone()
        };
        registry.heartbeat(b, holding, start + 4 * second).unwrap();
        assert!(registry.loads(Some("other"))[0].has_app);
        // An expired host must register again, and gets a new id.
        assert_eq!(
            registry.heartbeat(a, report.clone(), start + 4 * second),
            Err(UnknownHost(a))
        );
        assert_eq!(registry.heartbeat(b, report.clone(), start), Ok(false));
        assert_eq!(registry.register(info(), start).unwrap(), HostId(3));
    }

    #[test]
    fn an_app_at_its_budget_is_not_placed_until_it_shrinks() {
        let now = Instant::now();
        let mut registry = Registry::new(Duration::from_secs(3));
        let a = registry.register(info(), now).unwrap();
        let b = registry.register(info(), now).unwrap();
        registry.set_budget("small", 3);
        for _ in 0..3 {
            registry.place(None, Some("small"), now).unwrap();
        }
        let over = PlaceError::OverBudget {
            app: "small".into(),
            budget: 3,
        };
        assert_eq!(registry.place(None, Some("small"), now), Err(over.clone()));
        // Other apps are not held back.
        assert!(registry.place(None, Some("other"), now).is_ok());
        // A report taken before the placements reached the hosts does not forget them.
        registry.heartbeat(a, HostReport::default(), now).unwrap();
        assert_eq!(registry.place(None, Some("small"), now), Err(over.clone()));
        // Later reports say where the app runs now: one process has ended.
        let later = now + Duration::from_secs(1);
        for (host, count) in [(a, 1), (b, 1)] {
            let report = HostReport {
                apps: [("small".to_owned(), count)].into(),
                ..HostReport::default()
            };
            registry.heartbeat(host, report, later).unwrap();
        }
        assert!(registry.place(None, Some("small"), later).is_ok());
        assert_eq!(registry.place(None, Some("small"), later), Err(over));
    }

    #[test]
    fn the_id_beside_a_cluster_is_never_assigned() {
        let now = Instant::now();
        let mut registry = Registry::new(Duration::from_secs(3));
        registry.next_id = HostId::BESIDE_CLUSTER.0 - 2;
        for expected in HostId::BESIDE_CLUSTER.0 - 2..HostId::BESIDE_CLUSTER.0 {
            assert_eq!(registry.register(info(), now), Ok(HostId(expected)));
        }
        assert_eq!(registry.register(info(), now), Err(RegistryFull));
    }

    #[test]
    fn a_restored_host_is_placed_on_only_once_it_reports_again() {
        let now = Instant::now();
        let timeout = Duration::from_secs(3);
        let hosts = [(HostId(4), info()), (HostId(7), info())];
        let mut registry = Registry::restore(timeout, 5, hosts, now);
        // Ids go on after the highest ever assigned, whichever was stored.
        assert_eq!(registry.next_id(), 8);
        let listed = registry.hosts(now);
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().all(|host| host.awaiting_rejoin));
        assert!(registry.place(None, None, now).is_err());
        assert_eq!(
            registry.heartbeat(HostId(7), HostReport::default(), now),
            Ok(true)
        );
        for _ in 0..3 {
            assert_eq!(registry.place(None, None, now).unwrap().0, HostId(7));
        }
        // The one that never comes back expires as any silent host does.
        let later = now + 2 * timeout;
        registry
            .heartbeat(HostId(7), HostReport::default(), later)
            .unwrap();
        assert_eq!(registry.expire(later), [HostId(4)]);
        assert_eq!(registry.register(info(), later), Ok(HostId(8)));
    }

    #[test]
    fn placements_count_until_the_next_report() {
        let now = Instant::now();
        let mut registry = Registry::new(Duration::from_secs(3));
        let a = registry.register(info(), now).unwrap();
        let b = registry.register(info(), now).unwrap();
        // Without counting its own placements the planner would pick `a` every time.
        let picks: Vec<HostId> = (0..4)
            .map(|_| registry.place(Some(a), None, now).unwrap().0)
            .collect();
        assert_eq!(picks, [a, b, a, b]);
        registry.heartbeat(a, HostReport::default(), now).unwrap();
        assert_eq!(registry.place(None, None, now).unwrap().0, a);
        // A host that reports its memory used up takes no more.
        let exhausted = HostReport {
            memory_used: info().memory,
            ..HostReport::default()
        };
        registry.heartbeat(a, exhausted, now).unwrap();
        assert_eq!(registry.place(Some(a), None, now).unwrap().0, b);
    }
}
