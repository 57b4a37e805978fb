//! `nimbus run`: one program on the embedded default cluster.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use nimbus_core::{ExitStatus, Limits, exit_code, parse_duration, parse_size};
use nimbus_node::{Cluster, ClusterConfig, ClusterError, GlobalState, ModuleSource, RootProcess};
use nimbus_runtime::{Capture, Checkpoint, Input, LoadError, ModuleBytes, Output, Preopen};
use nimbus_snapshot::Snapshot;
use nimbus_state::AppName;

use crate::Failure;

/// Arguments of `nimbus run`.
#[derive(Args)]
pub(crate) struct RunArgs {
    /// The program, a wasm32-wasip1 command module.
    program: PathBuf,
    /// Make a host directory visible to the program: `HOST_DIR::GUEST_DIR`, or
    /// `DIR` for the same path in both.
    #[arg(long = "dir", value_name = "HOST_DIR::GUEST_DIR")]
    dirs: Vec<String>,
    /// Set an environment variable of the program.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Memory limit of each process, e.g. `64MiB`.
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = parse_size)]
    mem: u64,
    /// Deadline of the whole run, e.g. `5s` or `500ms`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Number of in-process hosts of the embedded cluster.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    hosts: u16,
    /// The app the program belongs to: its processes share the app's state
    /// (default: the program's file name without `.wasm`).
    #[arg(long, value_name = "NAME")]
    app: Option<String>,
    /// The global state tier, `redis://HOST:PORT[/DB]` (default: embedded in nimbus).
    #[arg(long, value_name = "URL")]
    state: Option<String>,
    #[command(flatten)]
    state_capacity: crate::StateCapacity,
    /// Run N copies as the ranks of one world (MPI's `MPI_COMM_WORLD`), spread over
    /// the hosts; the exit status is the first failing rank's.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=4096))]
    ranks: Option<u16>,
    /// Run on the cluster whose planner is at ADDR instead of the embedded
    /// default; the workers must see the program's directory and `--dir`s at the
    /// same paths.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["hosts", "state"])]
    planner: Option<String>,
    /// Run on the cluster of the last `nimbus up --workers N` (or `--planner`):
    /// `--planner` with the planner's address from the client config file.
    #[arg(long, conflicts_with_all = ["hosts", "state", "planner"])]
    cluster: bool,
    /// Where nimbus keeps its module cache.
    #[arg(long, env = "NIMBUS_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// With `--planner`: the credentials to reach the cluster with (with
    /// `--cluster`, by default those the client config file names).
    #[command(flatten)]
    credentials: crate::trust::ClusterDir,
    /// Make the program capturable: on SIGUSR1 it is captured at the blocking call
    /// it is in (a read of stdin, a sleep) or at its next one, FILE is written
    /// and nimbus exits with code 138. A capture that cannot be made is reported
    /// and the program keeps running.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["ranks", "planner", "cluster"])]
    checkpoint_on_signal: Option<PathBuf>,
    /// Go on from the checkpoint in FILE (written by `--checkpoint-on-signal`) of
    /// this program: its args, env and app are the checkpoint's; `--dir` must give
    /// the same guest paths, in order.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["ranks", "planner", "cluster", "app", "env", "args"])]
    restore: Option<PathBuf>,
    /// Arguments passed to the program.
    #[arg(last = true)]
    args: Vec<String>,
}

/// The largest memory a wasm32 process can address.
const MAX_WASM32_MEMORY: u64 = 4 << 30;

/// The planner of the client config file, and the cluster directory it names, for
/// `--cluster`.
fn configured_planner() -> Result<(String, Option<PathBuf>), Failure> {
    let path = crate::config::path().ok_or_else(|| {
        usage("--cluster: no client config (no HOME, XDG_CONFIG_HOME or NIMBUS_CONFIG)")
    })?;
    let config = crate::config::load(&path).map_err(|e| usage(format!("--cluster: {e}")))?;
    let what = match config {
        Some(config) => match config.planner {
            Some(planner) => return Ok((planner, config.cluster_dir)),
            None => "names no planner",
        },
        None => "does not exist",
    };
    Err(usage(format!(
        "--cluster: the client config {} {what}; start `nimbus up --workers N`, or use --planner ADDR",
        path.display()
    )))
}

