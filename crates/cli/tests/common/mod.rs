//! Shared helpers: the real `nimbus` binary, the built guest programs, and bounded
//! waits.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

/// How long any one `nimbus` invocation in a test may take before it is killed.
const RUN_BOUND: Duration = Duration::from_secs(120);

/// A guest program built by `scripts/build-guests.sh`.
#[allow(dead_code)] // not every test binary runs guests
pub fn guest(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/guests")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-guests.sh first",
        path.display()
    );
    path
}

/// One data directory for the whole test binary, so the module cache is shared.
fn data_dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap())
}

/// The credentials of the one cluster every node of this test binary belongs to,
/// made by `nimbus cluster init`.
pub fn cluster_dir() -> &'static std::path::Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("cluster");
        let made = Command::new(env!("CARGO_BIN_EXE_nimbus"))
            .args(["cluster", "init"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
        (parent, dir)
    })
    .1
}

/// `nimbus ARGS...` with its own data directory, a node of the test binary's
/// cluster, and a client config file of the test binary's (never the user's; a
/// test that starts `nimbus up` and calls it gives both its own, see
/// [`client_config`]), with no server or token from the environment.
pub fn nimbus(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nimbus"));
    command
        .args(args)
        .env("NIMBUS_DATA_DIR", data_dir().path())
        .env("NIMBUS_CONFIG", data_dir().path().join("config.json"))
        .env("NIMBUS_CLUSTER_DIR", cluster_dir())
        .env_remove("NIMBUS_SERVER")
        .env_remove("NIMBUS_TOKEN");
    command
}

/// `nimbus up` with its gateway and data plane on OS-chosen loopback ports, and `flags`
/// (`--workers N`, say).
#[allow(dead_code)]
pub fn up(flags: &[&str]) -> Command {
    let mut command = nimbus(&[
        "up",
        "--listen",
        "127.0.0.1:0",
        "--data-listen",
        "127.0.0.1:0",
    ]);
    command.args(flags);
    command
}

/// The token in the client config file at `path`, which `nimbus up` writes before
/// it announces its addresses.
#[allow(dead_code)]
pub fn client_config(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read(path)
        .unwrap_or_else(|e| panic!("no client config at {}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap()
}

/// Makes the process `command` starts end (SIGKILL) when the thread starting it
/// does: a test's daemons and runs end with the test even if the test binary is
/// killed, so nothing is left running after the suite.
pub fn end_with_test(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid is async-signal-safe; this runs in the test, before the fork.
    let parent = unsafe { libc::getpid() };
    let set = move || {
        // SAFETY: prctl(PR_SET_PDEATHSIG) and getppid are async-signal-safe system
        // calls touching no memory of ours, so they may run between fork and exec.
        let (set, now) = unsafe {
            (
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong),
                libc::getppid(),
            )
        };
        if set != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // A test that ended before the signal was set will never send it.
        if now != parent {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    // SAFETY: the closure makes only the two async-signal-safe calls above and
    // returns errors that allocate nothing, which is what may run in the child
    // between fork and exec (another thread may have held the allocator's lock).
    unsafe {
        command.pre_exec(set);
    }
}

/// Runs `command` with `stdin` as its input, killing it if it outlives the bound.
pub fn run_with_input(mut command: Command, stdin: &[u8]) -> Output {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    end_with_test(&mut command);
    let mut child = command.spawn().expect("nimbus starts");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    std::thread::spawn(move || {
        use std::io::Write;
        let _ = input.write_all(&stdin);
    });
    let pid = child.id().to_string();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(RecvTimeoutError::Timeout) = done_rx.recv_timeout(RUN_BOUND) {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
    });
    let output = child.wait_with_output().expect("nimbus ends");
    drop(done_tx);
    output
}

/// Runs `command` with empty stdin.
pub fn run(command: Command) -> Output {
    run_with_input(command, b"")
}

/// Stdout, stderr and exit code of `output`, for assertions.
pub fn outcome(output: &Output) -> (String, String, Option<i32>) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        output.status.code(),
    )
}

