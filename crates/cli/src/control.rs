//! `nimbus planner`, `nimbus worker` and `nimbus hosts`: the cluster's control plane.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use nimbus_core::{exit_code, format_size, parse_duration, parse_size};
use nimbus_node::{Cluster, ClusterConfig, GlobalState, MeshConfig};
use nimbus_planner::{HostInfo, HostReport};
use nimbus_services::Services;

use crate::Failure;
use crate::trust::ClusterDir;

/// The planner's address when none is given.
const DEFAULT_PLANNER: &str = "127.0.0.1:7072";

/// How long a starting worker keeps trying to reach its planner.
const JOIN_PATIENCE: Duration = Duration::from_secs(10);

#[derive(Args)]
pub(crate) struct PlannerArgs {
    /// Address to listen on for workers and clients.
    #[arg(long, default_value = DEFAULT_PLANNER)]
    listen: String,
    /// How often workers report their load.
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_duration)]
    heartbeat: Duration,
    /// How long a worker may stay silent before it is dropped.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    timeout: Duration,
    /// Cap the processes an app runs across the cluster: `APP=N` (repeatable; kept
    /// across restarts with those set before).
    #[arg(long = "app-budget", value_name = "APP=N", value_parser = parse_budget)]
    budgets: Vec<(String, usize)>,
    /// Where the planner keeps its registry (`planner/planner.redb`), so that a
    /// restart on the same directory and address loses no worker.
    #[arg(long, env = "NIMBUS_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Created there (a new cluster CA) if it holds no credentials yet.
    #[command(flatten)]
    cluster: ClusterDir,
    /// Of the global state tier the planner serves its workers.
    #[command(flatten)]
    state_capacity: crate::StateCapacity,
    #[command(flatten)]
    metrics: crate::telemetry::MetricsListen,
}

fn parse_budget(text: &str) -> Result<(String, usize), String> {
    let (app, processes) = text
        .split_once('=')
        .ok_or_else(|| format!("{text}: expected APP=N"))?;
    nimbus_state::AppName::new(app).map_err(|e| e.to_string())?;
    let processes = processes
        .parse()
        .map_err(|_| format!("{text}: N must be a whole number"))?;
    Ok((app.to_owned(), processes))
}

#[derive(Args)]
pub(crate) struct WorkerArgs {
    /// The planner to join.
    #[arg(long, env = "NIMBUS_PLANNER", default_value = DEFAULT_PLANNER)]
    planner: String,
    /// Cores to offer, and threads to run guests on (default: all of this machine's).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    cpus: Option<u32>,
    /// Memory to offer (default: all of this machine's).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    mem: Option<u64>,
    /// Where compiled modules are cached.
    #[arg(long, env = "NIMBUS_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// How long a spawn waits for room when every worker is full (or its app is at
    /// its budget) before it fails.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    spawn_wait: Duration,
    /// The most processes (queued or running) this worker admits.
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    max_processes: u32,
    /// Address to listen on for other workers (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// The global state tier, `redis://HOST:PORT[/DB]` (default: the embedded
    /// tier the planner serves to the whole cluster).
    #[arg(long, value_name = "URL")]
    state: Option<String>,
    /// A host directory (and what is under it) that processes started here for
    /// other nodes may preopen (`nimbus run --dir`) or spawn modules from
    /// (repeatable; default: none). Nothing outside them is ever opened for a peer.
    #[arg(long = "allow-dir", value_name = "DIR")]
    allowed_dirs: Vec<PathBuf>,
    #[command(flatten)]
    cluster: ClusterDir,
    #[command(flatten)]
    metrics: crate::telemetry::MetricsListen,
}

#[derive(Args)]
pub(crate) struct PsArgs {
    #[command(flatten)]
    pub(crate) server: crate::client::Server,
    /// List the processes of the cluster whose planner is here instead.
    #[arg(long, value_name = "ADDR")]
    pub(crate) planner: Option<String>,
    /// With `--planner`: the credentials to reach the cluster with.
    #[command(flatten)]
    pub(crate) cluster: ClusterDir,
    #[command(flatten)]
    pub(crate) output: crate::client::Output,
}

