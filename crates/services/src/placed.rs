//! Apps placed on the workers of a cluster: what a gateway in front of a cluster
//! serves. The planner picks the worker for an app (most free room, preferring one
//! that already runs it); the app is deployed there, and every request for it is
//! forwarded over the mesh to that worker's [`Services`](crate::Services), where
//! its instances run, keep their sessions and swap out.
//!
//! The planner keeps each deployment and its module in its store, so a gateway
//! holds nothing of its own: one started anywhere, with any data directory, serves
//! the apps deployed through another (or through itself before a restart), and an
//! app whose worker is lost is placed and deployed again on the next request. What
//! its instances held in memory, or swapped out on the lost worker's disk, is lost
//! with it; the request that was under way when the worker went fails with
//! [`ServiceError::Unavailable`], and is not retried, since it may have taken effect.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nimbus_core::Pid;
use nimbus_mesh::{Frame, Links, MAX_BODY};
use nimbus_planner::HostStatus;
use nimbus_runtime::{BoxFuture, ModuleBytes};
use nimbus_trust::Tls;
use nimbus_wire::apps::{AppConfig, AppInfo, Deployment, ServiceError};
use nimbus_wire::peer::{AppRequest, Reply, Request};

use crate::services::ServiceFront;

/// How long placing an app may wait for a worker with room.
const PLACE_WAIT: Duration = Duration::from_secs(10);

/// How often placing asks the planner again meanwhile.
const PLACE_RETRY: Duration = Duration::from_millis(50);

/// How long a question to a worker (other than an invocation, bounded by the app's
/// own limits) may take, compiling a module included.
const ASK_WAIT: Duration = Duration::from_secs(30);

/// A worker heard from longer ago than this is not taken as an app's holder: it is
/// likely gone, and the planner has yet to drop it.
const HOLDER_SILENCE_MS: u64 = 1_000;

/// The apps of a gateway, each deployed on one worker of the cluster whose planner
/// is at `planner`.
pub struct PlacedServices {
    planner: nimbus_control::Planner,
    /// The deployments heard of from the planner, by name.
    apps: Mutex<BTreeMap<String, Placed>>,
    /// Counts this gateway's own deployments, stamping each, so that a list
    /// fetched from the planner before one never overwrites it.
    deployments: AtomicU64,
    links: Links,
    /// By app, held while it is placed, so that concurrent requests place it once.
    placing: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// An app, its module's sha256, and the worker it runs on, if it is placed.
#[derive(Clone)]
struct Placed {
    config: AppConfig,
    module: String,
    worker: Option<String>,
    /// The count of this gateway's deployments when it deployed this one here
    /// (0: heard of from the planner).
    deployed: u64,
}

impl PlacedServices {
    /// The apps of the cluster whose planner is at `planner`, which keeps their
    /// deployments; each is placed on a worker when first invoked.
    pub fn open(planner: &str, tls: Arc<Tls>) -> Result<PlacedServices, ServiceError> {
        Ok(PlacedServices {
            planner: nimbus_control::Planner::new(planner, &tls)
                .map_err(|e| ServiceError::InvalidConfig(e.to_string()))?,
            apps: Mutex::default(),
            deployments: AtomicU64::new(0),
            links: Links::new(tls),
            placing: Mutex::default(),
        })
    }

    /// Learns the deployments the planner keeps: a new one, or one deployed anew
    /// (through another gateway, say), is placed again on its next request.
    async fn refresh(&self) -> Result<(), ServiceError> {
        let asked = self.deployments.load(Ordering::SeqCst);
        let deployments = self.planner.deployments().await.map_err(unavailable)?;
        let mut apps = self.apps.lock().unwrap();
        for Deployment { config, module } in deployments {
            match apps.get_mut(&config.name) {
                Some(placed) if placed.module == module && placed.config == config => {}
                // Deployed here after the list was asked for: the list is older.
                Some(placed) if placed.deployed > asked => {}
                _ => {
                    let placed = Placed {
                        config,
                        module,
                        worker: None,
                        deployed: 0,
                    };
                    apps.insert(placed.config.name.clone(), placed);
                }
            }
        }
        Ok(())
    }

