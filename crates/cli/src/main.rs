//! `nimbus`, the command line of the nimbus serverless process platform.
//!
//! Owns: argument parsing, turning failures into one clear line on stderr and a
//! documented exit code, wiring the embedded cluster for `nimbus run`, and the
//! client config file (`config.rs`) that `nimbus up` writes and the client
//! commands read their server and token from.
//!
//! Must not: hold platform logic; it calls the node crate's cluster.

mod client;
mod config;
mod control;
mod run;
mod telemetry;
mod trust;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The nimbus serverless process platform.
#[derive(Parser)]
#[command(name = "nimbus", version, about)]
struct Cli {
    /// How the platform's own log lines are written to stderr: `human`, or `json`
    /// (one object per line, with the span fields, for log collectors).
    #[arg(long, global = true, value_enum, env = "NIMBUS_LOG_FORMAT", default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// See [`Cli::log_format`].
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a wasm32-wasip1 program on the embedded default (no services needed).
    Run(run::RunArgs),
    /// Start a single-node nimbus with its HTTP gateway.
    Up(up::UpArgs),
    /// Deploy a service module (a WASI reactor) as an app.
    Deploy(client::DeployArgs),
    /// Invoke a handler of an app; prints the response.
    Invoke(client::InvokeArgs),
    /// List the deployed apps.
    Apps(client::ListArgs),
    /// List the processes (of a gateway, or with `--planner` of a cluster).
    Ps(control::PsArgs),
    /// Print a service instance's recent stderr.
    Logs(client::LogsArgs),
    /// Send a message to a process.
    Send(client::SendArgs),
    /// Stop a process.
    Kill(client::KillArgs),
    /// Run the planner: workers join it and report their load.
    Planner(control::PlannerArgs),
    /// Run a worker host that joins a planner.
    Worker(control::WorkerArgs),
    /// List the hosts of the cluster behind the gateway (or of a planner).
    Hosts(control::HostsArgs),
    /// Set up a cluster's credentials (its CA and node certificates).
    #[command(subcommand)]
    Cluster(trust::ClusterCommand),
    /// Create, list and revoke the gateway's bearer tokens (needs an admin token).
    Token(client::TokenArgs),
}

/// A failure with the exit code it maps to. Printed as `nimbus: MESSAGE`.
pub(crate) struct Failure {
    code: i32,
    message: String,
}

impl Failure {
    pub(crate) fn new(code: i32, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// Prints a line that tools and tests read to learn an address. A reader that has
/// gone (a closed pipe) is no reason for a long-running command to stop, so write
/// errors are ignored (`println!` would panic on them).
pub(crate) fn announce(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// The `--state-capacity` of the commands that hold an embedded global state tier.
#[derive(clap::Args, Clone, Copy)]
pub(crate) struct StateCapacity {
    /// The most the embedded global state tier holds, values and key names of
    /// every app together (e.g. `512MiB`); a write past it is refused (`ERR_QUOTA`
    /// to a guest). Not used with `--state redis://…`.
    #[arg(long = "state-capacity", value_name = "SIZE", default_value = "1GiB", value_parser = nimbus_core::parse_size)]
    pub(crate) bytes: u64,
}

/// The default data directory: `$NIMBUS_DATA_DIR`, else the XDG data directory.
pub(crate) fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NIMBUS_DATA_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("nimbus")
}

/// Sends the platform's logs to stderr, filtered by `NIMBUS_LOG` (`RUST_LOG`
/// syntax). Long-running nodes log from `info` on; commands that print a program's
/// own output (`run`, the clients) only warnings, so that their stderr stays the
/// program's.
fn init_logging(command: &Command, format: LogFormat) {
    let default = match command {
        Command::Up(_) | Command::Planner(_) | Command::Worker(_) => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("NIMBUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match format {
        LogFormat::Human => logs.init(),
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
}

/// Raises this process's soft limit on open file descriptors to its hard limit: every
/// channel between two processes on different workers, every connection of a client,
/// costs one, and the usual soft limit (1024) is far below what a node serves. The
/// processes `nimbus up` starts inherit the raised limit. On failure the old limit
/// stays, which only lowers how much the node can serve at once.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable `rlimit` for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a valid `rlimit`, only read by the call; a soft limit
        // equal to the hard one is always allowed.
        let _ = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    }
}

fn main() -> ExitCode {
    raise_descriptor_limit();
    let cli = Cli::parse();
    init_logging(&cli.command, cli.log_format);
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Up(args) => up::up(args),
        Command::Deploy(args) => client::deploy(args),
        Command::Invoke(args) => client::invoke(args),
        Command::Apps(args) => client::apps(args),
        Command::Ps(args) => match args.planner {
            Some(planner) => control::ps(&planner, &args.cluster, args.output),
            None => client::ps(args.server, args.output),
        },
        Command::Logs(args) => client::logs(args),
        Command::Send(args) => client::send(args),
        Command::Kill(args) => client::kill(args),
        Command::Planner(args) => control::planner(args),
        Command::Worker(args) => control::worker(args),
        Command::Hosts(args) => control::hosts(args),
        Command::Cluster(command) => trust::cluster(command),
        Command::Token(args) => client::token(args),
    };
    let code = match result {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("nimbus: {}", failure.message);
            failure.code
        }
    };
    // Exit codes are 0..=255 on Unix; guest codes are already in 0..126.
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
