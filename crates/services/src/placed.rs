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
//! Apps placed on the workers of a cluster: what a gateway in front of a cluster
//! serves. Each app runs on one worker, its requests forwarded over the mesh to
//! that worker's [`Services`](crate::Services), where its instances run, keep
//! their sessions and swap out.
//!
//! The planner keeps each deployment, its module and the worker it runs on, so a
//! gateway holds nothing of its own: one started anywhere, with any data
//! directory, serves the apps deployed through another (or through itself before
//! a restart), and any number of gateways at once route each app to the same
//! worker. A deployment is placed by the gateway that deploys it (on the worker
//! the app runs on, if it can be reached) and recorded with that worker; an app
//! with no worker, or whose worker this gateway cannot reach, is deployed on a
//! worker of the planner's choosing (one holding the app's instances, if any) and
//! moved there by compare-and-set at the planner: from the worker the gateway
//! saw, at the deployment it saw, so of gateways that move an app at once one
//! wins and the others route to its pick (their own picks keep a copy that is
//! never invoked, and so holds no state). A worker keeps an app of a later
//! generation than one it is asked to deploy, and the planner a recorded one, so
//! two deployments of a name at once end with the later one on both.
//!
//! A gateway takes the planner's answer about an app as it is for [`REFRESH`]
//! (1 s); the app's next request after that asks again (the others meanwhile
//! route by the answer known), so a gateway learns of a deployment or a move by
//! another within 1 s and one call to the planner. An app this gateway has not
//! heard of is asked about by name, never by listing every deployment. While the
//! planner cannot be asked, the apps heard of are served as last heard.
//!
//! What an app's instances held in memory, or swapped out on a lost worker's
//! disk, is lost with it; the request that was under way when the worker went
//! fails with [`ServiceError::Unavailable`], and is not retried, since it may have
//! taken effect.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nimbus_control::{ControlError, Planner};
use nimbus_core::Pid;
use nimbus_mesh::{Frame, Links, MAX_BODY};
use nimbus_planner::HostStatus;
use nimbus_runtime::{BoxFuture, ModuleBytes};
use nimbus_trust::Tls;
use nimbus_wire::apps::{AppConfig, AppInfo, Deployment, Placement, ServiceError};
use nimbus_wire::peer::{AppRequest, Reply, Request};

use crate::services::ServiceFront;

/// How long the planner's answer about an app is taken as it is: the bound on
/// how late a gateway learns that another deployed or moved the app.
const REFRESH: Duration = Duration::from_secs(1);

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
    planner: Planner,
    /// The apps heard of from the planner, by name: no more than it keeps
    /// (`MAX_DEPLOYMENTS`, 4,096), as only its answers add one.
    apps: Mutex<BTreeMap<String, Known>>,
    links: Links,
    /// By app heard of, held while it is placed, so that concurrent requests
    /// place it once.
    placing: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// An app as the planner last answered about it.
#[derive(Clone)]
struct Known {
    placed: Placement,
    /// When the planner answered (or a request set out to ask it again).
    checked: Instant,
    /// This gateway could not reach the worker named: the next request places
    /// the app anew, moving it from that worker.
    lost: bool,
}

impl Known {
    /// The worker to send the app's requests to, unless it must be placed first.
    fn worker(&self) -> Option<String> {
        self.placed.worker.clone().filter(|_| !self.lost)
    }
}

impl PlacedServices {
    /// The apps of the cluster whose planner is at `planner`, which keeps their
    /// deployments and where each runs.
    pub fn open(planner: &str, tls: Arc<Tls>) -> Result<PlacedServices, ServiceError> {
        Ok(PlacedServices {
            planner: Planner::new(planner, &tls)
                .map_err(|e| ServiceError::InvalidConfig(e.to_string()))?,
            apps: Mutex::default(),
            links: Links::new(tls),
            placing: Mutex::default(),
        })
    }

    /// Takes the planner's answer `placed` about an app, unless an answer it gave
    /// later is known; returns the app as known now.
    fn learn(&self, placed: Placement) -> Known {
        let mut apps = self.apps.lock().unwrap();
        let name = placed.deployment.config.name.clone();
        let known = apps.entry(name).or_insert_with(|| Known {
            placed: placed.clone(),
            checked: Instant::now(),
            lost: false,
        });
        if !known.placed.is_later_than(&placed) {
            // Deployed or moved anew: its worker is one to try.
            known.lost &= !placed.is_later_than(&known.placed);
            known.placed = placed;
            known.checked = Instant::now();
        }
        known.clone()
    }

    /// Forgets app `name`: the planner keeps no deployment of it.
    fn forget(&self, name: &str) {
        self.apps.lock().unwrap().remove(name);
        self.placing.lock().unwrap().remove(name);
    }

    /// Learns every deployment the planner keeps.
    async fn refresh(&self) -> Result<(), ServiceError> {
        for placed in self.planner.deployments().await.map_err(unavailable)? {
            self.learn(placed);
        }
        Ok(())
    }

    /// App `name` as known here, asking the planner first if this gateway has
    /// not heard of it or heard longer than [`REFRESH`] ago. One request asks for
    /// all; the others meanwhile take the answer known, as they do while the
    /// planner cannot be asked.
    async fn known(&self, name: &str) -> Result<Known, ServiceError> {
        let heard = match self.apps.lock().unwrap().get_mut(name) {
            Some(known) if known.checked.elapsed() < REFRESH => return Ok(known.clone()),
            Some(known) => {
                known.checked = Instant::now();
                Some(known.clone())
            }
            None => None,
        };
        match (self.planner.app(name).await, heard) {
            (Ok(Some(placed)), _) => Ok(self.learn(placed)),
            (Ok(None), _) => {
                self.forget(name);
                Err(ServiceError::UnknownApp(name.to_owned()))
            }
            (Err(e), Some(known)) => {
                tracing::warn!(app = name, "serving the app as last heard of: {e}");
                Ok(known)
            }
            (Err(e), None) => Err(unavailable(e)),
        }
    }

