//! The planner's server and clients over real loopback connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_core::HostId;
use nimbus_planner::{HostInfo, HostReport};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use nimbus_wire::apps::{AppConfig, Deployment, Placement};

use crate::client::hosts;
use crate::*;

/// A planner serving from `dir` on a free port; stops when the handle is dropped.
/// (Restarts are tested with the real binary, `crates/cli/tests/cluster.rs`.)
struct Served {
    addr: String,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn planner(dir: &std::path::Path, timeout: Duration) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config = PlannerConfig {
        heartbeat: timeout / 4,
        timeout,
        state: Some("127.0.0.1:2".into()),
        budgets: vec![("small".into(), 1)],
    };
    let store = Arc::new(Store::open(dir).unwrap());
    Served {
        addr,
        task: tokio::spawn(serve_planner(listener, tls(), config, store)),
    }
}

fn info() -> HostInfo {
    HostInfo {
        cpus: 2,
        memory: 1 << 30,
        capacity: 100_000,
        address: "127.0.0.1:1".into(),
    }
}

const PATIENCE: Duration = Duration::from_secs(10);

/// The one cluster every node in these tests belongs to.
fn tls() -> Arc<nimbus_trust::Tls> {
    static TLS: std::sync::OnceLock<Arc<nimbus_trust::Tls>> = std::sync::OnceLock::new();
    TLS.get_or_init(|| nimbus_trust::Tls::ephemeral().unwrap())
        .clone()
}

#[tokio::test]
async fn a_node_of_another_cluster_is_refused_and_harms_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let served = planner(dir.path(), Duration::from_secs(60)).await;
    let theirs = nimbus_trust::Tls::ephemeral().unwrap();
    let refused = PlannerLink::join(&served.addr, &theirs, info(), Duration::ZERO)
        .await
        .err()
        .expect("a node of another cluster joined");
    assert!(
        matches!(&refused, ControlError::Untrusted { .. }),
        "{refused}"
    );
    // Nothing joined, and our nodes are served as before.
    assert!(hosts(&served.addr, &tls()).await.unwrap().is_empty());
    let link = PlannerLink::join(&served.addr, &tls(), info(), PATIENCE)
        .await
        .unwrap();
    assert_eq!(link.host(), HostId(1));
}

#[tokio::test]
async fn workers_join_report_and_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let served = planner(dir.path(), Duration::from_secs(60)).await;
    let first = PlannerLink::join(&served.addr, &tls(), info(), PATIENCE)
        .await
        .unwrap();
    let second = PlannerLink::join(&served.addr, &tls(), info(), PATIENCE)
        .await
        .unwrap();
    assert_eq!((first.host(), second.host()), (HostId(1), HostId(2)));
    assert_eq!(first.state_address(), Some("127.0.0.1:2"));
    let report = HostReport {
        processes: 3,
        instantiated: 2,
        waiting: 1,
        memory_used: 5 << 20,
        cpu_percent: 40,
        network: (100, 200),
        apps: [("app".to_owned(), 3)].into(),
        local_state: [("app".to_owned(), 64)].into(),
    };
    first.heartbeat(report.clone()).await.unwrap();
    let listed = hosts(&served.addr, &tls()).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!((listed[0].host, &listed[0].report), (HostId(1), &report));
}

