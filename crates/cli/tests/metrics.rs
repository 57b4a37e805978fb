//! What nodes tell their operators, from real `nimbus` processes: `/metrics` scraped
//! over HTTP and parsed, its values checked against what the test did; health
//! probes; log lines as JSON; listings as JSON for scripts.

mod common;

use std::collections::HashMap;
use std::process::Stdio;

use common::{Daemon, TestCluster, guest, outcome, run};

/// The samples of a scrape of `url`'s `/metrics`: `name{labels}` → value. Checks the
/// text format as it goes: every sample line is a name, optional labels and a number,
/// and the exposition ends with `# EOF`.
fn scrape(url: &str) -> HashMap<String, f64> {
    let mut answer = ureq::get(&format!("{url}/metrics")).call().unwrap();
    let content_type = answer.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = answer.body_mut().read_to_string().unwrap();
    assert_eq!(text.lines().last(), Some("# EOF"), "{text}");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample: {line}"));
            let name_ends = series.find('{').unwrap_or(series.len());
            assert!(
                series[..name_ends]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "bad metric name in {line}"
            );
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("not a number in {line}"));
            (series.to_owned(), value)
        })
        .collect()
}

/// The value of `series` in `samples`, which must be there.
fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("{series} not scraped; got {samples:#?}"))
}

fn status_of(url: &str) -> u16 {
    match ureq::get(url).call() {
        Ok(answer) => answer.status().as_u16(),
        Err(ureq::Error::StatusCode(code)) => code,
        Err(e) => panic!("{url}: {e}"),
    }
}

#[test]
fn a_cluster_reports_its_placements_and_its_processes_and_how_they_ended() {
    let metrics = ["--metrics-listen", "127.0.0.1:0"];
    let cluster = TestCluster::start_with(&metrics, 1, &metrics);
    cluster
        .planner
        .announced("nimbus: planner serves the global state tier on ");
    let planner = cluster.planner.announced("nimbus: metrics listening on ");
    let worker = cluster.workers[0]
        .0
        .announced("nimbus: metrics listening on ");
    for url in [&planner, &worker] {
        assert_eq!(status_of(&format!("{url}/healthz")), 200);
        assert_eq!(status_of(&format!("{url}/readyz")), 200);
    }

    for _ in 0..3 {
        let hello = cluster.nimbus(&["run", guest("hello").to_str().unwrap()]);
        let (_, stderr, code) = outcome(&run(hello));
        assert_eq!(code, Some(0), "{stderr}");
    }
    let trap = cluster.nimbus(&["run", guest("trap").to_str().unwrap()]);
    let (_, stderr, code) = outcome(&run(trap));
    assert_ne!(code, Some(0), "{stderr}");

    // A root's end reaches `nimbus run` after the worker counted it.
    let worker = scrape(&worker);
    assert_eq!(value(&worker, "nimbus_processes_started_total"), 4.0);
    assert_eq!(
        value(&worker, "nimbus_processes_ended_total{outcome=\"exited\"}"),
        3.0
    );
    assert_eq!(
        value(&worker, "nimbus_processes_ended_total{outcome=\"trap\"}"),
        1.0
    );
    assert_eq!(
        value(&worker, "nimbus_process_admission_seconds_count"),
        4.0
    );
    assert_eq!(value(&worker, "nimbus_processes{state=\"running\"}"), 0.0);
    assert!(value(&worker, "nimbus_mesh_received_bytes_total") > 0.0);
    assert!(value(&worker, "process_resident_memory_bytes") > 0.0);

    // The same cluster, listed for a script.
    let (stdout, stderr, code) = outcome(&run(cluster.nimbus(&["hosts", "--output", "json"])));
    assert_eq!(code, Some(0), "{stderr}");
    let hosts: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(hosts.as_array().unwrap().len(), 1, "{stdout}");
    assert_eq!(hosts[0]["host"], 1, "{stdout}");

    let planner = scrape(&planner);
    assert_eq!(
        value(&planner, "nimbus_placements_total{result=\"placed\"}"),
        4.0
    );
    assert_eq!(value(&planner, "nimbus_placement_seconds_count"), 4.0);
}

