//! The planner crate's types to and from their wire form.

use nimbus_core::HostId;
use nimbus_planner::{HostInfo, HostReport, HostStatus};
use nimbus_wire::control::v1 as wire;

pub(crate) fn info_to_wire(info: &HostInfo) -> wire::HostInfo {
    wire::HostInfo {
        cpus: info.cpus,
        memory: info.memory,
        capacity: info.capacity as u64,
        address: info.address.clone(),
    }
}

pub(crate) fn info_from_wire(info: wire::HostInfo) -> HostInfo {
    HostInfo {
        cpus: info.cpus,
        memory: info.memory,
        capacity: usize::try_from(info.capacity).unwrap_or(usize::MAX),
        address: info.address,
    }
}

pub(crate) fn report_to_wire(report: &HostReport) -> wire::HostReport {
    let counts = |map: &std::collections::BTreeMap<String, usize>| {
        map.iter()
            .map(|(app, &n)| (app.clone(), n as u64))
            .collect()
    };
    wire::HostReport {
        processes: report.processes as u64,
        instantiated: report.instantiated as u64,
        waiting: report.waiting as u64,
        memory_used: report.memory_used,
        cpu_percent: report.cpu_percent,
        network_in: report.network.0,
        network_out: report.network.1,
        apps: counts(&report.apps),
        local_state: report.local_state.clone().into_iter().collect(),
    }
}

pub(crate) fn report_from_wire(report: wire::HostReport) -> HostReport {
    let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    HostReport {
        processes: count(report.processes),
        instantiated: count(report.instantiated),
        waiting: count(report.waiting),
        memory_used: report.memory_used,
        cpu_percent: report.cpu_percent,
        network: (report.network_in, report.network_out),
        apps: report
            .apps
            .into_iter()
            .map(|(app, n)| (app, count(n)))
            .collect(),
        local_state: report.local_state.into_iter().collect(),
    }
}

pub(crate) fn status_to_wire(status: &HostStatus) -> wire::HostStatus {
    wire::HostStatus {
        host: status.host.0,
        info: Some(info_to_wire(&status.info)),
        report: Some(report_to_wire(&status.report)),
        silent_ms: status.silent_ms,
        awaiting_rejoin: status.awaiting_rejoin,
    }
}

pub(crate) fn status_from_wire(status: wire::HostStatus) -> HostStatus {
    HostStatus {
        host: HostId(status.host),
        info: info_from_wire(status.info.unwrap_or_default()),
        report: report_from_wire(status.report.unwrap_or_default()),
        silent_ms: status.silent_ms,
        awaiting_rejoin: status.awaiting_rejoin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_survive_the_wire() {
        let status = HostStatus {
            host: HostId(9),
            info: HostInfo {
                cpus: 4,
                memory: 8 << 30,
                capacity: 1000,
                address: "127.0.0.1:9".into(),
            },
            report: HostReport {
                processes: 3,
                instantiated: 2,
                waiting: 1,
                memory_used: 5 << 20,
                cpu_percent: 40,
                network: (100, 200),
                apps: [("app".to_owned(), 3)].into(),
                local_state: [("app".to_owned(), 64)].into(),
            },
            silent_ms: 12,
            awaiting_rejoin: true,
        };
        assert_eq!(status_from_wire(status_to_wire(&status)), status);
    }
}