#[derive(Args)]
pub(crate) struct HostsArgs {
    /// Ask this planner directly instead of the gateway (which asks the planner it
    /// fronts).
    #[arg(long, env = "NIMBUS_PLANNER", value_name = "ADDR")]
    planner: Option<String>,
    #[command(flatten)]
    server: crate::client::Server,
    /// With `--planner`: the credentials to reach the cluster with.
    #[command(flatten)]
    cluster: ClusterDir,
    #[command(flatten)]
    output: crate::client::Output,
}

fn tokio() -> Result<tokio::runtime::Runtime, Failure> {
    tokio_with_threads(None)
}

/// A runtime with `threads` worker threads (by default one per core).
fn tokio_with_threads(threads: Option<usize>) -> Result<tokio::runtime::Runtime, Failure> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        builder.worker_threads(threads);
    }
    builder
        .enable_all()
        .build()
        .map_err(|e| Failure::new(exit_code::INTERNAL, format!("cannot start: {e}")))
}

pub(crate) fn planner(args: PlannerArgs) -> Result<i32, Failure> {
    if args.heartbeat.is_zero() || args.timeout <= args.heartbeat {
        return Err(Failure::new(2, "--timeout must be longer than --heartbeat"));
    }
    let data_dir = args.data_dir.unwrap_or_else(crate::default_data_dir);
    let tls = args.cluster.load_or_create(&data_dir)?;
    let store = nimbus_control::Store::open(&data_dir.join("planner"))
        .map_err(|e| Failure::new(exit_code::INTERNAL, e.to_string()))?;
    let stored = store
        .load()
        .map_err(|e| Failure::new(exit_code::INTERNAL, e.to_string()))?;
    tokio()?.block_on(async {
        let metrics = args.metrics.bind().await?;
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| Failure::new(2, format!("cannot listen on {}: {e}", args.listen)))?;
        let address = listener
            .local_addr()
            .map_err(|e| Failure::new(exit_code::INTERNAL, e.to_string()))?;
        // Tools and tests read this line to learn the port.
        crate::announce(format_args!("nimbus: planner listening on {address}"));
        let telemetry = crate::telemetry::planner();
        // The cluster's embedded global state tier, served beside the planner, at
        // the address it had before a restart (workers know it by that).
        let fresh = format!("{}:0", address.ip());
        let state = match &stored.state_address {
            Some(before) => match tokio::net::TcpListener::bind(before).await {
                Ok(state) => Ok(state),
                Err(e) => {
                    eprintln!(
                        "nimbus: planner: the global state tier's address before, {before}, \
                         is taken ({e}); workers that knew it must be restarted"
                    );
                    tokio::net::TcpListener::bind(&fresh).await
                }
            },
            None => tokio::net::TcpListener::bind(&fresh).await,
        }
        .map_err(|e| {
            Failure::new(
                exit_code::INTERNAL,
                format!("cannot serve the global state tier: {e}"),
            )
        })?;
        let state_address = state
            .local_addr()
            .map_err(|e| Failure::new(exit_code::INTERNAL, e.to_string()))?
            .to_string();
        if stored.state_address.as_deref() != Some(state_address.as_str()) {
            store
                .set_state_address(&state_address)
                .map_err(|e| Failure::new(exit_code::INTERNAL, e.to_string()))?;
        }
        crate::announce(format_args!(
            "nimbus: planner serves the global state tier on {state_address}"
        ));
        metrics.serve(&telemetry)?;
        tokio::spawn(nimbus_state::serve(
            state,
            tls.clone(),
            std::sync::Arc::new(nimbus_state::Embedded::with_capacity(
                args.state_capacity.bytes,
            )),
        ));
        let config = nimbus_control::PlannerConfig {
            heartbeat: args.heartbeat,
            timeout: args.timeout,
            state: Some(state_address),
            budgets: args.budgets,
        };
        tokio::select! {
            served = nimbus_control::serve_planner(listener, tls, config, Arc::new(store)) => served
                .map(|()| 0)
                .map_err(|e| Failure::new(exit_code::INTERNAL, format!("planner: {e}"))),
            () = crate::up::stop_signal() => Ok(0),
        }
    })
}

