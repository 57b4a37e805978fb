//! The cluster through the real binary: a planner and three workers as separate OS
//! processes on loopback; programs run on it with `nimbus run --planner`.

mod common;

use std::process::Output;

use common::{Daemon, TestCluster, guest, outcome, run};

/// `nimbus hosts`: the header, then one row per host: its id first.
fn hosts(planner: &str) -> Vec<Vec<String>> {
    hosts_with(planner, &[])
}

/// `nimbus hosts FLAGS`, as [`hosts`].
fn hosts_with(planner: &str, flags: &[&str]) -> Vec<Vec<String>> {
    let mut command = common::nimbus(&["hosts", "--planner", planner]);
    command.args(flags);
    let (stdout, stderr, code) = outcome(&run(command));
    assert_eq!(code, Some(0), "{stderr}");
    stdout
        .lines()
        .skip(1)
        .map(|row| row.split_whitespace().map(str::to_owned).collect())
        .collect()
}

#[test]
fn workers_join_heartbeat_and_a_killed_one_is_dropped() {
    let mut cluster = TestCluster::start(0, &[]);
    for cpus in ["1", "2", "3"] {
        cluster.add_worker(&["--cpus", cpus, "--mem", "2GiB"]);
    }
    let addr = cluster.addr.clone();
    let ids: Vec<_> = cluster
        .workers
        .iter()
        .map(|(_, host)| host.clone())
        .collect();
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
    cluster.kill_worker("host-2");
    common::until("the killed worker is dropped", || hosts(&addr).len() == 2);
    let left: Vec<_> = hosts(&addr).iter().map(|row| row[0].clone()).collect();
    assert_eq!(left, ["host-1", "host-3"]);

    // A newcomer never reuses a dropped host's id (pids carry it).
    assert_eq!(cluster.add_worker(&[]), "host-4");
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

/// Runs `program` on `cluster`: `nimbus run FLAGS --planner ADDR PROGRAM -- ARGS`.
fn run_on(cluster: &TestCluster, flags: &[&str], program: &str, args: &[&str]) -> Output {
    let mut command = vec!["run"];
    command.extend_from_slice(flags);
    let mut nimbus = cluster.nimbus(&command);
    nimbus.arg(guest(program)).arg("--").args(args);
    run(nimbus)
}

/// A program run: (program, flags, program args, exit code, a line it must print).
type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a str], i32, &'a str);

#[test]
fn programs_run_unchanged_across_three_workers() {
    let cluster = TestCluster::start(3, &[]);
    let cases: &[Case] = &[
        ("hello", &[], &[], 0, "Hello from nimbus!"),
        ("spawn-check", &[], &[], 0, "spawn-check ok"),
        ("c-spawn-check", &[], &[], 0, "spawn-check ok"),
        // A child that traps on another host is reported to its parent.
        (
            "c-spawn-check",
            &[],
            &["trap-child"],
            0,
            "child failed with 132",
        ),
        (
            "parallel-sum",
            &[],
            &["8", "1000000"],
            0,
            "sum of 0..1000000 over 8 processes = 499999500000",
        ),
        (
            "c-mpi-check",
            &["--ranks", "4"],
            &[],
            0,
            "mpi-check: every collective agrees with the sequential result on 4 ranks",
        ),
        (
            "c-mpi-check",
            &["--ranks", "7"],
            &[],
            0,
            "mpi-check: every collective agrees with the sequential result on 7 ranks",
        ),
        // The first rank to fail ends the world, wherever its ranks run.
        (
            "c-mpi-check",
            &["--ranks", "4"],
            &["trap-rank", "2"],
            132,
            "",
        ),
    ];
    for (program, flags, args, code, line) in cases {
        let (stdout, stderr, got) = outcome(&run_on(&cluster, flags, program, args));
        assert_eq!(got, Some(*code), "{program} {args:?}: {stdout}{stderr}");
        assert!(
            line.is_empty() || stdout.lines().any(|l| l == *line),
            "{program} {args:?}: no `{line}` in\n{stdout}"
        );
    }
}

