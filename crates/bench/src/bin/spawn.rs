//! Spawn latency: a process from a cached module, run to its (empty) `_start` and
//! exit, through the full nimbus path (placement, table, slot, WASI context,
//! instantiation, call, teardown), beside fork+exec+wait of `/bin/true`.
//!
//! Measured twice: on a single-threaded executor, and on the multi-threaded one
//! with the spawning loop on a worker thread, where a guest's own `spawn` runs.
//!
//! `cargo run --release -p nimbus-bench --bin spawn [ITERATIONS]`

use nimbus_bench::{Bench, EMPTY_START, Samples, fork_exec, report, root, wat};
use nimbus_core::ExitStatus;
use nimbus_runtime::Output;

const WARMUP: usize = 1_000;

async fn spawn_latency(iterations: usize) -> Samples {
    let bench = Bench::new(|_| {});
    let module = wat(EMPTY_START);
    let mut samples = Samples::default();
    for i in 0..iterations + WARMUP {
        let start = std::time::Instant::now();
        let status = bench.cluster.run(root(&module, &[], Output::Null)).await;
        if i >= WARMUP {
            samples.push(start.elapsed());
        }
        assert_eq!(status.unwrap(), ExitStatus::Exited(0));
    }
    samples
}

fn main() {
    let iterations = nimbus_bench::arg_or(20_000);
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(spawn_latency(iterations));
    let multi = nimbus_bench::on_worker(spawn_latency(iterations));
    let baseline = Samples::measure(iterations.min(2_000), || fork_exec("/bin/true", &[]));
    report(
        "spawn: cached module -> empty _start -> exit (single-threaded executor)",
        &single,
        "fork+exec /bin/true",
        &baseline,
    );
    report(
        "spawn: the same on the multi-threaded executor, spawning from a worker thread",
        &multi,
        "fork+exec /bin/true",
        &baseline,
    );
}
