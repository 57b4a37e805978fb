//! The planner's server: the registry behind the control plane's mesh calls, kept
//! in its store across restarts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nimbus_mesh::{Frame, Handler, HandlerFuture, Replier};
use nimbus_planner::Registry;
use nimbus_trust::Tls;
use nimbus_wire::control::{Reply, Request};
use tokio::net::TcpListener;

use nimbus_wire::apps::Placement;
use sha2::{Digest, Sha256};

use crate::store::{MAX_DEPLOYMENTS, Recorded, Store, StoreError};

/// Runs `call`, on the store (it waits on the disk), on a blocking thread.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(call)
        .await
        .expect("the store does not panic")
}

/// How the planner paces its workers.
#[derive(Clone, Debug)]
pub struct PlannerConfig {
    /// How often workers report.
    pub heartbeat: Duration,
    /// How long a worker may stay silent before it is dropped (and, after a
    /// restart, how long a worker known from before has to report again).
    pub timeout: Duration,
    /// Where the cluster's shared global state tier is served, told to workers as
    /// they join (`None`: they bring their own).
    pub state: Option<String>,
    /// The most processes an app may run across the cluster, for the apps listed
    /// (kept in the store with those set before).
    pub budgets: Vec<(String, usize)>,
}

/// Serves the planner on `listener` until the task is dropped; fails only if the
/// store cannot be read. The registry starts from what `store` holds: hosts that
/// joined before a restart are listed, and placed on again once they report.
/// Accepting never ends the server (see [`nimbus_mesh::serve`]).
pub async fn serve_planner(
    listener: TcpListener,
    tls: Arc<Tls>,
    config: PlannerConfig,
    store: Arc<Store>,
) -> std::io::Result<()> {
    let loaded = {
        let (store, budgets) = (store.clone(), config.budgets.clone());
        blocking(move || {
            store.set_budgets(&budgets)?;
            store.load()
        })
        .await
        .map_err(std::io::Error::other)?
    };
    if !loaded.hosts.is_empty() {
        tracing::info!(
            hosts = loaded.hosts.len(),
            "planner: waiting for the hosts known from before to report again"
        );
    }
    let mut registry = Registry::restore(
        config.timeout,
        loaded.next_host,
        loaded.hosts,
        Instant::now(),
    );
    for (app, processes) in &loaded.budgets {
        registry.set_budget(app, *processes);
    }
    let registry = Arc::new(Mutex::new(registry));
    let expiry = tokio::spawn(expire(registry.clone(), store.clone(), config.timeout));
    let service = PlannerService {
        registry,
        store,
        heartbeat: config.heartbeat,
        state: config.state,
    };
    let _expiry = AbortOnDrop(expiry);
    match nimbus_mesh::serve(listener, tls, Arc::new(service)).await {}
}

/// Aborts its task when dropped: the expiry of a planner whose server was dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Drops the hosts silent for longer than `timeout`, every quarter of it, from
/// the registry and the store.
async fn expire(registry: Arc<Mutex<Registry>>, store: Arc<Store>, timeout: Duration) {
    let mut ticks = tokio::time::interval(timeout / 4);
    loop {
        ticks.tick().await;
        let dropped = registry.lock().unwrap().expire(Instant::now());
        if dropped.is_empty() {
            continue;
        }
        for host in &dropped {
            tracing::warn!(%host, ?timeout, "planner: host silent for too long: dropped");
        }
        let store = store.clone();
        if let Err(e) = blocking(move || store.remove_hosts(&dropped)).await {
            tracing::error!("planner: {e}");
        }
    }
}

struct PlannerService {
    registry: Arc<Mutex<Registry>>,
    store: Arc<Store>,
    heartbeat: Duration,
    state: Option<String>,
}

impl Handler for PlannerService {
    fn handle(self: Arc<Self>, request: Frame, replier: Replier) -> HandlerFuture {
        Box::pin(async move {
            let (reply, body) = match request.head::<Request>() {
                Ok(Request::RecordApp { placement }) => {
                    (self.record_app(placement, request.body).await, Vec::new())
                }
                Ok(Request::Module { hash }) => self.module(hash).await,
                Ok(request) => (self.answer(request).await, Vec::new()),
                Err(error) => (
                    Reply::Invalid(format!("not a call to the planner: {error}")),
                    Vec::new(),
                ),
            };
            replier.finish(Frame::new(&reply, body)).await;
        })
    }
}

