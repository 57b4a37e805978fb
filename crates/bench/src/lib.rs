//! Shared parts of the nimbus benchmarks: timing samples, percentile reports with a
//! baseline measured in the same run, and a ready embedded cluster.
//!
//! Owns: measurement and reporting. Must not: be depended on by any product crate.

pub mod daemon;
pub mod mpi;
pub mod plain;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_core::{ExitStatus, HostId, Limits, Pid};
use nimbus_node::{Cluster, ClusterConfig, ModuleSource, RootProcess};
use nimbus_runtime::{Input, ModuleBytes, Output, ProcessSpec, Program, Runtime, ServiceInstance};
use nimbus_snapshot::Snapshot;

/// Timings of repeated runs of one operation.
#[derive(Default)]
pub struct Samples(Vec<Duration>);

impl Samples {
    /// Times `op` `count` times.
    pub fn measure(count: usize, mut op: impl FnMut()) -> Samples {
        let mut samples = Samples::default();
        for _ in 0..count {
            let start = Instant::now();
            op();
            samples.0.push(start.elapsed());
        }
        samples
    }

    /// Records one timing.
    pub fn push(&mut self, elapsed: Duration) {
        self.0.push(elapsed);
    }

    /// How many timings there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `p`th percentile (0..=100).
    pub fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
        sorted[rank]
    }
}

/// Times `runs` in turns: each once untimed (a first run may compile), then
/// `samples` rounds in which each is timed once, so that a machine whose load
/// changes during the benchmark weighs on all of them alike. Returns each run's
/// timings and the output of its last run.
pub fn interleaved<const N: usize>(
    samples: usize,
    mut runs: [&mut dyn FnMut() -> String; N],
) -> [(Samples, String); N] {
    let mut results: [(Samples, String); N] =
        std::array::from_fn(|_| (Samples::default(), String::new()));
    for (run, (_, line)) in runs.iter_mut().zip(&mut results) {
        *line = run();
    }
    for _ in 0..samples {
        for (run, (timings, line)) in runs.iter_mut().zip(&mut results) {
            let start = Instant::now();
            *line = run();
            timings.push(start.elapsed());
        }
    }
    results
}

/// A whole run of `process` on `bench`'s cluster, from a thread outside `tokio`:
/// on one of its worker threads, where guests run. Returns what it wrote to stdout
/// (`process.output.0` is replaced); panics unless it exits 0.
pub fn run_whole(
    tokio: &tokio::runtime::Runtime,
    bench: &Arc<Bench>,
    mut process: RootProcess,
) -> String {
    let stdout = wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(1 << 20);
    process.output.0 = Output::Capture(stdout.clone());
    let bench = bench.clone();
    let status = tokio
        .block_on(tokio.spawn(async move { bench.cluster.run(process).await }))
        .expect("the run's task completes")
        .expect("starts");
    assert_eq!(status, ExitStatus::Exited(0), "benchmark guest failed");
    String::from_utf8_lossy(&stdout.contents())
        .trim()
        .to_owned()
}

fn micros(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1.0 {
        format!("{us:>10.3} µs")
    } else {
        format!("{us:>10.1} µs")
    }
}

fn times(ratio: f64) -> String {
    if ratio < 1.0 {
        format!("{ratio:>9.3}x")
    } else {
        format!("{ratio:>9.1}x")
    }
}

/// Prints one indented line with the p50/p99 of `samples`, aligned with [`report`]'s.
pub fn print_samples(name: &str, samples: &Samples) {
    println!(
        "  {name:<28} p50 {}   p99 {}   (n={})",
        micros(samples.percentile(50.0)),
        micros(samples.percentile(99.0)),
        samples.0.len()
    );
}

/// Prints p50/p99 of nimbus and the baseline, and how many times faster nimbus is.
pub fn report(title: &str, nimbus: &Samples, baseline_name: &str, baseline: &Samples) {
    report_against(title, nimbus, &[(baseline_name, baseline)]);
}

/// Prints p50/p99 of nimbus and of each baseline, and after each baseline how many
/// times faster nimbus is than it.
pub fn report_against(title: &str, nimbus: &Samples, baselines: &[(&str, &Samples)]) {
    println!("{title}");
    print_samples("nimbus", nimbus);
    for (name, baseline) in baselines {
        print_samples(name, baseline);
        let ratio = |p| baseline.percentile(p).as_secs_f64() / nimbus.percentile(p).as_secs_f64();
        println!(
            "  ratio (baseline / nimbus)    p50 {}    p99 {}",
            times(ratio(50.0)),
            times(ratio(99.0))
        );
    }
}

