//! Service processes through the real binary: `nimbus up` on OS-chosen ports, the
//! client commands, and raw HTTP where status codes and headers matter.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Daemon, guest, outcome, run};
use serde_json::Value;

/// A running `nimbus up`.
struct Node {
    daemon: Daemon,
    url: String,
    data_plane: String,
    data_dir: std::path::PathBuf,
    /// With `--workers`, the planner of the local cluster.
    planner: Option<String>,
}

impl Node {
    fn start(data_dir: &Path) -> Node {
        Node::start_with(data_dir, &[])
    }

    /// `nimbus up` with `flags` besides its listen addresses.
    fn start_with(data_dir: &Path, flags: &[&str]) -> Node {
        Node::start_logging(data_dir, flags, Stdio::null())
    }

    /// [`Node::start_with`], its stderr going to `stderr`.
    fn start_logging(data_dir: &Path, flags: &[&str], stderr: Stdio) -> Node {
        let mut command = Command::new(env!("CARGO_BIN_EXE_nimbus"));
        command
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--data-listen",
                "127.0.0.1:0",
            ])
            .args(flags)
            .env("NIMBUS_DATA_DIR", data_dir)
            .env("NIMBUS_CLUSTER_DIR", common::cluster_dir());
        let daemon = Daemon::start_with_stderr(command, stderr);
        let url = daemon.announced("nimbus: gateway listening on ");
        let data_plane = daemon.announced("nimbus: data plane listening on ");
        let planner = flags
            .contains(&"--workers")
            .then(|| daemon.announced("nimbus: planner listening on "));
        Node {
            daemon,
            url,
            data_plane,
            data_dir: data_dir.to_owned(),
            planner,
        }
    }

    fn nimbus(&self, args: &[&str]) -> Command {
        let mut command = common::nimbus(args);
        command
            .env("NIMBUS_SERVER", &self.url)
            .env("NIMBUS_DATA_DIR", &self.data_dir);
        command
    }

    /// Runs a client command that must succeed; returns its stdout, trimmed.
    fn ok(&self, args: &[&str]) -> String {
        let (stdout, stderr, code) = outcome(&run(self.nimbus(args)));
        assert_eq!(code, Some(0), "nimbus {args:?}: {stderr}");
        stdout.trim().to_owned()
    }

    /// Deploys the built guest `module` as `app` with extra `flags`; returns what
    /// `nimbus deploy` printed.
    fn deploy(&self, module: &str, app: &str, flags: &[&str]) -> String {
        let module = path(module);
        let mut args = vec!["deploy", &module, "--name", app];
        args.extend(flags);
        self.ok(&args)
    }

    /// Runs a client command that must fail; returns its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let (_, stderr, code) = outcome(&run(self.nimbus(args)));
        assert_eq!(code, Some(1), "nimbus {args:?} should fail: {stderr}");
        stderr
    }

    fn app(&self, name: &str) -> Value {
        let body = ureq::get(format!("{}/v1/apps", self.url))
            .call()
            .unwrap()
            .body_mut()
            .read_to_vec()
            .unwrap();
        let apps: Value = serde_json::from_slice(&body).unwrap();
        apps.as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no app {name} in {apps}"))
    }

    /// Waits, within a bound, until `check` holds of the app.
    fn until(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) {
        common::until(&format!("app {name} got {what}"), || check(&self.app(name)));
    }

    /// Starts `nimbus invoke APP hold` (it blocks in `recv`) and returns once the
    /// app has `in_flight` requests in flight.
    fn hold(&self, app: &str, in_flight: usize) -> Child {
        let held = self
            .nimbus(&["invoke", app, "hold"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        self.until(app, "the hold in flight", |a| {
            a["queued"] == in_flight && a["live"] == 1
        });
        held
    }

    /// Releases the `hold` on the app's first instance and checks it completed.
    fn release(&self, app: &str, mut held: Child) {
        let first = self.app(app)["pids"][0].as_str().unwrap().to_owned();
        self.ok(&["send", &first, "--data", "go"]);
        assert!(held.wait().unwrap().success());
    }

    /// POSTs `body` to the gateway's `path`, whatever the status of the answer.
    fn post(&self, path: &str, body: &[u8]) -> ureq::http::Response<ureq::Body> {
        ureq::post(format!("{}{path}", self.url))
            .config()
            .http_status_as_error(false)
            .build()
            .send(body)
            .unwrap()
    }

    /// The server's resident memory in bytes.
    fn rss(&self) -> u64 {
        let pid = self.daemon.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib << 10
    }

    /// Stops the node as an operator would (SIGTERM) and waits for it.
    fn stop(mut self) {
        let status = self.daemon.signal("TERM");
        assert!(status.success(), "nimbus up ended with {status}");
    }
}

fn path(name: &str) -> String {
    guest(name).to_str().unwrap().to_owned()
}

#[test]
fn deploy_invoke_state_and_every_error() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(data.path());
    let deployed = node.deploy("counter-service", "counter", &["--max-body", "16"]);
    assert!(deployed.starts_with("deployed counter"), "{deployed}");

    assert_eq!(node.ok(&["invoke", "counter", "add", "--data", "5"]), "5");
    assert_eq!(node.ok(&["invoke", "counter", "add", "--data", "7"]), "12");
    assert_eq!(node.ok(&["invoke", "counter", "total"]), "12 2");

    let cases: &[(&[&str], &str)] = &[
        (&["invoke", "nope", "add"], "404"),
        (&["invoke", "counter", "subtract"], "404"),
        (
            &["invoke", "counter", "add", "--data", "12345678901234567"],
            "413",
        ),
        (&["invoke", "counter", "add", "--data", "x"], "500"),
        (&["deploy", &path("hello"), "--name", "hello"], "reactor"),
        (
            &[
                "deploy",
                &path("counter-service"),
                "--name",
                "bad",
                "--mem",
                "lots",
            ],
            "400",
        ),
        (
            &["deploy", &path("counter-service"), "--name", "no.dots"],
            "400",
        ),
    ];
    for (args, expected) in cases {
        let stderr = node.fails(args);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // Errors left the state alone.
    assert_eq!(node.ok(&["invoke", "counter", "total"]), "12 2");

    let pid = node.app("counter")["pids"][0].as_str().unwrap().to_owned();
    assert!(node.ok(&["ps"]).contains(&pid));
    assert!(node.ok(&["apps"]).contains("counter"));
    assert!(node.ok(&["logs", &pid]).contains("not an integer"));

    // Malformed requests are 400 with a JSON error.
    let response = ureq::put(format!("{}/v1/apps/x?max_instances=many", node.url))
        .config()
        .http_status_as_error(false)
        .build()
        .send(&b"\0asm"[..])
        .unwrap();
    assert_eq!(response.status(), 400);

    // A body read from a file, with the server named by `--server` (no variable).
    let body = data.path().join("body.txt");
    std::fs::write(&body, "3").unwrap();
    let from_file = format!("@{}", body.display());
    let invoke = |data: &str| {
        let mut command = common::nimbus(&["invoke", "counter", "add", "--data", data]);
        command
            .args(["--server", &node.url])
            .env_remove("NIMBUS_SERVER");
        outcome(&run(command))
    };
    let (stdout, stderr, code) = invoke(&from_file);
    assert_eq!((code, stdout.trim()), (Some(0), "15"), "{stderr}");
    let (_, stderr, code) = invoke("@/no/such/body");
    assert_eq!(code, Some(127), "{stderr}");
    assert!(stderr.contains("/no/such/body"), "{stderr}");
}

#[test]
fn a_trap_is_a_500_and_rolls_the_instance_back() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(data.path());
    node.deploy("c-counter-service", "counter", &[]);
    assert_eq!(node.ok(&["invoke", "counter", "add", "--data", "5"]), "5");
    let stderr = node.fails(&["invoke", "counter", "crash"]);
    assert!(
        stderr.contains("trap") && stderr.contains("500"),
        "{stderr}"
    );
    // Rolled back to the state after the last good invocation, not left wrecked.
    assert_eq!(node.ok(&["invoke", "counter", "total"]), "5 1");

    // Killing an instance discards what it did since its last snapshot (here,
    // never swapped out: everything).
    assert_eq!(node.ok(&["invoke", "counter", "add", "--data", "2"]), "7");
    let pid = node.app("counter")["pids"][0].as_str().unwrap().to_owned();
    node.ok(&["kill", &pid]);
    node.until("counter", "the instance stopped", |a| a["live"] == 0);
    assert_eq!(node.ok(&["invoke", "counter", "total"]), "0 0");
    assert!(node.fails(&["kill", "123456789"]).contains("404"));
}

