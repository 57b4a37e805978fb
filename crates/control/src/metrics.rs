//! The planner's metrics: placement decisions and how long each took. One set per
//! OS process (a planner is one), registered by the binary
//! ([`PlannerMetrics::register`]).

use std::sync::LazyLock;
use std::time::Duration;

use nimbus_telemetry::{Histogram, Outcomes, Telemetry};

/// What the planner counts.
#[derive(Debug)]
pub struct PlannerMetrics {
    placements: Outcomes,
    placement: Histogram,
}

impl PlannerMetrics {
    /// Adds them to `telemetry`.
    pub fn register(&self, telemetry: &Telemetry) {
        telemetry.register(
            "nimbus_placements",
            "Placement decisions, by result (refused: no host had room, or the app's budget was spent)",
            self.placements.family(),
        );
        telemetry.register(
            "nimbus_placement_seconds",
            "Time the planner took to decide a placement",
            self.placement.clone(),
        );
    }

    pub(crate) fn placed(&self, placed: bool, took: Duration) {
        self.placements
            .inc(if placed { "placed" } else { "refused" });
        nimbus_telemetry::observe(&self.placement, took);
    }
}

/// This OS process's planner metrics.
pub fn metrics() -> &'static PlannerMetrics {
    static METRICS: LazyLock<PlannerMetrics> = LazyLock::new(|| PlannerMetrics {
        placements: Outcomes::new("result", &["placed", "refused"]),
        placement: nimbus_telemetry::latency_histogram(),
    });
    &METRICS
}
