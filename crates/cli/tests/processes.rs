//! Spawn, wait, send and receive through the host ABI, from Rust and from C.

mod common;

use common::{guest, nimbus, outcome, run};

#[test]
fn spawn_wait_send_receive_from_the_rust_sdk_and_the_c_header() {
    for program in ["spawn-check", "c-spawn-check"] {
        for hosts in ["1", "3"] {
            let path = guest(program);
            let command = nimbus(&["run", "--hosts", hosts, path.to_str().unwrap()]);
            let (stdout, stderr, code) = outcome(&run(command));
            assert_eq!(
                code,
                Some(0),
                "{program} on {hosts} hosts: {stdout}{stderr}"
            );
            assert!(stdout.contains("spawn-check ok"), "{program}: {stdout}");
        }
    }
}

#[test]
fn parallel_sum_gathers_results_from_children() {
    let path = guest("parallel-sum");
    let command = nimbus(&[
        "run",
        "--hosts",
        "2",
        path.to_str().unwrap(),
        "--",
        "8",
        "1000000",
    ]);
    let (stdout, stderr, code) = outcome(&run(command));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("sum of 0..1000000 over 8 processes = 499999500000"),
        "{stdout}"
    );
}

#[test]
fn ten_thousand_children_spawned_and_waited() {
    let path = guest("parallel-sum");
    let command = nimbus(&[
        "run",
        "--mem",
        "16MiB",
        path.to_str().unwrap(),
        "--",
        "10000",
        "10000000",
    ]);
    let (stdout, stderr, code) = outcome(&run(command));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("over 10000 processes = 49999995000000"),
        "{stdout}"
    );
}

#[test]
fn a_trapping_child_is_reported_to_its_parent_not_the_host() {
    // spawn-check's children exit 7; a trapping child must come back as a failure
    // code through wait, while the host and the parent keep running. The C checker
    // spawns `trap.wasm` by name when given `trap-child`.
    let path = guest("c-spawn-check");
    let command = nimbus(&["run", path.to_str().unwrap(), "--", "trap-child"]);
    let (stdout, stderr, code) = outcome(&run(command));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("child failed with 132"), "{stdout}");
}