pub(crate) fn worker(args: WorkerArgs) -> Result<i32, Failure> {
    let cpus = args
        .cpus
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    let memory = args.mem.or_else(machine_memory).unwrap_or(1 << 30);
    let data_dir = args.data_dir.unwrap_or_else(crate::default_data_dir);
    let tls = args.cluster.load(&data_dir)?;
    let mut config = ClusterConfig::new(&data_dir);
    config.max_processes_per_host = args.max_processes as usize;
    config.spawn_wait = args.spawn_wait;
    // Guests run on the runtime's threads: a worker offering N CPUs uses N.
    tokio_with_threads(Some(cpus as usize))?.block_on(async {
        let internal = |e: &dyn std::fmt::Display| Failure::new(exit_code::INTERNAL, e.to_string());
        let metrics = args.metrics.bind().await?;
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| Failure::new(2, format!("cannot listen on {}: {e}", args.listen)))?;
        let address = listener.local_addr().map_err(|e| internal(&e))?.to_string();
        let info = HostInfo {
            cpus,
            memory,
            capacity: config.max_processes_per_host,
            address: address.clone(),
        };
        let link = nimbus_control::PlannerLink::join(&args.planner, &tls, info, JOIN_PATIENCE)
            .await
            .map_err(|e| internal(&e))?;
        config.first_host = link.host();
        config.mesh = Some(MeshConfig {
            address: address.clone(),
            planner: args.planner.clone(),
            allowed_dirs: args.allowed_dirs.clone(),
            tls: tls.clone(),
        });
        // Without --state, the cluster shares the tier its planner serves.
        let url = args.state.clone().or_else(|| {
            link.state_address()
                .map(|address| format!("nimbus://{address}"))
        });
        // Only for a tier of its own, were its planner to serve none.
        let capacity = nimbus_state::DEFAULT_GLOBAL_CAPACITY;
        let global = nimbus_state::open(url.as_deref(), capacity, Some(tls.clone()))
            .await
            .map_err(|e| internal(&format!("state: {e}")))?;
        config.global_state = GlobalState(global);
        let cluster = Cluster::new(&config).map_err(|e| {
            Failure::new(exit_code::INTERNAL, format!("cannot start the host: {e}"))
        })?;
        // The apps a gateway places here (and those placed before a restart).
        let services = Arc::new(
            Services::open(cluster.clone(), &data_dir)
                .map_err(|e| internal(&format!("cannot open the deployments: {e}")))?,
        );
        // Tools and tests read this line to learn the host and its address.
        crate::announce(format_args!(
            "nimbus: worker joined {} as host {} at {address}",
            args.planner,
            link.host()
        ));
        let telemetry = crate::telemetry::node(&cluster);
        metrics.serve(&telemetry)?;
        let mut cpu = CpuMeter::default();
        let beating = link.keep_reporting(|| report(&cluster, &mut cpu));
        tokio::select! {
            // Its processes were reported lost (or the planner speaks another
            // version): ending them all is what keeps two copies from running.
            lost = beating => Err(Failure::new(
                exit_code::INTERNAL,
                format!("this host left the cluster, ending its processes: {lost}"),
            )),
            served = nimbus_node::serve_worker(listener, tls, cluster.clone(), services.clone()) => Err(Failure::new(
                exit_code::INTERNAL,
                format!("the worker stopped serving: {served:?}"),
            )),
            () = crate::up::stop_signal() => {
                eprintln!("nimbus: worker stopping; swapping every instance out");
                Services::swap_out_all(&services)
                    .await
                    .map(|()| 0)
                    .map_err(|e| internal(&format!("swapping out: {e}")))
            }
        }
    })
}

fn report(cluster: &Cluster, cpu: &mut CpuMeter) -> HostReport {
    let load = cluster.runtime_load();
    // Counted by app, which walks the process table without listing it.
    let apps = cluster.apps();
    HostReport {
        processes: apps.values().sum(),
        instantiated: load.instantiated,
        waiting: load.waiting,
        memory_used: resident_memory().unwrap_or(0),
        cpu_percent: cpu.percent_since_last().unwrap_or(0),
        network: nimbus_mesh::traffic(),
        apps,
        local_state: cluster.local_state(),
    }
}

