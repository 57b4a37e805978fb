//! `nimbus run` runs unmodified WASI programs, Rust and C, as a local runtime would.

mod common;

use common::{TestCluster, guest, nimbus, outcome, run, run_with_input};

/// The same checks for the Rust and the C program: args, env, stdin, clocks, random,
/// stderr, files in a preopened directory, and the exit code.
#[test]
fn wasi_programs_see_args_env_stdin_files_and_set_the_exit_code() {
    // The same on the embedded default and on a cluster of worker processes.
    let cluster = TestCluster::start(3, &[]);
    let run_on = |on_cluster: bool| {
        if on_cluster {
            cluster.nimbus(&["run"])
        } else {
            nimbus(&["run"])
        }
    };
    for (program, author) in [("wasi-check", "rust"), ("c-wasi-check", "c")] {
        for on_cluster in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("input.txt"), "from the host\n").unwrap();
            let mount = format!("{}::/data", dir.path().display());
            let path = guest(program);
            let mut command = run_on(on_cluster);
            command.args([
                "--dir",
                &mount,
                "--env",
                "GREETING=hi there",
                path.to_str().unwrap(),
                "--",
                "first",
                "second arg",
                "exit=7",
            ]);
            let (stdout, stderr, code) = outcome(&run_with_input(command, b"piped input\n"));
            assert_eq!(code, Some(7), "{program}: {stderr}");
            let expected = [
                format!("arg[0]={program}.wasm"),
                "arg[1]=first".into(),
                "arg[2]=second arg".into(),
                "arg[3]=exit=7".into(),
                "env GREETING=hi there".into(),
                "stdin=piped input".into(),
                "clock ok".into(),
                "random ok".into(),
                "file=from the host".into(),
            ];
            for line in expected {
                assert!(
                    stdout.lines().any(|l| l == line),
                    "{program}: no `{line}` in\n{stdout}"
                );
            }
            assert!(
                stderr.contains("stderr works"),
                "{program}: stderr was {stderr:?}"
            );
            let written = std::fs::read_to_string(dir.path().join("output.txt")).unwrap();
            assert_eq!(written.trim(), format!("written by {author}"));
        }
    }
}

#[test]
fn exit_code_zero_and_unset_env() {
    for program in ["wasi-check", "c-wasi-check"] {
        let path = guest(program);
        let (stdout, stderr, code) = outcome(&run(nimbus(&["run", path.to_str().unwrap()])));
        assert_eq!(code, Some(0), "{program}: {stderr}");
        assert!(stdout.contains("env GREETING unset"), "{program}: {stdout}");
        assert!(
            !stdout.contains("file="),
            "{program} saw a /data it was not given"
        );
    }
}

#[test]
fn hello_in_rust_and_c() {
    for program in ["hello", "c-hello"] {
        let path = guest(program);
        let (stdout, stderr, code) = outcome(&run(nimbus(&["run", path.to_str().unwrap()])));
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stdout.to_lowercase().contains("hello"), "{stdout}");
    }
}

#[test]
fn second_run_uses_the_cached_artifact() {
    let data = tempfile::tempdir().unwrap();
    let path = guest("hello");
    let run_once = || {
        let mut command = nimbus(&["run", path.to_str().unwrap()]);
        command.env("NIMBUS_DATA_DIR", data.path());
        assert_eq!(run(command).status.code(), Some(0));
    };
    run_once();
    let artifacts: Vec<_> = walk(&data.path().join("modules"));
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    let modified = std::fs::metadata(&artifacts[0])
        .unwrap()
        .modified()
        .unwrap();
    run_once();
    assert_eq!(walk(&data.path().join("modules")), artifacts);
    let again = std::fs::metadata(&artifacts[0])
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(
        modified, again,
        "the artifact was rewritten: compiled again"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// The cached artifact of the built guest `program` under the data directory `data`.
fn artifact(data: &std::path::Path, program: &str) -> std::path::PathBuf {
    let module = nimbus_runtime::ModuleBytes::new(std::fs::read(guest(program)).unwrap());
    let name = format!("{}.cwasm", module.hash());
    std::fs::read_dir(data.join("modules"))
        .unwrap()
        .map(|engine_dir| engine_dir.unwrap().path().join(&name))
        .find(|path| path.exists())
        .unwrap_or_else(|| panic!("no artifact of {program}"))
}

#[test]
fn a_damaged_or_swapped_cached_artifact_is_compiled_again_never_run() {
    let data = tempfile::tempdir().unwrap();
    let run_in = |program: &str| {
        let mut command = nimbus(&["run", guest(program).to_str().unwrap()]);
        command.env("NIMBUS_DATA_DIR", data.path());
        outcome(&run(command))
    };
    let (hello, stderr, code) = run_in("hello");
    assert_eq!(code, Some(0), "{stderr}");
    // Another program, which traps.
    let (_, stderr, code) = run_in("trap");
    assert_eq!(code, Some(132), "{stderr}");

    // 4 KiB flipped in the middle of the artifact.
    let path = artifact(data.path(), "hello");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2 - 2048;
    for byte in &mut bytes[middle..middle + 4096] {
        *byte ^= 0xFF;
    }
    std::fs::write(&path, bytes).unwrap();
    let (stdout, stderr, code) = run_in("hello");
    assert_eq!((stdout, code), (hello.clone(), Some(0)), "{stderr}");
    assert!(stderr.contains("refusing a cached artifact"), "{stderr}");

    // Another program's artifact, whole, in its place.
    std::fs::copy(artifact(data.path(), "trap"), &path).unwrap();
    let (stdout, stderr, code) = run_in("hello");
    assert_eq!((stdout, code), (hello.clone(), Some(0)), "{stderr}");
    assert!(stderr.contains("refusing a cached artifact"), "{stderr}");
    // Compiled again and rewritten: the next run loads it quietly.
    let (stdout, stderr, code) = run_in("hello");
    assert_eq!((stdout, code, stderr), (hello, Some(0), String::new()));
}