impl PlannerService {
    async fn answer(&self, request: Request) -> Reply {
        match request {
            Request::Join { info } => self.join(info).await,
            Request::Heartbeat { host, report } => {
                match self
                    .registry
                    .lock()
                    .unwrap()
                    .heartbeat(host, report, Instant::now())
                {
                    Ok(rejoined) => {
                        if rejoined {
                            tracing::info!(%host, "planner: host rejoined");
                        }
                        Reply::Reported
                    }
                    Err(unknown) => Reply::UnknownHost(unknown.to_string()),
                }
            }
            Request::Place { near, app } => {
                let now = Instant::now();
                let placed = self
                    .registry
                    .lock()
                    .unwrap()
                    .place(near, app.as_deref(), now);
                crate::metrics().placed(placed.is_ok(), now.elapsed());
                match placed {
                    Ok((host, address)) => Reply::Placed { host, address },
                    Err(full) => Reply::Refused(full.to_string()),
                }
            }
            Request::Hosts => Reply::Hosts(self.registry.lock().unwrap().hosts(Instant::now())),
            Request::NewDeployment { app } => {
                let store = self.store.clone();
                match blocking(move || store.new_deployment(&app)).await {
                    Ok(Some((generation, placed))) => Reply::NewDeployment { generation, placed },
                    Ok(None) => Reply::Refused(full()),
                    Err(e) => Reply::Unavailable(format!("cannot draw a generation: {e}")),
                }
            }
            Request::App { app } => {
                let store = self.store.clone();
                match blocking(move || store.app(&app)).await {
                    Ok(placed) => Reply::App(placed),
                    Err(e) => Reply::Unavailable(format!("cannot read the deployment: {e}")),
                }
            }
            Request::PlaceApp {
                app,
                generation,
                expected,
                worker,
            } => {
                let store = self.store.clone();
                let placed = blocking(move || {
                    store.place_app(&app, generation, expected.as_deref(), &worker)
                });
                match placed.await {
                    Ok(placed) => Reply::App(placed),
                    Err(e) => Reply::Unavailable(format!("cannot place the app: {e}")),
                }
            }
            Request::Deployments => {
                let store = self.store.clone();
                match blocking(move || store.deployments()).await {
                    Ok(deployments) => Reply::Deployments(deployments),
                    Err(e) => Reply::Unavailable(format!("cannot read the deployments: {e}")),
                }
            }
            Request::RecordApp { .. } | Request::Module { .. } => {
                Reply::Invalid("a call with a body, answered by `handle`".into())
            }
        }
    }

    /// Keeps `placement`, once `module` is found to be the module it names, as
    /// the app's first move-free record.
    async fn record_app(&self, placement: Placement, module: Vec<u8>) -> Reply {
        if let Err(e) = placement.deployment.config.check() {
            return Reply::Invalid(e.to_string());
        }
        let placement = Placement {
            moves: 0,
            ..placement
        };
        let store = self.store.clone();
        let recorded = blocking(move || {
            let deployment = &placement.deployment;
            let hash = hex::encode(Sha256::digest(&module));
            if hash != deployment.module {
                return Ok(Err(format!(
                    "the module sent for `{}` has sha256 {hash}, not {}",
                    deployment.config.name, deployment.module
                )));
            }
            store.record_app(&placement, &module).map(Ok)
        })
        .await;
        match recorded {
            Ok(Ok(Recorded::Kept(placement))) => {
                tracing::info!(
                    app = %placement.deployment.config.name,
                    generation = placement.generation,
                    worker = ?placement.worker,
                    "planner: deployment recorded"
                );
                Reply::App(Some(placement))
            }
            Ok(Ok(Recorded::Full)) => Reply::Refused(full()),
            Ok(Ok(Recorded::Superseded(kept))) => Reply::Refused(format!(
                "a later deployment of `{}` (generation {}) was recorded meanwhile, through \
                 another gateway: it is the one that runs",
                kept.deployment.config.name, kept.generation
            )),
            Ok(Err(mismatch)) => Reply::Invalid(mismatch),
            Err(e) => Reply::Unavailable(format!("cannot record the deployment: {e}")),
        }
    }

    /// The module whose sha256 is `hash`, as the answer's body.
    async fn module(&self, hash: String) -> (Reply, Vec<u8>) {
        let store = self.store.clone();
        let wanted = hash.clone();
        match blocking(move || store.module(&wanted)).await {
            Ok(Some(module)) => (Reply::Module, module),
            Ok(None) => (
                Reply::Invalid(format!("no deployment names the module {hash}")),
                Vec::new(),
            ),
            Err(e) => (
                Reply::Unavailable(format!("cannot read the module {hash}: {e}")),
                Vec::new(),
            ),
        }
    }

    async fn join(&self, info: nimbus_planner::HostInfo) -> Reply {
        let registered = {
            let mut registry = self.registry.lock().unwrap();
            registry
                .register(info.clone(), Instant::now())
                .map(|host| (host, registry.next_id()))
        };
        let (host, next_host) = match registered {
            Ok(registered) => registered,
            Err(full) => return Reply::Refused(full.to_string()),
        };
        // Recorded before the host hears its id, so a restart never hands it out
        // again. A host whose join is not recorded never reports and expires.
        let store = self.store.clone();
        if let Err(e) = blocking(move || store.add_host(host, &info, next_host)).await {
            return Reply::Unavailable(format!("cannot record the join: {e}"));
        }
        tracing::info!(%host, "planner: host joined");
        Reply::Joined {
            host,
            heartbeat_ms: self.heartbeat.as_millis() as u64,
            state: self.state.clone(),
        }
    }
}

/// Why a deployment of a new name is refused.
fn full() -> String {
    format!("the planner keeps at most {MAX_DEPLOYMENTS} deployments: this would be one more")
}
