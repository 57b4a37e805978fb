//! The client commands: `deploy`, `invoke`, `apps`, `ps`, `logs`, `send`, `kill`,
//! `hosts` (without `--planner`) and `token`, talking to a nimbus gateway over HTTP
//! with a bearer token. The server and token come from `--server`/`--token`, else
//! `NIMBUS_SERVER`/`NIMBUS_TOKEN`, else the client config file `nimbus up` writes
//! (`config.rs`), else the default server and no token.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use clap::Args;
use serde_json::Value;

use crate::Failure;

/// Exit code of a client command whose request the server refused or failed.
const REQUEST_FAILED: i32 = 1;

/// The gateway's URL when neither a flag, the environment nor the config gives one.
const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

/// Where the gateway is, and the token to show it.
#[derive(Args)]
pub(crate) struct Server {
    /// URL of the nimbus gateway [default: the client config's, else
    /// http://127.0.0.1:7070].
    #[arg(long = "server", env = "NIMBUS_SERVER", value_name = "URL")]
    url: Option<String>,
    /// Bearer token for the gateway [default: the client config's].
    #[arg(
        long,
        env = "NIMBUS_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
}

/// How a listing command prints what it lists.
#[derive(Args, Clone, Copy)]
pub(crate) struct Output {
    /// `table` (for people, sizes and times human-readable) or `json` (an array of
    /// objects, for scripts).
    #[arg(long = "output", value_enum, default_value_t = OutputFormat::Table)]
    format: OutputFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OutputFormat {
    Table,
    Json,
}

impl Output {
    /// Prints `rows` as JSON and returns `true`, if that is what was asked.
    pub(crate) fn json(self, rows: &impl serde::Serialize) -> bool {
        if self.format != OutputFormat::Json {
            return false;
        }
        let text = serde_json::to_string_pretty(rows).expect("listings serialise");
        println!("{text}");
        true
    }
}

/// Arguments of a listing command of the gateway (`nimbus apps`).
#[derive(Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    server: Server,
    #[command(flatten)]
    output: Output,
}

/// A gateway to call: its URL and the token to send.
pub(crate) struct Gateway {
    url: String,
    token: Option<String>,
}

impl Server {
    /// The gateway to call: each of the URL and token from its flag or variable,
    /// else from the client config file, else the default URL and no token.
    pub(crate) fn resolve(&self) -> Result<Gateway, Failure> {
        let config = if self.url.is_none() || self.token.is_none() {
            match crate::config::path() {
                Some(path) => {
                    crate::config::load(&path).map_err(|e| Failure::new(REQUEST_FAILED, e))?
                }
                None => None,
            }
        } else {
            None
        };
        let url = self
            .url
            .clone()
            .or_else(|| config.as_ref().map(|c| c.server.clone()))
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
        let url = url.trim_end_matches('/').to_owned();
        // The config's token goes only to the config's server: never to another
        // one named by a flag or variable.
        let token = self
            .token
            .clone()
            .or_else(|| {
                config
                    .filter(|c| c.server.trim_end_matches('/') == url)
                    .map(|c| c.token)
            })
            .filter(|token| !token.is_empty());
        Ok(Gateway { url, token })
    }
}

impl Gateway {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// `request` with the token, if there is one.
    fn authorised<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(token) => request.header("authorization", format!("Bearer {token}")),
            None => request,
        }
    }

    fn get(&self, path: &str) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        self.authorised(agent().get(self.url(path)))
    }

    fn delete(&self, path: &str) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        self.authorised(agent().delete(self.url(path)))
    }

    fn post(&self, path: &str) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        self.authorised(agent().post(self.url(path)))
    }

    fn put(&self, path: &str) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        self.authorised(agent().put(self.url(path)))
    }

    /// Reads a response: its body on success, else a failure with the server's
    /// message; a 401 becomes advice on where a token comes from.
    fn finish(
        &self,
        path: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Vec<u8>, Failure> {
        let url = self.url(path);
        let mut response = response
            .map_err(|e| Failure::new(REQUEST_FAILED, format!("cannot reach {url}: {e}")))?;
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
        if status == ureq::http::StatusCode::UNAUTHORIZED {
            let what = match self.token {
                None => "no token",
                Some(_) => "the token was refused",
            };
            return Err(Failure::new(
                REQUEST_FAILED,
                format!(
                    "{} needs a token: {what} ({message}); run `nimbus up`, which writes \
                     one to the client config, or set NIMBUS_TOKEN",
                    self.url
                ),
            ));
        }
        Err(Failure::new(
            REQUEST_FAILED,
            format!("{} ({status})", message),
        ))
    }

    /// GETs `path` and reads its JSON answer.
    pub(crate) fn get_json(&self, path: &str) -> Result<Value, Failure> {
        let body = self.finish(path, self.get(path).call())?;
        serde_json::from_slice(&body)
            .map_err(|e| Failure::new(REQUEST_FAILED, format!("{}: not JSON: {e}", self.url(path))))
    }
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
    let gateway = args.server.resolve()?;
    let path = format!("/v1/apps/{}", args.name);
    let mut request = gateway.put(&path);
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
    let outcome = gateway.finish(&path, response);
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
    let gateway = args.server.resolve()?;
    let path = format!("/v1/processes/{}", args.pid);
    gateway.finish(&path, gateway.delete(&path).call())?;
    Ok(0)
}

