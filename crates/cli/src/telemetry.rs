//! A node's metrics endpoint (`--metrics-listen`) and what it exports: the layers'
//! own metrics, and its OS process's memory and CPU, read when scraped.

use std::sync::Arc;

use clap::Args;
use nimbus_node::Cluster;
use nimbus_telemetry::{Kind, Sampled, Telemetry};

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
    /// Starts serving `telemetry` if an address was given, and announces where.
    pub(crate) async fn serve(&self, telemetry: &Arc<Telemetry>) -> Result<(), Failure> {
        let Some(address) = &self.address else {
            return Ok(());
        };
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| Failure::new(2, format!("cannot listen on {address}: {e}")))?;
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
    telemetry.register_collector(Sampled::single(
        "process_resident_memory_bytes",
        "Resident memory of this process",
        Kind::Gauge,
        || crate::control::resident_memory().unwrap_or(0) as f64,
    ));
    telemetry.register_collector(Sampled::single(
        "process_cpu_seconds",
        "User and system CPU time of this process",
        Kind::Counter,
        || crate::control::cpu_ticks().unwrap_or(0) as f64 / 100.0,
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