pub(crate) fn run(mut args: RunArgs) -> Result<i32, Failure> {
    if args.cluster {
        let (planner, cluster_dir) = configured_planner()?;
        args.planner = Some(planner);
        args.credentials = args.credentials.or_else(cluster_dir);
    }
    let program = args.program.display().to_string();
    let bytes = std::fs::read(&args.program).map_err(|e| {
        Failure::new(
            exit_code::FILE_NOT_FOUND,
            format!("cannot read {program}: {e}"),
        )
    })?;
    if args.mem > MAX_WASM32_MEMORY {
        return Err(usage(
            "--mem can be at most 4GiB (the wasm32 address space)",
        ));
    }
    let module = ModuleBytes::new(bytes);
    let restoring = match &args.restore {
        Some(path) => Some(read_checkpoint(path, &module)?),
        None => None,
    };
    let app = match &args.app {
        Some(name) => AppName::new(name).map_err(|e| usage(format!("--app: {e}")))?,
        // State that outlives the run (a cluster's, or Redis) must not be shared by
        // different programs that happen to have one file name.
        None if args.planner.is_some() || args.state.is_some() => {
            app_of_module(&args.program, &module)
        }
        None => app_of(&args.program),
    };
    let capture = match restoring {
        Some(checkpoint) => Some(Capture::restoring(checkpoint)),
        None => args
            .checkpoint_on_signal
            .as_ref()
            .map(|_| Capture::new(app.as_str())),
    };
    // A restored process belongs to the app it was captured in.
    let app = match &capture {
        Some(capture) => AppName::new(capture.app())
            .map_err(|e| Failure::new(exit_code::BAD_CHECKPOINT, format!("{program}: {e}")))?,
        None => app,
    };
    let root = RootProcess {
        app,
        module,
        modules: ModuleSource::Directory(module_dir(&args.program)),
        args: std::iter::once(file_name(&args.program))
            .chain(args.args)
            .collect(),
        env: args
            .env
            .iter()
            .map(|kv| parse_env(kv))
            .collect::<Result<_, _>>()?,
        dirs: args
            .dirs
            .iter()
            .map(|d| parse_dir(d))
            .collect::<Result<_, _>>()?,
        stdin: Input::Inherit,
        output: (Output::Inherit, Output::Inherit),
        limits: Limits {
            memory: args.mem,
            timeout: args.timeout,
        },
    };
    let data_dir = args.data_dir.unwrap_or_else(crate::default_data_dir);
    let tls = match &args.planner {
        Some(_) => Some(args.credentials.load(&data_dir)?),
        None => None,
    };
    let mut config = ClusterConfig::new(&data_dir);
    config.hosts = args.hosts;

    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(exit_code::INTERNAL, format!("cannot start: {e}")))?;
    let status = tokio.block_on(async {
        let global = nimbus_state::open(args.state.as_deref(), args.state_capacity.bytes, None)
            .await
            .map_err(|e| Failure::new(exit_code::INTERNAL, format!("state: {e}")))?;
        config.global_state = GlobalState(global);
        // Listening before the program starts: SIGUSR1 would otherwise end nimbus.
        let requests = match (&capture, &args.checkpoint_on_signal) {
            (Some(capture), Some(_)) => Some(capture_on_signal(capture.clone(), &program)?),
            _ => None,
        };
        let ran = async {
            if let (Some(planner), Some(tls)) = (&args.planner, tls) {
                return nimbus_node::run_on_cluster(planner, tls, root, args.ranks).await;
            }
            let cluster = Cluster::new(&config)?;
            match (args.ranks, &capture) {
                (Some(ranks), _) => cluster.run_world(root, ranks).await,
                (None, Some(capture)) => cluster.run_capturable(root, capture.clone()).await,
                (None, None) => cluster.run(root).await,
            }
        };
        let ended = async {
            ran.await
                .map_err(|e| Failure::new(cluster_error_code(&e), format!("{program}: {e}")))
        };
        let status = match requests {
            Some(requests) => tokio::select! {
                status = ended => status,
                never = requests => match never {},
            },
            None => ended.await,
        }?;
        let checkpoint = capture.as_ref().and_then(Capture::checkpoint);
        match (checkpoint, args.checkpoint_on_signal) {
            (Some(checkpoint), Some(path)) => {
                Err(write_checkpoint(checkpoint, path, &program).await)
            }
            _ => Ok(status),
        }
    });
    // Children still running when the root ends are stopped with the run.
    tokio.shutdown_background();
    match status? {
        ExitStatus::Exited(code) => Ok(code),
        ExitStatus::Failed(failure) => Err(Failure::new(
            failure.exit_code(),
            format!("{program}: {failure}"),
        )),
    }
}

/// The checkpoint at `path`, verified whole and found to be of `module`.
fn read_checkpoint(path: &Path, module: &ModuleBytes) -> Result<Snapshot, Failure> {
    let refused = |why: String| Failure::new(exit_code::BAD_CHECKPOINT, why);
    let checkpoint = nimbus_snapshot::read(path)
        .map_err(|e| refused(format!("refusing the checkpoint: {e}")))?;
    if checkpoint.module != module.hash().to_bytes() {
        return Err(refused(format!(
            "refusing the checkpoint {}: it is of another module (sha256 {}), not of this program ({})",
            path.display(),
            hex::encode(checkpoint.module),
            module.hash()
        )));
    }
    if checkpoint.suspended.is_none() {
        return Err(refused(format!(
            "refusing the checkpoint {}: it is a service instance's snapshot, not a captured process",
            path.display()
        )));
    }
    Ok(checkpoint)
}

/// Asks `capture` for a capture at each SIGUSR1, reporting each refusal; never
/// ends (the run ends when the capture succeeds).
fn capture_on_signal(
    capture: Capture,
    program: &str,
) -> Result<impl std::future::Future<Output = std::convert::Infallible>, Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut signals = signal(SignalKind::user_defined1()).map_err(|e| {
        Failure::new(
            exit_code::INTERNAL,
            format!("cannot listen for SIGUSR1: {e}"),
        )
    })?;
    let program = program.to_owned();
    Ok(async move {
        loop {
            if signals.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
            if let Err(e) = capture.request_within(CAPTURE_WAIT).await {
                eprintln!("nimbus: {program}: {e}");
            }
        }
    })
}

