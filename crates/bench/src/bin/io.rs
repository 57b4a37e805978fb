//! Many small filesystem calls: the `fs-walk` guest walks a generated tree of
//! small files (a directory listing, a `stat` and a whole read of each) under
//! nimbus and under plain wasmtime (synchronous WASI, filesystem calls on the
//! calling thread, as `wasmtime run` makes them), same module, same tree, same
//! output, samples taken in turns.
//!
//! `cargo run --release -p nimbus-bench --bin io [FILES]` (default 2,048 files)

use std::path::Path;
use std::sync::Arc;

use nimbus_bench::plain::PlainWasmtime;
use nimbus_bench::{Bench, guest, interleaved, report, root, run_whole};
use nimbus_runtime::{Output, Preopen};

const SAMPLES: usize = 21;
/// Files per directory; the directories come in groups of `FANOUT` under the top.
const PER_DIR: usize = 32;
const FANOUT: usize = 4;
const GUEST_DIR: &str = "/tree";

fn main() {
    let files = nimbus_bench::arg_or(2048);
    let tree = tempfile::tempdir().expect("temporary directory");
    make_tree(tree.path(), files);
    let tokio = tokio::runtime::Runtime::new().expect("tokio starts");
    let bench = Arc::new(tokio.block_on(async { Bench::new(|_| {}) }));
    let module = guest("fs-walk");
    let plain = PlainWasmtime::new(module.bytes());
    let dirs = [(tree.path().to_path_buf(), GUEST_DIR)];

    let mut on_nimbus = || {
        let mut process = root(&module, &[GUEST_DIR], Output::Null);
        process.dirs = vec![Preopen {
            host: tree.path().to_path_buf(),
            guest: GUEST_DIR.into(),
        }];
        run_whole(&tokio, &bench, process)
    };
    let mut on_plain = || plain.run(&[GUEST_DIR], &dirs);
    let [(nimbus, nimbus_line), (baseline, plain_line)] =
        interleaved(SAMPLES, [&mut on_nimbus, &mut on_plain]);
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
