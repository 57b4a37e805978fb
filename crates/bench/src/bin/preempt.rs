//! How epoch interruption bounds a guest that never calls out: a `loop {}` on a host
//! of one thread, measured three ways against the time slice it is configured with
//! (10 ms): how long a task that becomes ready waits for the loop to yield, how far
//! past its deadline the loop ends, and how long `kill` takes to end it.
//!
//! `cargo run --release -p nimbus-bench --bin preempt [SAMPLES]` (default 50)

use std::time::{Duration, Instant};

use nimbus_bench::{Bench, Samples, print_samples, root, wat};
use nimbus_core::{ExitStatus, Failure, Limits};
use nimbus_runtime::Output;

const SPIN: &str = r#"(module (func (export "_start") (loop $l (br $l))))"#;
const DEADLINE: Duration = Duration::from_millis(30);

fn main() {
    let samples = nimbus_bench::arg_or(50);
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio starts");
    tokio.block_on(async {
        let bench = Bench::new(|_| {});
        let spin = wat(SPIN);
        let spinner = |timeout| {
            let mut process = root(&spin, &[], Output::Null);
            process.limits = Limits {
                timeout,
                ..Limits::default()
            };
            process
        };

        let (pid, killed) = bench.cluster.start(spinner(None)).expect("starts");
        let mut waits = Samples::default();
        for _ in 0..samples {
            let ready = Instant::now();
            tokio::task::yield_now().await;
            waits.push(ready.elapsed());
        }
        bench.cluster.kill(pid).expect("kills");
        let _ = killed.await;

        let mut overshoot = Samples::default();
        for _ in 0..samples {
            let start = Instant::now();
            let status = bench
                .cluster
                .run(spinner(Some(DEADLINE)))
                .await
                .expect("starts");
            assert_eq!(status, ExitStatus::Failed(Failure::Deadline(DEADLINE)));
            overshoot.push(start.elapsed().saturating_sub(DEADLINE));
        }

        let mut kills = Samples::default();
        for _ in 0..samples {
            let (pid, ended) = bench.cluster.start(spinner(None)).expect("starts");
            // Let it start spinning: this task runs again once the loop yields.
            tokio::task::yield_now().await;
            let start = Instant::now();
            bench.cluster.kill(pid).expect("kills");
            assert_eq!(ended.await.ok(), Some(ExitStatus::Failed(Failure::Killed)));
            kills.push(start.elapsed());
        }

        println!("preempt: a `loop {{}}` guest on one thread, time slice 10 ms (1 ms epoch ticks)");
        print_samples("ready task waits for it", &waits);
        print_samples("ends past its deadline by", &overshoot);
        print_samples("kill to its end", &kills);
    });
}