/// `fan_out N FILE` running in the background on the cluster of `planner`, with
/// the file it waits for, once it has spawned its children.
fn fan_out(planner: &str, children: usize) -> (Daemon, tempfile::TempDir) {
    let share = tempfile::tempdir().unwrap();
    let mount = format!("{}::/share", share.path().display());
    let path = guest("c-fan-out");
    let count = children.to_string();
    let mut command = common::nimbus(&["run", "--dir", &mount, "--planner", planner]);
    command.arg(path).args(["--", &count, "/share/go"]);
    let run = Daemon::start(command);
    assert_eq!(run.announced("spawned "), count);
    (run, share)
}

/// The hosts of the root (no parent) and of its children.
fn placement(cluster: &TestCluster) -> (String, Vec<String>) {
    let processes = cluster.processes();
    let root = processes
        .iter()
        .find(|(_, _, parent)| parent == "-")
        .unwrap();
    let children = processes
        .iter()
        .filter(|(_, _, parent)| *parent == root.0)
        .map(|(_, host, _)| host.clone())
        .collect();
    (root.1.clone(), children)
}

#[test]
fn children_spread_over_workers_and_a_lost_worker_fails_its_processes() {
    let mut cluster = TestCluster::start(3, &[]);
    let (mut run, share) = fan_out(&cluster.addr, 6);
    let (root_host, children) = placement(&cluster);
    assert_eq!(children.len(), 6);
    let mut used: Vec<&String> = children.iter().chain([&root_host]).collect();
    used.sort();
    used.dedup();
    assert_eq!(used.len(), 3, "the planner spreads children: {children:?}");
    // Heartbeats report each worker's processes by app, and its memory.
    common::until("every worker reports the app's processes", || {
        hosts(&cluster.addr).iter().all(|row| {
            row.last()
                .is_some_and(|apps| apps.starts_with("c-fan-out-"))
        })
    });

    // Lose a worker that runs children but not the root.
    let lost = children.iter().find(|h| **h != root_host).unwrap().clone();
    let lost_children = children.iter().filter(|h| **h == lost).count();
    cluster.kill_worker(&lost);
    std::fs::write(share.path().join("go"), "").unwrap();
    let mut lines = Vec::new();
    for _ in 0..6 {
        lines.push(run.announced("child "));
    }
    assert_eq!(run.child.wait().unwrap().code(), Some(0));
    let failed = lines
        .iter()
        .filter(|l| l.contains("lost (send -2, wait -4"))
        .count();
    let exited = lines.iter().filter(|l| l.ends_with("exited 0")).count();
    assert_eq!(
        (failed, exited),
        (lost_children, 6 - lost_children),
        "{lines:?}"
    );
}

#[test]
fn a_planner_killed_mid_run_comes_back_with_its_workers_and_the_run_finishes() {
    let mut cluster = TestCluster::start(3, &[]);
    let (mut run, share) = fan_out(&cluster.addr, 6);
    let ids = |rows: &[Vec<String>]| rows.iter().map(|row| row[0].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&hosts(&cluster.addr)), ["host-1", "host-2", "host-3"]);

    cluster.restart_planner();
    // The workers keep their processes and rejoin under their old ids.
    common::until("every worker has rejoined", || {
        let rows = hosts(&cluster.addr);
        rows.len() == 3 && rows.iter().all(|row| row[6] != "awaiting")
    });
    assert_eq!(ids(&hosts(&cluster.addr)), ["host-1", "host-2", "host-3"]);
    std::fs::write(share.path().join("go"), "").unwrap();
    for _ in 0..6 {
        let line = run.announced("child ");
        assert!(line.ends_with("exited 0"), "{line}");
    }
    assert_eq!(run.child.wait().unwrap().code(), Some(0));

    // New runs are placed again, and a newcomer gets an id never used before.
    let (stdout, stderr, code) = outcome(&run_on(&cluster, &[], "spawn-check", &[]));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("spawn-check ok"), "{stdout}");
    assert_eq!(cluster.add_worker(&[]), "host-4");
}

