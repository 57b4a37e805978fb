//! Spawn across workers: a parent on a cluster of 2 worker processes (a planner and
//! 2 workers the benchmark starts, one core each) spawns a child of its own module and
//! waits for it, round after round (`guests/c/spawn_bench.c`). The planner spreads the
//! children over the two workers, so about half of them run on the parent's worker and
//! half on the other: both are reported, each round timed by the guest itself, from its
//! `spawn` call to its `wait`'s return. Baselines in the same run: the same guest on
//! one node (`nimbus run`, no planner) and fork+exec+wait of `/bin/true`.
//!
//! `cargo build --release && scripts/build-guests.sh && cargo run --release -p nimbus-bench --bin spawn-remote [ROUNDS]`

use std::time::Duration;

use nimbus_bench::daemon::WorkerCluster;
use nimbus_bench::{Samples, fork_exec, guest_path, nimbus_command, output_words, report};

/// Runs the guest for `rounds` rounds, on `planner`'s workers or on one node; returns
/// the rounds whose child ran on the parent's host and those whose child ran elsewhere.
fn spawn_rounds(planner: Option<&str>, rounds: usize) -> (Samples, Samples) {
    let mut command = nimbus_command();
    command.arg("run");
    if let Some(planner) = planner {
        command.args(["--planner", planner]);
    }
    command
        .arg(guest_path("c-spawn-bench"))
        .arg("--")
        .arg(rounds.to_string());
    let (mut local, mut remote) = (Samples::default(), Samples::default());
    for line in output_words(command, "spawn_bench") {
        let nanos = Duration::from_nanos(line[1].parse().expect("nanoseconds"));
        match line[0].as_str() {
            "local" => local.push(nanos),
            "remote" => remote.push(nanos),
            other => panic!("unexpected line from spawn_bench: {other}"),
        }
    }
    (local, remote)
}

fn main() {
    let rounds = nimbus_bench::arg_or(4_000);
    let cluster = WorkerCluster::start(2);
    // The first rounds compile nothing (the cache is warm after one) but open the
    // mesh links and channels: left out.
    spawn_rounds(Some(&cluster.planner), 200);
    let (on_parents, on_other) = spawn_rounds(Some(&cluster.planner), rounds);
    assert!(
        !on_parents.is_empty() && !on_other.is_empty(),
        "the planner put every child on one worker ({} on the parent's, {} on the other)",
        on_parents.len(),
        on_other.len()
    );
    let (one_node, _) = spawn_rounds(None, rounds);
    let fork = Samples::measure(rounds.min(2_000), || fork_exec("/bin/true", &[]));
    report(
        "spawn + wait of a child on the other worker (planner, 2 worker processes)",
        &on_other,
        "fork+exec /bin/true",
        &fork,
    );
    report(
        "spawn + wait of a child the planner put on the parent's own worker",
        &on_parents,
        "fork+exec /bin/true",
        &fork,
    );
    report(
        "spawn + wait on one node (nimbus run, no planner)",
        &one_node,
        "fork+exec /bin/true",
        &fork,
    );
}
