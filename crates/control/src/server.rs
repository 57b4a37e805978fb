//! The planner's server: the registry behind the control plane's mesh calls, kept
//! in its store across restarts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nimbus_mesh::{Frame, Handler, HandlerFuture, Replier};
use nimbus_planner::Registry;
use nimbus_trust::Tls;
use nimbus_wire::control::{Reply, Request};
use tokio::net::TcpListener;

use crate::store::Store;

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
        tokio::task::spawn_blocking(move || {
            store.set_budgets(&budgets)?;
            store.load()
        })
        .await
        .expect("the store does not panic")
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
        let forgotten = tokio::task::spawn_blocking(move || store.remove_hosts(&dropped)).await;
        if let Ok(Err(e)) = forgotten {
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
            let reply = match request.head::<Request>() {
                Ok(request) => self.answer(request).await,
                Err(error) => Reply::Invalid(format!("not a call to the planner: {error}")),
            };
            replier.finish(Frame::new(&reply, Vec::new())).await;
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
                let placed =
                    self.registry
                        .lock()
                        .unwrap()
                        .place(near, app.as_deref(), Instant::now());
                match placed {
                    Ok((host, address)) => Reply::Placed { host, address },
                    Err(full) => Reply::Refused(full.to_string()),
                }
            }
            Request::Hosts => Reply::Hosts(self.registry.lock().unwrap().hosts(Instant::now())),
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
        let recorded = tokio::task::spawn_blocking(move || store.add_host(host, &info, next_host))
            .await
            .expect("the store does not panic");
        if let Err(e) = recorded {
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