pub(crate) fn send(args: SendArgs) -> Result<i32, Failure> {
    let body = data_bytes(args.data.as_deref())?;
    let gateway = args.server.resolve()?;
    let path = format!("/v1/processes/{}/messages", args.pid);
    gateway.finish(&path, gateway.post(&path).send(&body[..]))?;
    Ok(0)
}

pub(crate) fn invoke(args: InvokeArgs) -> Result<i32, Failure> {
    let body = data_bytes(args.data.as_deref())?;
    let gateway = args.server.resolve()?;
    let path = format!("/v1/apps/{}/invoke/{}", args.app, args.handler);
    let mut request = gateway.post(&path);
    if let Some(session) = &args.session {
        request = request.query("session", session);
    }
    let response = gateway.finish(&path, request.send(&body[..]))?;
    std::io::stdout()
        .write_all(&response)
        .map_err(|e| Failure::new(REQUEST_FAILED, format!("writing the response: {e}")))?;
    Ok(0)
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub(crate) fn apps(args: ListArgs) -> Result<i32, Failure> {
    let apps = args.server.resolve()?.get_json("/v1/apps")?;
    if args.output.json(&apps) {
        return Ok(0);
    }
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

pub(crate) fn ps(server: Server, output: Output) -> Result<i32, Failure> {
    let processes = server.resolve()?.get_json("/v1/processes")?;
    print_processes(
        processes
            .as_array()
            .into_iter()
            .flatten()
            .map(|process| ["pid", "host", "state", "parent"].map(|field| text(&process[field]))),
        output,
    );
    Ok(0)
}

/// What `nimbus ps` prints: pid, host, state and parent (`-` for none) of each
/// process, as a table or as JSON objects (`parent` null for none).
pub(crate) fn print_processes(rows: impl IntoIterator<Item = [String; 4]>, output: Output) {
    let rows: Vec<[String; 4]> = rows.into_iter().collect();
    let objects: Vec<Value> = rows
        .iter()
        .map(|[pid, host, state, parent]| {
            let parent = (parent != "-").then_some(parent);
            serde_json::json!({ "pid": pid, "host": host, "state": state, "parent": parent })
        })
        .collect();
    if output.json(&objects) {
        return;
    }
    println!("{:<20} {:<8} {:<9} PARENT", "PID", "HOST", "STATE");
    for [pid, host, state, parent] in rows {
        println!("{pid:<20} {host:<8} {state:<9} {parent}");
    }
}

pub(crate) fn logs(args: LogsArgs) -> Result<i32, Failure> {
    let gateway = args.server.resolve()?;
    let path = format!("/v1/processes/{}/logs", args.pid);
    let body = gateway.finish(&path, gateway.get(&path).call())?;
    std::io::stdout()
        .write_all(&body)
        .map_err(|e| Failure::new(REQUEST_FAILED, format!("writing the logs: {e}")))?;
    Ok(0)
}

/// Arguments of `nimbus token`.
#[derive(Args)]
pub(crate) struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
    #[command(flatten)]
    server: Server,
}

#[derive(clap::Subcommand)]
enum TokenCommand {
    /// Create a token; prints it, the only time it is shown.
    Create {
        /// The token's name (letters, digits, `-`, `_`, `.`).
        name: String,
        /// An app the token may deploy, invoke and read the logs of (repeatable).
        #[arg(long = "app", value_name = "APP", required_unless_present = "admin")]
        apps: Vec<String>,
        /// The token may do everything.
        #[arg(long, conflicts_with = "apps")]
        admin: bool,
    },
    /// List the tokens' names and scopes.
    List {
        #[command(flatten)]
        output: Output,
    },
    /// Revoke a token: it is refused from then on.
    Revoke {
        /// The token's name.
        name: String,
    },
}

pub(crate) fn token(args: TokenArgs) -> Result<i32, Failure> {
    let gateway = args.server.resolve()?;
    match args.command {
        TokenCommand::Create { name, apps, admin } => {
            let request = serde_json::json!({ "name": name, "admin": admin, "apps": apps });
            let body = gateway.finish(
                "/v1/tokens",
                gateway
                    .post("/v1/tokens")
                    .header("content-type", "application/json")
                    .send(request.to_string().as_bytes()),
            )?;
            let created: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let token = created["token"].as_str().ok_or_else(|| {
                Failure::new(REQUEST_FAILED, "the server's answer holds no token")
            })?;
            println!("{token}");
            eprintln!(
                "nimbus: token {name} ({}); it is shown only now",
                scope_text(&created["scope"])
            );
        }
        TokenCommand::List { output } => {
            let tokens = gateway.get_json("/v1/tokens")?;
            if output.json(&tokens) {
                return Ok(0);
            }
            println!("{:<24} SCOPE", "NAME");
            for token in tokens.as_array().into_iter().flatten() {
                println!(
                    "{:<24} {}",
                    text(&token["name"]),
                    scope_text(&token["scope"])
                );
            }
        }
        TokenCommand::Revoke { name } => {
            let path = format!("/v1/tokens/{name}");
            gateway.finish(&path, gateway.delete(&path).call())?;
        }
    }
    Ok(0)
}

/// A token's scope as the tables show it: `admin`, or `apps: a,b`.
fn scope_text(scope: &Value) -> String {
    if scope["admin"] == true {
        return "admin".into();
    }
    let apps: Vec<String> = scope["apps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    format!("apps: {}", apps.join(","))
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