#[test]
fn a_worker_opens_no_directory_outside_those_it_allows() {
    let cluster = TestCluster::start(1, &[]);
    // The run's home asks the worker to preopen /etc: refused, nothing runs.
    let mut command = cluster.nimbus(&["run", "--dir", "/etc::/etc"]);
    command.arg(guest("hello"));
    let (stdout, stderr, code) = outcome(&run(command));
    assert_ne!(code, Some(0), "{stdout}{stderr}");
    assert!(!stdout.contains("Hello"), "{stdout}");
    // A directory under one it allows is fine.
    let share = tempfile::tempdir().unwrap();
    let mount = format!("{}::/share", share.path().display());
    let mut command = cluster.nimbus(&["run", "--dir", &mount]);
    command.arg(guest("hello"));
    let (stdout, stderr, code) = outcome(&run(command));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("Hello from nimbus!"), "{stdout}");
}

#[test]
fn a_frozen_worker_is_declared_lost_and_leaves_no_copy_when_it_thaws() {
    let mut cluster = TestCluster::start(3, &[]);
    let (mut run, share) = fan_out(&cluster.addr, 6);
    let (root_host, children) = placement(&cluster);
    let frozen = children.iter().find(|h| **h != root_host).unwrap().clone();
    let frozen_children = children.iter().filter(|h| **h == frozen).count();
    let at = cluster
        .workers
        .iter()
        .position(|(_, host)| *host == frozen)
        .unwrap();
    let pid = cluster.workers[at].0.child.id().to_string();
    let kill = |signal: &str| {
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    };

    // Frozen: its kernel still acknowledges TCP, its process answers nothing.
    kill("-STOP");
    std::fs::write(share.path().join("go"), "").unwrap();
    let mut lines = Vec::new();
    for _ in 0..6 {
        lines.push(run.announced("child "));
    }
    assert_eq!(run.child.wait().unwrap().code(), Some(0));
    let lost = lines.iter().filter(|l| l.contains("lost (")).count();
    let exited = lines.iter().filter(|l| l.ends_with("exited 0")).count();
    assert_eq!(
        (lost, exited),
        (frozen_children, 6 - frozen_children),
        "{lines:?}"
    );

    // Thawed after the planner dropped it, it ends itself and its processes.
    common::until("the planner drops the frozen worker", || {
        hosts(&cluster.addr).iter().all(|row| row[0] != frozen)
    });
    kill("-CONT");
    let worker = &mut cluster.workers[at].0;
    common::until("the thawed worker exits", || {
        worker.child.try_wait().unwrap().is_some()
    });
    assert!(
        cluster
            .processes()
            .iter()
            .all(|(_, host, _)| *host != frozen),
        "a copy is left on {frozen}"
    );
}

#[test]
fn losing_the_root_worker_fails_the_run_and_ends_its_tree() {
    let mut cluster = TestCluster::start(3, &[]);
    let (mut run, _share) = fan_out(&cluster.addr, 6);
    let (root_host, _) = placement(&cluster);
    cluster.kill_worker(&root_host);
    // The run reports the loss (exit 126, "host lost") ...
    assert_eq!(run.child.wait().unwrap().code(), Some(126));
    // ... and the children it left on the other workers are stopped.
    common::until("the lost root's children are stopped", || {
        cluster.processes().is_empty()
    });
}

#[test]
fn up_with_workers_starts_a_local_cluster_that_ps_lists() {
    let temp = std::env::temp_dir();
    // Its own client config, which `ps` below reads the token from.
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("config.json");
    // The run below shares a temporary directory with its processes.
    let mut up = common::up(&["--workers", "3", "--allow-dir", temp.to_str().unwrap()]);
    up.env("NIMBUS_CONFIG", &config);
    let mut up = Daemon::start(up);
    let gateway = up.announced("nimbus: gateway listening on ");
    up.announced("nimbus: data plane listening on ");
    let planner = up.announced("nimbus: planner listening on ");
    assert_eq!(hosts(&planner).len(), 3);

    let (mut tree, share) = fan_out(&planner, 4);
    let mut ps = common::nimbus(&["ps", "--server", &gateway]);
    ps.env("NIMBUS_CONFIG", &config);
    let (stdout, stderr, code) = outcome(&run(ps));
    assert_eq!(code, Some(0), "{stderr}");
    let on_workers = stdout.lines().filter(|l| l.contains(" host-")).count();
    assert_eq!(on_workers, 5, "the root and its 4 children:\n{stdout}");
    std::fs::write(share.path().join("go"), "").unwrap();
    assert_eq!(tree.child.wait().unwrap().code(), Some(0));

    // `--cluster` finds the planner in the client config file `nimbus up` wrote.
    let mut on_cluster = common::nimbus(&["run", "--cluster", guest("hello").to_str().unwrap()]);
    on_cluster.env("NIMBUS_CONFIG", &config);
    let (stdout, stderr, code) = outcome(&run(on_cluster));
    assert_eq!(
        (code, stdout.as_str()),
        (Some(0), "Hello from nimbus!\n"),
        "{stderr}"
    );
    let mut without = common::nimbus(&["run", "--cluster", guest("hello").to_str().unwrap()]);
    without.env("NIMBUS_CONFIG", config_dir.path().join("none.json"));
    let (_, stderr, code) = outcome(&run(without));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("none.json does not exist"), "{stderr}");

    // The cluster stops with `nimbus up`.
    assert!(up.signal("TERM").success());
    let (_, _, code) = outcome(&run(common::nimbus(&["hosts", "--planner", &planner])));
    assert_ne!(code, Some(0), "the planner outlived nimbus up");
}

