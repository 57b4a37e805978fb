//! The service manager's metrics: invocations by app, handler and outcome with
//! their latency, and swaps of instances out to disk and back. One set per OS
//! process (a node is one), registered by the binary ([`ServiceMetrics::register`]).
//!
//! Label values are bounded: an app label is an app deployed here, a handler label
//! a handler the invocation reached (one the module exports); any other
//! invocation is counted under the handler `-`, so no request can mint series.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use nimbus_core::InvokeError;
use nimbus_telemetry::{Counter, Family, Histogram, Labels, Telemetry};
use nimbus_wire::apps::ServiceError;

/// The most (app, handler) pairs counted apart over the node's life; invocations of
/// any later pair are counted under app and handler `-`.
pub const MAX_SERIES: usize = 4096;

/// How an invocation ended, its `status` label.
const STATUSES: [&str; 8] = [
    "ok",
    "error",
    "no_handler",
    "busy",
    "too_large",
    "unknown_app",
    "unavailable",
    "failed",
];

/// What the service manager counts.
#[derive(Debug)]
pub struct ServiceMetrics {
    invocations: Family<Labels, Counter>,
    durations: Family<Labels, Histogram, fn() -> Histogram>,
    /// The counters and histogram of each (app, handler) pair, held so that counting
    /// an invocation copies no label and looks nothing up in the families.
    pairs: Mutex<Pairs>,
    swap_outs: Counter,
    swap_ins: Counter,
}

#[derive(Debug, Default)]
struct Pairs {
    by_app: HashMap<String, HashMap<String, Arc<Pair>>>,
    count: usize,
}

/// One (app, handler) pair's series.
#[derive(Debug)]
struct Pair {
    statuses: [Counter; STATUSES.len()],
    duration: Histogram,
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
        let pair = self.pair(app, handler);
        let index = STATUSES.iter().position(|s| *s == status).unwrap_or(0);
        pair.statuses[index].inc();
        if reached {
            nimbus_telemetry::observe(&pair.duration, took);
        }
    }

    /// The series of (`app`, `handler`), made on first use while fewer than
    /// [`MAX_SERIES`] pairs are; else those of (`-`, `-`).
    fn pair(&self, app: &str, handler: &str) -> Arc<Pair> {
        let mut pairs = self.pairs.lock().unwrap();
        if let Some(pair) = pairs.by_app.get(app).and_then(|h| h.get(handler)) {
            return pair.clone();
        }
        let (app, handler) = match pairs.count < MAX_SERIES {
            true => (app, handler),
            false => ("-", "-"),
        };
        if let Some(pair) = pairs.by_app.get(app).and_then(|h| h.get(handler)) {
            return pair.clone();
        }
        let labels = |more: &[(&str, &str)]| -> Labels {
            [("app", app), ("handler", handler)]
                .iter()
                .chain(more)
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let pair = Arc::new(Pair {
            statuses: STATUSES.map(|status| {
                self.invocations
                    .get_or_create(&labels(&[("status", status)]))
                    .clone()
            }),
            duration: self.durations.get_or_create(&labels(&[])).clone(),
        });
        pairs.count += 1;
        pairs
            .by_app
            .entry(app.to_owned())
            .or_default()
            .insert(handler.to_owned(), pair.clone());
        pair
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
        pairs: Mutex::default(),
        swap_outs: Counter::default(),
        swap_ins: Counter::default(),
    });
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_past_the_bound_are_counted_under_dashes() {
        let metrics = ServiceMetrics {
            invocations: Family::default(),
            durations: Family::new_with_constructor(nimbus_telemetry::latency_histogram),
            pairs: Mutex::default(),
            swap_outs: Counter::default(),
            swap_ins: Counter::default(),
        };
        let ok = Ok(Vec::new());
        for n in 0..MAX_SERIES + 10 {
            let handler = format!("h{n}");
            metrics.invoked("app", true, &handler, Duration::from_micros(3), &ok);
        }
        metrics.invoked("app", true, "h0", Duration::from_micros(3), &ok);
        let telemetry = Telemetry::new();
        metrics.register(&telemetry);
        let text = telemetry.encode();
        let series = |name: &str| text.lines().filter(|l| l.starts_with(name)).count();
        // Each pair: its 8 statuses. The bound's pairs plus the overflow's.
        assert_eq!(series("nimbus_invocations_total{"), (MAX_SERIES + 1) * 8);
        assert!(
            text.contains("nimbus_invocations_total{app=\"-\",handler=\"-\",status=\"ok\"} 10")
        );
        assert!(
            text.contains("nimbus_invocations_total{app=\"app\",handler=\"h0\",status=\"ok\"} 2")
        );
    }
}