#[test]
fn a_gateway_node_counts_invocations_by_app_handler_and_outcome() {
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("config.json");
    let mut up = common::up(&["--metrics-listen", "127.0.0.1:0"]);
    up.env("NIMBUS_DATA_DIR", data.path())
        .env("NIMBUS_CONFIG", &config);
    let up = Daemon::start(up);
    let gateway = up.announced("nimbus: gateway listening on ");
    up.announced("nimbus: data plane listening on ");
    let metrics = up.announced("nimbus: metrics listening on ");
    // `nimbus COMMAND --server URL ARGS…` (before a subcommand's own, as `token list`).
    let client = |args: &[&str]| {
        let mut command = common::nimbus(&args[..1]);
        command
            .env("NIMBUS_CONFIG", &config)
            .args(["--server", &gateway])
            .args(&args[1..]);
        outcome(&run(command))
    };
    let service = guest("c-counter-service");
    let (_, stderr, code) = client(&["deploy", service.to_str().unwrap(), "--name", "counter"]);
    assert_eq!(code, Some(0), "{stderr}");
    for _ in 0..5 {
        let (_, stderr, code) = client(&["invoke", "counter", "add", "--data", "2"]);
        assert_eq!(code, Some(0), "{stderr}");
    }
    let (_, _, code) = client(&["invoke", "counter", "no-such-handler"]);
    assert_ne!(code, Some(0));
    let (_, _, code) = client(&["invoke", "no-such-app", "add"]);
    assert_ne!(code, Some(0));

    // Listings for scripts: JSON arrays of objects.
    let json = |args: &[&str]| {
        let (stdout, stderr, code) = client(args);
        assert_eq!(code, Some(0), "{stderr}");
        serde_json::from_str::<serde_json::Value>(&stdout)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {stdout}"))
    };
    let apps = json(&["apps", "--output", "json"]);
    assert_eq!(apps[0]["name"], "counter", "{apps}");
    let processes = json(&["ps", "--output", "json"]);
    let instance = &processes.as_array().unwrap()[0];
    assert!(
        instance["pid"].is_string() && instance["parent"].is_null(),
        "{processes}"
    );
    let tokens = json(&["token", "list", "--output", "json"]);
    assert_eq!(tokens[0]["name"], "local-admin", "{tokens}");

    let samples = scrape(&metrics);
    let invocations =
        |labels: &str| value(&samples, &format!("nimbus_invocations_total{{{labels}}}"));
    assert_eq!(
        invocations("app=\"counter\",handler=\"add\",status=\"ok\""),
        5.0
    );
    assert_eq!(
        invocations("app=\"counter\",handler=\"-\",status=\"no_handler\""),
        1.0
    );
    // A name no app has is never a label value.
    assert_eq!(
        invocations("app=\"-\",handler=\"-\",status=\"unknown_app\""),
        1.0
    );
    assert!(samples.keys().all(|series| !series.contains("no-such")));
    assert_eq!(
        value(
            &samples,
            "nimbus_invocation_seconds_count{app=\"counter\",handler=\"add\"}"
        ),
        5.0
    );
}

#[test]
fn log_lines_are_json_objects_with_their_fields_when_asked() {
    let cluster_dir = tempfile::tempdir().unwrap();
    let mut planner = common::nimbus(&[
        "planner",
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--cluster-dir",
        cluster_dir.path().to_str().unwrap(),
    ]);
    let data = tempfile::tempdir().unwrap();
    planner.env("NIMBUS_DATA_DIR", data.path());
    let mut planner = Daemon::start_with_stderr(planner, Stdio::piped());
    let addr = planner.announced("nimbus: planner listening on ");
    let stderr = planner.child.stderr.take().unwrap();
    let mut worker = common::nimbus(&[
        "worker",
        "--planner",
        &addr,
        "--cluster-dir",
        cluster_dir.path().to_str().unwrap(),
    ]);
    let worker_data = tempfile::tempdir().unwrap();
    worker.env("NIMBUS_DATA_DIR", worker_data.path());
    let worker = Daemon::start(worker);
    worker.announced(&format!("nimbus: worker joined {addr} as host "));
    // The planner logs the join; lines before it (the credentials it created) are
    // the CLI's own, not log lines. Read on a thread of its own, so a line that never
    // comes fails the test within a minute.
    let logged = common::lines(stderr);
    let joined = loop {
        let line = logged
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the planner logs the join within a minute");
        if !line.starts_with('{') {
            continue;
        }
        let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
        if entry["fields"]["message"] == "planner: host joined" {
            break entry;
        }
    };
    assert_eq!(joined["level"], "INFO");
    assert_eq!(joined["fields"]["host"], "host-1");
    assert_eq!(joined["target"], "nimbus_control::server");
    assert!(joined["timestamp"].is_string());
}
