//! Host memory per idle process: N processes parked in `recv`, the growth of this
//! host's resident set divided by N. The WAT guest touches no guest page, so the
//! figure is all host overhead (store, instance, stack, task, table entry, mailbox,
//! WASI context). Beside it: the resident set of one native idle process (`sleep`).
//!
//! `cargo run --release -p nimbus-bench --bin idle-memory [PROCESSES]`
//!
//! Raises `vm.max_map_count` when it is too low for N slots (needs root).

use std::time::Duration;

use nimbus_bench::{Bench, IDLE_IN_RECV, guest, raise_map_count, root, rss_bytes, rss_of, wat};
use nimbus_runtime::{ModuleBytes, Output};

/// Starts `processes` copies of `module` and returns the growth of RSS per process
/// once all of them wait in `recv`.
async fn per_process(module: &ModuleBytes, processes: usize) -> f64 {
    let bench = Bench::for_idle(processes);
    // Load once so the compiled module is not counted.
    bench
        .cluster
        .start(root(module, &[], Output::Null))
        .unwrap();
    let before = rss_bytes();
    for _ in 1..processes {
        bench
            .cluster
            .start(root(module, &[], Output::Null))
            .unwrap();
    }
    bench.until_waiting(processes).await;
    let grown = rss_bytes().saturating_sub(before);
    grown as f64 / (processes - 1) as f64
}

fn main() {
    nimbus_bench::on_worker(measure());
}

async fn measure() {
    let processes = nimbus_bench::arg_or(100_000);
    raise_map_count(processes);
    let kib = |bytes: f64| bytes / 1024.0;

    let overhead = per_process(&wat(IDLE_IN_RECV), processes).await;
    let rust_idle = per_process(&guest("idle"), processes / 10).await;

    let mut sleepers: Vec<_> = (0..20)
        .map(|_| {
            std::process::Command::new("sleep")
                .arg("600")
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut native: Vec<u64> = sleepers
        .iter()
        .map(|c| rss_of(&c.id().to_string()))
        .collect();
    native.sort();
    for sleeper in &mut sleepers {
        let _ = sleeper.kill();
    }

    println!("idle memory: processes blocked in recv on one host");
    println!(
        "  nimbus, {processes} idle processes (no guest page touched)   {:>8.1} KiB each",
        kib(overhead)
    );
    println!(
        "  nimbus, {} idle Rust processes (incl. their own pages)   {:>8.1} KiB each",
        processes / 10,
        kib(rust_idle)
    );
    println!(
        "  native `sleep` process RSS (p50 of 20)                {:>8.1} KiB each",
        kib(native[10] as f64)
    );
    println!(
        "  ratio (native / nimbus overhead)                       {:>8.1}x",
        native[10] as f64 / overhead
    );
    // Tearing down 100,000 processes is not what is measured.
    std::process::exit(0);
}
