//! A `/metrics` scrape of a node holding many processes: N processes parked in
//! `recv` on one host, then the node's metrics encoded as a scrape does (every
//! counter and histogram, and the gauges read from the process table then). Beside
//! it, the same run's listing of the processes that `nimbus ps` asks a worker for.
//!
//! `cargo run --release -p nimbus-bench --bin scrape [PROCESSES]` (default 100,000)

use nimbus_bench::{Bench, IDLE_IN_RECV, Samples, raise_map_count, report, root, wat};
use nimbus_runtime::Output;
use nimbus_telemetry::Telemetry;

const SCRAPES: usize = 50;

fn main() {
    nimbus_bench::on_worker(measure());
}

async fn measure() {
    let processes = nimbus_bench::arg_or(100_000);
    raise_map_count(processes);
    let bench = Bench::for_idle(processes);
    let module = wat(IDLE_IN_RECV);
    for _ in 0..processes {
        bench
            .cluster
            .start(root(&module, &[], Output::Null))
            .unwrap();
    }
    bench.until_waiting(processes).await;
    let telemetry = Telemetry::new();
    nimbus_node::register_metrics(&telemetry, &bench.cluster);
    nimbus_services::metrics().register(&telemetry);
    let expected = format!("nimbus_processes{{state=\"waiting\"}} {processes}");
    let scrape = Samples::measure(SCRAPES, || {
        let text = telemetry.encode();
        assert!(text.contains(&expected), "the scrape missed the processes");
    });
    let listing = Samples::measure(SCRAPES, || {
        assert_eq!(bench.cluster.processes().len(), processes);
    });
    report(
        &format!(
            "/metrics scrape of a node holding {processes} processes in recv (target p50 <= 50 ms)"
        ),
        &scrape,
        "listing them (nimbus ps)",
        &listing,
    );
}
