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
    /// Processes placed here since its last report, which that report may not
    /// count yet: without them a burst of spawns would all land on one host.
    placed_since_report: usize,
    heard: Instant,
}

/// The hosts that joined and have not gone silent for longer than the timeout.
pub struct Registry {
    hosts: BTreeMap<HostId, Entry>,
    /// Ids are never reused, so a pid never names two hosts; they stop below
    /// [`HostId::BESIDE_CLUSTER`].
    next_id: u16,
    timeout: Duration,
}

impl Registry {
    /// An empty registry dropping hosts silent for longer than `timeout`.
    pub fn new(timeout: Duration) -> Registry {
        Registry {
            hosts: BTreeMap::new(),
            next_id: 1,
            timeout,
        }
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
                placed_since_report: 0,
                heard: now,
            },
        );
        Ok(id)
    }

    /// Records a heartbeat.
    pub fn heartbeat(
        &mut self,
        host: HostId,
        report: HostReport,
        now: Instant,
    ) -> Result<(), UnknownHost> {
        let entry = self.hosts.get_mut(&host).ok_or(UnknownHost(host))?;
        entry.report = report;
        entry.placed_since_report = 0;
        entry.heard = now;
        Ok(())
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
            })
            .collect()
    }

    /// The hosts' loads for placing a process of `app`, for [`crate::place`]: what
    /// each reported plus what was placed on it since.
    pub fn loads(&self, app: Option<&str>) -> Vec<HostLoad> {
        self.hosts
            .iter()
            .map(|(&host, entry)| HostLoad {
                host,
                processes: entry.report.processes + entry.placed_since_report,
                capacity: entry.info.capacity,
                memory_left: entry.report.memory_used < entry.info.memory,
                has_app: app.is_some_and(|app| {
                    entry.report.apps.contains_key(app)
                        || entry.report.local_state.contains_key(app)
                }),
            })
            .collect()
    }

    /// Places a process of `app` by [`crate::place`] and counts it against the
    /// chosen host until that host's next report. Returns the host and its address.
    pub fn place(
        &mut self,
        near: Option<HostId>,
        app: Option<&str>,
    ) -> Result<(HostId, String), crate::NoCapacity> {
        let host = crate::place(&self.loads(app), near)?;
        let entry = self
            .hosts
            .get_mut(&host)
            .expect("placed on a registered host");
        entry.placed_since_report += 1;
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
        assert_eq!(registry.register(info(), start).unwrap(), HostId(3));
    }

    #[test]
    fn the_id_beside_a_cluster_is_never_assigned() {
        let now = Instant::now();
        let mut registry = Registry::new(Duration::from_secs(3));
        for expected in 1..u16::MAX {
            assert_eq!(registry.register(info(), now), Ok(HostId(expected)));
        }
        assert_eq!(registry.register(info(), now), Err(RegistryFull));
    }

    #[test]
    fn placements_count_until_the_next_report() {
        let now = Instant::now();
        let mut registry = Registry::new(Duration::from_secs(3));
        let a = registry.register(info(), now).unwrap();
        let b = registry.register(info(), now).unwrap();
        // Without counting its own placements the planner would pick `a` every time.
        let picks: Vec<HostId> = (0..4)
            .map(|_| registry.place(Some(a), None).unwrap().0)
            .collect();
        assert_eq!(picks, [a, b, a, b]);
        registry.heartbeat(a, HostReport::default(), now).unwrap();
        assert_eq!(registry.place(None, None).unwrap().0, a);
        // A host that reports its memory used up takes no more.
        let exhausted = HostReport {
            memory_used: info().memory,
            ..HostReport::default()
        };
        registry.heartbeat(a, exhausted, now).unwrap();
        assert_eq!(registry.place(Some(a), None).unwrap().0, b);
    }
}