/// The lines `from` yields, read on a thread of its own (so that a test can wait
/// for one with a bound).
#[allow(dead_code)]
pub fn lines(from: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (send, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if send.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// A long-running `nimbus` process (`up`, `planner`, `worker`), killed when dropped.
#[allow(dead_code)] // each test binary uses the helpers it needs
pub struct Daemon {
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

#[allow(dead_code)]
impl Daemon {
    /// Starts `command` with its stdout read line by line. It ends with the thread
    /// that starts it (see [`end_with_test`]).
    pub fn start(command: Command) -> Daemon {
        Daemon::start_with_stderr(command, Stdio::null())
    }

    /// [`Daemon::start`] with its stderr going to `stderr`.
    pub fn start_with_stderr(mut command: Command, stderr: Stdio) -> Daemon {
        end_with_test(&mut command);
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let lines = lines(child.stdout.take().unwrap());
        Daemon { child, lines }
    }

    /// The rest of the next line printed, which must start with `prefix`.
    pub fn announced(&self, prefix: &str) -> String {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("no line {prefix:?} within a minute: {e}"));
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
            .to_owned()
    }

    /// The next line printed if one comes within `window`: for checking that a
    /// process is held back (a correct one never prints within it).
    pub fn line_within(&self, window: Duration) -> Option<String> {
        self.lines.recv_timeout(window).ok()
    }

    /// Stops the process with `signal` (`KILL`, `TERM`) and waits for it.
    pub fn signal(&mut self, signal: &str) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `check` holds, polling within a 30 s bound.
#[allow(dead_code)]
pub fn until(what: &str, mut check: impl FnMut() -> bool) {
    let bound = std::time::Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(std::time::Instant::now() < bound, "never: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `nimbus ARGS` for a planner keeping its store in `dir`.
fn planner_command(args: &[&str], dir: &tempfile::TempDir) -> Command {
    let mut command = nimbus(args);
    command.arg("--data-dir").arg(dir.path());
    command
}

/// A planner and workers, each a separate `nimbus` OS process on loopback.
#[allow(dead_code)]
pub struct TestCluster {
    pub planner: Daemon,
    /// The planner's address.
    pub addr: String,
    /// Each worker and its host id (`host-N`).
    pub workers: Vec<(Daemon, String)>,
    /// Each worker's mesh address, by host id.
    pub mesh_addresses: std::collections::HashMap<String, String>,
    /// How the planner was started, to start it again.
    planner_args: Vec<String>,
    /// The planner's own data directory (its store).
    planner_dir: tempfile::TempDir,
    /// Each worker's own data directory (its apps and their snapshots), as two
    /// workers never share one.
    worker_dirs: Vec<tempfile::TempDir>,
}

#[allow(dead_code)]
impl TestCluster {
    /// A planner with `workers` workers joined, each started with `worker_flags`.
    pub fn start(workers: usize, worker_flags: &[&str]) -> TestCluster {
        TestCluster::start_with(&[], workers, worker_flags)
    }

    /// The same, the planner started with `planner_flags` too.
    pub fn start_with(
        planner_flags: &[&str],
        workers: usize,
        worker_flags: &[&str],
    ) -> TestCluster {
        let mut args = vec![
            "planner",
            "--listen",
            "127.0.0.1:0",
            "--heartbeat",
            "100ms",
            "--timeout",
            "2s",
        ];
        args.extend_from_slice(planner_flags);
        let planner_dir = tempfile::tempdir().unwrap();
        let planner = Daemon::start(planner_command(&args, &planner_dir));
        let addr = planner.announced("nimbus: planner listening on ");
        let mut cluster = TestCluster {
            planner,
            addr,
            workers: Vec::new(),
            mesh_addresses: std::collections::HashMap::new(),
            planner_args: args.iter().map(|&arg| arg.to_owned()).collect(),
            planner_dir,
            worker_dirs: Vec::new(),
        };
        for _ in 0..workers {
            cluster.add_worker(worker_flags);
        }
        cluster
    }

    /// SIGKILLs the planner and starts it again on the same address and data
    /// directory.
    pub fn restart_planner(&mut self) {
        self.planner.signal("KILL");
        let mut args: Vec<&str> = self.planner_args.iter().map(String::as_str).collect();
        let listen = args.iter().position(|&arg| arg == "--listen").unwrap();
        args[listen + 1] = &self.addr;
        self.planner = Daemon::start(planner_command(&args, &self.planner_dir));
        let addr = self.planner.announced("nimbus: planner listening on ");
        assert_eq!(addr, self.addr);
    }

    /// Starts one more worker; returns its host id.
    pub fn add_worker(&mut self, flags: &[&str]) -> String {
        // The tests' shared directories are temporary ones, their programs built guests.
        let temp = std::env::temp_dir();
        let guests = guest("hello").parent().unwrap().to_owned();
        let mut args = vec!["worker", "--planner", &self.addr];
        for dir in [&temp, &guests] {
            args.extend(["--allow-dir", dir.to_str().unwrap()]);
        }
        args.extend_from_slice(flags);
        let dir = tempfile::tempdir().unwrap();
        let mut command = nimbus(&args);
        command.arg("--data-dir").arg(dir.path());
        self.worker_dirs.push(dir);
        let daemon = Daemon::start(command);
        let joined = daemon.announced(&format!("nimbus: worker joined {} as host ", self.addr));
        let (host, address) = joined.split_once(" at ").unwrap();
        let host = host.to_owned();
        self.mesh_addresses.insert(host.clone(), address.to_owned());
        self.workers.push((daemon, host.clone()));
        host
    }

    /// `nimbus ARGS... --planner ADDR`-style command: `args` with the planner's
    /// address put after `--planner`.
    pub fn nimbus(&self, args: &[&str]) -> Command {
        let mut command = nimbus(args);
        command.args(["--planner", &self.addr]);
        command
    }

    /// `nimbus ps --planner`: (pid, host, parent) of each process.
    pub fn processes(&self) -> Vec<(String, String, String)> {
        let (stdout, stderr, code) = outcome(&run(self.nimbus(&["ps"])));
        assert_eq!(code, Some(0), "{stderr}");
        stdout
            .lines()
            .skip(1)
            .map(|row| {
                let cols: Vec<&str> = row.split_whitespace().collect();
                (cols[0].into(), cols[1].into(), cols[3].into())
            })
            .collect()
    }

    /// SIGKILLs the worker that is host `host`.
    pub fn kill_worker(&mut self, host: &str) {
        let at = self.workers.iter().position(|(_, h)| h == host).unwrap();
        self.workers[at].0.signal("KILL");
        self.workers.remove(at);
    }
}