#[test]
fn sessions_stick_and_a_busy_app_scales_out() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(data.path());
    node.deploy("c-counter-service", "counter", &["--max-instances", "3"]);
    let held = node.hold("counter", 1);
    assert_eq!(
        node.ok(&["invoke", "counter", "add", "--data", "1", "--session", "s"]),
        "1"
    );
    assert_eq!(node.app("counter")["instances"], 2);

    node.release("counter", held);
    assert_eq!(
        node.ok(&["invoke", "counter", "add", "--data", "1", "--session", "s"]),
        "2"
    );
    assert_eq!(node.ok(&["invoke", "counter", "add", "--data", "1"]), "1");
}

#[test]
fn idle_instances_swap_out_and_a_restart_keeps_deployments_and_state() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(data.path());
    node.deploy("counter-service", "counter", &["--idle", "200ms"]);
    assert_eq!(node.ok(&["invoke", "counter", "add", "--data", "5"]), "5");
    node.until("counter", "swapped out", |a| a["live"] == 0);
    assert!(data.path().join("apps/counter/instance-0.snap").exists());
    assert_eq!(node.ok(&["invoke", "counter", "add", "--data", "1"]), "6");
    node.stop();

    let node = Node::start(data.path());
    assert_eq!(node.app("counter")["live"], 0);
    assert_eq!(node.ok(&["invoke", "counter", "total"]), "6 2");
}

