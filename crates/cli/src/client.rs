//! The client commands: `deploy`, `invoke`, `apps`, `ps` and `logs`, talking to a
//! nimbus gateway over HTTP.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use clap::Args;
use serde_json::Value;

use crate::Failure;

/// Exit code of a client command whose request the server refused or failed.
const REQUEST_FAILED: i32 = 1;

/// Where the gateway is.
#[derive(Args)]
pub(crate) struct Server {
    /// URL of the nimbus gateway.
    #[arg(
        long = "server",
        env = "NIMBUS_SERVER",
        default_value = "http://127.0.0.1:7070"
    )]
    url: String,
}

/// Arguments of `nimbus deploy`.
#[derive(Args)]
pub(crate) struct DeployArgs {
    /// The service module, a WASI reactor.
    program: PathBuf,
    /// The app's name.
    #[arg(long)]
    name: String,
    /// Memory limit of each instance, e.g. `64MiB`.
    #[arg(long, value_name = "SIZE")]
    mem: Option<String>,
    /// Idle time after which an instance is swapped out, e.g. `30s`.
    #[arg(long, value_name = "DURATION")]
    idle: Option<String>,
    /// Most instances the app runs.
    #[arg(long, value_name = "N")]
    max_instances: Option<usize>,
    /// Most requests waiting for one instance.
    #[arg(long, value_name = "N")]
    queue_depth: Option<usize>,
    /// Time limit of one invocation.
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// Largest request body, e.g. `1MiB`.
    #[arg(long, value_name = "SIZE")]
    max_body: Option<String>,
    #[command(flatten)]
    server: Server,
}

/// Arguments of `nimbus invoke`.
#[derive(Args)]
pub(crate) struct InvokeArgs {
    /// The app.
    app: String,
    /// The handler (an export of the app's module).
    handler: String,
    /// The request body: text, or `@FILE` for a file's contents.
    #[arg(long)]
    data: Option<String>,
    /// Requests with the same session go to the same instance.
    #[arg(long)]
    session: Option<String>,
    #[command(flatten)]
    server: Server,
}

/// Arguments of `nimbus logs`.
#[derive(Args)]
pub(crate) struct LogsArgs {
    /// The process id (of a service instance).
    pid: String,
    #[command(flatten)]
    server: Server,
}

