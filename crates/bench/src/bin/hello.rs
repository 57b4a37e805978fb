//! A full in-process run of the WASI hello programs (Rust and C), stdout captured,
//! beside fork+exec of the native `/bin/echo` printing the same line.
//!
//! `cargo run --release -p nimbus-bench --bin hello [ITERATIONS]`

use nimbus_bench::{Bench, Samples, fork_exec, guest, report, run_ok};
use nimbus_runtime::Output;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

fn main() {
    nimbus_bench::on_worker(measure());
}

async fn measure() {
    let iterations = nimbus_bench::arg_or(10_000);
    let bench = Bench::new(|_| {});
    let baseline = Samples::measure(iterations.min(2_000), || {
        fork_exec("/bin/echo", &["Hello from nimbus!"])
    });
    for program in ["hello", "c-hello"] {
        let module = guest(program);
        let mut nimbus = Samples::default();
        for i in 0..iterations + 500 {
            let stdout = MemoryOutputPipe::new(4096);
            let start = std::time::Instant::now();
            run_ok(
                &bench.cluster,
                &module,
                &[],
                Output::Capture(stdout.clone()),
            )
            .await;
            if i >= 500 {
                nimbus.push(start.elapsed());
            }
            assert_eq!(&stdout.contents()[..], b"Hello from nimbus!\n");
        }
        report(
            &format!("hello: full run of {program}.wasm, in process"),
            &nimbus,
            "fork+exec /bin/echo",
            &baseline,
        );
    }
}