#[test]
fn up_gives_each_worker_a_certificate_of_its_own_and_revoking_one_ends_it_alone() {
    // A cluster of its own: the revocation must not reach other tests' nodes.
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("cluster");
    let cluster_dir = dir.to_str().unwrap();
    let mut up = common::up(&["--workers", "3", "--cluster-dir", cluster_dir]);
    // Its own data directory too: two planners cannot share one store.
    up.env("NIMBUS_CONFIG", temp.path().join("config.json"))
        .env("NIMBUS_DATA_DIR", temp.path().join("data"));
    let up = Daemon::start(up);
    up.announced("nimbus: gateway listening on ");
    up.announced("nimbus: data plane listening on ");
    let planner = up.announced("nimbus: planner listening on ");
    let as_client = ["--cluster-dir", cluster_dir];
    assert_eq!(hosts_with(&planner, &as_client).len(), 3);
    let certificates: std::collections::HashSet<Vec<u8>> = ["planner", "gateway"]
        .into_iter()
        .map(str::to_owned)
        .chain((1..=3).map(|n| format!("worker-{n}")))
        .map(|node| std::fs::read(dir.join("nodes").join(node).join("node.pem")).unwrap())
        .collect();
    assert_eq!(certificates.len(), 5, "nodes share a certificate");

    // The planner follows the CA's list (its crl.pem links to it): worker-2's
    // open connection to it ends, and it is refused from then on.
    let revoke = common::nimbus(&["cluster", "revoke", cluster_dir, "worker-2"]);
    let (stdout, stderr, code) = outcome(&run(revoke));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("revoked node worker-2"), "{stdout}");
    common::until("the revoked worker is dropped", || {
        hosts_with(&planner, &as_client).len() == 2
    });
}

#[test]
fn an_interrupted_run_ends_its_tree_on_every_worker() {
    let cluster = TestCluster::start(3, &[]);
    let (mut tree, _share) = fan_out(&cluster.addr, 6);
    assert_eq!(cluster.processes().len(), 7);
    // The `nimbus run` that is the tree's home dies without a word.
    tree.signal("KILL");
    common::until("the tree of the killed run is stopped", || {
        cluster.processes().is_empty()
    });
}

/// Runs `fan_out CHILDREN` on `cluster` to the end; returns its stderr and exit code.
fn fan_out_to_the_end(cluster: &TestCluster, children: &str) -> (String, Option<i32>) {
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("go"), "").unwrap();
    let mount = format!("{}::/share", share.path().display());
    // Budgets name apps; on a cluster the default name also carries the module's hash.
    let mut command = cluster.nimbus(&["run", "--app", "c-fan-out", "--dir", &mount]);
    command
        .arg(guest("c-fan-out"))
        .args(["--", children, "/share/go"]);
    let (_, stderr, code) = outcome(&run(command));
    (stderr, code)
}

#[test]
fn a_spawn_no_worker_can_fit_waits_then_fails_clearly() {
    // Two workers of two processes each: the root and three children fill them.
    let cluster = TestCluster::start(2, &["--max-processes", "2", "--spawn-wait", "300ms"]);
    let (stderr, code) = fan_out_to_the_end(&cluster, "4");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("fan_out: spawn 3 failed: -6"), "{stderr}");
}

