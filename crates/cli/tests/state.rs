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