/// How long a SIGUSR1 waits for the program to reach a blocking call; a program
/// that computes longer is not captured, and runs on.
const CAPTURE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Writes a captured program's checkpoint (off the async threads), and what nimbus
/// ends with then.
async fn write_checkpoint(checkpoint: Checkpoint, path: PathBuf, program: &str) -> Failure {
    let import = checkpoint.import().to_owned();
    let written = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || checkpoint.write(&path)).await
    };
    match written {
        Ok(Ok(())) => Failure::new(
            exit_code::CAPTURED,
            format!(
                "{program}: captured in `{import}`; checkpoint written to {}",
                path.display()
            ),
        ),
        Ok(Err(e)) => Failure::new(exit_code::INTERNAL, format!("{program}: captured, but {e}")),
        Err(e) => Failure::new(
            exit_code::INTERNAL,
            format!("{program}: writing the checkpoint: {e}"),
        ),
    }
}

/// The app a program belongs to unless `--app` says: its file name without
/// `.wasm`, with characters an app name cannot have replaced by `-`.
fn app_of(program: &Path) -> AppName {
    AppName::new(&stem_of(program, nimbus_state::MAX_APP_NAME_LEN))
        .unwrap_or_else(|_| AppName::new("app").expect("a valid name"))
}

/// The app a program belongs to where state outlives the run, unless `--app` says:
/// [`app_of`] followed by `-` and the first 8 hex digits of the module's sha256
/// (`main-1a2b3c4d`), so that different programs of one file name never share it.
fn app_of_module(program: &Path, module: &ModuleBytes) -> AppName {
    const SUFFIX: usize = 1 + 8;
    let mut stem = stem_of(program, nimbus_state::MAX_APP_NAME_LEN - SUFFIX);
    if stem.is_empty() {
        stem = "app".into();
    }
    let hash = module.hash().to_string();
    AppName::new(&format!("{stem}-{}", &hash[..8])).expect("a valid name")
}

/// The file name of `program` without `.wasm`, at most `max` characters of an app name.
fn stem_of(program: &Path, max: usize) -> String {
    let stem = program
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    stem.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(max)
        .collect()
}

fn cluster_error_code(error: &ClusterError) -> i32 {
    match error {
        ClusterError::Load(LoadError::NotWasm) => exit_code::NOT_WASM,
        ClusterError::Load(LoadError::Invalid(_) | LoadError::Uncapturable(_)) => {
            exit_code::INVALID_MODULE
        }
        ClusterError::Load(LoadError::NoStart) => exit_code::NO_START,
        ClusterError::Load(LoadError::UnknownImport(_)) => exit_code::UNKNOWN_IMPORT,
        ClusterError::Load(LoadError::Cache { .. })
        | ClusterError::Runtime(_)
        | ClusterError::NoCapacity(_)
        | ClusterError::NoHosts
        | ClusterError::Remote(_) => exit_code::INTERNAL,
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure::new(2, message)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn module_dir(program: &Path) -> PathBuf {
    match program.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn parse_env(pair: &str) -> Result<(String, String), Failure> {
    match pair.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(usage(format!("--env {pair}: expected KEY=VALUE"))),
    }
}

fn parse_dir(spec: &str) -> Result<Preopen, Failure> {
    let (host, guest) = spec.split_once("::").unwrap_or((spec, spec));
    if !Path::new(host).is_dir() {
        return Err(usage(format!("--dir {spec}: {host} is not a directory")));
    }
    Ok(Preopen {
        host: PathBuf::from(host),
        guest: guest.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_pairs() {
        assert_eq!(parse_env("A=b=c").ok(), Some(("A".into(), "b=c".into())));
        assert_eq!(parse_env("A=").ok(), Some(("A".into(), String::new())));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("novalue").is_err());
    }

    #[test]
    fn dir_specs() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().display().to_string();
        let mapped = parse_dir(&format!("{host}::/data")).ok().unwrap();
        assert_eq!(
            (mapped.host, mapped.guest.as_str()),
            (dir.path().into(), "/data")
        );
        let same = parse_dir(&host).ok().unwrap();
        assert_eq!(same.guest, host);
        assert!(parse_dir("/no/such/dir::/data").is_err());
    }

    #[test]
    fn the_state_capacity_flag_defaults_to_the_tiers_own_default() {
        use clap::Parser;
        #[derive(Parser)]
        struct Flags {
            #[command(flatten)]
            capacity: crate::StateCapacity,
        }
        let flags = Flags::parse_from(["nimbus"]);
        assert_eq!(flags.capacity.bytes, nimbus_state::DEFAULT_GLOBAL_CAPACITY);
        let flags = Flags::parse_from(["nimbus", "--state-capacity", "64MiB"]);
        assert_eq!(flags.capacity.bytes, 64 << 20);
    }
}