#[test]
fn an_app_budget_holds_across_workers() {
    let cluster = TestCluster::start_with(
        &["--app-budget", "c-fan-out=3"],
        3,
        &["--spawn-wait", "300ms"],
    );
    // The root and two children fit the budget; a third child does not, whichever
    // worker has room.
    let (stderr, code) = fan_out_to_the_end(&cluster, "2");
    assert_eq!(code, Some(0), "{stderr}");
    let (stderr, code) = fan_out_to_the_end(&cluster, "3");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("fan_out: spawn 2 failed: -6"), "{stderr}");
}

#[test]
fn a_run_on_an_unreachable_planner_or_with_embedded_flags_fails_clearly() {
    let hello = guest("hello");
    let hello = hello.to_str().unwrap();
    let (_, stderr, code) = outcome(&run(common::nimbus(&[
        "run",
        "--planner",
        "127.0.0.1:1",
        hello,
    ])));
    assert_eq!(code, Some(126), "{stderr}");
    assert!(stderr.contains("planner 127.0.0.1:1"), "{stderr}");
    // In-process hosts and a state URL belong to the embedded default, not a cluster.
    for flag in [["--hosts", "2"], ["--state", "redis://127.0.0.1:1"]] {
        let mut args = vec!["run", "--planner", "127.0.0.1:1"];
        args.extend(flag);
        args.push(hello);
        let (_, stderr, code) = outcome(&run(common::nimbus(&args)));
        assert_eq!(code, Some(2), "{flag:?}: {stderr}");
    }
}

/// A mesh request frame as a peer would write it in the clear (the layout of
/// `nimbus-mesh`): length of the rest, call id, flags (a request, the last), head
/// length, the JSON head, no body.
fn plaintext_request(head: &str) -> Vec<u8> {
    let mut rest = Vec::new();
    rest.extend_from_slice(&1u64.to_le_bytes());
    rest.push(1 | 2);
    rest.extend_from_slice(&(head.len() as u32).to_le_bytes());
    rest.extend_from_slice(head.as_bytes());
    let mut frame = (rest.len() as u32).to_le_bytes().to_vec();
    frame.extend(rest);
    frame
}

#[test]
fn only_nodes_of_the_cluster_are_served() {
    use std::io::{Read, Write};
    let cluster = TestCluster::start(1, &[]);
    let (mut tree, share) = fan_out(&cluster.addr, 1);
    let (root, _, _) = cluster
        .processes()
        .into_iter()
        .find(|(_, _, parent)| parent == "-")
        .unwrap();
    let worker = &cluster.mesh_addresses["host-1"];
    // Valid requests, sent in the clear: to kill the root, to list the processes,
    // to start a process preopening /etc.
    let start = format!(
        r#"{{"start":{{"lineage":{{"dirs":[["/etc","/etc"]]}},"module":"00","from":"{worker}"}}}}"#
    );
    for head in [
        format!(r#"{{"kill":{{"pid":{root}}}}}"#),
        r#""processes""#.to_owned(),
        start,
    ] {
        let mut stream = std::net::TcpStream::connect(worker).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        stream.write_all(&plaintext_request(&head)).unwrap();
        let mut answer = Vec::new();
        let read = stream.read_to_end(&mut answer);
        assert!(
            read.is_ok() || answer.is_empty(),
            "the worker kept a plaintext connection open: {read:?}"
        );
        // At most a TLS alert (record type 21): the handshake it expected failed.
        assert!(
            answer.is_empty() || answer[0] == 21,
            "{head}: the worker answered {answer:?}"
        );
    }
    // Nothing was killed.
    assert!(cluster.processes().iter().any(|(pid, _, _)| *pid == root));

    // Nodes and clients of another cluster are refused, clearly.
    let other = tempfile::tempdir().unwrap();
    let other_dir = other.path().join("cluster");
    let (_, stderr, code) = outcome(&run(common::nimbus(&[
        "cluster",
        "init",
        other_dir.to_str().unwrap(),
    ])));
    assert_eq!(code, Some(0), "{stderr}");
    let stranger = |args: &[&str]| {
        let mut command = common::nimbus(args);
        command.env("NIMBUS_CLUSTER_DIR", &other_dir);
        outcome(&run(command))
    };
    let (_, stderr, code) = stranger(&["hosts", "--planner", &cluster.addr]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("not of one cluster"), "{stderr}");
    let (_, stderr, code) = stranger(&["worker", "--planner", &cluster.addr]);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("not of one cluster"), "{stderr}");
    let (_, stderr, code) = stranger(&["ps", "--planner", &cluster.addr]);
    assert_ne!(code, Some(0), "{stderr}");
    let hello = guest("hello");
    let (stdout, stderr, code) =
        stranger(&["run", "--planner", &cluster.addr, hello.to_str().unwrap()]);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(hosts(&cluster.addr).len(), 1, "a stranger joined");

    // `nimbus cluster init` will not overwrite a cluster.
    let (_, stderr, code) = outcome(&run(common::nimbus(&[
        "cluster",
        "init",
        other_dir.to_str().unwrap(),
    ])));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("already holds cluster credentials"),
        "{stderr}"
    );

    std::fs::write(share.path().join("go"), "").unwrap();
    assert_eq!(tree.child.wait().unwrap().code(), Some(0));
}

