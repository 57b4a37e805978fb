//! The node's metrics: processes started and ended on this OS process's hosts, and
//! how long starts waited for an instance slot (one set per OS process, a node being
//! one); and the gauges read from a cluster when scraped: its processes by state and
//! by app, its mesh traffic. The binary registers them ([`register`]).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use nimbus_core::{ExitStatus, Failure};
use nimbus_telemetry::{Counter, Histogram, Kind, Outcomes, Sampled, Telemetry};

use crate::Cluster;

/// What the hosts of this OS process count.
#[derive(Debug)]
pub struct NodeMetrics {
    started: Counter,
    ended: Outcomes,
    admission: Histogram,
}

const OUTCOMES: &[&str] = &[
    "exited",
    "trap",
    "memory_limit",
    "deadline",
    "load",
    "killed",
    "host_lost",
];

impl NodeMetrics {
    fn register(&self, telemetry: &Telemetry) {
        telemetry.register(
            "nimbus_processes_started",
            "Processes started on this node",
            self.started.clone(),
        );
        telemetry.register(
            "nimbus_processes_ended",
            "Processes ended on this node, by how they ended",
            self.ended.family(),
        );
        telemetry.register(
            "nimbus_process_admission_seconds",
            "Time from a process's start to its holding an instance slot (queued while every slot is taken)",
            self.admission.clone(),
        );
    }

    pub(crate) fn started(&self) {
        self.started.inc();
    }

    pub(crate) fn admitted_after(&self, waited: Duration) {
        nimbus_telemetry::observe(&self.admission, waited);
    }

    pub(crate) fn ended(&self, status: &ExitStatus) {
        self.ended.inc(match status {
            ExitStatus::Exited(_) => "exited",
            ExitStatus::Failed(Failure::Trap(_)) => "trap",
            ExitStatus::Failed(Failure::MemoryLimit { .. }) => "memory_limit",
            ExitStatus::Failed(Failure::Deadline(_)) => "deadline",
            ExitStatus::Failed(Failure::Load(_)) => "load",
            ExitStatus::Failed(Failure::Killed) => "killed",
            ExitStatus::Failed(Failure::HostLost) => "host_lost",
        });
    }
}

/// This OS process's node metrics.
pub fn metrics() -> &'static NodeMetrics {
    static METRICS: LazyLock<NodeMetrics> = LazyLock::new(|| NodeMetrics {
        started: Counter::default(),
        ended: Outcomes::new("outcome", OUTCOMES),
        admission: nimbus_telemetry::latency_histogram(),
    });
    &METRICS
}

/// Adds this OS process's node metrics to `telemetry`, and gauges read from
/// `cluster` at every scrape.
pub fn register(telemetry: &Telemetry, cluster: &Arc<Cluster>) {
    metrics().register(telemetry);
    let by_state = cluster.clone();
    telemetry.register_collector(Sampled::new(
        "nimbus_processes",
        "Processes on this node: queued for an instance slot, running, or waiting (blocked in recv or wait)",
        Kind::Gauge,
        move || {
            let load = by_state.runtime_load();
            let state = |name: &str| vec![("state".to_owned(), name.to_owned())];
            // Read apart, so a process between the two may count in both or neither.
            let running = load.instantiated.saturating_sub(load.waiting);
            vec![
                (state("queued"), load.queued as f64),
                (state("running"), running as f64),
                (state("waiting"), load.waiting as f64),
            ]
        },
    ));
    let by_app = cluster.clone();
    telemetry.register_collector(Sampled::new(
        "nimbus_app_processes",
        "Processes on this node, by app",
        Kind::Gauge,
        move || {
            by_app
                .apps()
                .into_iter()
                .map(|(app, count)| (vec![("app".to_owned(), app)], count as f64))
                .collect()
        },
    ));
    for (name, help, pick) in [
        (
            "nimbus_mesh_received_bytes",
            "Bytes received over the mesh",
            0,
        ),
        ("nimbus_mesh_sent_bytes", "Bytes sent over the mesh", 1),
    ] {
        telemetry.register_collector(Sampled::single(name, help, Kind::Counter, move || {
            let (received, sent) = nimbus_mesh::traffic();
            [received, sent][pick] as f64
        }));
    }
}
