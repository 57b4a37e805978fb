//! A compute kernel (dense matrix multiply, `guests/kernels`) as wasm in nimbus
//! beside the same module under plain wasmtime without epoch interruption and the
//! same Rust code compiled natively: same sizes, same checksum, samples taken in
//! turns.
//!
//! `cargo run --release -p nimbus-bench --bin compute [N]`

use std::hint::black_box;
use std::sync::Arc;

use nimbus_bench::plain::PlainWasmtime;
use nimbus_bench::{Bench, guest, interleaved, report_against, root, run_whole};
use nimbus_runtime::Output;

const REPS: usize = 4;
const SAMPLES: usize = 15;

fn main() {
    let n = nimbus_bench::arg_or(256);
    let owned = [n.to_string(), REPS.to_string()];
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
    let tokio = tokio::runtime::Runtime::new().expect("tokio starts");
    let bench = Arc::new(tokio.block_on(async { Bench::new(|_| {}) }));
    let module = guest("matmul");
    let plain = PlainWasmtime::new(module.bytes());

    let mut on_nimbus = || run_whole(&tokio, &bench, root(&module, &args, Output::Null));
    let mut on_plain = || plain.run(&args, &[]);
    let mut native = || {
        let a = nimbus_kernels::fill(n, 1);
        let b = nimbus_kernels::fill(n, 2);
        let mut c = vec![0.0; n * n];
        for _ in 0..REPS {
            nimbus_kernels::matmul(n, black_box(&a), black_box(&b), &mut c);
            black_box(&mut c);
        }
        format!(
            "matmul n={n} reps={REPS} checksum={}",
            nimbus_kernels::checksum(&c)
        )
    };
    let [
        (nimbus, nimbus_line),
        (plain, plain_line),
        (native, native_line),
    ] = interleaved(SAMPLES, [&mut on_nimbus, &mut on_plain, &mut native]);
    assert_eq!(nimbus_line, native_line, "nimbus and native disagree");
    assert_eq!(
        plain_line, native_line,
        "plain wasmtime and native disagree"
    );
    report_against(
        &format!("compute: {n}x{n} f64 matrix multiply x{REPS} ({nimbus_line})"),
        &nimbus,
        &[
            ("wasmtime, no interruption", &plain),
            ("native (same Rust code)", &native),
        ],
    );
    println!("  (ratio below 1 means nimbus is slower: 0.77x = 1.3x the baseline's time)");
}
