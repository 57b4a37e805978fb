//! The control plane through the real binary: a planner and three workers as
//! separate OS processes on loopback.

mod common;

use common::{Daemon, outcome, run};

fn planner() -> (Daemon, String) {
    let daemon = Daemon::start(common::nimbus(&[
        "planner",
        "--listen",
        "127.0.0.1:0",
        "--heartbeat",
        "100ms",
        "--timeout",
        "2s",
    ]));
    let addr = daemon.announced("nimbus: planner listening on ");
    (daemon, addr)
}

fn worker(planner: &str, cpus: &str) -> (Daemon, String) {
    let daemon = Daemon::start(common::nimbus(&[
        "worker",
        "--planner",
        planner,
        "--cpus",
        cpus,
        "--mem",
        "2GiB",
    ]));
    let host = daemon.announced(&format!("nimbus: worker joined {planner} as host "));
    (daemon, host)
}

/// `nimbus hosts`: the header, then one row per host: its id first.
fn hosts(planner: &str) -> Vec<Vec<String>> {
    let (stdout, stderr, code) = outcome(&run(common::nimbus(&["hosts", "--planner", planner])));
    assert_eq!(code, Some(0), "{stderr}");
    stdout
        .lines()
        .skip(1)
        .map(|row| row.split_whitespace().map(str::to_owned).collect())
        .collect()
}

#[test]
fn workers_join_heartbeat_and_a_killed_one_is_dropped() {
    let (_planner, addr) = planner();
    let mut workers: Vec<_> = ["1", "2", "3"]
        .iter()
        .map(|cpus| worker(&addr, cpus))
        .collect();
    let ids: Vec<_> = workers.iter().map(|(_, host)| host.clone()).collect();
    assert_eq!(ids, ["host-1", "host-2", "host-3"]);
    let listed = hosts(&addr);
    assert_eq!(listed.len(), 3, "{listed:?}");
    for (row, cpus) in listed.iter().zip(["1", "2", "3"]) {
        let memory = row[2..4].join(" ");
        assert_eq!(
            (row[1].as_str(), memory.as_str()),
            (cpus, "2 GiB"),
            "{row:?}"
        );
    }

    // A worker killed outright stops heartbeating and is dropped; the others stay.
    let (killed, _) = &mut workers[1];
    killed.signal("KILL");
    common::until("the killed worker is dropped", || hosts(&addr).len() == 2);
    let left: Vec<_> = hosts(&addr).iter().map(|row| row[0].clone()).collect();
    assert_eq!(left, ["host-1", "host-3"]);

    // A newcomer never reuses a dropped host's id (pids carry it).
    let (_newcomer, id) = worker(&addr, "1");
    assert_eq!(id, "host-4");
}

#[test]
fn a_worker_without_a_planner_fails_clearly() {
    let (_, stderr, code) = outcome(&run(common::nimbus(&[
        "worker",
        "--planner",
        "127.0.0.1:1",
    ])));
    assert_eq!(code, Some(126), "{stderr}");
    assert!(stderr.contains("planner 127.0.0.1:1"), "{stderr}");
}
