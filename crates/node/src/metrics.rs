//! The node's metrics: processes started and ended on this OS process's hosts, and
//! how long starts waited for an instance slot. One set per OS process (a node is
//! one), registered by the binary ([`NodeMetrics::register`]).

use std::sync::LazyLock;
use std::time::Duration;

use nimbus_core::{ExitStatus, Failure};
use nimbus_telemetry::{Counter, Histogram, Outcomes, Telemetry};

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
    /// Adds them to `telemetry`.
    pub fn register(&self, telemetry: &Telemetry) {
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
