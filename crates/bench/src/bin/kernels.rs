//! The compute kernel suite: six C programs (`guests/c/kernel_*.c`: dense matrix
//! multiply, n-body, a sieve, a hash, a merge sort, a stencil), each run whole
//! under nimbus, under plain wasmtime without epoch interruption (the same
//! module), and built natively from the same source with `clang -O2`, samples
//! taken in turns; the three outputs must agree.
//!
//! `cargo run --release -p nimbus-bench --bin kernels [SAMPLES]` (default 5; needs
//! `clang`, as `scripts/build-guests.sh` does)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use nimbus_bench::plain::PlainWasmtime;
use nimbus_bench::{Bench, Samples, guest, interleaved, report_against, root, run_whole};
use nimbus_runtime::Output;

const KERNELS: [&str; 6] = ["matmul", "nbody", "sieve", "hash", "sort", "stencil"];

fn main() {
    let samples = nimbus_bench::arg_or(5);
    let natives = tempfile::tempdir().expect("temporary directory");
    let tokio = tokio::runtime::Runtime::new().expect("tokio starts");
    let bench = Arc::new(tokio.block_on(async { Bench::new(|_| {}) }));
    let mut ratios = Vec::new();
    for name in KERNELS {
        let module = guest(&format!("c-kernel-{name}"));
        let plain = PlainWasmtime::new(module.bytes());
        let native = native_build(name, natives.path());
        let mut on_nimbus = || run_whole(&tokio, &bench, root(&module, &[], Output::Null));
        let mut on_plain = || plain.run(&[], &[]);
        let mut on_native = || run_native(&native);
        let [
            (nimbus, nimbus_line),
            (plain, plain_line),
            (native, native_line),
        ] = interleaved(samples, [&mut on_nimbus, &mut on_plain, &mut on_native]);

        assert_eq!(
            nimbus_line, native_line,
            "{name}: nimbus and native disagree"
        );
        assert_eq!(
            plain_line, native_line,
            "{name}: wasmtime and native disagree"
        );
        report_against(
            &format!("kernel {name} ({native_line})"),
            &nimbus,
            &[
                ("wasmtime, no interruption", &plain),
                ("native (clang -O2)", &native),
            ],
        );
        let p50 = |s: &Samples| s.percentile(50.0).as_secs_f64();
        ratios.push((
            name,
            p50(&nimbus) / p50(&native),
            p50(&nimbus) / p50(&plain),
        ));
    }
    println!("p50 time ratios (above 1: nimbus is slower)");
    println!(
        "  {:<10} {:>16} {:>26}",
        "kernel", "nimbus / native", "nimbus / plain wasmtime"
    );
    for (name, native, plain) in &ratios {
        println!("  {name:<10} {native:>15.3}x {plain:>25.3}x");
    }
    let geomean = |ratio: fn(&(&str, f64, f64)) -> f64| {
        (ratios.iter().map(|r| ratio(r).ln()).sum::<f64>() / ratios.len() as f64).exp()
    };
    println!(
        "  {:<10} {:>15.3}x {:>25.3}x",
        "geomean",
        geomean(|r| r.1),
        geomean(|r| r.2)
    );
}

/// `guests/c/kernel_NAME.c` built natively into `dir`.
fn native_build(name: &str, dir: &Path) -> PathBuf {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../guests/c")
        .join(format!("kernel_{name}.c"));
    let binary = dir.join(name);
    let status = Command::new("clang")
        .arg("-O2")
        .arg(&source)
        .arg("-o")
        .arg(&binary)
        .arg("-lm")
        .status()
        .expect("clang runs");
    assert!(status.success(), "clang failed on {}", source.display());
    binary
}

/// One whole run (fork, exec, wait) of a native kernel, and its output.
fn run_native(binary: &Path) -> String {
    let out = Command::new(binary)
        .output()
        .expect("the native kernel runs");
    assert!(out.status.success(), "{} failed", binary.display());
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