#[tokio::test]
async fn placement_spreads_over_hosts_and_refuses_when_none() {
    let dir = tempfile::tempdir().unwrap();
    let served = planner(dir.path(), Duration::from_secs(60)).await;
    let planner = Planner::new(&served.addr, &tls()).unwrap();
    assert!(matches!(
        planner.place(None, None).await,
        Err(ControlError::Refused { .. })
    ));
    let first = PlannerLink::join(&served.addr, &tls(), info(), PATIENCE)
        .await
        .unwrap();
    let second = PlannerLink::join(&served.addr, &tls(), info(), PATIENCE)
        .await
        .unwrap();
    let near = Some(first.host());
    let (a, address) = planner.place(near, Some("app".into())).await.unwrap();
    let (b, _) = planner.place(near, Some("app".into())).await.unwrap();
    assert_eq!((a, b), (first.host(), second.host()));
    assert_eq!(address, "127.0.0.1:1");
    // An app at its budget is refused, with the reason.
    planner.place(None, Some("small".into())).await.unwrap();
    let refused = planner.place(None, Some("small".into())).await;
    assert!(
        matches!(&refused, Err(ControlError::Refused { message, .. }) if message.contains("budget of 1")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_silent_worker_is_dropped_and_told_so() {
    let dir = tempfile::tempdir().unwrap();
    let served = planner(dir.path(), Duration::from_millis(200)).await;
    let silent = PlannerLink::join(&served.addr, &tls(), info(), PATIENCE)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !hosts(&served.addr, &tls()).await.unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the silent host was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = silent.heartbeat(HostReport::default()).await;
    assert!(
        matches!(refused, Err(ControlError::UnknownHost { .. })),
        "{refused:?}"
    );
    // Reporting ends with the same answer instead of retrying forever.
    let ended = tokio::time::timeout(PATIENCE, silent.keep_reporting(HostReport::default))
        .await
        .expect("a dropped host keeps reporting");
    assert!(matches!(ended, ControlError::UnknownHost { .. }), "{ended}");
}

#[tokio::test]
async fn cancelled_calls_leave_every_later_call_its_own_answer() {
    let dir = tempfile::tempdir().unwrap();
    let served = planner(dir.path(), Duration::from_secs(60)).await;
    let planner = Planner::new(&served.addr, &tls()).unwrap();
    let link = PlannerLink::join(&served.addr, &tls(), info(), PATIENCE)
        .await
        .unwrap();
    // Calls dropped at every stage: before sending, while in flight, just answered.
    for spin in 0..50 {
        let place = planner.place(None, Some("app".into()));
        let hosts = planner.hosts();
        tokio::select! {
            biased;
            _ = tokio::task::yield_now(), if spin % 2 == 0 => {}
            _ = place => {}
            _ = hosts => {}
        }
    }
    // Then 100 calls of both kinds on the same client, concurrently: each gets
    // an answer of its own kind.
    let calls = (0..100).map(|n| {
        let planner = planner.clone();
        tokio::spawn(async move {
            if n % 2 == 0 {
                let (host, address) = planner.place(None, Some("app".into())).await.unwrap();
                assert_eq!((host, address.as_str()), (HostId(1), "127.0.0.1:1"));
            } else {
                let listed = planner.hosts().await.unwrap();
                assert_eq!(listed.len(), 1);
                assert_eq!(listed[0].host, HostId(1));
            }
        })
    });
    for call in calls {
        call.await.unwrap();
    }
    link.heartbeat(HostReport::default()).await.unwrap();
}

#[tokio::test]
async fn a_node_of_another_release_is_refused_in_the_handshake_with_a_message_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let served = planner(dir.path(), Duration::from_secs(60)).await;
    let tcp = tokio::net::TcpStream::connect(&served.addr).await.unwrap();
    let refused = tls().connect(tcp, "nimbus-mesh/1").await.err().unwrap();
    assert!(nimbus_trust::is_another_protocol(&refused), "{refused}");
    assert!(
        refused.to_string().contains("another nimbus release"),
        "{refused}"
    );
    // Nothing joined, and nodes of this release are served as before.
    assert!(hosts(&served.addr, &tls()).await.unwrap().is_empty());
}

#[tokio::test]
async fn junk_on_the_port_harms_no_one_else() {
    let dir = tempfile::tempdir().unwrap();
    let served = planner(dir.path(), Duration::from_secs(60)).await;
    for junk in [
        &b"{\"register\": 1}\n"[..],
        &[0xff; 4096][..],
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        let mut stream = tokio::net::TcpStream::connect(&served.addr).await.unwrap();
        stream.write_all(junk).await.unwrap();
        drop(stream);
    }
    let link = PlannerLink::join(&served.addr, &tls(), info(), PATIENCE)
        .await
        .unwrap();
    assert_eq!(link.host(), HostId(1));
    assert_eq!(hosts(&served.addr, &tls()).await.unwrap().len(), 1);
}

/// A module, its sha256, and app `name` deployed as it at `generation` on `worker`.
fn deployed(name: &str, generation: u64, worker: &str) -> (Vec<u8>, Placement) {
    use sha2::{Digest, Sha256};
    let module = b"\0asm\x01\0\0\0".to_vec();
    let placement = Placement {
        deployment: Deployment {
            config: AppConfig::new(name),
            module: hex::encode(Sha256::digest(&module)),
        },
        generation,
        worker: Some(worker.into()),
        moves: 0,
    };
    (module, placement)
}

#[tokio::test]
async fn deployments_are_kept_only_with_the_module_they_name() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let served = planner(dir.path(), Duration::from_secs(60)).await;
    let planner = Planner::new(&served.addr, &tls()).unwrap();
    let (generation, placed) = planner.new_deployment("counter").await.unwrap();
    assert_eq!(placed, None);
    let (module, placement) = deployed("counter", generation, "127.0.0.1:1");
    // A body that is not the module named is refused, and nothing is kept.
    let mut forged = placement.clone();
    forged.deployment.module = hex::encode(Sha256::digest(b"another"));
    let refused = planner
        .record_app(forged, module.clone())
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("has sha256"), "{refused}");
    let mut unnamed = placement.clone();
    unnamed.deployment.config.name = "no/such name".into();
    assert!(planner.record_app(unnamed, module.clone()).await.is_err());
    assert!(planner.deployments().await.unwrap().is_empty());

    let kept = planner
        .record_app(placement.clone(), module.clone())
        .await
        .unwrap();
    assert_eq!(kept, placement);
    assert_eq!(
        planner.deployments().await.unwrap(),
        vec![placement.clone()]
    );
    assert_eq!(
        planner.app("counter").await.unwrap(),
        Some(placement.clone())
    );
    assert_eq!(planner.app("other").await.unwrap(), None);
    let hash = &placement.deployment.module;
    assert_eq!(planner.module(hash).await.unwrap(), module);
    let missing = planner.module(&"0".repeat(64)).await.unwrap_err();
    assert!(
        missing.to_string().contains("no deployment names"),
        "{missing}"
    );
    // A deployment drawn before the one kept, recorded after it, is refused.
    let older = Placement {
        generation: generation - 1,
        ..placement.clone()
    };
    let refused = planner.record_app(older, module).await.unwrap_err();
    assert!(
        matches!(&refused, ControlError::Refused { message, .. } if message.contains("a later deployment")),
        "{refused}"
    );
    assert_eq!(planner.app("counter").await.unwrap(), Some(placement));
}

