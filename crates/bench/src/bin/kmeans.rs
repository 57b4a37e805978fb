//! A distributed example: k-means (`guests/c/kmeans.c`, MPI, 2,000,000 generated 4-d
//! points, 8 clusters, 20 iterations) on 1, 2 and 3 ranks, each on its own worker
//! process (a planner and 3 workers the benchmark starts), beside the same C program built with `mpicc` under OpenMPI over TCP. Prints
//! the time of the iterations, the speedup over one rank, and checks that every run
//! finds the same centroids.
//!
//! `cargo build --release && cargo run --release -p nimbus-bench --bin kmeans`

use nimbus_bench::daemon::WorkerCluster;
use nimbus_bench::mpi::{self, Ranks};

const ARGS: [&str; 2] = ["2000000", "20"];

/// Seconds and checksum from `kmeans ... : 0.264 s, checksum 4079.969196`.
fn parse(lines: Vec<Vec<String>>) -> (f64, String) {
    let words = &lines[0];
    let seconds = words[words.len() - 4].parse().expect("seconds");
    (seconds, words[words.len() - 1].clone())
}

fn main() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let native = mpi::compile_native("kmeans", dir.path());
    let workers = WorkerCluster::start(3);
    let on = Ranks::Workers(&workers);
    println!("k-means, 2,000,000 points, 8 clusters, 20 iterations, one rank per worker (2 cores)");
    println!(
        "  {:>5}   {:>10} {:>8}   {:>10} {:>8}   {:>13}",
        "ranks", "nimbus s", "speedup", "OpenMPI s", "speedup", "nimbus/OpenMPI"
    );
    let (mut first_nimbus, mut first_openmpi, mut checksum) = (0.0, 0.0, None);
    for ranks in ["1", "2", "3"] {
        let (ours, our_sum) = parse(mpi::nimbus(on, "c-kmeans", ranks, &ARGS));
        let (theirs, their_sum) = parse(mpi::openmpi(&native, ranks, &ARGS));
        assert_eq!(our_sum, their_sum, "nimbus and OpenMPI disagree");
        assert_eq!(
            checksum.get_or_insert_with(|| our_sum.clone()),
            &our_sum,
            "the centroids depend on the rank count"
        );
        if ranks == "1" {
            (first_nimbus, first_openmpi) = (ours, theirs);
        }
        println!(
            "  {ranks:>5}   {ours:>10.3} {:>7.2}x   {theirs:>10.3} {:>7.2}x   {:>12.2}x",
            first_nimbus / ours,
            first_openmpi / theirs,
            ours / theirs
        );
    }
}
