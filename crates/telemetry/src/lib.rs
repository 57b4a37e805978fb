//! What a node tells its operators: its metrics, in the Prometheus text format
//! (OpenMetrics 1.0), and its health, served over HTTP on the node's metrics address
//! (`GET /metrics`, `/healthz`, `/readyz`).
//!
//! Owns: one registry per node ([`Telemetry`]), the scrape-time collectors that read a
//! layer's state only when scraped ([`Sampled`]), the metric conventions (names in
//! `snake_case` with their unit, `_total` on counters, seconds for durations), and
//! the endpoint ([`serve`]). Must not: know what a node does. The layers own their
//! metrics (counters and histograms of `prometheus-client`, updated where things
//! happen) and the binary registers them here; nothing here calls back into a layer
//! except through the closures it was given.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Metric, Registry};

mod outcomes;

pub use outcomes::Outcomes;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::histogram::Histogram;

/// The media type of a scrape's answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A metric's labels: name and value pairs.
pub type Labels = Vec<(String, String)>;

/// Histogram buckets for latencies, in seconds: 1 µs to about 17 s, doubling.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(1e-6, 2.0, 25)
}

/// A latency histogram with [`latency_buckets`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// Records `elapsed` into `histogram`, in seconds.
pub fn observe(histogram: &Histogram, elapsed: Duration) {
    histogram.observe(elapsed.as_secs_f64());
}

/// A node's metrics and health.
#[derive(Debug, Default)]
pub struct Telemetry {
    registry: RwLock<Registry>,
    ready: AtomicBool,
    /// Held while a scrape encodes: collectors walk process tables, so scrapes take
    /// turns rather than pile up on blocking threads.
    encoding: tokio::sync::Mutex<()>,
}

impl Telemetry {
    /// An empty registry; the node is not ready until [`Telemetry::set_ready`].
    pub fn new() -> Arc<Telemetry> {
        Arc::default()
    }

    /// Registers `metric` as `name` (which must carry its unit, and no `_total`: the
    /// encoding adds that to counters).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry.write().unwrap().register(name, help, metric);
    }

    /// Registers a collector read at every scrape.
    pub fn register_collector(&self, collector: impl Collector) {
        self.registry
            .write()
            .unwrap()
            .register_collector(Box::new(collector));
    }

    /// Says whether the node serves (`/readyz` answers 200 once it does).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Every metric, in the text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry.read().unwrap())
            .expect("writing to a String cannot fail");
        text
    }
}

/// Whether a [`Sampled`] metric only grows (a counter) or goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that only grows (its name gets `_total`).
    Counter,
    /// A value that goes up and down.
    Gauge,
}

/// A metric read from a layer's own state when scraped (a process count, bytes sent
/// so far), so that nothing is kept up to date between scrapes.
pub struct Sampled {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    read: Box<dyn Fn() -> Vec<(Labels, f64)> + Send + Sync>,
}

impl Sampled {
    /// A metric `name` of `kind` whose samples, one per label set, `read` gives.
    pub fn new(
        name: &'static str,
        help: &'static str,
        kind: Kind,
        read: impl Fn() -> Vec<(Labels, f64)> + Send + Sync + 'static,
    ) -> Sampled {
        Sampled {
            name,
            help,
            kind,
            read: Box::new(read),
        }
    }

    /// A metric with one sample and no labels.
    pub fn single(
        name: &'static str,
        help: &'static str,
        kind: Kind,
        read: impl Fn() -> f64 + Send + Sync + 'static,
    ) -> Sampled {
        Sampled::new(name, help, kind, move || vec![(Vec::new(), read())])
    }
}

impl std::fmt::Debug for Sampled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampled").field("name", &self.name).finish()
    }
}

impl Collector for Sampled {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let metric_type = match self.kind {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
        };
        let mut family = encoder.encode_descriptor(self.name, self.help, None, metric_type)?;
        for (labels, value) in (self.read)() {
            let sample = family.encode_family(&labels)?;
            match self.kind {
                Kind::Counter => ConstCounter::new(value).encode(sample)?,
                Kind::Gauge => ConstGauge::new(value).encode(sample)?,
            }
        }
        Ok(())
    }
}

/// Serves `telemetry` on `listener` forever: `/metrics` (the text format), `/healthz`
/// (200 while the process runs: a liveness probe) and `/readyz` (200 once the node
/// serves, 503 before: a readiness probe).
pub async fn serve(listener: tokio::net::TcpListener, telemetry: Arc<Telemetry>) -> Infallible {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(telemetry);
    // axum's accept loop waits and retries on errors itself; should it end anyway,
    // the node goes on without its endpoint rather than ending.
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(%error, "metrics endpoint stopped");
    }
    std::future::pending().await
}

async fn metrics(State(telemetry): State<Arc<Telemetry>>) -> impl IntoResponse {
    let turn = telemetry.encoding.lock().await;
    // Collectors read process tables: off the async threads for a big node.
    let encoding = telemetry.clone();
    let text = tokio::task::spawn_blocking(move || encoding.encode()).await;
    drop(turn);
    match text {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn ready(State(telemetry): State<Arc<Telemetry>>) -> impl IntoResponse {
    if telemetry.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_and_sampled_metrics_are_encoded_with_their_conventions() {
        let telemetry = Telemetry::new();
        let spawns = Counter::<u64>::default();
        telemetry.register("nimbus_spawns", "Processes started", spawns.clone());
        let latency = latency_histogram();
        telemetry.register("nimbus_spawn_seconds", "Start latency", latency.clone());
        telemetry.register_collector(Sampled::new(
            "nimbus_processes",
            "Processes by state",
            Kind::Gauge,
            || {
                vec![
                    (vec![("state".into(), "running".into())], 3.0),
                    (vec![("state".into(), "waiting".into())], 1.0),
                ]
            },
        ));
        telemetry.register_collector(Sampled::single(
            "nimbus_mesh_sent_bytes",
            "Bytes sent",
            Kind::Counter,
            || 42.0,
        ));
        spawns.inc_by(5);
        observe(&latency, Duration::from_micros(5));
        let text = telemetry.encode();
        for line in [
            "# TYPE nimbus_spawns counter",
            "nimbus_spawns_total 5",
            "nimbus_spawn_seconds_count 1",
            "nimbus_processes{state=\"running\"} 3",
            "nimbus_processes{state=\"waiting\"} 1",
            "nimbus_mesh_sent_bytes_total 42",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(line)),
                "{line} in\n{text}"
            );
        }
    }

    #[tokio::test]
    async fn the_endpoint_serves_metrics_liveness_and_readiness() {
        let telemetry = Telemetry::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, telemetry.clone()));
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            answer
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        telemetry.set_ready(true);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        let metrics = get("/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains(CONTENT_TYPE), "{metrics}");
        assert!(metrics.contains("# EOF"), "{metrics}");
    }
}
