//! `nimbus up`: a single-node nimbus (embedded cluster, service manager and HTTP
//! gateway) serving until it is interrupted; with `--workers N`, also a local
//! cluster of a planner and N worker processes, on which the apps then run; with
//! `--planner ADDR`, the same in front of an existing cluster.
//!
//! Zero setup: on each start it makes sure its user has an admin token (the one in
//! the client config file if the node's token store still knows it, else a new one
//! replacing the last it minted, so tokens do not pile up) and writes the client
//! config file (`config.rs`) with the gateway's and data plane's addresses, the
//! planner's and the token, so that the client commands need no flags. The last
//! `nimbus up` started wins the file.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use nimbus_core::exit_code;
use nimbus_gateway::tokens::{Scope, TokenStore};
use nimbus_gateway::{ClusterAccess, Gateway};
use nimbus_node::{Cluster, ClusterConfig, GlobalState};
use nimbus_services::{PlacedServices, ServiceFront, Services};

use crate::Failure;

/// Arguments of `nimbus up`.
#[derive(Args)]
pub(crate) struct UpArgs {
    /// Address of the HTTP gateway (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:7070", value_name = "ADDR")]
    listen: String,
    /// Address of the binary data plane for invocations (port 0 picks a free one);
    /// by default the gateway's host and the port after its (7071), or a free port
    /// when the gateway's is 0.
    #[arg(long, value_name = "ADDR")]
    data_listen: Option<String>,
    /// Where nimbus keeps modules, deployments and swapped-out state.
    #[arg(long, env = "NIMBUS_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The global state tier, `redis://HOST:PORT[/DB]` (default: embedded in nimbus).
    #[arg(long, value_name = "URL")]
    state: Option<String>,
    /// With `--workers`, that of the tier their planner serves.
    #[command(flatten)]
    state_capacity: crate::StateCapacity,
    /// Also start a local cluster: a planner and this many worker processes, for
    /// `nimbus run --planner` (its address is printed); `ps` lists their processes,
    /// and deployed apps run on them.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: Option<u16>,
    /// Front the cluster of this planner instead: deployed apps run on its workers,
    /// and `ps` lists their processes.
    #[arg(long, value_name = "ADDR", conflicts_with = "workers")]
    planner: Option<String>,
    /// With `--workers`: a directory the local workers may preopen or spawn modules
    /// from for `nimbus run --planner` (repeatable; see `nimbus worker --allow-dir`).
    #[arg(long = "allow-dir", value_name = "DIR", requires = "workers")]
    allowed_dirs: Vec<PathBuf>,
    /// With `--workers` or `--planner`: the cluster's credentials (with
    /// `--workers`, created there if absent, and handed to the local nodes).
    #[command(flatten)]
    cluster: crate::trust::ClusterDir,
    /// Of the gateway node (the local workers and planner of `--workers` serve none).
    #[command(flatten)]
    metrics: crate::telemetry::MetricsListen,
}

/// The name of the admin token `nimbus up` mints for its user.
const LOCAL_ADMIN: &str = "local-admin";

/// The admin token for the user of `nimbus up`: the client config's `previous` one
/// if the store knows it as an admin's, else a fresh one named [`LOCAL_ADMIN`]
/// (replacing the one minted before). Blocking.
fn local_admin(
    tokens: &TokenStore,
    previous: Option<&crate::config::ClientConfig>,
) -> Result<String, nimbus_gateway::tokens::TokenError> {
    if let Some(previous) = previous
        && tokens.authorize(&previous.token) == Some(Scope::Admin)
    {
        return Ok(previous.token.clone());
    }
    tokens.create(LOCAL_ADMIN, Scope::Admin, true)
}

