//! MPI micro-benchmarks: the same C program (`guests/c/mpi_bench.c`) run as a nimbus
//! world and as a native OpenMPI job, in the same run.
//!
//! - ping-pong, 8 B to 1 MiB, two ranks: one-way latency p50/p99 (half the round trip);
//! - streaming bandwidth, 1 MiB messages, two ranks: MiB/s (median of 7 batches of 64);
//! - allreduce of 1 MiB of doubles on four ranks: p50/p99.
//!
//! Each measurement runs [`RUNS`] times, the three ways interleaved, and each figure
//! printed is the median of its runs: on the project's 2-core VM a kernel thread
//! (`kdamond`) takes one core for tens of milliseconds every few hundred, which would
//! otherwise decide by luck which side a short measurement catches.
//!
//! nimbus: `nimbus run --ranks N --planner ADDR` on a planner and 4 worker processes
//! started by the benchmark (each rank on its own worker; messages cross the mesh
//! over loopback TCP), and for reference `nimbus run --ranks N --hosts N` (each rank
//! on its own in-process host, messages between mailboxes of one OS process). Baseline:
//! `mpicc -O2` and `mpirun -np N --mca btl tcp,self` (OpenMPI over loopback TCP,
//! separate OS processes). Needs `openmpi-bin` and `libopenmpi-dev`
//! (`scripts/setup.sh openmpi-bin libopenmpi-dev`) and `cargo build --release`.
//!
//! `cargo build --release && cargo run --release -p nimbus-bench --bin mpi`

use std::collections::BTreeMap;

use nimbus_bench::daemon::WorkerCluster;
use nimbus_bench::mpi::{self, Ranks};

/// How many times each measurement runs.
const RUNS: usize = 3;

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

/// Each figure's values, the median of the runs': the runs must have the same keys.
fn median_of_runs<'a>(
    runs: impl Iterator<Item = &'a BTreeMap<String, Vec<f64>>>,
) -> BTreeMap<String, Vec<f64>> {
    let runs: Vec<_> = runs.collect();
    runs[0]
        .iter()
        .map(|(key, values)| {
            let medians = (0..values.len())
                .map(|i| {
                    let mut of_runs: Vec<f64> = runs.iter().map(|run| run[key][i]).collect();
                    of_runs.sort_by(f64::total_cmp);
                    of_runs[of_runs.len() / 2]
                })
                .collect();
            (key.clone(), medians)
        })
        .collect()
}

fn main() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let native = mpi::compile_native("mpi_bench", dir.path());
    let workers = WorkerCluster::start(4);
    let on = Ranks::Workers(&workers);
    let nimbus =
        |placement, mode: &str, ranks: &str| mpi::nimbus(placement, "c-mpi-bench", ranks, &[mode]);
    // Each figure three ways (ranks on workers, on in-process hosts, and OpenMPI),
    // the median of its runs.
    let three_ways = |mode: &str, ranks: &str, key_words: usize| {
        let runs: Vec<_> = (0..RUNS)
            .map(|_| {
                [
                    nimbus(on, mode, ranks),
                    nimbus(Ranks::InProcess, mode, ranks),
                    mpi::openmpi(&native, ranks, &[mode]),
                ]
                .map(|lines| figures(lines, key_words))
            })
            .collect();
        [0, 1, 2].map(|way| median_of_runs(runs.iter().map(|run| &run[way])))
    };

    println!(
        "MPI micro-benchmarks: a nimbus world with each rank on its own worker process \
         (4 workers, mesh over TCP loopback), the same world on in-process hosts, and \
         OpenMPI over TCP loopback; each figure the median of {RUNS} interleaved runs"
    );
    println!("ping-pong, one-way latency in µs (target: workers <= 1.5x OpenMPI)");
    println!(
        "  {:>8}   {:>9} {:>9}   {:>9}   {:>9} {:>9}   {:>7} {:>7}",
        "bytes", "workers50", "workers99", "inproc50", "ompi50", "ompi99", "x p50", "x p99"
    );
    let [ours, in_process, theirs] = three_ways("pingpong", "2", 2);
    let mut sizes: Vec<_> = ours.keys().collect();
    sizes.sort_by_key(|key| key[9..].parse::<u64>().unwrap_or(0));
    for key in sizes {
        let (n, i, o) = (&ours[key], &in_process[key], &theirs[key]);
        println!(
            "  {:>8}   {:>9.2} {:>9.2}   {:>9.2}   {:>9.2} {:>9.2}   {:>6.2}x {:>6.2}x",
            &key[9..],
            n[0],
            n[1],
            i[0],
            o[0],
            o[1],
            n[0] / o[0],
            n[1] / o[1]
        );
    }

    let [ours, in_process, theirs] = three_ways("bandwidth", "2", 1).map(|f| f["bandwidth"][0]);
    println!("streaming bandwidth, 1 MiB messages (target: workers >= 0.8x OpenMPI)");
    println!(
        "  workers {ours:.0} MiB/s   in-process {in_process:.0} MiB/s   OpenMPI {theirs:.0} MiB/s   \
         ratio {:.2}x",
        ours / theirs
    );

    let [ours, in_process, theirs] =
        three_ways("allreduce", "4", 1).map(|mut f| f.remove("allreduce").expect("a figure"));
    println!("allreduce of 1 MiB of doubles, 4 ranks, µs (target: workers <= 1.2x OpenMPI)");
    println!(
        "  workers p50 {:.1} p99 {:.1}   in-process p50 {:.1}   OpenMPI p50 {:.1} p99 {:.1}   \
         ratio p50 {:.2}x p99 {:.2}x",
        ours[0],
        ours[1],
        in_process[0],
        theirs[0],
        theirs[1],
        ours[0] / theirs[0],
        ours[1] / theirs[1]
    );
}
