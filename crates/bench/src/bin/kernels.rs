//! The compute kernel suite: six C programs (`guests/c/kernel_*.c`: dense matrix
//! multiply, n-body, a sieve, a hash, a merge sort, a stencil), each run whole
//! under nimbus, under plain wasmtime without epoch interruption (the same
//! module), and built natively from the same source with `clang -O2`, in the same
//! run; the three outputs must agree.
//!
//! `cargo run --release -p nimbus-bench --bin kernels [SAMPLES]` (default 5; needs
//! `clang`, as `scripts/build-guests.sh` does)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use nimbus_bench::plain::PlainWasmtime;
use nimbus_bench::{Bench, Samples, guest, report_against, run_ok};
use nimbus_runtime::{ModuleBytes, Output};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

const KERNELS: [&str; 6] = ["matmul", "nbody", "sieve", "hash", "sort", "stencil"];

fn main() {
    let samples = nimbus_bench::arg_or(5);
    let natives = tempfile::tempdir().expect("temporary directory");
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio starts");
    let bench = Arc::new(tokio.block_on(async { Bench::new(|_| {}) }));
    let mut ratios = Vec::new();
    for name in KERNELS {
        let module = guest(&format!("c-kernel-{name}"));
        // Each run on a worker thread of the runtime, where guests run.
        let (nimbus, nimbus_line) = timed(samples, || {
            let (bench, module) = (bench.clone(), module.clone());
            tokio
                .block_on(tokio.spawn(async move { run_nimbus(&bench, &module).await }))
                .expect("the run's task completes")
        });
        let plain = PlainWasmtime::new(module.bytes());
        let (plain, plain_line) = timed(samples, || plain.run(&[], &[]));
        let native = native_build(name, natives.path());
        let (native, native_line) = timed(samples, || run_native(&native));

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

/// `samples` timings of `run` after one untimed run (for nimbus, the one that
/// compiles), and the output of the last.
fn timed(samples: usize, mut run: impl FnMut() -> String) -> (Samples, String) {
    let mut line = run();
    let timings = Samples::measure(samples, || line = run());
    (timings, line)
}

/// One whole run of `module` on the cluster, and its output.
async fn run_nimbus(bench: &Bench, module: &ModuleBytes) -> String {
    let stdout = MemoryOutputPipe::new(4096);
    run_ok(&bench.cluster, module, &[], Output::Capture(stdout.clone())).await;
    String::from_utf8_lossy(&stdout.contents())
        .trim()
        .to_owned()
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
