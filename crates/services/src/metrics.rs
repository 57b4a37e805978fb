//! The service manager's metrics: invocations by app, handler and outcome with
//! their latency, and swaps of instances out to disk and back. One set per OS
//! process (a node is one), registered by the binary ([`ServiceMetrics::register`]).
//!
//! Label values are bounded: an app label is an app deployed here, a handler label
//! a handler the invocation reached (one the module exports); any other
//! invocation is counted under the handler `-`, so no request can mint series.

use std::sync::LazyLock;
use std::time::Duration;

use nimbus_core::InvokeError;
use nimbus_telemetry::{Counter, Family, Histogram, Labels, Telemetry};
use nimbus_wire::apps::ServiceError;

/// What the service manager counts.
#[derive(Debug)]
pub struct ServiceMetrics {
    invocations: Family<Labels, Counter>,
    durations: Family<Labels, Histogram, fn() -> Histogram>,
    swap_outs: Counter,
    swap_ins: Counter,
}

impl ServiceMetrics {
    /// Adds them to `telemetry`.
    pub fn register(&self, telemetry: &Telemetry) {
        telemetry.register(
            "nimbus_invocations",
            "Invocations of service handlers on this node, by app, handler and outcome (busy: refused with 429)",
            self.invocations.clone(),
        );
        telemetry.register(
            "nimbus_invocation_seconds",
            "Time of invocations that reached their handler, by app and handler",
            self.durations.clone(),
        );
        telemetry.register(
            "nimbus_swap_outs",
            "Service instances swapped out to disk",
            self.swap_outs.clone(),
        );
        telemetry.register(
            "nimbus_swap_ins",
            "Service instances brought back into memory from a snapshot",
            self.swap_ins.clone(),
        );
    }

    /// Counts an invocation of `handler` of `app` (deployed here, if `known`) that
    /// took `took` and ended in `outcome`.
    pub(crate) fn invoked(
        &self,
        app: &str,
        known: bool,
        handler: &str,
        took: Duration,
        outcome: &Result<Vec<u8>, ServiceError>,
    ) {
        let (status, reached) = match outcome {
            Ok(_) => ("ok", true),
            Err(ServiceError::Handler(InvokeError::NoSuchHandler(_))) => ("no_handler", false),
            Err(ServiceError::Handler(_)) => ("error", true),
            Err(ServiceError::Busy { .. }) => ("busy", false),
            Err(ServiceError::TooLarge { .. }) => ("too_large", false),
            Err(ServiceError::UnknownApp(_)) => ("unknown_app", false),
            Err(ServiceError::Unavailable(_)) => ("unavailable", false),
            Err(_) => ("failed", false),
        };
        let app = if known { app } else { "-" };
        let handler = if reached { handler } else { "-" };
        let labels = vec![
            ("app".to_owned(), app.to_owned()),
            ("handler".to_owned(), handler.to_owned()),
        ];
        if reached {
            nimbus_telemetry::observe(&self.durations.get_or_create(&labels), took);
        }
        let mut labels = labels;
        labels.push(("status".to_owned(), status.to_owned()));
        self.invocations.get_or_create(&labels).inc();
    }

    pub(crate) fn swapped_out(&self) {
        self.swap_outs.inc();
    }

    pub(crate) fn swapped_in(&self) {
        self.swap_ins.inc();
    }
}

/// This OS process's service metrics.
pub fn metrics() -> &'static ServiceMetrics {
    static METRICS: LazyLock<ServiceMetrics> = LazyLock::new(|| ServiceMetrics {
        invocations: Family::default(),
        durations: Family::new_with_constructor(nimbus_telemetry::latency_histogram),
        swap_outs: Counter::default(),
        swap_ins: Counter::default(),
    });
    &METRICS
}