#[test]
fn snapshots_swapped_between_two_apps_are_refused_and_both_serve_afresh() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(data.path());
    node.deploy("counter-service", "one", &[]);
    node.deploy("counter-service", "two", &[]);
    assert_eq!(node.ok(&["invoke", "one", "add", "--data", "5"]), "5");
    assert_eq!(node.ok(&["invoke", "two", "add", "--data", "7"]), "7");
    node.stop();
    let snapshot = |app: &str| data.path().join(format!("apps/{app}/instance-0.snap"));
    let aside = data.path().join("aside.snap");
    std::fs::rename(snapshot("one"), &aside).unwrap();
    std::fs::rename(snapshot("two"), snapshot("one")).unwrap();
    std::fs::rename(&aside, snapshot("two")).unwrap();

    let log = data.path().join("stderr.log");
    let node = Node::start_logging(
        data.path(),
        &[],
        std::fs::File::create(&log).unwrap().into(),
    );
    for app in ["one", "two"] {
        // Neither serves the other's state: each starts afresh, and keeps serving.
        assert_eq!(node.ok(&["invoke", app, "total"]), "0 0", "{app}");
        assert_eq!(
            node.ok(&["invoke", app, "add", "--data", "1"]),
            "1",
            "{app}"
        );
        assert_eq!(node.app(app)["rejected_snapshots"], 1, "{app}");
        assert!(
            data.path()
                .join(format!("apps/{app}/instance-0.snap.rejected"))
                .exists()
        );
    }
    node.stop();
    let log = std::fs::read_to_string(&log).unwrap();
    for app in ["one", "two"] {
        assert!(
            log.lines().any(|l| l.contains("WARN")
                && l.contains("refusing the snapshot")
                && l.contains(&format!("app={app}"))),
            "no warning for {app} in {log}"
        );
    }
}

#[test]
fn overload_is_refused_with_429_and_retry_after() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(data.path());
    node.deploy(
        "c-counter-service",
        "counter",
        &["--max-instances", "1", "--queue-depth", "1"],
    );
    let held = node.hold("counter", 1);
    let mut queued = node
        .nimbus(&["invoke", "counter", "add", "--data", "4"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Two accepted means the first left the queue: the queue (depth 1) is now full.
    node.until("counter", "a full queue", |a| a["queued"] == 2);
    let refused = node.post("/v1/apps/counter/invoke/add", b"1");
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().get("retry-after").is_some());

    // Refusing is cheap and holds nothing: 2,000 more refusals of 64 KiB requests
    // (125 MiB offered) leave the server's memory where it was, within 32 MiB.
    let rss_before = node.rss();
    let body = vec![b'1'; 64 << 10];
    for _ in 0..2_000 {
        let refused = node.post("/v1/apps/counter/invoke/add", &body);
        assert_eq!(refused.status(), 429);
    }
    let grown = node.rss().saturating_sub(rss_before);
    assert!(
        grown < 32 << 20,
        "the server grew by {grown} bytes while refusing"
    );

    node.release("counter", held);
    assert!(queued.wait().unwrap().success());
    assert_eq!(node.ok(&["invoke", "counter", "total"]), "4 1");
}

