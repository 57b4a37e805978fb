//! Running one MPI C program both ways: as a nimbus world, and built with `mpicc` as a
//! native OpenMPI job over TCP (the baseline).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::daemon::WorkerCluster;

/// Builds `guests/c/NAME.c` natively with `mpicc -O2` into `dir`.
pub fn compile_native(name: &str, dir: &Path) -> PathBuf {
    for tool in ["mpicc", "mpirun"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is missing: run scripts/setup.sh openmpi-bin libopenmpi-dev"
        );
    }
    let native = dir.join(name);
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../guests/c/{name}.c"));
    let compiled = Command::new("mpicc")
        .args(["-O2", "-o"])
        .arg(&native)
        .arg(&source)
        .status()
        .expect("mpicc runs");
    assert!(compiled.success(), "mpicc failed on {}", source.display());
    native
}

/// Where a nimbus world's ranks run.
#[derive(Clone, Copy)]
pub enum Ranks<'a> {
    /// Each on its own in-process host of one `nimbus run` (`--hosts N`).
    InProcess,
    /// On the workers of this cluster, placed by its planner.
    Workers(&'a WorkerCluster),
}

/// `nimbus run --ranks N GUEST -- ARGS`, the ranks placed as `placement` says.
pub fn nimbus(placement: Ranks, guest: &str, ranks: &str, args: &[&str]) -> Vec<Vec<String>> {
    let mut command = crate::nimbus_command();
    command.args(["run", "--ranks", ranks]);
    match placement {
        Ranks::InProcess => command.args(["--hosts", ranks]),
        Ranks::Workers(cluster) => command.args(["--planner", &cluster.planner]),
    };
    command.arg(crate::guest_path(guest)).arg("--").args(args);
    crate::output_words(command, &format!("nimbus {guest} {args:?}"))
}

/// `mpirun -np N --mca btl tcp,self NATIVE ARGS`: OpenMPI over loopback TCP.
pub fn openmpi(native: &Path, ranks: &str, args: &[&str]) -> Vec<Vec<String>> {
    let mut command = Command::new("mpirun");
    command
        .args(["--oversubscribe", "--mca", "btl", "tcp,self", "-np", ranks])
        .arg(native)
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    crate::output_words(command, &format!("OpenMPI {} {args:?}", native.display()))
}
