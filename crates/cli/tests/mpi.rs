//! Plain MPI C programs (`include/mpi.h`) run as worlds of ranks: `nimbus run --ranks N`.

mod common;

use common::{guest, nimbus, outcome, run};

fn mpi_check(flags: &[&str], args: &[&str]) -> (String, String, Option<i32>) {
    let path = guest("c-mpi-check");
    let mut command = vec!["run"];
    command.extend_from_slice(flags);
    command.push(path.to_str().unwrap());
    if !args.is_empty() {
        command.push("--");
        command.extend_from_slice(args);
    }
    outcome(&run(nimbus(&command)))
}

#[test]
fn every_collective_agrees_with_the_sequential_result() {
    for (ranks, hosts) in [("1", "1"), ("2", "1"), ("4", "3"), ("7", "2")] {
        let (stdout, stderr, code) = mpi_check(&["--ranks", ranks, "--hosts", hosts], &[]);
        assert_eq!(
            code,
            Some(0),
            "{ranks} ranks on {hosts} hosts: {stdout}{stderr}"
        );
        assert_eq!(
            stdout,
            format!(
                "mpi-check: every collective agrees with the sequential result on {ranks} ranks\n"
            )
        );
    }
    // Without --ranks, an MPI program is a world of one.
    let (stdout, _, code) = mpi_check(&[], &[]);
    assert_eq!((code, stdout.contains("on 1 ranks")), (Some(0), true));
}

#[test]
fn a_failing_rank_ends_the_world_with_its_status() {
    // The other ranks block in collectives the trapped rank never joins.
    let (stdout, stderr, code) = mpi_check(&["--ranks", "4", "--hosts", "2"], &["trap-rank", "2"]);
    assert_eq!(code, Some(132), "{stdout}{stderr}");
    assert!(stderr.contains("unreachable"), "{stderr}");
}

#[test]
fn a_world_needs_at_least_one_rank() {
    let (_, stderr, code) = mpi_check(&["--ranks", "0"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
}
