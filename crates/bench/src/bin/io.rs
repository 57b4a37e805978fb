//! Many small filesystem calls: the `fs-walk` guest walks a generated tree of
//! small files (a directory listing, a `stat` and a whole read of each) under
//! nimbus and under plain wasmtime (synchronous WASI, filesystem calls on the
//! calling thread, as `wasmtime run` makes them), same module, same tree, same
//! output.
//!
//! `cargo run --release -p nimbus-bench --bin io [FILES]` (default 2,048 files)

use std::path::{Path, PathBuf};
use std::time::Instant;

use nimbus_bench::plain::PlainWasmtime;
use nimbus_bench::{Bench, Samples, guest, report, root};
use nimbus_core::ExitStatus;
use nimbus_runtime::{Output, Preopen};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

const SAMPLES: usize = 21;
/// Files per directory; the directories come in groups of `FANOUT` under the top.
const PER_DIR: usize = 32;
const FANOUT: usize = 4;
const GUEST_DIR: &str = "/tree";

fn main() {
    let files = nimbus_bench::arg_or(2048);
    let tree = tempfile::tempdir().expect("temporary directory");
    make_tree(tree.path(), files);

    let (nimbus, nimbus_line) = nimbus_bench::on_worker(measure_nimbus(tree.path().to_path_buf()));

    let plain = PlainWasmtime::new(guest("fs-walk").bytes());
    let dirs = [(tree.path().to_path_buf(), GUEST_DIR)];
    let mut plain_line = String::new();
    let mut baseline = Samples::default();
    for i in 0..SAMPLES + 1 {
        let start = Instant::now();
        plain_line = plain.run(&[GUEST_DIR], &dirs);
        if i > 0 {
            baseline.push(start.elapsed());
        }
    }
    assert_eq!(
        nimbus_line, plain_line,
        "nimbus and plain wasmtime disagree"
    );
    report(
        &format!("io: walk, stat and read a tree of small files ({nimbus_line})"),
        &nimbus,
        "wasmtime, sync WASI",
        &baseline,
    );
    println!("  (ratio below 1 means nimbus is slower: 0.77x = 1.3x the baseline's time)");
}

/// `files` files of 512 B to 4 KiB of deterministic bytes, `PER_DIR` to a
/// directory, the directories `FANOUT` to a parent under `root`.
fn make_tree(root: &Path, files: usize) {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for i in 0..files {
        let dir = i / PER_DIR;
        let path = root
            .join(format!("d{:03}", dir / FANOUT))
            .join(format!("e{:03}", dir % FANOUT));
        std::fs::create_dir_all(&path).expect("tree directory");
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let len = 512 + (state >> 33) as usize % 3584;
        let bytes: Vec<u8> = (0..len).map(|j| (j as u64 ^ state) as u8).collect();
        std::fs::write(path.join(format!("f{i:05}.txt")), bytes).expect("tree file");
    }
}

/// Whole runs of `fs-walk` over `tree` on an embedded cluster (the first, which
/// compiles, not counted), and the line it printed.
async fn measure_nimbus(tree: PathBuf) -> (Samples, String) {
    let bench = Bench::new(|_| {});
    let module = guest("fs-walk");
    let mut line = String::new();
    let mut samples = Samples::default();
    for i in 0..SAMPLES + 1 {
        let stdout = MemoryOutputPipe::new(4096);
        let mut process = root(&module, &[GUEST_DIR], Output::Capture(stdout.clone()));
        process.dirs = vec![Preopen {
            host: tree.clone(),
            guest: GUEST_DIR.into(),
        }];
        let start = Instant::now();
        let status = bench.cluster.run(process).await.expect("starts");
        if i > 0 {
            samples.push(start.elapsed());
        }
        assert_eq!(status, ExitStatus::Exited(0), "fs-walk failed");
        line = String::from_utf8_lossy(&stdout.contents())
            .trim()
            .to_owned();
    }
    (samples, line)
}