/// Arguments of `nimbus send`.
#[derive(Args)]
pub(crate) struct SendArgs {
    /// The receiving process.
    pid: String,
    /// The message: text, or `@FILE` for a file's contents.
    #[arg(long)]
    data: Option<String>,
    #[command(flatten)]
    server: Server,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// Reads a response: its body on success, else a failure with the server's message.
fn finish(
    url: &str,
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Vec<u8>, Failure> {
    let mut response =
        response.map_err(|e| Failure::new(REQUEST_FAILED, format!("cannot reach {url}: {e}")))?;
    let status = response.status();
    let body = response
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .map_err(|e| Failure::new(REQUEST_FAILED, format!("reading the response: {e}")))?;
    if status.is_success() {
        return Ok(body);
    }
    let message = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    Err(Failure::new(
        REQUEST_FAILED,
        format!("{} ({status})", message),
    ))
}

/// Reports upload progress on stderr when it is a terminal.
struct Progress<R> {
    inner: R,
    sent: u64,
    total: u64,
    visible: bool,
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sent += n as u64;
        if self.visible {
            let mut err = std::io::stderr();
            let _ = write!(err, "{}", progress_line(self.sent, self.total));
            let _ = err.flush();
        }
        Ok(n)
    }
}

/// What the upload progress shows after `sent` of `total` bytes: a bar redrawn in
/// place, and once everything is sent, that the server is compiling.
fn progress_line(sent: u64, total: u64) -> String {
    const WIDTH: u64 = 30;
    let done = (sent.min(total) * WIDTH / total.max(1)) as usize;
    let mut line = format!(
        "\r  uploading [{}{}] {:>5.1} / {:.1} MiB",
        "#".repeat(done),
        " ".repeat(WIDTH as usize - done),
        sent as f64 / 1048576.0,
        total as f64 / 1048576.0
    );
    if sent == total {
        line.push_str("\n  compiling...");
    }
    line
}

pub(crate) fn deploy(args: DeployArgs) -> Result<i32, Failure> {
    let file = std::fs::File::open(&args.program).map_err(|e| {
        Failure::new(
            nimbus_core::exit_code::FILE_NOT_FOUND,
            format!("cannot read {}: {e}", args.program.display()),
        )
    })?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let url = format!("{}/v1/apps/{}", args.server.url, args.name);
    let mut request = agent().put(&url);
    let options = [
        ("memory", args.mem),
        ("idle", args.idle),
        ("max_instances", args.max_instances.map(|n| n.to_string())),
        ("queue_depth", args.queue_depth.map(|n| n.to_string())),
        ("timeout", args.timeout),
        ("max_body", args.max_body),
    ];
    for (key, value) in options {
        if let Some(value) = value {
            request = request.query(key, value);
        }
    }
    let visible = std::io::stderr().is_terminal();
    let mut progress = Progress {
        inner: file,
        sent: 0,
        total,
        visible,
    };
    let response = request
        .header("content-type", "application/wasm")
        .send(ureq::SendBody::from_reader(&mut progress));
    let outcome = finish(&url, response);
    if visible {
        eprintln!();
    }
    let body = outcome?;
    let app: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    println!(
        "deployed {} (module {})",
        app["name"].as_str().unwrap_or(&args.name),
        app["module"].as_str().unwrap_or("?")
    );
    Ok(0)
}

/// The bytes of a `--data` argument: text, or `@FILE`.
fn data_bytes(data: Option<&str>) -> Result<Vec<u8>, Failure> {
    let Some(data) = data else {
        return Ok(Vec::new());
    };
    match data.strip_prefix('@') {
        Some(path) => std::fs::read(path).map_err(|e| {
            Failure::new(
                nimbus_core::exit_code::FILE_NOT_FOUND,
                format!("cannot read {path}: {e}"),
            )
        }),
        None => Ok(data.as_bytes().to_vec()),
    }
}

/// Arguments of `nimbus kill`.
#[derive(Args)]
pub(crate) struct KillArgs {
    /// The process to stop.
    pid: String,
    #[command(flatten)]
    server: Server,
}

pub(crate) fn kill(args: KillArgs) -> Result<i32, Failure> {
    let url = format!("{}/v1/processes/{}", args.server.url, args.pid);
    finish(&url, agent().delete(&url).call())?;
    Ok(0)
}

pub(crate) fn send(args: SendArgs) -> Result<i32, Failure> {
    let body = data_bytes(args.data.as_deref())?;
    let url = format!("{}/v1/processes/{}/messages", args.server.url, args.pid);
    finish(&url, agent().post(&url).send(&body[..]))?;
    Ok(0)
}

pub(crate) fn invoke(args: InvokeArgs) -> Result<i32, Failure> {
    let body = data_bytes(args.data.as_deref())?;
    let url = format!(
        "{}/v1/apps/{}/invoke/{}",
        args.server.url, args.app, args.handler
    );
    let mut request = agent().post(&url);
    if let Some(session) = &args.session {
        request = request.query("session", session);
    }
    let response = finish(&url, request.send(&body[..]))?;
    std::io::stdout()
        .write_all(&response)
        .map_err(|e| Failure::new(REQUEST_FAILED, format!("writing the response: {e}")))?;
    Ok(0)
}

fn get_json(server: &Server, path: &str) -> Result<Value, Failure> {
    let url = format!("{}{path}", server.url);
    let body = finish(&url, agent().get(&url).call())?;
    serde_json::from_slice(&body)
        .map_err(|e| Failure::new(REQUEST_FAILED, format!("{url}: not JSON: {e}")))
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub(crate) fn apps(server: Server) -> Result<i32, Failure> {
    let apps = get_json(&server, "/v1/apps")?;
    println!(
        "{:<20} {:>9} {:>5} {:>7} {:>10}  MODULE",
        "APP", "INSTANCES", "LIVE", "QUEUED", "MEMORY"
    );
    for app in apps.as_array().into_iter().flatten() {
        println!(
            "{:<20} {:>9} {:>5} {:>7} {:>10}  {}",
            text(&app["name"]),
            text(&app["instances"]),
            text(&app["live"]),
            text(&app["queued"]),
            nimbus_core::format_size(app["memory"].as_u64().unwrap_or(0)),
            text(&app["module"]).chars().take(12).collect::<String>()
        );
    }
    Ok(0)
}

pub(crate) fn ps(server: Server) -> Result<i32, Failure> {
    let processes = get_json(&server, "/v1/processes")?;
    print_processes(
        processes
            .as_array()
            .into_iter()
            .flatten()
            .map(|process| ["pid", "host", "state", "parent"].map(|field| text(&process[field]))),
    );
    Ok(0)
}

/// The table `nimbus ps` prints: pid, host, state and parent (`-` for none) of each
/// process.
pub(crate) fn print_processes(rows: impl IntoIterator<Item = [String; 4]>) {
    println!("{:<20} {:<8} {:<9} PARENT", "PID", "HOST", "STATE");
    for [pid, host, state, parent] in rows {
        println!("{pid:<20} {host:<8} {state:<9} {parent}");
    }
}

pub(crate) fn logs(args: LogsArgs) -> Result<i32, Failure> {
    let url = format!("{}/v1/processes/{}/logs", args.server.url, args.pid);
    let body = finish(&url, agent().get(&url).call())?;
    std::io::stdout()
        .write_all(&body)
        .map_err(|e| Failure::new(REQUEST_FAILED, format!("writing the logs: {e}")))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_bar_fills_then_says_compiling() {
        let half = progress_line(3 << 20, 6 << 20);
        assert!(
            half.contains(&format!("[{}{}]", "#".repeat(15), " ".repeat(15))),
            "{half:?}"
        );
        assert!(
            half.contains("3.0 / 6.0 MiB") && !half.contains("compiling"),
            "{half:?}"
        );
        let whole = progress_line(6 << 20, 6 << 20);
        assert!(
            whole.contains(&"#".repeat(30)) && whole.ends_with("compiling..."),
            "{whole:?}"
        );
    }
}