    /// The lock held while `app` is placed.
    fn placing(&self, app: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut placing = self.placing.lock().unwrap();
        placing.entry(app.to_owned()).or_default().clone()
    }

    /// Marks `worker`, which could not be reached, lost for `app`: the next
    /// request places the app anew.
    fn lost(&self, app: &str, worker: &str) {
        if let Some(known) = self.apps.lock().unwrap().get_mut(app)
            && known.placed.worker.as_deref() == Some(worker)
        {
            known.lost = true;
        }
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

    /// Deploys `config` and `module`, at the deployment of `generation`, on
    /// `first` if it is given and takes it, else on a worker the planner picks
    /// (never one of `failed`), asking again while a worker it picks turns out
    /// unreachable or full, for up to [`PLACE_WAIT`]. A worker that has the app
    /// at this generation or a later one keeps it as it is.
    async fn place(
        &self,
        config: &AppConfig,
        module: &[u8],
        first: Option<String>,
        generation: u64,
        mut failed: Vec<String>,
    ) -> Result<(String, AppInfo), ServiceError> {
        let deadline = tokio::time::Instant::now() + PLACE_WAIT;
        let mut candidate = first;
        let mut last_error = String::from("no worker has room");
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
                    generation,
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

    /// The worker `app` runs on, placing it first if it runs nowhere or this
    /// gateway lost its worker.
    async fn worker_of(&self, app: &str) -> Result<String, ServiceError> {
        if let Some(worker) = self.known(app).await?.worker() {
            return Ok(worker);
        }
        let placing = self.placing(app);
        let _placing = placing.lock().await;
        // Placed meanwhile, by a request here or through another gateway?
        let known = match self.planner.app(app).await.map_err(unavailable)? {
            Some(placed) => self.learn(placed),
            None => {
                self.forget(app);
                return Err(ServiceError::UnknownApp(app.to_owned()));
            }
        };
        match known.worker() {
            Some(worker) => Ok(worker),
            None => self.move_app(known.placed).await,
        }
    }

    /// Deploys the app `placed` on a worker other than the one it names (lost)
    /// and moves it there at the planner, unless another gateway moved or
    /// deployed it first; returns the worker it runs on now.
    async fn move_app(&self, placed: Placement) -> Result<String, ServiceError> {
        let Placement {
            deployment,
            generation,
            worker: lost,
            ..
        } = placed;
        let name = deployment.config.name.as_str();
        let module = self
            .planner
            .module(&deployment.module)
            .await
            .map_err(unavailable)?;
        let failed = lost.iter().cloned().collect();
        let (pick, _) = self
            .place(&deployment.config, &module, None, generation, failed)
            .await?;
        let moved = self
            .planner
            .place_app(name, generation, lost.as_deref(), &pick)
            .await
            .map_err(unavailable)?;
        let Some(now) = moved else {
            self.forget(name);
            return Err(ServiceError::UnknownApp(name.to_owned()));
        };
        if now.worker.as_deref() != Some(pick.as_str()) {
            tracing::info!(
                app = name,
                pick,
                worker = ?now.worker,
                "another gateway placed the app first: routing it there"
            );
        }
        self.learn(now).worker().ok_or_else(|| {
            ServiceError::Unavailable(format!("app `{name}` was placed on no worker"))
        })
    }

    /// The workers apps run on (as far as this gateway can reach them), each once.
    fn workers(&self) -> Vec<String> {
        let apps = self.apps.lock().unwrap();
        let mut workers: Vec<String> = apps.values().filter_map(Known::worker).collect();
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
            let name = config.name.clone();
            // Asked first, so that a deployment the planner would not keep (one
            // name too many) is never placed.
            let (generation, placed) =
                self.planner
                    .new_deployment(&name)
                    .await
                    .map_err(|e| match e {
                        ControlError::Refused { .. } => {
                            ServiceError::Storage(format!("cannot deploy `{name}`: {e}"))
                        }
                        e => unavailable(e),
                    })?;
            let now_on = placed.and_then(|placed| placed.worker);
            let (worker, info) = self
                .place(&config, module.bytes(), now_on, generation, Vec::new())
                .await?;
            // Kept only once a worker took it: the planner holds no module that
            // cannot serve.
            let placement = Placement {
                deployment: Deployment {
                    config,
                    module: module.hash().to_string(),
                },
                generation,
                worker: Some(worker.clone()),
                moves: 0,
            };
            let kept = self
                .planner
                .record_app(placement, module.bytes().to_vec())
                .await
                .map_err(|e| match e {
                    ControlError::Refused { .. } => ServiceError::Unavailable(format!(
                        "the planner did not keep this deployment of `{name}`: {e}"
                    )),
                    e => ServiceError::Unavailable(format!(
                        "app `{name}` was deployed on the worker at {worker}, but the planner \
                         did not keep the deployment, so other gateways (and this one, once \
                         restarted) do not know it: deploy it again: {e}"
                    )),
                })?;
            self.learn(kept);
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
            let max_body = self.known(app).await?.placed.deployment.config.max_body;
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
                    // It restarted without the app (its data directory lost, say).
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
                            .is_some_and(|known| known.worker().as_ref() == Some(&worker))
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
                .map(|known| known.placed.deployment)
                .map(|deployed| match running.remove(&deployed.config.name) {
                    Some(info) if info.module == deployed.module => info,
                    _ => AppInfo {
                        module: deployed.module,
                        config: deployed.config,
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