#[test]
fn the_binary_data_plane_invokes_the_same_apps() {
    use nimbus_dataplane::{Client, ClientError, Status};
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(data.path());
    node.deploy("counter-service", "counter", &["--max-body", "16"]);
    assert_eq!(node.ok(&["invoke", "counter", "add", "--data", "5"]), "5");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let bound = Duration::from_secs(30);
        let mut client = tokio::time::timeout(bound, Client::connect(&node.data_plane))
            .await
            .unwrap()
            .unwrap();
        let mut invoke = async |app: &str, handler: &str, body: &[u8]| {
            tokio::time::timeout(bound, client.invoke(app, handler, Some("s"), body))
                .await
                .unwrap()
        };
        // The same instance and state as over HTTP.
        assert_eq!(invoke("counter", "add", b"7").await.unwrap(), b"12\n");
        let status = |r: Result<Vec<u8>, ClientError>| match r {
            Err(ClientError::Server { status, .. }) => status,
            other => panic!("expected a server error, got {other:?}"),
        };
        assert_eq!(status(invoke("nope", "add", b"").await), Status::NotFound);
        assert_eq!(
            status(invoke("counter", "subtract", b"").await),
            Status::NotFound
        );
        assert_eq!(
            status(invoke("counter", "add", &[b'1'; 17]).await),
            Status::TooLarge
        );
        assert_eq!(
            status(invoke("counter", "add", b"x").await),
            Status::HandlerFailed
        );
        assert_eq!(invoke("counter", "total", b"").await.unwrap(), b"12 2\n");
    });
}

#[test]
fn a_service_written_with_the_typed_sdk_layer() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(data.path());
    node.deploy("greeter-service", "greeter", &[]);
    let greet = |name: &str| node.ok(&["invoke", "greeter", "greet", "--data", name]);
    assert_eq!(greet("ada"), "hello, ada: visitor #1");
    assert_eq!(greet("alan"), "hello, alan: visitor #2");
    assert_eq!(node.ok(&["invoke", "greeter", "visitors"]), "2");
    // The SDK turns the handler's error into a non-zero status: a 500.
    assert!(
        node.fails(&["invoke", "greeter", "greet", "--data", " "])
            .contains("500")
    );
}

/// The host `ps` shows for process `pid`.
fn host_of(node: &Node, pid: &str) -> String {
    let ps = node.ok(&["ps"]);
    let line = ps.lines().find(|l| l.starts_with(pid));
    let line = line.unwrap_or_else(|| panic!("no process {pid} in\n{ps}"));
    line.split_whitespace().nth(1).unwrap().to_owned()
}

/// What `nimbus hosts` prints of the cluster of `planner`.
fn hosts(planner: &str) -> String {
    let (stdout, stderr, code) = outcome(&run(common::nimbus(&["hosts", "--planner", planner])));
    assert_eq!(code, Some(0), "{stderr}");
    stdout
}

#[test]
fn in_front_of_a_cluster_apps_run_on_its_workers_and_move_when_one_is_lost() {
    let mut cluster = common::TestCluster::start(3, &[]);
    let data = tempfile::tempdir().unwrap();
    let node = Node::start_with(data.path(), &["--planner", &cluster.addr]);
    node.deploy("counter-service", "counter", &[]);
    assert_eq!(node.ok(&["invoke", "counter", "add", "--data", "5"]), "5");
    assert_eq!(node.ok(&["invoke", "counter", "add", "--data", "7"]), "12");
    // Errors come back from the worker as they would from the node itself.
    let stderr = node.fails(&["invoke", "counter", "subtract"]);
    assert!(stderr.contains("no handler `subtract`"), "{stderr}");

    // The instance runs on a worker.
    let pid = node.app("counter")["pids"][0].as_str().unwrap().to_owned();
    let first_host = host_of(&node, &pid);
    assert!(first_host.starts_with("host-"), "{first_host}");
    node.ok(&["logs", &pid]);

    // That worker is lost: once the planner has dropped it, the next request
    // places the app on another worker, starting afresh.
    cluster.kill_worker(&first_host);
    common::until("the planner drops the lost worker", || {
        !hosts(&cluster.addr).contains(&format!("{first_host} "))
    });
    assert_eq!(node.ok(&["invoke", "counter", "add", "--data", "2"]), "2");
    let pid = node.app("counter")["pids"][0].as_str().unwrap().to_owned();
    let second_host = host_of(&node, &pid);
    assert!(second_host.starts_with("host-") && second_host != first_host);
}

#[test]
fn with_local_workers_a_restart_finds_the_apps_state_on_its_worker() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::start_with(data.path(), &["--workers", "3"]);
    node.deploy("counter-service", "counter", &[]);
    assert_eq!(node.ok(&["invoke", "counter", "add", "--data", "5"]), "5");
    let pid = node.app("counter")["pids"][0].as_str().unwrap().to_owned();
    assert!(host_of(&node, &pid).starts_with("host-"));
    // Stopping swaps the instance out on its worker, which finds it again when
    // started anew, and the app is placed there.
    node.stop();
    let node = Node::start_with(data.path(), &["--workers", "3"]);
    let planner = node.planner.clone().unwrap();
    common::until("a worker reports the app's instance", || {
        hosts(&planner).contains("counter:1")
    });
    assert_eq!(node.ok(&["invoke", "counter", "add", "--data", "1"]), "6");
}