#[tokio::test]
async fn gateways_placing_an_app_at_once_all_get_the_one_worker_that_won() {
    let dir = tempfile::tempdir().unwrap();
    let served = planner(dir.path(), Duration::from_secs(60)).await;
    let recorder = Planner::new(&served.addr, &tls()).unwrap();
    let (generation, _) = recorder.new_deployment("counter").await.unwrap();
    let (module, placement) = deployed("counter", generation, "lost:1");
    recorder.record_app(placement, module).await.unwrap();
    // Eight gateways, each with a connection of its own, found `lost:1` gone at
    // once and move the app from it, each to a worker of its own.
    let moves = (0..8).map(|n| {
        let gateway = Planner::new(&served.addr, &tls()).unwrap();
        tokio::spawn(async move {
            let pick = format!("worker:{n}");
            let placed = gateway.place_app("counter", generation, Some("lost:1"), &pick);
            placed.await.unwrap().unwrap()
        })
    });
    let mut answers = Vec::new();
    for placed in moves {
        answers.push(placed.await.unwrap());
    }
    let won = answers[0].clone();
    assert!(answers.iter().all(|a| *a == won), "{answers:?}");
    assert_eq!((won.generation, won.moves), (generation, 1));
    assert_ne!(won.worker.as_deref(), Some("lost:1"));
    assert_eq!(recorder.app("counter").await.unwrap(), Some(won.clone()));
    // A gateway that still expects the lost worker, or knows an older
    // deployment, moves nothing; an app never deployed is no app.
    let late = recorder.place_app("counter", generation, Some("lost:1"), "late:1");
    assert_eq!(late.await.unwrap(), Some(won.clone()));
    let older = recorder.place_app("counter", generation - 1, won.worker.as_deref(), "late:1");
    assert_eq!(older.await.unwrap(), Some(won));
    let none = recorder.place_app("nothing", generation, None, "late:1");
    assert_eq!(none.await.unwrap(), None);
}
