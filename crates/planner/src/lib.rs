//! Decides where processes run.
//!
//! Owns: the placement policy, a pure function of the hosts' reported load, so it
//! can be tested and benchmarked without running anything; and the registry of
//! worker hosts (joins, heartbeats, expiry of silent hosts), pure state with time
//! passed in.
//!
//! Must not: start processes, hold a connection to a host, or depend on the
//! runtime. Callers gather loads, ask for a decision, and act on it; the network
//! around the registry is the control crate's.

mod registry;

pub use registry::{
    HostInfo, HostReport, HostStatus, PlaceError, Registry, RegistryFull, UnknownHost,
};

use nimbus_core::HostId;

/// A host's load as the planner sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostLoad {
    /// Which host.
    pub host: HostId,
    /// Processes admitted there (queued or running).
    pub processes: usize,
    /// The most processes it admits.
    pub capacity: usize,
    /// Whether it has memory left (as far as its reports tell).
    pub memory_left: bool,
    /// Whether it already runs processes of the app being placed or holds some of
    /// the app's local state.
    pub has_app: bool,
}

impl HostLoad {
    /// A host with nothing known but its process count and capacity.
    pub fn new(host: HostId, processes: usize, capacity: usize) -> HostLoad {
        HostLoad {
            host,
            processes,
            capacity,
            memory_left: true,
            has_app: false,
        }
    }

    fn free(&self) -> usize {
        if self.memory_left {
            self.capacity.saturating_sub(self.processes)
        } else {
            0
        }
    }
}

/// No host can take the process.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
#[error("no host has room for another process ({hosts} hosts, all full)")]
pub struct NoCapacity {
    /// How many hosts were considered.
    pub hosts: usize,
}

/// Picks the host for a new process among those with room and memory left: the one
/// with the most free room (spreading work over cores); on a tie one that already
/// runs the app or holds its local state (its modules compiled, its state at memory
/// speed), then the `near` host
/// (where the parent runs: locality), then the lowest id.
pub fn place(hosts: &[HostLoad], near: Option<HostId>) -> Result<HostId, NoCapacity> {
    hosts
        .iter()
        .filter(|h| h.free() > 0)
        .max_by_key(|h| {
            (
                h.free(),
                h.has_app,
                Some(h.host) == near,
                std::cmp::Reverse(h.host),
            )
        })
        .map(|h| h.host)
        .ok_or(NoCapacity { hosts: hosts.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(host: u32, processes: usize, capacity: usize) -> HostLoad {
        HostLoad::new(HostId(host), processes, capacity)
    }

    #[test]
    fn table_of_decisions() {
        // (hosts, near, expected)
        let cases: &[(&[HostLoad], Option<u32>, Option<u32>)] = &[
            (&[load(1, 0, 10)], None, Some(1)),
            (&[load(1, 5, 10), load(2, 1, 10)], Some(1), Some(2)),
            (&[load(1, 3, 10), load(2, 3, 10)], Some(2), Some(2)),
            (&[load(1, 3, 10), load(2, 3, 10)], None, Some(1)),
            (&[load(1, 10, 10), load(2, 10, 10)], Some(1), None),
            (&[load(1, 10, 10), load(2, 9, 10)], Some(1), Some(2)),
            (&[], None, None),
        ];
        for (hosts, near, expected) in cases {
            let got = place(hosts, near.map(HostId)).ok().map(|h| h.0);
            assert_eq!(got, *expected, "hosts {hosts:?} near {near:?}");
        }
    }

    #[test]
    fn prefers_hosts_running_the_app_and_skips_those_out_of_memory() {
        let with_app = HostLoad {
            has_app: true,
            ..load(3, 3, 10)
        };
        let hosts = [load(1, 3, 10), load(2, 3, 10), with_app];
        assert_eq!(place(&hosts, Some(HostId(1))), Ok(HostId(3)));
        let full = HostLoad {
            memory_left: false,
            ..load(1, 0, 10)
        };
        assert_eq!(place(&[full, load(2, 9, 10)], None), Ok(HostId(2)));
        assert!(place(&[full], None).is_err());
    }

    #[test]
    fn spreads_children_evenly() {
        let mut hosts = vec![load(1, 0, 100), load(2, 0, 100), load(3, 0, 100)];
        for _ in 0..30 {
            let chosen = place(&hosts, Some(HostId(1))).unwrap();
            hosts
                .iter_mut()
                .find(|h| h.host == chosen)
                .unwrap()
                .processes += 1;
        }
        assert!(hosts.iter().all(|h| h.processes == 10), "{hosts:?}");
    }
}