#[test]
fn a_revoked_worker_is_refused_and_not_listed() {
    // A CA, and a certificate of its own for the planner and for two workers.
    let temp = tempfile::tempdir().unwrap();
    let path = |name: &str| temp.path().join(name).to_str().unwrap().to_owned();
    let ca = path("ca");
    let cluster = |args: &[&str]| outcome(&run(common::nimbus(&[&["cluster"], args].concat())));
    let (_, stderr, code) = cluster(&["init", &ca]);
    assert_eq!(code, Some(0), "{stderr}");
    for name in ["planner", "worker-1"] {
        let (stdout, stderr, code) = cluster(&["issue", &ca, name, "--out", &path(name)]);
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stdout.contains(&format!("issued node {name}")), "{stdout}");
        assert!(!temp.path().join(name).join("ca-key.pem").exists());
    }
    let (_, stderr, code) = cluster(&["issue", &ca, "worker-1", "--out", &path("again")]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("already issued"), "{stderr}");

    let planner_dir = path("planner");
    let as_planner = ["--cluster-dir", planner_dir.as_str()];
    let mut nodes = TestCluster::start_with(&as_planner, 0, &[]);
    let worker_1 = path("worker-1");
    let host = nodes.add_worker(&["--cluster-dir", &worker_1]);
    let listed = hosts_with(&nodes.addr, &as_planner);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0][0], host);

    // Revoked, the list copied to the planner, which is not restarted.
    nodes.kill_worker(&host);
    let (stdout, stderr, code) = cluster(&["revoke", &ca, "worker-1"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("revoked node worker-1"), "{stdout}");
    let staged = temp.path().join("planner").join("crl.pem.new");
    std::fs::copy(temp.path().join("ca").join("crl.pem"), &staged).unwrap();
    std::fs::rename(&staged, temp.path().join("planner").join("crl.pem")).unwrap();
    let as_worker_1 = ["--cluster-dir", worker_1.as_str()];
    common::until("the planner refuses the revoked certificate", || {
        let mut command = common::nimbus(&["hosts", "--planner", &nodes.addr]);
        command.args(as_worker_1);
        outcome(&run(command)).2 != Some(0)
    });

    // A worker started with the revoked certificate is refused, and says why.
    let mut worker = common::nimbus(&["worker", "--planner", &nodes.addr]);
    worker.args(as_worker_1);
    let (_, stderr, code) = outcome(&run(worker));
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("a certificate is revoked"), "{stderr}");
    assert!(stderr.contains("CertificateRevoked"), "{stderr}");

    // It never joined: once the killed worker is dropped, no host is listed; a
    // node issued a certificate after the revocation joins.
    common::until("the killed worker is dropped", || {
        hosts_with(&nodes.addr, &as_planner).is_empty()
    });
    let (_, stderr, code) = cluster(&["issue", &ca, "worker-2", "--out", &path("worker-2")]);
    assert_eq!(code, Some(0), "{stderr}");
    let worker_2 = path("worker-2");
    let joined = nodes.add_worker(&["--cluster-dir", &worker_2]);
    let listed: Vec<_> = hosts_with(&nodes.addr, &as_planner)
        .iter()
        .map(|row| row[0].clone())
        .collect();
    assert_eq!(listed, [joined]);
}
