//! Nothing a guest or a peer can break: servers that outlive running out of
//! descriptors, processes that end with their owner, shutdown that does not wait on
//! idle clients, and two nodes on one machine.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use common::{Daemon, TestCluster, guest, nimbus, outcome, run, until};

/// Lowers both limits on open descriptors of the process `command` starts to `n`
/// (`nimbus` raises only its soft limit, to the hard one).
fn limit_descriptors(command: &mut Command, n: libc::rlim_t) {
    let limit = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    let lower = move || {
        // SAFETY: `limit` is a valid `rlimit`, only read; setrlimit is
        // async-signal-safe, so it may run between fork and exec.
        match unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    };
    // SAFETY: the closure makes one async-signal-safe call on memory it owns and
    // builds an error value, which is what may run between fork and exec.
    unsafe {
        command.pre_exec(lower);
    }
}

/// How many descriptors process `pid` has open.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |entries| entries.count())
}

#[test]
fn a_worker_out_of_descriptors_keeps_serving_once_they_are_free() {
    const LIMIT: usize = 200;
    let mut cluster = TestCluster::start(0, &[]);
    let mut command = nimbus(&["worker", "--planner", &cluster.addr]);
    limit_descriptors(&mut command, LIMIT as libc::rlim_t);
    let worker = Daemon::start(command);
    let joined = worker.announced(&format!("nimbus: worker joined {} as host ", cluster.addr));
    let (host, mesh) = joined.split_once(" at ").unwrap();
    let (host, mesh) = (host.to_owned(), mesh.to_owned());
    let pid = worker.child.id();
    cluster.workers.push((worker, host));

    // More connections than the worker has descriptors: once its table is full,
    // every accept fails (EMFILE) while the rest wait in the backlog.
    let flood: Vec<TcpStream> = (0..LIMIT + 50)
        .map(|_| TcpStream::connect(&mesh).unwrap())
        .collect();
    until("the worker's descriptor table is full", || {
        open_descriptors(pid) >= LIMIT
    });
    drop(flood);
    until("the worker closes the flood's connections", || {
        open_descriptors(pid) < LIMIT / 2
    });

    assert!(
        cluster.workers[0].0.child.try_wait().unwrap().is_none(),
        "the worker ended"
    );
    let mut nimbus = cluster.nimbus(&["run"]);
    nimbus.arg(guest("hello"));
    let (stdout, stderr, code) = outcome(&run(nimbus));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "Hello from nimbus!\n");
}

/// `nimbus up` on free ports with `flags`, its client config in `data_dir`
/// (`client-config.json`); returns it and its gateway's address.
fn up(data_dir: &std::path::Path, flags: &[&str]) -> (Daemon, String) {
    let mut command = nimbus(&["up", "--listen", "127.0.0.1:0"]);
    command
        .args(flags)
        .env("NIMBUS_DATA_DIR", data_dir)
        .env("NIMBUS_CONFIG", data_dir.join("client-config.json"));
    let daemon = Daemon::start(command);
    let url = daemon.announced("nimbus: gateway listening on ");
    let address = url.strip_prefix("http://").unwrap().to_owned();
    (daemon, address)
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) {
            // pid (comm) state ppid ...: comm may hold spaces, so split after it.
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            let ppid: u32 = after.split(' ').nth(1).unwrap().parse().unwrap();
            if ppid == pid {
                children.push(child);
            }
        }
    }
    children
}

/// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'),
    }
}

#[test]
fn a_killed_up_takes_its_planner_and_workers_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut node, _) = up(dir.path(), &["--workers", "1"]);
    node.announced("nimbus: data plane listening on ");
    node.announced("nimbus: planner listening on ");
    let children = children_of(node.child.id());
    assert_eq!(children.len(), 2, "a planner and a worker: {children:?}");

    assert!(!node.signal("KILL").success());
    until("the planner and the worker end with nimbus up", || {
        children.iter().all(|&child| ended(child))
    });
}

/// Reads an HTTP response's head and its body (`Content-Length` long) from `reader`.
fn response(reader: &mut BufReader<TcpStream>) -> String {
    let mut length = 0;
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    head
}

#[test]
fn up_stops_on_sigterm_while_clients_hold_idle_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (mut node, address) = up(dir.path(), &["--data-listen", "127.0.0.1:0"]);
    let config = common::client_config(&dir.path().join("client-config.json"));
    let token = config["token"].as_str().unwrap();
    // One keep-alive connection after a request, one that never sent a byte.
    let mut kept = TcpStream::connect(&address).unwrap();
    let request =
        format!("GET /v1/apps HTTP/1.1\r\nHost: nimbus\r\nAuthorization: Bearer {token}\r\n\r\n");
    kept.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(kept.try_clone().unwrap());
    assert!(response(&mut reader).starts_with("HTTP/1.1 200"));
    let _silent = TcpStream::connect(&address).unwrap();
    // And one that stopped midway through uploading a request body, which a
    // graceful shutdown alone waits for forever.
    let mut stalled = TcpStream::connect(&address).unwrap();
    let upload = format!(
        "PUT /v1/apps/stalled HTTP/1.1\r\nHost: nimbus\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 1000000\r\n\r\npart"
    );
    stalled.write_all(upload.as_bytes()).unwrap();

    let pid = node.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // `until`'s bound is far more than the grace period (5 s); a node waiting on its
    // idle clients never ends.
    let mut status = None;
    until("nimbus up ends", || {
        status = node.child.try_wait().unwrap();
        status.is_some()
    });
    let status = status.unwrap();
    assert!(status.success(), "{status}");
    drop((kept, stalled));
}