/// The path of a guest program built by `scripts/build-guests.sh`.
pub fn guest_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/guests")
        .join(format!("{name}.wasm"))
}

/// `nimbus`, a node (or client) of the benchmark's one cluster.
pub fn nimbus_command() -> Command {
    let mut command = Command::new(nimbus_binary());
    command.env("NIMBUS_CLUSTER_DIR", cluster_dir());
    command
}

/// The credentials of the cluster every node a benchmark starts belongs to, made
/// on first use by `nimbus cluster init`.
pub fn cluster_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    &DIR.get_or_init(|| {
        let parent = tempfile::tempdir().expect("temporary directory");
        let dir = parent.path().join("cluster");
        let made = Command::new(nimbus_binary())
            .args(["cluster", "init"])
            .arg(&dir)
            .output()
            .expect("nimbus runs");
        assert!(made.status.success(), "nimbus cluster init: {made:?}");
        (parent, dir)
    })
    .1
}

/// The benchmark cluster's TLS, for clients in the benchmark's own process.
pub fn cluster_tls() -> Arc<nimbus_trust::Tls> {
    nimbus_trust::Tls::load(cluster_dir()).expect("the cluster's credentials load")
}

/// The `nimbus` binary beside this benchmark's (`cargo build --release` builds it).
fn nimbus_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let nimbus = exe.with_file_name("nimbus");
    assert!(
        nimbus.exists(),
        "{} is missing: run `cargo build --release` first",
        nimbus.display()
    );
    nimbus
}

/// A guest program built by `scripts/build-guests.sh`.
pub fn guest(name: &str) -> ModuleBytes {
    let path = guest_path(name);
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/build-guests.sh first", path.display()));
    ModuleBytes::new(bytes)
}

/// A module from WebAssembly text.
pub fn wat(text: &str) -> ModuleBytes {
    ModuleBytes::new(wat::parse_str(text).expect("valid wat"))
}

/// A command whose `_start` returns at once: spawn cost and nothing else.
pub const EMPTY_START: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;

