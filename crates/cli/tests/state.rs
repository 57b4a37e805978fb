//! Two-tier state from guests (C through nimbus.h, Rust through the SDK) through the
//! real binary, on the embedded global tier and on a real Redis.

mod common;

use common::{TestCluster, guest, nimbus, outcome, run};
use nimbus_state::testing::RedisServer;

/// Both state-check guests: the C one and the Rust one.
const GUESTS: [&str; 2] = ["c-state-check", "state-check"];

fn state_check(program: &str, flags: &[&str]) -> (String, String, Option<i32>) {
    let path = guest(program);
    let mut args = vec!["run"];
    args.extend_from_slice(flags);
    args.push(path.to_str().unwrap());
    outcome(&run(nimbus(&args)))
}

#[test]
fn every_state_operation_on_the_embedded_tier() {
    for program in GUESTS {
        for hosts in ["1", "3"] {
            let (stdout, stderr, code) = state_check(program, &["--hosts", hosts]);
            assert_eq!(
                code,
                Some(0),
                "{program} on {hosts} hosts: {stdout}{stderr}"
            );
            assert_eq!(stdout, "state-check ok\n");
        }
    }
}

#[test]
fn every_state_operation_on_redis() {
    let redis = RedisServer::start().expect("redis-server starts (scripts/setup.sh installs it)");
    let url = redis.url();
    for program in GUESTS {
        let (stdout, stderr, code) = state_check(program, &["--hosts", "3", "--state", &url]);
        assert_eq!(code, Some(0), "{program}: {stdout}{stderr}");
        assert_eq!(stdout, "state-check ok\n");
    }
}

#[test]
fn workers_in_separate_processes_share_state_on_both_tiers() {
    let redis = RedisServer::start().expect("redis-server starts (scripts/setup.sh installs it)");
    let redis_url = redis.url();
    // The embedded tier their planner serves (no flag), and Redis.
    let tiers: [&[&str]; 2] = [&[], &["--state", &redis_url]];
    for worker_flags in tiers {
        let cluster = TestCluster::start(3, worker_flags);
        for program in GUESTS {
            let mut command = cluster.nimbus(&["run"]);
            command.arg(guest(program));
            let (stdout, stderr, code) = outcome(&run(command));
            assert_eq!(
                code,
                Some(0),
                "{program} {worker_flags:?}: {stdout}{stderr}"
            );
            assert_eq!(stdout, "state-check ok\n");
        }
    }
}

#[test]
fn a_bad_state_url_or_app_name_is_refused() {
    let (_, stderr, code) = state_check(GUESTS[0], &["--state", "redis://127.0.0.1:1"]);
    assert_eq!(code, Some(126), "{stderr}");
    assert!(stderr.contains("redis://127.0.0.1:1"), "{stderr}");
    let (_, stderr, code) = state_check(GUESTS[0], &["--state", "memcached://x"]);
    assert_eq!(code, Some(126), "{stderr}");
    let (_, stderr, code) = state_check(GUESTS[0], &["--app", "no spaces"]);
    assert_eq!(code, Some(2), "{stderr}");
}

/// A program that exits with 3 if its app's global key `k` is set, else sets it to
/// `value` and exits with 0.
fn set_once(value: char) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
  (import "nimbus" "state_get" (func $get (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "nimbus" "state_set" (func $set (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "k")
  (data (i32.const 16) "{value}")
  (func (export "_start")
    (if (i32.eqz (call $get (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 32) (i32.const 16) (i32.const 64)))
      (then (call $exit (i32.const 3))))
    (drop (call $set (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16) (i32.const 1)))
    (call $exit (i32.const 0))))"#
    ))
    .unwrap()
}

#[test]
fn a_write_past_the_embedded_tiers_capacity_is_err_quota() {
    // Sets its app's global key `k` to 200 bytes; exits with the negated result.
    let program = wat::parse_str(
        r#"(module
  (import "nimbus" "state_set" (func $set (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "k")
  (func (export "_start")
    (call $exit (i32.sub (i32.const 0)
      (call $set (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16) (i32.const 200))))))"#,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fill.wasm");
    std::fs::write(&path, program).unwrap();
    // ERR_QUOTA is -6; a tier of 1 KiB takes the 200 bytes (and the key's name).
    for (capacity, code) in [("100", 6), ("1KiB", 0)] {
        let mut command = nimbus(&["run", "--state-capacity", capacity]);
        command.arg(&path);
        let (_, stderr, status) = outcome(&run(command));
        assert_eq!(status, Some(code), "--state-capacity {capacity}: {stderr}");
    }
}

#[test]
fn different_programs_of_one_file_name_do_not_share_a_clusters_state() {
    let cluster = TestCluster::start(2, &[]);
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let programs: Vec<_> = dirs
        .iter()
        .zip(['A', 'B'])
        .map(|(dir, value)| {
            let path = dir.path().join("main.wasm");
            std::fs::write(&path, set_once(value)).unwrap();
            path
        })
        .collect();
    let run_on_cluster = |program: &std::path::Path| {
        let mut command = cluster.nimbus(&["run"]);
        command.arg(program);
        outcome(&run(command))
    };
    // Each finds its app's state empty, though both are `main.wasm`...
    for program in &programs {
        let (_, stderr, code) = run_on_cluster(program);
        assert_eq!(code, Some(0), "{}: {stderr}", program.display());
    }
    // ... and a program run again finds its own.
    let (_, stderr, code) = run_on_cluster(&programs[0]);
    assert_eq!(code, Some(3), "{stderr}");
    // `--app` still chooses the app: both in one share it.
    for (program, expected) in programs.iter().zip([0, 3]) {
        let mut command = cluster.nimbus(&["run", "--app", "shared"]);
        command.arg(program);
        let (_, stderr, code) = outcome(&run(command));
        assert_eq!(code, Some(expected), "{}: {stderr}", program.display());
    }
}

#[test]
fn a_planner_restart_keeps_state_on_redis_and_empties_the_tier_it_serves() {
    let redis = RedisServer::start().expect("redis-server starts (scripts/setup.sh installs it)");
    let redis_url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("once.wasm");
    std::fs::write(&program, set_once('A')).unwrap();
    // The served tier is documented as volatile; Redis as the durable choice.
    let tiers: [(&[&str], Option<i32>); 2] = [(&[], Some(0)), (&["--state", &redis_url], Some(3))];
    for (worker_flags, after_restart) in tiers {
        let mut cluster = TestCluster::start(1, worker_flags);
        let run_once = |cluster: &TestCluster| {
            let mut command = cluster.nimbus(&["run", "--app", "restart-check"]);
            command.arg(&program);
            outcome(&run(command))
        };
        let (_, stderr, code) = run_once(&cluster);
        assert_eq!(code, Some(0), "{worker_flags:?}: {stderr}");
        let (_, stderr, code) = run_once(&cluster);
        assert_eq!(
            code,
            Some(3),
            "{worker_flags:?}: the value was not kept: {stderr}"
        );

        cluster.restart_planner();
        common::until("the worker rejoined", || {
            let (stdout, _, code) = outcome(&run(cluster.nimbus(&["hosts"])));
            code == Some(0) && stdout.lines().count() == 2 && !stdout.contains("awaiting")
        });
        let (_, stderr, code) = run_once(&cluster);
        assert_eq!(code, after_restart, "{worker_flags:?}: {stderr}");
    }
}
