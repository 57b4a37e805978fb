//! MPI micro-benchmarks: the same C program (`guests/c/mpi_bench.c`) run as a nimbus
//! world and as a native OpenMPI job, in the same run.
//!
//! - ping-pong, 8 B to 1 MiB, two ranks: one-way latency p50/p99 (half the round trip);
//! - streaming bandwidth, 1 MiB messages, two ranks: MiB/s (median of 7 batches of 64);
//! - allreduce of 1 MiB of doubles on four ranks: p50/p99.
//!
//! nimbus: `nimbus run --ranks N --hosts N` (each rank on its own in-process host;
//! messages are nimbus messages between mailboxes in one OS process). Baseline:
//! `mpicc -O2` and `mpirun -np N --mca btl tcp,self` (OpenMPI over loopback TCP,
//! separate OS processes). Needs `openmpi-bin` and `libopenmpi-dev`
//! (`scripts/setup.sh openmpi-bin libopenmpi-dev`) and `cargo build --release`.
//!
//! `cargo build --release && cargo run --release -p nimbus-bench --bin mpi`

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Runs one mode and returns rank 0's lines, split into words.
fn run(mut command: Command, what: &str) -> Vec<Vec<String>> {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.split_whitespace().map(str::to_owned).collect())
        .collect()
}

fn nimbus(mode: &str, ranks: &str) -> Vec<Vec<String>> {
    let mut command = Command::new(nimbus_bench::nimbus_binary());
    let program = nimbus_bench::guest_path("c-mpi-bench");
    command
        .args(["run", "--ranks", ranks, "--hosts", ranks])
        .arg(program)
        .args(["--", mode]);
    run(command, &format!("nimbus {mode}"))
}

fn openmpi(native: &Path, mode: &str, ranks: &str) -> Vec<Vec<String>> {
    let mut command = Command::new("mpirun");
    command
        .args(["--oversubscribe", "--mca", "btl", "tcp,self", "-np", ranks])
        .arg(native)
        .arg(mode)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    run(command, &format!("OpenMPI {mode}"))
}

/// Figures by their first words: "pingpong 8" → [p50, p99].
fn figures(lines: Vec<Vec<String>>, key_words: usize) -> BTreeMap<String, Vec<f64>> {
    lines
        .into_iter()
        .map(|words| {
            let values = words[key_words..]
                .iter()
                .map(|w| w.parse().expect("a number"));
            (words[..key_words].join(" "), values.collect())
        })
        .collect()
}

fn main() {
    for tool in ["mpicc", "mpirun"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is missing: run scripts/setup.sh openmpi-bin libopenmpi-dev"
        );
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let native = dir.path().join("mpi-bench");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guests/c/mpi_bench.c");
    let compiled = Command::new("mpicc")
        .args(["-O2", "-o"])
        .arg(&native)
        .arg(&source)
        .status()
        .expect("mpicc runs");
    assert!(compiled.success(), "mpicc failed");

    println!(
        "MPI micro-benchmarks: nimbus world (ranks on in-process hosts) vs OpenMPI over TCP loopback"
    );
    println!("ping-pong, one-way latency in µs (targets: nimbus <= 1.5x OpenMPI)");
    println!(
        "  {:>8}   {:>9} {:>9}   {:>9} {:>9}   {:>7} {:>7}",
        "bytes", "nimbus50", "nimbus99", "ompi50", "ompi99", "x p50", "x p99"
    );
    let ours = figures(nimbus("pingpong", "2"), 2);
    let theirs = figures(openmpi(&native, "pingpong", "2"), 2);
    let mut sizes: Vec<_> = ours.keys().collect();
    sizes.sort_by_key(|key| key[9..].parse::<u64>().unwrap_or(0));
    for key in sizes {
        let (n, o) = (&ours[key], &theirs[key]);
        println!(
            "  {:>8}   {:>9.2} {:>9.2}   {:>9.2} {:>9.2}   {:>6.2}x {:>6.2}x",
            &key[9..],
            n[0],
            n[1],
            o[0],
            o[1],
            n[0] / o[0],
            n[1] / o[1]
        );
    }

    let ours = figures(nimbus("bandwidth", "2"), 1)["bandwidth"][0];
    let theirs = figures(openmpi(&native, "bandwidth", "2"), 1)["bandwidth"][0];
    println!("streaming bandwidth, 1 MiB messages (target: nimbus >= 0.8x OpenMPI)");
    println!(
        "  nimbus {ours:.0} MiB/s   OpenMPI {theirs:.0} MiB/s   ratio {:.2}x",
        ours / theirs
    );

    let ours = &figures(nimbus("allreduce", "4"), 1)["allreduce"];
    let theirs = &figures(openmpi(&native, "allreduce", "4"), 1)["allreduce"];
    println!("allreduce of 1 MiB of doubles, 4 ranks, µs (target: nimbus <= 1.2x OpenMPI)");
    println!(
        "  nimbus p50 {:.1} p99 {:.1}   OpenMPI p50 {:.1} p99 {:.1}   ratio p50 {:.2}x p99 {:.2}x",
        ours[0],
        ours[1],
        theirs[0],
        theirs[1],
        ours[0] / theirs[0],
        ours[1] / theirs[1]
    );
}