/// A command that blocks in `recv` at once and touches no guest page.
pub const IDLE_IN_RECV: &str = r#"(module
  (import "nimbus" "recv" (func $recv (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (drop (call $recv (i32.const 0) (i32.const 1024) (i32.const 1024) (i32.const 1032)))))"#;

/// An embedded cluster with its module cache in a fresh temporary directory.
pub struct Bench {
    /// The cluster.
    pub cluster: Arc<Cluster>,
    _data: tempfile::TempDir,
}

impl Bench {
    /// One host, sized by `adjust`.
    pub fn new(adjust: impl FnOnce(&mut ClusterConfig)) -> Bench {
        let data = tempfile::tempdir().expect("temporary directory");
        let mut config = ClusterConfig::new(data.path());
        adjust(&mut config);
        Bench {
            cluster: Cluster::new(&config).expect("cluster starts"),
            _data: data,
        }
    }
}

impl Bench {
    /// One host sized for `processes` idle processes: a pool slot each, small
    /// memories and stacks.
    pub fn for_idle(processes: usize) -> Bench {
        Bench::new(|config| {
            config.max_processes_per_host = processes + 1;
            config.runtime.max_live_processes = processes as u32 + 1;
            config.runtime.max_memory = 4 << 20;
            config.runtime.stack_size = 128 << 10;
        })
    }

    /// Waits (at most 10 minutes) until `processes` processes wait in `recv`.
    pub async fn until_waiting(&self, processes: usize) {
        let bound = Instant::now() + Duration::from_secs(600);
        while self.cluster.runtime_load().waiting < processes {
            assert!(Instant::now() < bound, "processes did not all reach recv");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Raises `vm.max_map_count` when it is too low for `processes` pool slots (needs
/// root; warns otherwise).
pub fn raise_map_count(processes: usize) {
    let path = "/proc/sys/vm/max_map_count";
    let wanted = processes * 4 + 65_536;
    let current: usize = std::fs::read_to_string(path)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if current < wanted && std::fs::write(path, wanted.to_string()).is_err() {
        eprintln!(
            "warning: vm.max_map_count is {current}; {processes} processes may need {wanted}"
        );
    }
}

/// A root process running `module` with `args`, its stdout captured or discarded.
pub fn root(module: &ModuleBytes, args: &[&str], stdout: Output) -> RootProcess {
    RootProcess {
        app: nimbus_state::AppName::new("bench").expect("a valid app name"),
        module: module.clone(),
        modules: ModuleSource::None,
        args: std::iter::once("bench")
            .chain(args.iter().copied())
            .map(str::to_owned)
            .collect(),
        env: vec![],
        dirs: vec![],
        stdin: Input::Null,
        output: (stdout, Output::Inherit),
        limits: Limits::default(),
    }
}

/// Runs `module` to the end and checks it exited 0.
pub async fn run_ok(cluster: &Cluster, module: &ModuleBytes, args: &[&str], stdout: Output) {
    let status = cluster
        .run(root(module, args, stdout))
        .await
        .expect("starts");
    assert_eq!(status, ExitStatus::Exited(0), "benchmark guest failed");
}

/// fork + exec + wait of a native program, output discarded.
pub fn fork_exec(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("native program runs");
    assert!(status.success());
}

/// Runs a command to success and returns its output's lines (an MPI world's: rank
/// 0's), split into words.
pub fn output_words(mut command: Command, what: &str) -> Vec<Vec<String>> {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// The resident set size of this process in bytes.
pub fn rss_bytes() -> u64 {
    rss_of("self")
}

/// The resident set size of process `pid` ("self" for this one) in bytes.
pub fn rss_of(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("procfs");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// Runs `work` on a worker thread of a multi-threaded tokio runtime, where guests'
/// own host calls run, rather than on the thread that blocks on the runtime (which
/// would add two cross-thread wake-ups to every measured operation).
pub fn on_worker<F>(work: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio starts");
    runtime
        .block_on(runtime.spawn(work))
        .expect("benchmark task completes")
}

/// The first command-line argument as a number, or `default`.
pub fn arg_or(default: usize) -> usize {
    std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("the argument is a count"))
        .unwrap_or(default)
}

/// An isolated process ([`nimbus_runtime::Isolated`]) with no args, env, dirs or stdin, its
/// output discarded, under the default limits. Nothing can send to its mailbox.
pub fn alone_spec() -> ProcessSpec {
    let (_sender, mailbox) = nimbus_runtime::mailbox();
    ProcessSpec {
        pid: Pid::new(HostId(1), 1),
        args: vec!["bench".into()],
        env: vec![],
        dirs: vec![],
        stdin: Input::Null,
        stdout: Output::Null,
        stderr: Output::Null,
        limits: Limits::default(),
        deadline: None,
        mailbox,
        kernel: Arc::new(nimbus_runtime::Isolated),
        capture: None,
    }
}

/// A service instance of `program` directly on `runtime` (no cluster), alone in the
/// world: waits for a slot, instantiates, and initialises or restores `from` a
/// snapshot.
pub async fn start_alone(
    runtime: &Runtime,
    program: &Program,
    from: Option<&Snapshot>,
) -> ServiceInstance {
    let slot = runtime.admit().await;
    match runtime
        .start_service(program, alone_spec(), slot, from)
        .await
    {
        Ok(service) => service,
        Err(status) => panic!("the service does not start: {status:?}"),
    }
}

/// A reactor: `ping` writes "pong" to stdout, `noop` returns 0.
pub const PING: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\10\00\00\00\04\00\00\00")
  (data (i32.const 16) "pong")
  (func (export "ping") (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "noop") (result i32) (i32.const 0)))"#;

/// The bare export call, the floor under every invocation path: `noop` of `bytes`
/// called in-process through plain wasmtime (no pool, no epochs, no async, no WASI).
pub fn bare_export_call(bytes: &[u8], iterations: usize) -> Samples {
    let engine = wasmtime::Engine::default();
    let module = wasmtime::Module::new(&engine, bytes).expect("module compiles");
    let mut linker = wasmtime::Linker::new(&engine);
    linker
        .func_wrap(
            "wasi_snapshot_preview1",
            "fd_write",
            |_: i32, _: i32, _: i32, _: i32| 0i32,
        )
        .expect("stub import");
    let mut store = wasmtime::Store::new(&engine, ());
    let instance = linker
        .instantiate(&mut store, &module)
        .expect("module instantiates");
    let noop = instance
        .get_typed_func::<(), i32>(&mut store, "noop")
        .expect("noop export");
    for _ in 0..1_000 {
        assert_eq!(noop.call(&mut store, ()).unwrap(), 0);
    }
    Samples::measure(iterations, || {
        std::hint::black_box(noop.call(&mut store, ()).expect("noop returns"));
    })
}