/// This process's resident memory, from `/proc/self/statm` (in pages of 4 KiB, the
/// page size of every platform nimbus runs on).
pub(crate) fn resident_memory() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// This process's CPU use between two readings.
#[derive(Default)]
struct CpuMeter {
    last: Option<(std::time::Instant, u64)>,
}

impl CpuMeter {
    /// Percent of one core used since the last call (`None` the first time).
    fn percent_since_last(&mut self) -> Option<u32> {
        let now = (std::time::Instant::now(), cpu_ticks()?);
        let (then, ticks) = self.last.replace(now)?;
        // Linux counts CPU time in USER_HZ ticks, 100 per second on every ABI.
        let used = (now.1 - ticks) as f64 / 100.0;
        let elapsed = now.0.duration_since(then).as_secs_f64();
        (elapsed > 0.0).then(|| (used / elapsed * 100.0).round() as u32)
    }
}

/// User plus system CPU time of this process so far, in ticks (`/proc/self/stat`).
pub(crate) fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may hold spaces, closed by the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

/// This machine's memory, from `/proc/meminfo`.
fn machine_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub(crate) fn hosts(args: HostsArgs) -> Result<i32, Failure> {
    let hosts = match &args.planner {
        Some(planner) => {
            let tls = args.cluster.load(&crate::default_data_dir())?;
            tokio()?
                .block_on(nimbus_control::hosts(planner, &tls))
                .map_err(|e| Failure::new(1, e.to_string()))?
        }
        None => {
            let gateway = args.server.resolve()?;
            serde_json::from_value(gateway.get_json("/v1/hosts")?).map_err(|e| {
                Failure::new(1, format!("the gateway's hosts are not as expected: {e}"))
            })?
        }
    };
    if !args.output.json(&hosts) {
        print_hosts(&hosts);
    }
    Ok(0)
}

/// The table `nimbus hosts` prints, sizes in human units.
fn print_hosts(hosts: &[nimbus_planner::HostStatus]) {
    println!(
        "{:<6} {:>5} {:>10} {:>10} {:>8} {:>8} {:>10} {:>10} {:>5} {:>10} {:>10}  APPS",
        "HOST",
        "CPUS",
        "MEMORY",
        "PROCESSES",
        "LIVE",
        "WAITING",
        "HEARD",
        "MEM USED",
        "CPU%",
        "NET IN",
        "NET OUT"
    );
    for host in hosts {
        let report = &host.report;
        let apps: Vec<String> = report
            .apps
            .iter()
            .map(|(app, count)| format!("{app}:{count}"))
            .collect();
        println!(
            "{:<6} {:>5} {:>10} {:>10} {:>8} {:>8} {:>10} {:>10} {:>5} {:>10} {:>10}  {}",
            host.host.to_string(),
            host.info.cpus,
            format_size(host.info.memory),
            report.processes,
            report.instantiated,
            report.waiting,
            // Known from before the planner restarted, and not heard from since.
            if host.awaiting_rejoin {
                "awaiting".to_owned()
            } else {
                format!("{}ms", host.silent_ms)
            },
            format_size(report.memory_used),
            report.cpu_percent,
            format_size(report.network.0),
            format_size(report.network.1),
            if apps.is_empty() {
                "-".into()
            } else {
                apps.join(",")
            }
        );
    }
}

pub(crate) fn ps(
    planner: &str,
    cluster: &ClusterDir,
    output: crate::client::Output,
) -> Result<i32, Failure> {
    let tls = cluster.load(&crate::default_data_dir())?;
    let (processes, silent) = tokio()?
        .block_on(nimbus_node::cluster_processes(planner, tls))
        .map_err(|e| Failure::new(1, e))?;
    for why in silent {
        eprintln!("nimbus: {why}");
    }
    crate::client::print_processes(
        processes.into_iter().map(|process| {
            [
                process.pid.to_string(),
                process.host.to_string(),
                process.state.name().to_owned(),
                process.parent.map_or_else(|| "-".into(), |p| p.to_string()),
            ]
        }),
        output,
    );
    Ok(0)
}
