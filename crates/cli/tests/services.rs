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
    /// The client config file this node's `nimbus up` wrote, and its clients read.
    config: std::path::PathBuf,
    /// The admin token in it.
    token: String,
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
        let config = data_dir.join("client-config.json");
        let mut command = common::up(flags);
        command
            .env("NIMBUS_DATA_DIR", data_dir)
            .env("NIMBUS_CLUSTER_DIR", common::cluster_dir())
            .env("NIMBUS_CONFIG", &config);
        let daemon = Daemon::start_with_stderr(command, stderr);
        let url = daemon.announced("nimbus: gateway listening on ");
        let data_plane = daemon.announced("nimbus: data plane listening on ");
        let planner = flags
            .contains(&"--workers")
            .then(|| daemon.announced("nimbus: planner listening on "));
        let written = common::client_config(&config);
        assert_eq!(written["server"], url.as_str());
        assert_eq!(written["data_plane"], data_plane.as_str());
        Node {
            daemon,
            url,
            data_plane,
            data_dir: data_dir.to_owned(),
            token: written["token"].as_str().unwrap().to_owned(),
            config,
            planner,
        }
    }

    /// A client command with no flags: it finds the server and token in the client
    /// config file.
    fn nimbus(&self, args: &[&str]) -> Command {
        let mut command = common::nimbus(args);
        command
            .env("NIMBUS_CONFIG", &self.config)
            .env("NIMBUS_DATA_DIR", &self.data_dir);
        command
    }

    /// A request to the gateway's `path` with `token` (none: no header), whatever
    /// the status of the answer.
    fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> ureq::http::Response<ureq::Body> {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        agent.run(request.body(body.to_vec()).unwrap()).unwrap()
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

    /// What `GET /v1/apps` answers `token`.
    fn apps(&self, token: &str) -> Value {
        let mut response = self.request("GET", "/v1/apps", Some(token), b"");
        assert_eq!(response.status(), 200);
        serde_json::from_slice(&response.body_mut().read_to_vec().unwrap()).unwrap()
    }

    fn app(&self, name: &str) -> Value {
        let apps = self.apps(&self.token);
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
        self.request("POST", path, Some(&self.token), body)
    }

    /// The server's resident memory in bytes.
    fn rss(&self) -> u64 {
        self.memory("VmRSS:")
    }

    /// The server's peak resident memory in bytes, since it started or since
    /// [`Node::reset_peak`].
    fn peak(&self) -> u64 {
        self.memory("VmHWM:")
    }

    /// Makes the server's peak resident memory its present one.
    fn reset_peak(&self) {
        let pid = self.daemon.child.id();
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    }

    /// The figure of the server's `/proc/PID/status` line `field`, in bytes.
    fn memory(&self, field: &str) -> u64 {
        let pid = self.daemon.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
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
    let response = node.request(
        "PUT",
        "/v1/apps/x?max_instances=many",
        Some(&node.token),
        b"\0asm",
    );
    assert_eq!(response.status(), 400);

    // A body read from a file, with the server and token named by `--server` and
    // `--token` (no variable, no config file).
    let body = data.path().join("body.txt");
    std::fs::write(&body, "3").unwrap();
    let from_file = format!("@{}", body.display());
    let invoke = |data: &str| {
        let mut command = common::nimbus(&["invoke", "counter", "add", "--data", data]);
        command.args(["--server", &node.url, "--token", &node.token]);
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
fn a_deployed_module_is_held_in_memory_once_while_it_uploads() {
    const SIZE: usize = 128 << 20;
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(data.path());
    // A module's header, then bytes no section starts with: refused as invalid
    // once it is whole, so the peak is the upload's alone.
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    module.resize(SIZE, 0xff);
    node.reset_peak();
    let before = node.rss();
    let error = refused(
        node.request("PUT", "/v1/apps/big", Some(&node.token), &module),
        400,
    );
    assert!(error.contains("invalid WebAssembly"), "{error}");
    let grown = node.peak().saturating_sub(before);
    // Once (its own allocation) and little beside: not a copy at each step.
    assert!(
        grown < (SIZE + SIZE / 2) as u64,
        "a {SIZE}-byte upload raised the server's peak memory by {grown} bytes"
    );
    // Nothing is left of it on disk, and the node deploys on.
    let uploads = data.path().join("gateway/uploads");
    assert_eq!(std::fs::read_dir(uploads).unwrap().count(), 0);
    node.deploy("counter-service", "counter", &[]);
    assert_eq!(node.ok(&["invoke", "counter", "add", "--data", "2"]), "2");
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
        // Without a token, or with one the node does not know: refused.
        for token in ["", "nmb_0123"] {
            let refused = tokio::time::timeout(bound, Client::connect(&node.data_plane, token))
                .await
                .unwrap();
            match refused {
                Err(ClientError::Server { status, .. }) => {
                    assert_eq!(status, Status::Unauthorized)
                }
                other => panic!("a connection with token {token:?}: {other:?}"),
            }
        }
        let mut client =
            tokio::time::timeout(bound, Client::connect(&node.data_plane, &node.token))
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
fn deployments_are_kept_by_the_planner_through_its_restart_for_any_gateway() {
    let mut cluster = common::TestCluster::start(2, &[]);
    let first = tempfile::tempdir().unwrap();
    let node = Node::start_with(first.path(), &["--planner", &cluster.addr]);
    node.deploy("counter-service", "counter", &[]);
    assert_eq!(node.ok(&["invoke", "counter", "add", "--data", "5"]), "5");
    // Stopping the gateway swaps the instance out on its worker.
    node.stop();
    cluster.restart_planner();
    // A gateway with a data directory of its own learns the app from the planner
    // and places it on the worker holding its instance, state and all.
    let second = tempfile::tempdir().unwrap();
    let node = Node::start_with(second.path(), &["--planner", &cluster.addr]);
    common::until(
        "a worker reports the app's instance to the new planner",
        || hosts(&cluster.addr).contains("counter:1"),
    );
    let listed = node.ok(&["apps"]);
    assert!(listed.contains("counter"), "{listed}");
    assert_eq!(node.ok(&["invoke", "counter", "add", "--data", "1"]), "6");
    assert!(std::fs::read_dir(second.path().join("apps")).is_err());
}

/// Runs `add 1` in session `s` through each gateway of `gateways`, all at once.
fn add_at_once(gateways: &[&Node]) {
    let args = ["invoke", "counter", "add", "--data", "1", "--session", "s"];
    let adds: Vec<_> = gateways
        .iter()
        .map(|gateway| {
            let add = gateway.nimbus(&args);
            std::thread::spawn(move || outcome(&run(add)))
        })
        .collect();
    for add in adds {
        let (_, stderr, code) = add.join().unwrap();
        assert_eq!(code, Some(0), "{stderr}");
    }
}

/// The hosts `nimbus hosts` lists with an instance of app `counter`.
fn hosts_running_counter(planner: &str) -> usize {
    hosts(planner)
        .lines()
        .filter(|row| row.contains("counter:"))
        .count()
}

#[test]
fn two_gateways_at_once_route_an_app_to_one_worker_and_see_each_others_deployments() {
    let mut cluster = common::TestCluster::start(2, &[]);
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::start_with(first.path(), &["--planner", &cluster.addr]);
    let b = Node::start_with(second.path(), &["--planner", &cluster.addr]);
    let total = |gateway: &Node| gateway.ok(&["invoke", "counter", "total", "--session", "s"]);

    // Deployed through A, invoked through both at once: one instance counts all.
    a.deploy("c-counter-service", "counter", &["--max-instances", "1"]);
    assert_eq!(
        a.ok(&["invoke", "counter", "add", "--session", "s", "--data", "1"]),
        "1"
    );
    add_at_once(&[&a, &b, &a, &b, &a, &b]);
    assert_eq!(total(&b), "7 7");
    assert_eq!(total(&a), "7 7");
    assert_eq!(a.app("counter")["pids"], b.app("counter")["pids"]);
    // A name the planner does not keep is no app, through either.
    for gateway in [&a, &b] {
        assert!(gateway.fails(&["invoke", "nope", "add"]).contains("404"));
    }

    // Deployed anew through B, with another module: A serves the new deployment
    // (its fresh state) within the bound, and both list the same module.
    b.deploy("counter-service", "counter", &["--max-instances", "1"]);
    common::until("A serves B's deployment", || total(&a) == "0 0");
    assert_eq!(a.app("counter")["module"], b.app("counter")["module"]);

    // The app's worker is lost, and another joins: both gateways place the app
    // anew at once, and the planner keeps one worker for it, which both reach.
    a.ok(&["invoke", "counter", "add", "--session", "s", "--data", "1"]);
    let pid = a.app("counter")["pids"][0].as_str().unwrap().to_owned();
    let lost = host_of(&a, &pid);
    cluster.kill_worker(&lost);
    cluster.add_worker(&[]);
    common::until("the planner drops the lost worker", || {
        !hosts(&cluster.addr).contains(&format!("{lost} "))
    });
    add_at_once(&[&a, &b]);
    assert_eq!(total(&a), "2 2");
    assert_eq!(total(&b), "2 2");
    assert_eq!(a.app("counter")["pids"], b.app("counter")["pids"]);
    let pid = a.app("counter")["pids"][0].as_str().unwrap().to_owned();
    assert_ne!(host_of(&a, &pid), lost);
    common::until("one worker reports the app's instance", || {
        hosts_running_counter(&cluster.addr) == 1
    });
}

#[test]
fn with_local_workers_a_restart_finds_the_apps_state_on_its_worker() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::start_with(data.path(), &["--workers", "3"]);
    // Every client command with no flags, through the client config file: the
    // gateway answers `hosts` from the planner it fronts, in human sizes.
    let written = common::client_config(&node.config);
    assert_eq!(written["planner"], node.planner.as_deref().unwrap());
    assert_eq!(
        written["cluster_dir"].as_str().map(std::path::Path::new),
        Some(common::cluster_dir())
    );
    let table = node.ok(&["hosts"]);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(
        rows.iter()
            .all(|row| row.starts_with("host-") && row.contains("iB")),
        "{table}"
    );
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

/// The JSON error of a refused response, after checking its status.
fn refused(mut response: ureq::http::Response<ureq::Body>, status: u16) -> String {
    assert_eq!(response.status(), status);
    let body: Value = serde_json::from_slice(&response.body_mut().read_to_vec().unwrap()).unwrap();
    body["error"].as_str().unwrap().to_owned()
}

#[test]
fn the_gateway_refuses_calls_without_a_known_token_and_changes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(data.path());
    node.deploy("counter-service", "counter", &[]);
    assert_eq!(node.ok(&["invoke", "counter", "add", "--data", "5"]), "5");
    let module = node.app("counter")["module"].clone();

    let other = std::fs::read(guest("c-counter-service")).unwrap();
    for token in [None, Some("nmb_wrong"), Some("")] {
        let response = node.request("PUT", "/v1/apps/counter", token, &other);
        assert_eq!(
            response.headers().get("www-authenticate").unwrap(),
            "Bearer"
        );
        let error = refused(response, 401);
        assert!(error.contains("bearer token"), "{error}");
        for (method, path) in [
            ("POST", "/v1/apps/counter/invoke/add"),
            ("GET", "/v1/apps"),
            ("GET", "/v1/processes"),
            ("GET", "/v1/tokens"),
            ("GET", "/no/such/route"),
        ] {
            refused(node.request(method, path, token, b"1"), 401);
        }
    }
    // The app still answers from its old module, its state untouched.
    assert_eq!(node.app("counter")["module"], module);
    assert_eq!(node.ok(&["invoke", "counter", "total"]), "5 1");

    // A client without a token, or with a wrong one, says where one comes from.
    let mut command = common::nimbus(&["apps", "--server", &node.url]);
    command.env("NIMBUS_CONFIG", data.path().join("none.json"));
    let (_, stderr, code) = outcome(&run(command));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("no token")
            && stderr.contains("nimbus up")
            && stderr.contains("NIMBUS_TOKEN"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let mut command = node.nimbus(&["invoke", "counter", "add", "--data", "1"]);
    command.env("NIMBUS_TOKEN", "nmb_wrong");
    let (_, stderr, code) = outcome(&run(command));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("the token was refused"), "{stderr}");
    assert_eq!(node.ok(&["invoke", "counter", "total"]), "5 1");
}

#[test]
fn tokens_are_created_listed_scoped_and_revoked() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(data.path());
    node.deploy("counter-service", "counter", &[]);
    node.deploy("counter-service", "other", &[]);
    let scoped = node.ok(&["token", "create", "shop-ci", "--app", "counter"]);
    assert!(
        scoped.starts_with("nmb_") && !scoped.contains(char::is_whitespace),
        "{scoped}"
    );
    let admin = node.ok(&["token", "create", "ops", "--admin"]);
    let stderr = node.fails(&["token", "create", "ops", "--admin"]);
    assert!(
        stderr.contains("exists") && stderr.contains("409"),
        "{stderr}"
    );

    let list = node.ok(&["token", "list"]);
    let rows: Vec<Vec<&str>> = list
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["local-admin", "admin"],
            vec!["ops", "admin"],
            vec!["shop-ci", "apps:", "counter"],
        ],
        "{list}"
    );
    // Never a token's text nor its hash.
    assert!(!list.contains(&scoped) && !list.contains("nmb_"), "{list}");

    // The scoped token: its app only.
    let as_scoped = |args: &[&str]| {
        let mut command = node.nimbus(args);
        command.env("NIMBUS_TOKEN", &scoped);
        outcome(&run(command))
    };
    let (stdout, stderr, code) = as_scoped(&["invoke", "counter", "add", "--data", "2"]);
    assert_eq!((code, stdout.trim()), (Some(0), "2"), "{stderr}");
    let names: Vec<Value> = node
        .apps(&scoped)
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].clone())
        .collect();
    assert_eq!(names, ["counter"]);
    let pid = node.app("counter")["pids"][0].as_str().unwrap().to_owned();
    let (_, stderr, code) = as_scoped(&["logs", &pid]);
    assert_eq!(code, Some(0), "{stderr}");
    let other_pid = {
        node.ok(&["invoke", "other", "add", "--data", "1"]);
        node.app("other")["pids"][0].as_str().unwrap().to_owned()
    };
    let module = std::fs::read(guest("counter-service")).unwrap();
    let forbidden: &[(&str, String)] = &[
        ("PUT", "/v1/apps/other".into()),
        ("POST", "/v1/apps/other/invoke/add".into()),
        ("GET", "/v1/processes".into()),
        ("GET", format!("/v1/processes/{other_pid}/logs")),
        ("POST", format!("/v1/processes/{pid}/messages")),
        ("DELETE", format!("/v1/processes/{pid}")),
        ("GET", "/v1/hosts".into()),
        ("GET", "/v1/tokens".into()),
        ("POST", "/v1/tokens".into()),
        ("DELETE", "/v1/tokens/ops".into()),
    ];
    for (method, path) in forbidden {
        let error = refused(node.request(method, path, Some(&scoped), &module), 403);
        assert!(error.contains("token"), "{method} {path}: {error}");
    }
    let (_, stderr, code) = as_scoped(&["ps"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("403"), "{stderr}");
    // Nothing of the other app changed, and the admin token still lists it.
    assert_eq!(node.ok(&["invoke", "other", "total"]), "1 1");
    assert_eq!(node.apps(&admin).as_array().unwrap().len(), 2);
    assert_eq!(node.ok(&["token", "list"]).lines().count(), 4);

    // Revoked: refused from then on.
    node.ok(&["token", "revoke", "shop-ci"]);
    let (_, stderr, code) = as_scoped(&["invoke", "counter", "total"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("the token was refused"), "{stderr}");
    refused(node.request("GET", "/v1/apps", Some(&scoped), b""), 401);
    let stderr = node.fails(&["token", "revoke", "shop-ci"]);
    assert!(stderr.contains("404"), "{stderr}");
    assert_eq!(node.ok(&["invoke", "counter", "total"]), "2 1");
}

#[test]
fn a_restarted_node_keeps_its_token_and_mints_one_when_the_file_is_not_its_own() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(data.path());
    let first = node.token.clone();
    node.stop();
    let node = Node::start(data.path());
    assert_eq!(node.token, first, "the token in the file was reused");
    node.stop();
    // A file holding a token this node never issued (another nimbus's): a new
    // token replaces the one minted before, so they do not pile up.
    let mut config = common::client_config(&data.path().join("client-config.json"));
    config["token"] = "nmb_from_elsewhere".into();
    std::fs::write(data.path().join("client-config.json"), config.to_string()).unwrap();
    let node = Node::start(data.path());
    assert_ne!(node.token, first);
    assert_ne!(node.token, "nmb_from_elsewhere");
    assert_eq!(node.ok(&["token", "list"]).lines().count(), 2, "one token");
    refused(node.request("GET", "/v1/apps", Some(&first), b""), 401);
}

