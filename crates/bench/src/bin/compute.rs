//! A compute kernel (dense matrix multiply, `guests/kernels`) as wasm in nimbus
//! beside the same Rust code compiled natively, same sizes, same checksum.
//!
//! `cargo run --release -p nimbus-bench --bin compute [N]`

use std::hint::black_box;

use nimbus_bench::{Bench, Samples, guest, report, run_ok};
use nimbus_runtime::Output;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

const REPS: usize = 4;
const SAMPLES: usize = 15;

fn main() {
    nimbus_bench::on_worker(measure());
}

async fn measure() {
    let n = nimbus_bench::arg_or(256);
    let bench = Bench::new(|_| {});
    let module = guest("matmul");
    let (n_text, reps_text) = (n.to_string(), REPS.to_string());
    let args = [n_text.as_str(), reps_text.as_str()];

    let mut wasm_line = String::new();
    let mut nimbus = Samples::default();
    for i in 0..SAMPLES + 1 {
        let stdout = MemoryOutputPipe::new(4096);
        let start = std::time::Instant::now();
        run_ok(
            &bench.cluster,
            &module,
            &args,
            Output::Capture(stdout.clone()),
        )
        .await;
        if i > 0 {
            nimbus.push(start.elapsed());
        }
        wasm_line = String::from_utf8_lossy(&stdout.contents())
            .trim()
            .to_owned();
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
    assert_eq!(wasm_line, native_line, "wasm and native disagree");
    report(
        &format!("compute: {n}x{n} f64 matrix multiply x{REPS} ({wasm_line})"),
        &nimbus,
        "native (same Rust code)",
        &native,
    );
    println!("  (ratio below 1 means nimbus is slower: 0.77x = 1.3x the native time)");
}