    /// App `name` as deployed, asking the planner if this gateway has not heard of it.
    async fn deployed(&self, name: &str) -> Result<Placed, ServiceError> {
        let known = || self.apps.lock().unwrap().get(name).cloned();
        if let Some(placed) = known() {
            return Ok(placed);
        }
        self.refresh().await?;
        known().ok_or_else(|| ServiceError::UnknownApp(name.to_owned()))
    }

    /// The lock held while `app` is placed.
    fn placing(&self, app: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut placing = self.placing.lock().unwrap();
        placing.entry(app.to_owned()).or_default().clone()
    }

    /// Sends `request` with `body` to `worker` and returns its reply; `None` if the
    /// worker cannot be reached or the connection breaks first. A caller that gives
    /// up (a client gone) may drop it: the mesh writes each request whole.
    async fn call(&self, worker: &str, request: &AppRequest, body: Vec<u8>) -> Option<Frame> {
        let link = self.links.get(worker).await.ok()?;
        let request = Request::App(request.clone());
        link.call_one(Frame::new(&request, body)).await.ok()
    }

    /// Asks `worker` to answer `request`, within [`ASK_WAIT`]; `None` if it cannot
    /// be reached or does not answer in time.
    async fn ask(
        &self,
        worker: &str,
        request: &AppRequest,
        body: Vec<u8>,
    ) -> Option<(Reply, Vec<u8>)> {
        let reply = tokio::time::timeout(ASK_WAIT, self.call(worker, request, body))
            .await
            .ok()??;
        Some((reply.head().ok()?, reply.body))
    }

    /// Deploys `config` and `module` on a worker the planner picks (the one it runs
    /// on now, if any), asking again while a worker it picks turns out unreachable
    /// or full, for up to [`PLACE_WAIT`]. A new deployment `replace`s the app there;
    /// placing it again keeps what a worker has of it.
    async fn place(
        &self,
        config: &AppConfig,
        module: &[u8],
        now_on: Option<String>,
        replace: bool,
    ) -> Result<(String, AppInfo), ServiceError> {
        let deadline = tokio::time::Instant::now() + PLACE_WAIT;
        let mut candidate = now_on;
        let mut last_error = String::from("no worker has room");
        let mut failed: Vec<String> = Vec::new();
        loop {
            let worker = match candidate.take() {
                Some(worker) => Some(worker),
                None => {
                    self.pick_worker(&config.name, &failed, &mut last_error)
                        .await
                }
            };
            if let Some(worker) = worker {
                let request = AppRequest::Deploy {
                    config: config.clone(),
                    replace,
                };
                match self.ask(&worker, &request, module.to_vec()).await {
                    Some((Reply::Deployed(info), _)) => return Ok((worker, info)),
                    Some((Reply::ServiceFailed(error), _)) => return Err(error),
                    Some((other, _)) => last_error = format!("{worker} answered {other:?}"),
                    None => last_error = format!("cannot reach the worker at {worker}"),
                }
                failed.push(worker);
            }
            if tokio::time::Instant::now() + PLACE_RETRY >= deadline {
                return Err(ServiceError::Unavailable(format!(
                    "cannot place app `{}` on the cluster of {}: {last_error}",
                    config.name,
                    self.planner.addr()
                )));
            }
            tokio::time::sleep(PLACE_RETRY).await;
        }
    }

    /// A worker heard from lately that reports instances of `app` (their saved
    /// state is there), else the one the planner picks; never one of `failed`.
    /// `None` (saying why in `error`) if the planner cannot be asked, refuses, or
    /// picks a worker that failed.
    async fn pick_worker(
        &self,
        app: &str,
        failed: &[String],
        error: &mut String,
    ) -> Option<String> {
        let placed = async {
            let planner = &self.planner;
            let holds_app = |host: &HostStatus| {
                host.report.apps.get(app).is_some_and(|&n| n > 0)
                    && host.silent_ms <= HOLDER_SILENCE_MS
                    && !failed.contains(&host.info.address)
            };
            if let Some(holder) = planner.hosts().await?.into_iter().find(holds_app) {
                return Ok(holder.info.address);
            }
            let (_, address) = planner.place(None, Some(app.to_owned())).await?;
            Ok::<_, nimbus_control::ControlError>(address)
        };
        match placed.await {
            Ok(address) if failed.contains(&address) => None,
            Ok(address) => Some(address),
            Err(e) => {
                *error = e.to_string();
                None
            }
        }
    }

