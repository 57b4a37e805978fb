//! Service processes on the embedded cluster, with real Rust and C reactors (built by
//! `scripts/build-guests.sh`): state between invocations, errors, swap out and in,
//! rollback after a trap, restart, sessions, scale-out and refusal when full.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_core::{HostId, Pid};
use nimbus_node::{Cluster, ClusterConfig};
use nimbus_runtime::{InvokeError, Kernel, ModuleBytes};
use nimbus_services::{AppConfig, ServiceError, Services};

fn guest(name: &str) -> ModuleBytes {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/guests")
        .join(format!("{name}.wasm"));
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/build-guests.sh", path.display()));
    ModuleBytes::new(bytes)
}

fn node(data: &Path) -> (Arc<Cluster>, Services) {
    let mut config = ClusterConfig::new(data);
    config.runtime.max_live_processes = 16;
    let cluster = Cluster::new(&config).unwrap();
    let services = Services::open(cluster.clone(), data).unwrap();
    (cluster, services)
}

/// Deploys the C counter service as app `counter`.
fn deploy_counter(services: &Services) {
    services
        .deploy(AppConfig::new("counter"), guest("c-counter-service"))
        .unwrap();
}

async fn call(services: &Services, app: &str, handler: &str, body: &str) -> String {
    call_in(services, app, handler, body, None).await
}

async fn call_in(
    services: &Services,
    app: &str,
    handler: &str,
    body: &str,
    session: Option<&str>,
) -> String {
    let out = services
        .invoke(app, handler, body.as_bytes().to_vec(), session)
        .await
        .unwrap_or_else(|e| panic!("{app}.{handler}({body}): {e}"));
    String::from_utf8(out).unwrap().trim().to_owned()
}

/// Waits, within a bound, until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let bound = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < bound, "never: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until `count` processes of the cluster block in `recv`.
async fn until_waiting(cluster: &Cluster, count: usize) {
    until("a process blocked in recv", || {
        cluster.runtime_load().waiting >= count
    })
    .await;
}

fn outsider() -> Pid {
    Pid::new(HostId(999), 1)
}

/// Starts `hold` (it blocks in `recv`) on an instance of `app`, once the cluster
/// has `waiting - 1` processes waiting, and returns when it is blocked.
async fn hold(
    cluster: &Cluster,
    services: &Arc<Services>,
    waiting: usize,
) -> tokio::task::JoinHandle<String> {
    let held = tokio::spawn({
        let services = services.clone();
        async move { call(&services, "counter", "hold", "").await }
    });
    until_waiting(cluster, waiting).await;
    held
}