pub(crate) fn up(args: UpArgs) -> Result<i32, Failure> {
    let internal = |what: &str, e: &dyn std::fmt::Display| {
        Failure::new(exit_code::INTERNAL, format!("{what}: {e}"))
    };
    let data_dir = args.data_dir.unwrap_or_else(crate::default_data_dir);
    let cluster_dir = args.cluster.path(&data_dir);
    // Each local node with a certificate of its own, so each can be revoked alone.
    let local_nodes = match args.workers {
        Some(workers) => Some(LocalNodes {
            gateway: args.cluster.local_node(&data_dir, "gateway")?,
            planner: args.cluster.local_node(&data_dir, "planner")?,
            workers: (1..=workers)
                .map(|n| args.cluster.local_node(&data_dir, &format!("worker-{n}")))
                .collect::<Result<_, _>>()?,
        }),
        None => None,
    };
    let tls = match (&local_nodes, &args.planner) {
        (Some(nodes), _) => Some(
            nimbus_trust::Tls::load(&nodes.gateway).map_err(|e| Failure::new(2, e.to_string()))?,
        ),
        (None, Some(_)) => Some(args.cluster.load(&data_dir)?),
        (None, None) => None,
    };
    // Blocking file work, done before the async runtime starts.
    let tokens = Arc::new(
        TokenStore::open(&data_dir.join("gateway"))
            .map_err(|e| internal("cannot open the token store", &e))?,
    );
    let config_path = crate::config::path();
    let previous = match &config_path {
        Some(path) => crate::config::load(path).unwrap_or_else(|e| {
            eprintln!("nimbus: {e}; writing a new one");
            None
        }),
        None => None,
    };
    let token = local_admin(&tokens, previous.as_ref())
        .map_err(|e| internal("cannot create the local admin token", &e))?;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| internal("cannot start", &e))?;
    tokio.block_on(async {
        let mut config = ClusterConfig::new(&data_dir);
        if args.workers.is_some() || args.planner.is_some() {
            config.first_host = nimbus_core::HostId::BESIDE_CLUSTER;
        }
        config.global_state = GlobalState(
            nimbus_state::open(
                args.state.as_deref(),
                args.state_capacity.bytes,
                tls.clone(),
            )
            .await
            .map_err(|e| internal("state", &e))?,
        );
        let cluster =
            Cluster::new(&config).map_err(|e| internal("cannot start the cluster", &e))?;
        let metrics = args.metrics.bind().await?;
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| Failure::new(2, format!("cannot listen on {}: {e}", args.listen)))?;
        let address = listener
            .local_addr()
            .map_err(|e| internal("listener", &e))?;
        let data_listen = args
            .data_listen
            .unwrap_or_else(|| beside(&args.listen, address).to_string());
        let data_listener = tokio::net::TcpListener::bind(&data_listen)
            .await
            .map_err(|e| Failure::new(2, format!("cannot listen on {data_listen}: {e}")))?;
        let data_address = data_listener
            .local_addr()
            .map_err(|e| internal("listener", &e))?;
        let local_cluster = match &local_nodes {
            Some(nodes) => Some(
                LocalCluster::start(
                    nodes,
                    &data_dir,
                    args.state.as_deref(),
                    args.state_capacity,
                    &args.allowed_dirs,
                )
                .await
                .map_err(|e| internal("cannot start the local cluster", &e))?,
            ),
            None => None,
        };
        let planner = args
            .planner
            .or_else(|| local_cluster.as_ref().map(|c| c.planner.clone()));
        // Written before the addresses are announced, so that whoever reads them
        // finds the file.
        let client_config = crate::config::ClientConfig {
            server: format!("http://{address}"),
            data_plane: data_address.to_string(),
            token: token.clone(),
            cluster_dir: planner
                .is_some()
                .then(|| std::path::absolute(&cluster_dir).unwrap_or(cluster_dir.clone())),
            planner: planner.clone(),
        };
        match &config_path {
            Some(path) => {
                let target = path.clone();
                tokio::task::spawn_blocking(move || crate::config::save(&target, &client_config))
                    .await
                    .map_err(|e| internal("writing the client config", &e))?
                    .map_err(|e| {
                        let what = format!("cannot write the client config {}", path.display());
                        internal(&what, &e)
                    })?;
            }
            None => eprintln!(
                "nimbus: no HOME, XDG_CONFIG_HOME or NIMBUS_CONFIG: no client config written; \
                 the admin token is {token}"
            ),
        }
        // From here on a SIGTERM is a graceful stop, however soon it comes.
        let stop = stop_signal();
        // Tools and tests read these lines to learn the ports.
        crate::announce(format_args!(
            "nimbus: gateway listening on http://{address}"
        ));
        crate::announce(format_args!(
            "nimbus: data plane listening on {data_address}"
        ));
        if let Some(local) = &local_cluster {
            crate::announce(format_args!(
                "nimbus: planner listening on {}",
                local.planner
            ));
        }
        let telemetry = crate::telemetry::node(&cluster);
        // With workers, apps are placed on them; otherwise they run here.
        let access = match (planner, tls) {
            (Some(planner), Some(tls)) => Some(ClusterAccess { planner, tls }),
            _ => None,
        };
        let services: Arc<dyn ServiceFront> = match &access {
            Some(access) => Arc::new(
                PlacedServices::open(&access.planner, access.tls.clone())
                    .map_err(|e| internal("cannot open the deployments", &e))?,
            ),
            None => Arc::new(
                Services::open(cluster.clone(), &data_dir)
                    .map_err(|e| internal("cannot open the deployments", &e))?,
            ),
        };
        tokio::spawn(nimbus_dataplane::serve(
            data_listener,
            nimbus_gateway::DataPlane::new(services.clone(), tokens.clone()),
            nimbus_dataplane::ServerConfig::default(),
        ));
        let gateway = Arc::new(Gateway {
            services: services.clone(),
            cluster,
            planner: access,
            tokens,
            uploads: data_dir.join("gateway").join("uploads"),
        });
        // Its listeners are bound and take connections from here on.
        metrics.serve(&telemetry)?;
        nimbus_gateway::serve(listener, gateway, stop, SHUTDOWN_GRACE)
            .await
            .map_err(|e| internal("gateway", &e))?;
        eprintln!("nimbus: stopping; swapping every instance out");
        services
            .swap_out_all()
            .await
            .map_err(|e| internal("swapping out", &e))?;
        drop(local_cluster);
        Ok(0)
    })
}