    /// The worker `app` runs on, placing it there first if it runs nowhere.
    async fn worker_of(&self, app: &str) -> Result<String, ServiceError> {
        if let Some(worker) = self.deployed(app).await?.worker {
            return Ok(worker);
        }
        let placing = self.placing(app);
        let _placing = placing.lock().await;
        let app = self.deployed(app).await?;
        if let Some(worker) = app.worker {
            return Ok(worker);
        }
        let module = self
            .planner
            .module(&app.module)
            .await
            .map_err(unavailable)?;
        let (worker, _) = self.place(&app.config, &module, None, false).await?;
        self.settle(&app.config.name, &app.module, Some(worker.clone()));
        Ok(worker)
    }

    /// Records where app `name` (with module `module`) runs now, unless it was
    /// deployed anew meanwhile.
    fn settle(&self, name: &str, module: &str, worker: Option<String>) {
        if let Some(placed) = self.apps.lock().unwrap().get_mut(name)
            && placed.module == module
        {
            placed.worker = worker;
        }
    }

    /// Forgets that `app` runs on `worker`, which could not be reached: the next
    /// request places it again.
    fn lost(&self, app: &str, worker: &str) {
        if let Some(placed) = self.apps.lock().unwrap().get_mut(app)
            && placed.worker.as_deref() == Some(worker)
        {
            placed.worker = None;
        }
    }

    /// The workers apps run on, each once.
    fn workers(&self) -> Vec<String> {
        let apps = self.apps.lock().unwrap();
        let mut workers: Vec<String> = apps.values().filter_map(|p| p.worker.clone()).collect();
        workers.sort();
        workers.dedup();
        workers
    }

    /// Asks every worker apps run on, in turn, until `found` takes an answer.
    async fn first_answer<T>(
        &self,
        request: AppRequest,
        mut found: impl FnMut(Reply, Vec<u8>) -> Option<T>,
    ) -> Option<T> {
        for worker in self.workers() {
            if let Some((reply, body)) = self.ask(&worker, &request, Vec::new()).await
                && let Some(answer) = found(reply, body)
            {
                return Some(answer);
            }
        }
        None
    }
}

impl ServiceFront for PlacedServices {
    fn deploy(
        self: Arc<Self>,
        config: AppConfig,
        module: ModuleBytes,
    ) -> BoxFuture<'static, Result<AppInfo, ServiceError>> {
        Box::pin(async move {
            config.check()?;
            if module.bytes().len() > MAX_BODY {
                return Err(ServiceError::Module(format!(
                    "a module of {} bytes is over the {MAX_BODY} a deployment to a \
                     cluster carries",
                    module.bytes().len()
                )));
            }
            let placing = self.placing(&config.name);
            let _placing = placing.lock().await;
            let now_on = self
                .apps
                .lock()
                .unwrap()
                .get(&config.name)
                .and_then(|p| p.worker.clone());
            let (worker, info) = self.place(&config, module.bytes(), now_on, true).await?;
            // Kept only once a worker took it: the planner holds no module that
            // cannot serve.
            let deployment = Deployment {
                config: config.clone(),
                module: module.hash().to_string(),
            };
            self.planner
                .record_app(deployment.clone(), module.bytes().to_vec())
                .await
                .map_err(|e| {
                    ServiceError::Unavailable(format!(
                        "app `{}` was deployed on the worker at {worker}, but the planner \
                         did not keep the deployment, so other gateways (and this one, once \
                         restarted) do not know it: deploy it again: {e}",
                        config.name
                    ))
                })?;
            let mut apps = self.apps.lock().unwrap();
            let placed = Placed {
                config: deployment.config,
                module: deployment.module,
                worker: Some(worker),
                deployed: self.deployments.fetch_add(1, Ordering::SeqCst) + 1,
            };
            apps.insert(config.name, placed);
            Ok(info)
        })
    }