#[test]
fn two_ups_on_one_machine_take_their_own_data_plane_ports() {
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (first, first_gateway) = up(first_dir.path(), &[]);
    let (second, second_gateway) = up(second_dir.path(), &[]);
    let first_data = first.announced("nimbus: data plane listening on ");
    let second_data = second.announced("nimbus: data plane listening on ");
    assert_ne!(first_data, second_data);
    assert_ne!(first_data, "127.0.0.1:7071");
    for address in [first_data, second_data, first_gateway, second_gateway] {
        TcpStream::connect(&address).unwrap();
    }
}

/// Resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

#[test]
fn a_million_tiny_messages_to_a_process_that_never_receives_are_held_at_the_quota() {
    use nimbus_runtime::{MAILBOX_CAPACITY, MESSAGE_OVERHEAD};
    const MESSAGES: usize = 1_000_000;
    // What fits before the sender is held back, in the guest's steps of 10,000.
    let fit = MAILBOX_CAPACITY / (1 + MESSAGE_OVERHEAD) / 10_000 * 10_000;
    assert!(fit < MESSAGES);
    let share = tempfile::tempdir().unwrap();
    let mount = format!("{}::/share", share.path().display());
    let mut command = nimbus(&["run", "--dir", &mount]);
    command
        .arg(guest("bounds-check"))
        .args(["--", "flood", &MESSAGES.to_string(), "/share"]);
    let mut flood = Daemon::start(command);
    let pid = flood.child.id();
    assert_eq!(flood.announced("sent "), "10000");
    let before = rss(pid);
    for k in (20_000..=fit).step_by(10_000) {
        assert_eq!(flood.announced("sent "), k.to_string());
    }
    // Held back: a sender that was not would be through its next 10,000 in a few
    // milliseconds.
    let next = flood.line_within(Duration::from_secs(2));
    assert_eq!(next, None, "the sender went past the mailbox's quota");
    let grown = rss(pid).saturating_sub(before);
    eprintln!("held at the quota after {fit}+ messages: the host grew by {grown} bytes");
    assert!(grown < 200 << 20, "the host grew by {grown} bytes");

    std::fs::write(share.path().join("go"), "").unwrap();
    let mut k = fit;
    loop {
        let line = flood.announced("sent ");
        if line == "all" {
            break;
        }
        k += 10_000;
        assert_eq!(line, k.to_string());
    }
    assert_eq!(flood.announced("sink exited "), "0");
    assert!(flood.child.wait().unwrap().success());
}

#[test]
fn a_hundred_thousand_short_processes_leave_memory_flat() {
    let mut command = nimbus(&["run"]);
    command
        .arg(guest("bounds-check"))
        .args(["--", "spawns", "100000"]);
    let mut spawns = Daemon::start(command);
    let pid = spawns.child.id();
    assert_eq!(spawns.announced("spawned "), "10000");
    let before = rss(pid);
    for k in (20_000..=90_000).step_by(10_000) {
        assert_eq!(spawns.announced("spawned "), k.to_string());
    }
    // Read while it still has 10,000 to spawn: once done it exits, and an ended
    // process has no resident set to read.
    let grown = rss(pid).saturating_sub(before);
    eprintln!("from 10,000 to 90,000 processes the host grew by {grown} bytes");
    // Flat: what 80,000 more processes may add, for all of them together.
    assert!(grown < 32 << 20, "the host grew by {grown} bytes");
    assert_eq!(spawns.announced("spawned "), "100000");
    assert!(spawns.child.wait().unwrap().success());
}

#[test]
fn channels_past_the_bound_are_refused_and_the_worker_serves_on() {
    use nimbus_runtime::MAX_CHANNELS;
    // Spread over 3 workers, about two thirds of the children are on other workers
    // than their parent: well over the bound.
    let children = 2 * MAX_CHANNELS + MAX_CHANNELS / 2;
    let mut cluster = TestCluster::start(3, &[]);
    let mut command = cluster.nimbus(&["run"]);
    command
        .arg(guest("bounds-check"))
        .args(["--", "channels", &children.to_string()]);
    let (stdout, stderr, code) = outcome(&run(command));
    assert_eq!(code, Some(0), "{stderr}");
    let counts: Vec<usize> = stdout
        .trim()
        .strip_prefix("channels ")
        .unwrap_or_else(|| panic!("{stdout}"))
        .split(' ')
        .map(|kv| kv.split_once('=').unwrap().1.parse().unwrap())
        .collect();
    let [ok, quota, other] = counts[..] else {
        panic!("{stdout}");
    };
    eprintln!("{}", stdout.trim());
    assert_eq!(other, 0, "{stderr}");
    assert!(ok >= MAX_CHANNELS, "{stdout}");
    assert!(quota > 0, "{stdout}");
    assert_eq!(ok + quota, children);

    // Every worker is up and serves.
    for (worker, host) in &mut cluster.workers {
        assert!(worker.child.try_wait().unwrap().is_none(), "{host} ended");
    }
    let mut nimbus = cluster.nimbus(&["run"]);
    nimbus.arg(guest("hello"));
    let (stdout, stderr, code) = outcome(&run(nimbus));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "Hello from nimbus!\n");
}