/// How long `nimbus up` lets clients' connections finish once it is told to stop;
/// then it stops whatever they hold (an idle keep-alive connection, say).
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The default data plane address beside the gateway asked for at `asked` and bound
/// at `bound`: the next port, or any free one (port 0) when the gateway's was picked
/// freely, so that two `nimbus up` on one machine never reach for the same port (the
/// port after a free one is anyone's).
fn beside(asked: &str, bound: std::net::SocketAddr) -> std::net::SocketAddr {
    let picked_freely = asked.rsplit_once(':').is_some_and(|(_, port)| port == "0");
    let port = match bound.port() {
        _ if picked_freely => 0,
        u16::MAX => 0,
        port => port + 1,
    };
    std::net::SocketAddr::new(bound.ip(), port)
}

/// Makes the process `command` starts end (SIGKILL) when the thread that starts it
/// does, however this process ends, so no planner or worker outlives its `nimbus up`.
/// Linux ties the signal to the thread that forks: `nimbus up` starts its children
/// from the thread that runs it to the end.
pub(crate) fn end_with_parent(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid is async-signal-safe; this runs in the parent, before the fork.
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
        // A parent that died before the signal was set will never send it.
        if now != parent {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    // SAFETY: the closure only makes the two async-signal-safe calls above and
    // returns errors that allocate nothing, which is what may run in the child
    // between fork and exec (another thread may have held the allocator's lock).
    unsafe {
        command.pre_exec(set);
    }
}

/// The credentials directories of `nimbus up --workers`'s nodes, each its own.
struct LocalNodes {
    gateway: PathBuf,
    planner: PathBuf,
    workers: Vec<PathBuf>,
}

/// A planner and workers started as child processes of `nimbus up`; they stop
/// with it (killed when this is dropped, or by the kernel if `nimbus up` dies).
struct LocalCluster {
    planner: String,
    _children: Vec<tokio::process::Child>,
}

impl LocalCluster {
    async fn start(
        nodes: &LocalNodes,
        data_dir: &std::path::Path,
        state: Option<&str>,
        state_capacity: crate::StateCapacity,
        allowed_dirs: &[PathBuf],
    ) -> std::io::Result<LocalCluster> {
        let capacity = state_capacity.bytes.to_string();
        let (planner_child, planner) = spawn_announcing(
            &[
                "planner",
                "--listen",
                "127.0.0.1:0",
                "--cluster-dir",
                utf8(&nodes.planner)?,
                "--state-capacity",
                &capacity,
            ],
            data_dir,
            "nimbus: planner listening on ",
        )
        .await?;
        let mut children = vec![planner_child];
        let joined = format!("nimbus: worker joined {planner} as host ");
        for (n, credentials) in (1..).zip(&nodes.workers) {
            let worker_dir = data_dir.join("workers").join(n.to_string());
            let mut args = vec![
                "worker",
                "--planner",
                &planner,
                "--cluster-dir",
                utf8(credentials)?,
            ];
            if let Some(url) = state {
                args.extend(["--state", url]);
            }
            for dir in allowed_dirs {
                args.extend(["--allow-dir", utf8(dir)?]);
            }
            let (child, _) = spawn_announcing(&args, &worker_dir, &joined).await?;
            children.push(child);
        }
        Ok(LocalCluster {
            planner,
            _children: children,
        })
    }
}

/// `path` as an argument of a child `nimbus`.
fn utf8(path: &std::path::Path) -> std::io::Result<&str> {
    path.to_str()
        .ok_or_else(|| std::io::Error::other(format!("{}: not UTF-8", path.display())))
}

/// Starts `nimbus ARGS` and returns it with the rest of its first line, which must
/// start with `prefix`.
async fn spawn_announcing(
    args: &[&str],
    data_dir: &std::path::Path,
    prefix: &str,
) -> std::io::Result<(tokio::process::Child, String)> {
    use tokio::io::AsyncBufReadExt;
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command
        .args(args)
        .env("NIMBUS_DATA_DIR", data_dir)
        // The local nodes serve no metrics endpoint: one address is the gateway's.
        .env_remove("NIMBUS_METRICS_LISTEN")
        .stdout(std::process::Stdio::piped());
    end_with_parent(&mut command);
    let mut child = tokio::process::Command::from(command)
        .kill_on_drop(true)
        .spawn()?;
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("piped"));
    let mut first = String::new();
    stdout.read_line(&mut first).await?;
    let rest = first.trim_end().strip_prefix(prefix).ok_or_else(|| {
        std::io::Error::other(format!("`nimbus {}` said {first:?}", args.join(" ")))
    })?;
    Ok((child, rest.to_owned()))
}

/// Completes on SIGINT or SIGTERM. The handlers are installed when this is called
/// (inside the runtime), not when the future is first polled, so a signal that comes
/// after the call and before the wait is not lost.
pub(crate) fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        let (Ok(mut interrupt), Ok(mut terminate)) = handlers else {
            // Without signal handlers the process is still stopped by the signal.
            return std::future::pending().await;
        };
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    }
}
