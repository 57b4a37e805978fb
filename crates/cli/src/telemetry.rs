//! A node's metrics endpoint (`--metrics-listen`) and what it exports: the layers'
//! own metrics, and its OS process's memory and CPU, read when scraped.

use std::sync::Arc;

use clap::Args;
use nimbus_node::Cluster;
use nimbus_telemetry::{Kind, Labels, Sampled, Telemetry};

use crate::Failure;

/// Where a node serves its metrics and health.
#[derive(Args, Clone, Default)]
pub(crate) struct MetricsListen {
    /// Serve Prometheus metrics (`/metrics`) and health probes (`/healthz`,
    /// `/readyz`) over HTTP on this address (port 0: any free port; default: none).
    #[arg(
        long = "metrics-listen",
        value_name = "ADDR",
        env = "NIMBUS_METRICS_LISTEN"
    )]
    address: Option<String>,
}

impl MetricsListen {
    /// Binds the address if one was given: first thing, so that a taken port fails
    /// the node before it joins or announces anything.
    pub(crate) async fn bind(&self) -> Result<MetricsListener, Failure> {
        let Some(address) = &self.address else {
            return Ok(MetricsListener(None));
        };
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| Failure::new(2, format!("cannot listen on {address}: {e}")))?;
        Ok(MetricsListener(Some(listener)))
    }
}

/// The bound metrics address, if the node serves one.
pub(crate) struct MetricsListener(Option<tokio::net::TcpListener>);

impl MetricsListener {
    /// Serves `telemetry` on it and announces where; `telemetry` is ready from now.
    pub(crate) fn serve(self, telemetry: &Arc<Telemetry>) -> Result<(), Failure> {
        telemetry.set_ready(true);
        let Some(listener) = self.0 else {
            return Ok(());
        };
        let bound = listener
            .local_addr()
            .map_err(|e| Failure::new(nimbus_core::exit_code::INTERNAL, e.to_string()))?;
        tokio::spawn(nimbus_telemetry::serve(listener, telemetry.clone()));
        crate::announce(format_args!("nimbus: metrics listening on http://{bound}"));
        Ok(())
    }
}

/// What every node exports about its own OS process.
fn process_metrics(telemetry: &Telemetry) {
    // A reading of /proc that fails gives no sample, never a counter reset to 0.
    telemetry.register_collector(Sampled::new(
        "process_resident_memory_bytes",
        "Resident memory of this process",
        Kind::Gauge,
        || unlabelled(crate::control::resident_memory().map(|bytes| bytes as f64)),
    ));
    telemetry.register_collector(Sampled::new(
        "process_cpu_seconds",
        "User and system CPU time of this process",
        Kind::Counter,
        || unlabelled(crate::control::cpu_ticks().map(|ticks| ticks as f64 / 100.0)),
    ));
}

/// The metrics of a node running processes (a worker, or `nimbus up` on its own):
/// its hosts' and its services' metrics, and its own process's.
pub(crate) fn node(cluster: &Arc<Cluster>) -> Arc<Telemetry> {
    let telemetry = Telemetry::new();
    process_metrics(&telemetry);
    nimbus_node::register_metrics(&telemetry, cluster);
    nimbus_services::metrics().register(&telemetry);
    telemetry
}

/// The metrics of a planner: its placements, and its own process.
pub(crate) fn planner() -> Arc<Telemetry> {
    let telemetry = Telemetry::new();
    process_metrics(&telemetry);
    nimbus_control::metrics().register(&telemetry);
    telemetry
}

/// One sample without labels, or none.
fn unlabelled(value: Option<f64>) -> Vec<(Labels, f64)> {
    value.map(|value| (Vec::new(), value)).into_iter().collect()
}
