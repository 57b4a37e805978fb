//! Swap out and swap in of a service instance holding 100 MiB of touched memory,
//! straight on a `Runtime` (no cluster).
//!
//! Swap out: `snapshot().write(path)` (sparse encoding, fsync of the file and of its
//! directory, atomic rename), then the instance is dropped (its pool slot reset).
//! Swap in: `nimbus_snapshot::read(path)` (reads the whole file once to verify its
//! checksum), `admit`, `start_service(.., Some(&snapshot))` (maps the stored pages
//! copy-on-write instead of copying them) and an invocation of `first`, until its
//! 1-byte response is back: the time to the first response byte. Every round fills the instance (every 4 KiB page non-zero, so
//! all 25,600 pages are stored), swaps it out and swaps it back in; the next round
//! fills the restored instance.
//!
//! Baselines in the same run and directory: 100 MiB from a `Vec` written to a file
//! with `write_all` + `sync_all`, and read back with `std::fs::read`. Swap-in reads a
//! file it has just written, as the read baseline does: both come from the page cache.
//!
//! `cargo run --release -p nimbus-bench --bin swap [ROUNDS] [DIR]`
//!
//! `DIR` (default: the system temporary directory) is where the files go; the output
//! names it and its file system (tmpfs or a disk).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nimbus_bench::{Samples, print_samples, report, start_alone};
use nimbus_runtime::{Invocation, Runtime, RuntimeConfig};

/// 1,600 wasm pages.
const MEMORY: usize = 100 << 20;
const SWAP_OUT_TARGET: Duration = Duration::from_millis(100);
const SWAP_IN_TARGET: Duration = Duration::from_millis(50);

/// A reactor: `fill` grows memory to 100 MiB, counts its calls in byte 16 and writes
/// a non-zero byte into every 4 KiB page; `first` answers with byte 16.
const HOLDER: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\10\00\00\00\01\00\00\00")
  (func (export "fill") (result i32)
    (local $at i32)
    (if (i32.eq (memory.grow (i32.sub (i32.const 1600) (memory.size))) (i32.const -1))
      (then (return (i32.const 1))))
    (i32.store8 (i32.const 16) (i32.add (i32.load8_u (i32.const 16)) (i32.const 1)))
    (local.set $at (i32.const 4095))
    (loop $page
      (i32.store8 (local.get $at) (i32.const 0x5a))
      (local.set $at (i32.add (local.get $at) (i32.const 4096)))
      (br_if $page (i32.lt_u (local.get $at) (i32.const 104857600))))
    (i32.const 0))
  (func (export "first")
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

fn main() {
    nimbus_bench::on_worker(measure());
}

fn call(handler: &str) -> Invocation {
    Invocation {
        handler: handler.into(),
        body: Vec::new(),
        max_response: 4096,
        timeout: None,
    }
}

/// The file system type of the mount holding `dir`, from `/proc/self/mountinfo`.
fn file_system_of(dir: &Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return "unknown".into();
    };
    mounts
        .lines()
        .filter_map(|line| {
            let mount_point = line.split(' ').nth(4)?;
            let (_, after) = line.split_once(" - ")?;
            let mut fields = after.split(' ');
            let fs_type = fields.next()?;
            let source = fields.next()?;
            dir.starts_with(mount_point)
                .then(|| (mount_point.len(), format!("{fs_type} ({source})")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, fs)| fs)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn against_target(what: &str, samples: &Samples, target: Duration) {
    let verdict = |p| {
        let value = samples.percentile(p);
        let met = if value <= target { "met" } else { "MISSED" };
        format!("p{p} {:.1} ms {met}", millis(value))
    };
    println!(
        "  target: {what} <= {} ms: {}, {}",
        target.as_millis(),
        verdict(50.0),
        verdict(99.0)
    );
}

async fn measure() {
    let rounds = nimbus_bench::arg_or(10);
    let base = std::env::args()
        .nth(2)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base).expect("temporary directory");
    let dir_path = dir.path().canonicalize().expect("directory exists");
    let snapshot_path = dir_path.join("holder.snap");
    let baseline_path = dir_path.join("baseline.bin");

    let runtime = Runtime::new(&RuntimeConfig::new(dir.path())).expect("runtime starts");
    let program = runtime
        .load_service(&nimbus_bench::wat(HOLDER))
        .expect("module loads");
    let data = vec![0x5au8; MEMORY];

    let (mut swap_out, mut swap_in) = (Samples::default(), Samples::default());
    let (mut write, mut read) = (Samples::default(), Samples::default());
    // Parts of the swaps: writing the snapshot, reading it back.
    let (mut snapshot_write, mut snapshot_read) = (Samples::default(), Samples::default());
    let mut stored_pages = 0;
    let mut service = start_alone(&runtime, &program, None).await;
    for round in 0..rounds {
        assert_eq!(service.invoke(call("fill")).await, Ok(vec![]), "fill");

        let start = Instant::now();
        service
            .snapshot(nimbus_snapshot::Owner {
                app: "bench".into(),
                instance: 0,
            })
            .write(&snapshot_path)
            .expect("snapshot written");
        snapshot_write.push(start.elapsed());
        drop(service);
        swap_out.push(start.elapsed());

        let start = Instant::now();
        let snapshot = nimbus_snapshot::read(&snapshot_path).expect("snapshot read");
        snapshot_read.push(start.elapsed());
        service = start_alone(&runtime, &program, Some(&snapshot)).await;
        let first = service.invoke(call("first")).await;
        swap_in.push(start.elapsed());
        // The fill count came back with the memory.
        assert_eq!(
            first,
            Ok(vec![(round as u8).wrapping_add(1)]),
            "first after restore"
        );
        stored_pages = snapshot.stored_pages();
        drop(snapshot);

        let start = Instant::now();
        let mut file = std::fs::File::create(&baseline_path).expect("baseline file");
        file.write_all(&data).expect("baseline written");
        file.sync_all().expect("baseline synced");
        write.push(start.elapsed());
        drop(file);

        let start = Instant::now();
        let back = std::fs::read(&baseline_path).expect("baseline read");
        read.push(start.elapsed());
        assert_eq!(back.len(), MEMORY);
    }
    let snapshot_size = std::fs::metadata(&snapshot_path)
        .expect("snapshot exists")
        .len();

    println!(
        "swap of a service instance holding 100 MiB ({stored_pages} non-zero 4 KiB pages, \
         snapshot file {:.1} MiB)",
        snapshot_size as f64 / (1 << 20) as f64
    );
    println!(
        "  directory {} on {}",
        dir_path.display(),
        file_system_of(&dir_path)
    );
    println!("  (p99 of {rounds} rounds is their maximum)");
    report(
        "swap out: snapshot().write (fsync + rename) + drop of the instance",
        &swap_out,
        "write_all + sync_all 100 MiB",
        &write,
    );
    print_samples("of which snapshot write", &snapshot_write);
    against_target("swap out", &swap_out, SWAP_OUT_TARGET);
    report(
        "swap in: read + admit + start_service(from snapshot) + invoke -> first response byte",
        &swap_in,
        "std::fs::read 100 MiB",
        &read,
    );
    print_samples("of which snapshot read", &snapshot_read);
    against_target("swap in", &swap_in, SWAP_IN_TARGET);
}
