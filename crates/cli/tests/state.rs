//! Two-tier state from guests through the real binary, on the embedded global tier
//! and on a real Redis.

mod common;

use common::{guest, nimbus, outcome, run};
use nimbus_state::testing::RedisServer;

fn state_check(flags: &[&str]) -> (String, String, Option<i32>) {
    let path = guest("c-state-check");
    let mut args = vec!["run"];
    args.extend_from_slice(flags);
    args.push(path.to_str().unwrap());
    outcome(&run(nimbus(&args)))
}

#[test]
fn every_state_operation_on_the_embedded_tier() {
    for hosts in ["1", "3"] {
        let (stdout, stderr, code) = state_check(&["--hosts", hosts]);
        assert_eq!(code, Some(0), "{hosts} hosts: {stdout}{stderr}");
        assert_eq!(stdout, "state-check ok\n");
    }
}

#[test]
fn every_state_operation_on_redis() {
    let redis = RedisServer::start().expect("redis-server starts (scripts/setup.sh installs it)");
    let url = redis.url();
    let (stdout, stderr, code) = state_check(&["--hosts", "3", "--state", &url]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(stdout, "state-check ok\n");
}

#[test]
fn a_bad_state_url_or_app_name_is_refused() {
    let (_, stderr, code) = state_check(&["--state", "redis://127.0.0.1:1"]);
    assert_eq!(code, Some(126), "{stderr}");
    assert!(stderr.contains("redis://127.0.0.1:1"), "{stderr}");
    let (_, stderr, code) = state_check(&["--state", "memcached://x"]);
    assert_eq!(code, Some(126), "{stderr}");
    let (_, stderr, code) = state_check(&["--app", "no spaces"]);
    assert_eq!(code, Some(2), "{stderr}");
}