#[test]
fn a_scoped_token_on_the_data_plane_invokes_its_apps_only() {
    use nimbus_dataplane::{Client, ClientError, Status};
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(data.path());
    node.deploy("counter-service", "counter", &[]);
    node.deploy("counter-service", "other", &[]);
    let scoped = node.ok(&["token", "create", "dp", "--app", "counter"]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let bound = Duration::from_secs(30);
        let mut client = tokio::time::timeout(bound, Client::connect(&node.data_plane, &scoped))
            .await
            .unwrap()
            .unwrap();
        let answer = tokio::time::timeout(bound, client.invoke("counter", "add", None, b"3"));
        assert_eq!(answer.await.unwrap().unwrap(), b"3\n");
        let answer = tokio::time::timeout(bound, client.invoke("other", "add", None, b"3"));
        match answer.await.unwrap() {
            Err(ClientError::Server { status, message }) => {
                assert_eq!(status, Status::Forbidden);
                assert!(message.contains("`other`"), "{message}");
            }
            other => panic!("expected forbidden, got {other:?}"),
        }
    });
    assert_eq!(node.ok(&["invoke", "other", "total"]), "0 0");
}

#[test]
fn hosts_without_a_cluster_is_a_clear_error() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(data.path());
    let stderr = node.fails(&["hosts"]);
    assert!(stderr.contains("fronts no cluster"), "{stderr}");
}