    fn invoke<'a>(
        &'a self,
        app: &'a str,
        handler: &'a str,
        body: Vec<u8>,
        session: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<u8>, ServiceError>> {
        Box::pin(async move {
            let max_body = self.deployed(app).await?.config.max_body;
            // Refused here as the worker would, and never more than one frame.
            let limit = max_body.min(MAX_BODY);
            if body.len() > limit {
                let size = body.len();
                return Err(ServiceError::TooLarge { size, limit });
            }
            let request = Request::App(AppRequest::Invoke {
                app: app.to_owned(),
                handler: handler.to_owned(),
                session: session.map(str::to_owned),
            });
            // A worker that cannot be reached has not seen the request: place the
            // app again and send it there, once.
            let mut body = Some(body);
            for _ in 0..2 {
                let worker = self.worker_of(app).await?;
                let Ok(link) = self.links.get(&worker).await else {
                    self.lost(app, &worker);
                    continue;
                };
                let sent = Frame::new(&request, body.take().unwrap_or_default());
                let Ok(reply) = link.call_one(sent).await else {
                    self.lost(app, &worker);
                    return Err(ServiceError::Unavailable(format!(
                        "lost the worker at {worker} running `{app}` during the request; \
                         the app is placed again on the next one"
                    )));
                };
                return match reply.head::<Reply>() {
                    Ok(Reply::Response) => Ok(reply.body),
                    // It restarted without the app, or another gateway replaced it.
                    Ok(Reply::ServiceFailed(ServiceError::UnknownApp(_))) => {
                        self.lost(app, &worker);
                        Err(ServiceError::Unavailable(format!(
                            "the worker at {worker} no longer runs `{app}`; the app is \
                             placed again on the next request"
                        )))
                    }
                    Ok(Reply::ServiceFailed(error)) => Err(error),
                    other => Err(ServiceError::Unavailable(format!(
                        "the worker at {worker} answered {other:?}"
                    ))),
                };
            }
            Err(ServiceError::Unavailable(format!(
                "cannot reach a worker to run `{app}`"
            )))
        })
    }

    fn apps(&self) -> BoxFuture<'_, Vec<AppInfo>> {
        Box::pin(async move {
            if let Err(e) = self.refresh().await {
                tracing::warn!("listing the apps this gateway knows of: {e}");
            }
            let apps = self.apps.lock().unwrap().clone();
            let mut running = BTreeMap::new();
            for worker in self.workers() {
                if let Some((Reply::Apps(listed), _)) =
                    self.ask(&worker, &AppRequest::Apps, Vec::new()).await
                {
                    // A copy left on a worker the app has moved from does not count.
                    let placed_here = |info: &AppInfo| {
                        apps.get(&info.config.name)
                            .is_some_and(|p| p.worker.as_deref() == Some(worker.as_str()))
                    };
                    running.extend(
                        listed
                            .into_iter()
                            .filter(placed_here)
                            .map(|info| (info.config.name.clone(), info)),
                    );
                }
            }
            apps.into_values()
                .map(|placed| match running.remove(&placed.config.name) {
                    Some(info) if info.module == placed.module => info,
                    _ => AppInfo {
                        module: placed.module,
                        config: placed.config,
                        instances: 0,
                        live: 0,
                        queued: 0,
                        pids: Vec::new(),
                        rejected_snapshots: 0,
                    },
                })
                .collect()
        })
    }

    fn logs(&self, pid: Pid) -> BoxFuture<'_, Option<Vec<u8>>> {
        Box::pin(
            self.first_answer(AppRequest::Logs { pid }, |reply, log| match reply {
                Reply::Log { found: true } => Some(log),
                _ => None,
            }),
        )
    }

    fn kill(&self, pid: Pid) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let killed =
                self.first_answer(AppRequest::KillInstance { pid }, |reply, _| match reply {
                    Reply::Killed { found: true } => Some(()),
                    _ => None,
                });
            killed.await.is_some()
        })
    }

    fn swap_out_all(&self) -> BoxFuture<'_, Result<(), ServiceError>> {
        Box::pin(async move {
            for worker in self.workers() {
                // A worker that is gone has nothing left to swap out.
                let swapped = self.ask(&worker, &AppRequest::SwapOut, Vec::new()).await;
                if let Some((Reply::ServiceFailed(error), _)) = swapped {
                    return Err(error);
                }
            }
            Ok(())
        })
    }
}

/// A planner that could not be asked, or could not answer, as a service's error.
fn unavailable(error: nimbus_control::ControlError) -> ServiceError {
    ServiceError::Unavailable(error.to_string())
}