/// Releases the `hold` of the app's first instance and checks it completed.
async fn release(cluster: &Cluster, services: &Services, held: tokio::task::JoinHandle<String>) {
    let first = services.apps()[0].pids[0];
    cluster
        .send(outsider(), first, b"go".to_vec())
        .await
        .unwrap();
    assert_eq!(held.await.unwrap(), "released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_invoke_state_and_errors() {
    let data = tempfile::tempdir().unwrap();
    let (_cluster, services) = node(data.path());
    let mut config = AppConfig::new("counter");
    config.max_body = 16;
    services.deploy(config, guest("counter-service")).unwrap();

    assert_eq!(call(&services, "counter", "add", "5").await, "5");
    assert_eq!(call(&services, "counter", "add", "7").await, "12");
    assert_eq!(call(&services, "counter", "total", "").await, "12 2");

    let err = |r: Result<Vec<u8>, ServiceError>| r.unwrap_err();
    let unknown = services.invoke("nope", "add", vec![], None).await;
    assert!(matches!(err(unknown), ServiceError::UnknownApp(_)));
    let no_handler = services.invoke("counter", "subtract", vec![], None).await;
    assert!(matches!(
        err(no_handler),
        ServiceError::Handler(InvokeError::NoSuchHandler(_))
    ));
    let big = services
        .invoke("counter", "add", vec![b'1'; 17], None)
        .await;
    assert!(matches!(
        err(big),
        ServiceError::TooLarge {
            size: 17,
            limit: 16
        }
    ));
    let bad = services.invoke("counter", "add", b"x".to_vec(), None).await;
    assert!(matches!(
        err(bad),
        ServiceError::Handler(InvokeError::Status(1))
    ));
    // The state survived every error.
    assert_eq!(call(&services, "counter", "total", "").await, "12 2");

    let bad_name = services.deploy(AppConfig::new("no/slashes"), guest("counter-service"));
    assert!(matches!(bad_name, Err(ServiceError::InvalidName(_))));
    let command = services.deploy(AppConfig::new("hello"), guest("hello"));
    assert!(matches!(command, Err(ServiceError::Module(m)) if m.contains("reactor")));
    let garbage = services.deploy(AppConfig::new("junk"), ModuleBytes::new(b"junk".to_vec()));
    assert!(matches!(garbage, Err(ServiceError::Module(_))));

    let apps = services.apps();
    assert_eq!(apps.len(), 1);
    assert_eq!((apps[0].instances, apps[0].live), (1, 1));
}

/// The runtime tests' reactor that fills 64 MiB (committed on a blocking thread):
/// `fill`, `check`, `scribble_then_crash`.
const FILLER: &str = include_str!("../../runtime/tests/filler.wat");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_writes_64_mib_keeps_its_state_across_invocations_and_swaps() {
    let data = tempfile::tempdir().unwrap();
    let (_cluster, services) = node(data.path());
    let filler = ModuleBytes::new(wat::parse_str(FILLER).unwrap());
    services.deploy(AppConfig::new("filler"), filler).unwrap();
    for _ in 0..2 {
        call(&services, "filler", "fill", "").await;
        call(&services, "filler", "check", "").await;
    }
    let crashed = services
        .invoke("filler", "scribble_then_crash", vec![], None)
        .await;
    assert!(matches!(
        crashed,
        Err(ServiceError::Handler(InvokeError::Failed(_)))
    ));
    call(&services, "filler", "check", "").await;
    services.swap_out_all().await.unwrap();
    call(&services, "filler", "check", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_out_and_in_keeps_state_and_a_restart_keeps_everything() {
    let data = tempfile::tempdir().unwrap();
    {
        let (_cluster, services) = node(data.path());
        deploy_counter(&services);
        assert_eq!(call(&services, "counter", "add", "5").await, "5");
        services.swap_out_all().await.unwrap();
        assert_eq!(services.apps()[0].live, 0);
        assert!(data.path().join("apps/counter/instance-0.snap").exists());
        assert_eq!(call(&services, "counter", "add", "1").await, "6");
        assert_eq!(services.apps()[0].live, 1);
        services.swap_out_all().await.unwrap();
    }
    let (_cluster, services) = node(data.path());
    let apps = services.apps();
    assert_eq!((apps.len(), apps[0].instances, apps[0].live), (1, 1, 0));
    assert_eq!(call(&services, "counter", "total", "").await, "6 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_keeps_the_latest_generation_of_an_app_through_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let config = AppConfig::new("counter");
    let (c_counter, rust_counter) = (guest("c-counter-service"), guest("counter-service"));
    {
        let (_cluster, services) = node(data.path());
        let deploy = |module: &ModuleBytes, generation| {
            services.deploy_generation(config.clone(), module.clone(), generation)
        };
        deploy(&c_counter, 2).unwrap();
        assert_eq!(call(&services, "counter", "add", "5").await, "5");
        // Placed again at the same deployment: kept, state and all.
        deploy(&c_counter, 2).unwrap();
        // An older deployment, from a gateway that knew no better: kept too.
        let kept = deploy(&rust_counter, 1).unwrap();
        assert_eq!(kept.module, c_counter.hash().to_string());
        assert_eq!(call(&services, "counter", "add", "1").await, "6");
        services.swap_out_all().await.unwrap();
    }
    // The generation is kept on disk with the app: placed again at it after a
    // restart, the app keeps its saved state.
    let (_cluster, services) = node(data.path());
    services
        .deploy_generation(config.clone(), c_counter.clone(), 2)
        .unwrap();
    assert_eq!(call(&services, "counter", "total", "").await, "6 2");
    // A later one replaces it.
    let replaced = services.deploy_generation(config, rust_counter.clone(), 3);
    assert_eq!(replaced.unwrap().module, rust_counter.hash().to_string());
    assert_eq!(call(&services, "counter", "total", "").await, "0 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_left_half_written_is_skipped_and_the_others_serve() {
    let data = tempfile::tempdir().unwrap();
    {
        let (_cluster, services) = node(data.path());
        deploy_counter(&services);
    }
    // A deployment cut off after it cleared its directory.
    std::fs::create_dir_all(data.path().join("apps/broken")).unwrap();
    let (_cluster, services) = node(data.path());
    let apps = services.apps();
    assert_eq!(apps.len(), 1);
    assert_eq!(apps[0].config.name, "counter");
    assert_eq!(call(&services, "counter", "add", "2").await, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_rolls_the_instance_back_to_its_last_good_state() {
    let data = tempfile::tempdir().unwrap();
    let (_cluster, services) = node(data.path());
    deploy_counter(&services);
    assert_eq!(call(&services, "counter", "add", "5").await, "5");
    // Swapped in again, its pages are mapped from the snapshot file.
    services.swap_out_all().await.unwrap();
    assert_eq!(call(&services, "counter", "add", "3").await, "8");
    let crashed = services.invoke("counter", "crash", vec![], None).await;
    assert!(matches!(
        crashed,
        Err(ServiceError::Handler(InvokeError::Failed(_)))
    ));
    // Back to just after `add 3`, not to the snapshot and not to the wreck.
    assert_eq!(call(&services, "counter", "total", "").await, "8 2");
    assert_eq!(call(&services, "counter", "add", "1").await, "9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_stick_and_a_busy_app_scales_out() {
    let data = tempfile::tempdir().unwrap();
    let (cluster, services) = node(data.path());
    let services = Arc::new(services);
    let mut config = AppConfig::new("counter");
    config.max_instances = 3;
    services.deploy(config, guest("c-counter-service")).unwrap();

    let held = hold(&cluster, &services, 1).await;
    // Instance 0 is busy, so the session lands on a new instance.
    assert_eq!(
        call_in(&services, "counter", "add", "1", Some("s")).await,
        "1"
    );
    assert_eq!(services.apps()[0].instances, 2);

    release(&cluster, &services, held).await;
    // The session sticks to its instance; without one, the first idle instance serves.
    assert_eq!(
        call_in(&services, "counter", "add", "1", Some("s")).await,
        "2"
    );
    assert_eq!(call(&services, "counter", "add", "1").await, "1");
    assert_eq!(services.apps()[0].instances, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_queue_is_full_requests_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let (cluster, services) = node(data.path());
    let services = Arc::new(services);
    let mut config = AppConfig::new("counter");
    config.max_instances = 1;
    config.queue_depth = 1;
    services.deploy(config, guest("c-counter-service")).unwrap();

    let held = hold(&cluster, &services, 1).await;
    let queued = tokio::spawn({
        let services = services.clone();
        async move { call(&services, "counter", "add", "4").await }
    });
    until("the second request queued", || {
        services.apps()[0].queued >= 2
    })
    .await;
    let refused = services.invoke("counter", "add", b"1".to_vec(), None).await;
    assert!(
        matches!(refused, Err(ServiceError::Busy { instances: 1, .. })),
        "{refused:?}"
    );
    release(&cluster, &services, held).await;
    assert_eq!(queued.await.unwrap(), "4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeploying_an_app_frees_its_old_instances() {
    let data = tempfile::tempdir().unwrap();
    let (cluster, services) = node(data.path());
    services
        .deploy(AppConfig::new("counter"), guest("counter-service"))
        .unwrap();
    assert_eq!(call(&services, "counter", "add", "5").await, "5");
    assert_eq!(cluster.runtime_load().instantiated, 1);

    services
        .deploy(AppConfig::new("counter"), guest("counter-service"))
        .unwrap();
    until("the old instance freed", || {
        cluster.runtime_load().instantiated == 0
    })
    .await;
    assert!(cluster.processes().is_empty());
    // The new deployment starts from scratch.
    assert_eq!(call(&services, "counter", "total", "").await, "0 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeploy_waits_for_the_old_instances_so_no_old_snapshot_lands_in_the_new_app() {
    let data = tempfile::tempdir().unwrap();
    let (cluster, services) = node(data.path());
    let services = Arc::new(services);
    let mut config = AppConfig::new("counter");
    // `hold` blocks in recv; its deadline ends it.
    config.timeout = Duration::from_secs(2);
    services
        .deploy(config.clone(), guest("c-counter-service"))
        .unwrap();
    assert_eq!(call(&services, "counter", "add", "5").await, "5");
    let held = tokio::spawn({
        let services = services.clone();
        async move { services.invoke("counter", "hold", vec![], None).await }
    });
    until_waiting(&cluster, 1).await;
    // A swap-out queued behind the hold: polled once, it has sent its request.
    let mut swap_out = Box::pin(services.swap_out_all());
    let first_poll = std::future::poll_fn(|cx| std::task::Poll::Ready(swap_out.as_mut().poll(cx)));
    assert!(first_poll.await.is_pending());

    tokio::task::spawn_blocking({
        let services = services.clone();
        move || services.deploy(config, guest("c-counter-service"))
    })
    .await
    .unwrap()
    .unwrap();
    assert!(held.await.unwrap().is_err());
    tokio::time::timeout(Duration::from_secs(30), swap_out)
        .await
        .expect("the swap-out ends")
        .unwrap();
    // The old instance ended without writing into the new app's directory.
    assert!(!data.path().join("apps/counter/instance-0.snap").exists());
    assert_eq!(call(&services, "counter", "total", "").await, "0 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deploys_of_one_name_end_with_one_consistent_app() {
    let data = tempfile::tempdir().unwrap();
    let (_cluster, services) = node(data.path());
    let modules = [guest("counter-service"), guest("greeter-service")];
    for round in 0..10 {
        let barrier = std::sync::Barrier::new(2);
        let outcomes: Vec<_> = std::thread::scope(|scope| {
            let deploys: Vec<_> = modules
                .iter()
                .map(|module| {
                    let (services, barrier) = (&services, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        services.deploy(AppConfig::new("app"), module.clone())
                    })
                })
                .collect();
            deploys.into_iter().map(|d| d.join().unwrap()).collect()
        });
        for outcome in outcomes {
            outcome.unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
        let apps = services.apps();
        assert_eq!(apps.len(), 1, "round {round}");
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(data.path().join("apps/app/app.json")).unwrap())
                .unwrap();
        let on_disk =
            ModuleBytes::new(std::fs::read(data.path().join("apps/app/module.wasm")).unwrap());
        assert_eq!(record["module"], apps[0].module, "round {round}");
        assert_eq!(on_disk.hash().to_string(), apps[0].module, "round {round}");
    }
}
