//! A compute kernel (dense matrix multiply, `guests/kernels`) as wasm in nimbus
//! beside the same module under plain wasmtime without epoch interruption and the
//! same Rust code compiled natively: same sizes, same checksum.
//!
//! `cargo run --release -p nimbus-bench --bin compute [N]`

use std::hint::black_box;
use std::time::Instant;

use nimbus_bench::plain::PlainWasmtime;
use nimbus_bench::{Bench, Samples, guest, report_against, run_ok};
use nimbus_runtime::Output;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

const REPS: usize = 4;
const SAMPLES: usize = 15;

fn main() {
    let n = nimbus_bench::arg_or(256);
    let owned = vec![n.to_string(), REPS.to_string()];
    let (nimbus, wasm_line) = nimbus_bench::on_worker(measure_nimbus(owned.clone()));
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();

    let plain = PlainWasmtime::new(guest("matmul").bytes());
    let mut plain_line = String::new();
    let mut plain_samples = Samples::default();
    for i in 0..SAMPLES + 1 {
        let start = Instant::now();
        plain_line = plain.run(&args, &[]);
        if i > 0 {
            plain_samples.push(start.elapsed());
        }
    }

    let mut native_line = String::new();
    let native = Samples::measure(SAMPLES, || {
        let a = nimbus_kernels::fill(n, 1);
        let b = nimbus_kernels::fill(n, 2);
        let mut c = vec![0.0; n * n];
        for _ in 0..REPS {
            nimbus_kernels::matmul(n, black_box(&a), black_box(&b), &mut c);
            black_box(&mut c);
        }
        native_line = format!(
            "matmul n={n} reps={REPS} checksum={}",
            nimbus_kernels::checksum(&c)
        );
    });
    assert_eq!(wasm_line, native_line, "nimbus and native disagree");
    assert_eq!(
        plain_line, native_line,
        "plain wasmtime and native disagree"
    );
    report_against(
        &format!("compute: {n}x{n} f64 matrix multiply x{REPS} ({wasm_line})"),
        &nimbus,
        &[
            ("wasmtime, no interruption", &plain_samples),
            ("native (same Rust code)", &native),
        ],
    );
    println!("  (ratio below 1 means nimbus is slower: 0.77x = 1.3x the baseline's time)");
}

/// Whole runs of the matmul guest on an embedded cluster (the first, which
/// compiles, not counted), and the line it printed.
async fn measure_nimbus(args: Vec<String>) -> (Samples, String) {
    let bench = Bench::new(|_| {});
    let module = guest("matmul");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut line = String::new();
    let mut samples = Samples::default();
    for i in 0..SAMPLES + 1 {
        let stdout = MemoryOutputPipe::new(4096);
        let start = Instant::now();
        run_ok(
            &bench.cluster,
            &module,
            &args,
            Output::Capture(stdout.clone()),
        )
        .await;
        if i > 0 {
            samples.push(start.elapsed());
        }
        line = String::from_utf8_lossy(&stdout.contents())
            .trim()
            .to_owned();
    }
    (samples, line)
}
