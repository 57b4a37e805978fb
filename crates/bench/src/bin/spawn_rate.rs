//! Processes created per second on one host: many processes started at once, each
//! running an empty `_start`, until all have exited; beside fork+exec+wait of
//! `/bin/true` from one thread per core.
//!
//! `cargo run --release -p nimbus-bench --bin spawn-rate [PROCESSES]`

use std::time::{Duration, Instant};

use nimbus_bench::{Bench, EMPTY_START, fork_exec, root, wat};
use nimbus_runtime::Output;

const ROUNDS: usize = 5;

fn main() {
    nimbus_bench::on_worker(measure());
}

async fn measure() {
    let processes = nimbus_bench::arg_or(100_000);
    let bench = Bench::new(|config| config.max_processes_per_host = processes + 1);
    let module = wat(EMPTY_START);
    let mut rates = Vec::new();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut exits = Vec::with_capacity(processes);
        for _ in 0..processes {
            let (_, exited) = bench
                .cluster
                .start(root(&module, &[], Output::Null))
                .unwrap();
            exits.push(exited);
        }
        for exited in exits {
            exited.await.unwrap();
        }
        rates.push(processes as f64 / start.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let window = Duration::from_secs(3);
    let started = Instant::now();
    let spawned: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..cores)
            .map(|_| {
                scope.spawn(|| {
                    let mut count = 0;
                    while started.elapsed() < window {
                        fork_exec("/bin/true", &[]);
                        count += 1;
                    }
                    count
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let baseline = spawned as f64 / started.elapsed().as_secs_f64();

    println!("spawn rate: {processes} processes started at once, each to exit, {ROUNDS} rounds");
    println!(
        "  nimbus                       median {:>10.0} /s   worst {:>10.0} /s",
        rates[ROUNDS / 2],
        rates[0]
    );
    println!("  fork+exec /bin/true x{cores} thr   {baseline:>17.0} /s");
    println!(
        "  ratio (nimbus / baseline)    {:>10.1}x",
        rates[ROUNDS / 2] / baseline
    );
}
