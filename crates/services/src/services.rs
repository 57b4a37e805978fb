//! Service processes: apps deployed once and invoked many times, their instances
//! keeping state in memory between invocations, swapped out to disk when idle and
//! back in on demand.
//!
//! Each instance is an actor: one task owning the live [`ServiceInstance`] (or
//! nothing, while swapped out) and a bounded queue of requests, served one at a
//! time in arrival order. An app dispatches a request to its session's instance, or
//! the least busy one, starting another (up to its maximum) when all are busy; when
//! every queue is full it refuses the request ([`ServiceError::Busy`]) instead of
//! growing memory.
//!
//! On disk, under `<data>/apps/<name>/`: `app.json` (configuration and module hash),
//! `module.wasm`, and `instance-N.snap` for each swapped-out instance. The last
//! snapshot is also the state a failed instance is rolled back to; an instance that
//! never swapped out is rolled back to a fresh start.
//!
//! Nothing read back is trusted: a snapshot names the app and instance it belongs
//! to, and one that is damaged, of another app or instance, or cannot be restored is
//! logged, counted, set aside as `instance-N.snap.rejected` and its instance starts
//! afresh, so only that instance loses its state. Deployments of one name are
//! serialised, and a redeployment waits until the old instances' actors have ended,
//! so none of them writes into the new app's directory.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use nimbus_core::{HostId, Limits, Pid};
use nimbus_runtime::{
    BoxFuture, Input, Invocation, LoadError, LogBuffer, Mailbox, ModuleBytes, Output, ProcessSpec,
    ServiceInstance,
};
use nimbus_snapshot::{Owner, Snapshot, SnapshotError};
use nimbus_state::AppName;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};

use nimbus_mesh::{Frame, MAX_BODY};
use nimbus_node::{AppRequests, Cluster, Lineage, ModuleSource};
use nimbus_wire::apps::{AppConfig, AppInfo, ServiceError};
use nimbus_wire::peer::{AppRequest, Reply};

/// What is persisted of an app.
#[derive(Serialize, Deserialize)]
struct AppRecord {
    config: AppConfig,
    module: String,
    /// The cluster deployment it is (`nimbus_wire::apps::Placement`); 0 for one
    /// deployed on this node, or before generations were kept.
    #[serde(default)]
    generation: u64,
}

/// What a gateway asks of the apps it serves, wherever their instances run: in
/// this process ([`Services`]) or on the workers of a cluster
/// ([`PlacedServices`](crate::PlacedServices)).
pub trait ServiceFront: Send + Sync + 'static {
    /// Deploys `module` as the app `config.name`, replacing an app of that name.
    fn deploy(
        self: Arc<Self>,
        config: AppConfig,
        module: ModuleBytes,
    ) -> BoxFuture<'static, Result<AppInfo, ServiceError>>;

    /// Invokes `handler` of `app` with `body`; requests with the same `session` go
    /// to the same instance.
    fn invoke<'a>(
        &'a self,
        app: &'a str,
        handler: &'a str,
        body: Vec<u8>,
        session: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<u8>, ServiceError>>;

    /// Every app, by name.
    fn apps(&self) -> BoxFuture<'_, Vec<AppInfo>>;

    /// The recent stderr of the service instance `pid`, if it is one.
    fn logs(&self, pid: Pid) -> BoxFuture<'_, Option<Vec<u8>>>;

    /// Stops the service instance `pid`; `false` if no instance has that pid.
    fn kill(&self, pid: Pid) -> BoxFuture<'_, bool>;

    /// Swaps every live instance out to disk, e.g. before the node stops.
    fn swap_out_all(&self) -> BoxFuture<'_, Result<(), ServiceError>>;
}

impl ServiceFront for Services {
    fn deploy(
        self: Arc<Self>,
        config: AppConfig,
        module: ModuleBytes,
    ) -> BoxFuture<'static, Result<AppInfo, ServiceError>> {
        Box::pin(self.deploy_off_thread(config, module, None))
    }

    fn invoke<'a>(
        &'a self,
        app: &'a str,
        handler: &'a str,
        body: Vec<u8>,
        session: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<u8>, ServiceError>> {
        Box::pin(Services::invoke(self, app, handler, body, session))
    }

    fn apps(&self) -> BoxFuture<'_, Vec<AppInfo>> {
        Box::pin(async { Services::apps(self) })
    }

    fn logs(&self, pid: Pid) -> BoxFuture<'_, Option<Vec<u8>>> {
        Box::pin(async move { Services::logs(self, pid) })
    }

    fn kill(&self, pid: Pid) -> BoxFuture<'_, bool> {
        Box::pin(Services::kill(self, pid))
    }

    fn swap_out_all(&self) -> BoxFuture<'_, Result<(), ServiceError>> {
        Box::pin(Services::swap_out_all(self))
    }
}

/// The requests about the apps placed on this worker, from a gateway's
/// [`PlacedServices`](crate::PlacedServices) over the mesh.
impl AppRequests for Services {
    fn answer(self: Arc<Self>, request: AppRequest, body: Vec<u8>) -> BoxFuture<'static, Frame> {
        let reply = |reply: Reply| Frame::new(&reply, Vec::new());
        let failed = move |error| reply(Reply::ServiceFailed(error));
        Box::pin(async move {
            match request {
                AppRequest::Deploy { config, generation } => {
                    let Some(module) = ModuleBytes::hash_off_thread(body).await else {
                        return failed(ServiceError::Unavailable("the node is stopping".into()));
                    };
                    self.deploy_off_thread(config, module, Some(generation))
                        .await
                        .map_or_else(failed, |info| reply(Reply::Deployed(info)))
                }
                AppRequest::Invoke {
                    app,
                    handler,
                    session,
                } => match self.invoke(&app, &handler, body, session.as_deref()).await {
                    Ok(response) if response.len() > MAX_BODY => {
                        failed(ServiceError::Unavailable(format!(
                            "a response of {} bytes is over what a worker sends back in one frame",
                            response.len()
                        )))
                    }
                    Ok(response) => Frame::new(&Reply::Response, response),
                    Err(error) => failed(error),
                },
                AppRequest::Apps => reply(Reply::Apps(self.apps())),
                AppRequest::Logs { pid } => match self.logs(pid) {
                    Some(log) => Frame::new(&Reply::Log { found: true }, log),
                    None => reply(Reply::Log { found: false }),
                },
                AppRequest::KillInstance { pid } => reply(Reply::Killed {
                    found: self.kill(pid).await,
                }),
                AppRequest::SwapOut => self
                    .swap_out_all()
                    .await
                    .map_or_else(failed, |()| reply(Reply::Done)),
            }
        })
    }
}

/// All apps of this node.
pub struct Services {
    cluster: Arc<Cluster>,
    dir: PathBuf,
    apps: Mutex<HashMap<String, Arc<App>>>,
    /// One lock per app name ever deployed: deployments of one name, one at a time.
    deploying: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl Services {
    /// Opens the apps persisted under `data_dir/apps`, their instances swapped out.
    pub fn open(cluster: Arc<Cluster>, data_dir: &Path) -> Result<Services, ServiceError> {
        let dir = data_dir.join("apps");
        std::fs::create_dir_all(&dir).map_err(storage(&dir))?;
        let services = Services {
            cluster,
            dir,
            apps: Mutex::default(),
            deploying: Mutex::default(),
        };
        for app in each_app(&services.dir, |app_dir| services.reopen(app_dir))? {
            services
                .apps
                .lock()
                .unwrap()
                .insert(app.config.name.clone(), app);
        }
        Ok(services)
    }

    fn reopen(&self, app_dir: &Path) -> Result<Arc<App>, ServiceError> {
        let (record, module) = load_app(app_dir)?;
        let swapped = swapped_instances(app_dir, record.config.max_instances)?;
        let app = App::new(self.cluster.clone(), app_dir.to_owned(), record, module)?;
        let mut instances = app.instances.lock().unwrap();
        for _ in 0..swapped {
            app.add_instance(&mut instances)?;
        }
        drop(instances);
        Ok(app)
    }

    /// [`Services::deploy_generation`] of the cluster deployment `generation`, or
    /// with none [`Services::deploy`], off the runtime's threads: compiling the
    /// module blocks for as long as it takes.
    pub(crate) async fn deploy_off_thread(
        self: Arc<Self>,
        config: AppConfig,
        module: ModuleBytes,
        generation: Option<u64>,
    ) -> Result<AppInfo, ServiceError> {
        tokio::task::spawn_blocking(move || match generation {
            None => Services::deploy(&self, config, module),
            Some(generation) => self.deploy_generation(config, module, generation),
        })
        .await
        .unwrap_or_else(|e| Err(ServiceError::Unavailable(e.to_string())))
    }

    /// `module` deployed as the app `config.name` at the cluster deployment
    /// `generation`, unless the app here is of a later generation (a gateway that
    /// knew an older deployment placed it), or of this one with `module` and
    /// `config` already: then it is kept as it is, its instances and their saved
    /// state with it.
    pub fn deploy_generation(
        &self,
        config: AppConfig,
        module: ModuleBytes,
        generation: u64,
    ) -> Result<AppInfo, ServiceError> {
        config.check()?;
        let lock = self.deploy_lock(&config.name);
        let _deploying = lock.lock().unwrap();
        if let Some(app) = self.apps.lock().unwrap().get(&config.name) {
            let same = app.config == config && app.module.hash() == module.hash();
            if app.generation > generation || (app.generation == generation && same) {
                return Ok(app.info());
            }
        }
        self.deploy_locked(config, module, generation)
    }

    /// Deploys `module` as the app `config.name`, replacing an app of that name
    /// (whose instances and saved state are discarded). Blocks until the old app's
    /// instances have ended (an invocation in flight is answered first), and while
    /// another deployment of the name is under way: call it off the async threads.
    pub fn deploy(&self, config: AppConfig, module: ModuleBytes) -> Result<AppInfo, ServiceError> {
        config.check()?;
        let lock = self.deploy_lock(&config.name);
        let _deploying = lock.lock().unwrap();
        self.deploy_locked(config, module, 0)
    }

    fn deploy_lock(&self, name: &str) -> Arc<Mutex<()>> {
        self.deploying
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// [`Services::deploy`] (at the cluster deployment `generation`) holding the
    /// name's deployment lock.
    fn deploy_locked(
        &self,
        config: AppConfig,
        module: ModuleBytes,
        generation: u64,
    ) -> Result<AppInfo, ServiceError> {
        let program = self
            .cluster
            .any_host()
            .runtime()
            .load_service(&module)
            .map_err(|e: LoadError| ServiceError::Module(e.to_string()))?;
        if program.is_command() {
            return Err(ServiceError::Module(
                "a service module must be a WASI reactor (no `_start`): build C with \
                 -mexec-model=reactor, Rust as a cdylib"
                    .into(),
            ));
        }
        let app_dir = self.dir.join(&config.name);
        let old = self.apps.lock().unwrap().remove(&config.name);
        if let Some(old) = old {
            old.retire_and_wait();
        }
        let record = AppRecord {
            config,
            module: module.hash().to_string(),
            generation,
        };
        save_app(&app_dir, &record, &module)?;
        let app = App::new(self.cluster.clone(), app_dir, record, module)?;
        let info = app.info();
        self.apps
            .lock()
            .unwrap()
            .insert(info.config.name.clone(), app);
        Ok(info)
    }

    /// Invokes `handler` of `app` with `body`; requests with the same `session` go
    /// to the same instance.
    pub async fn invoke(
        &self,
        app: &str,
        handler: &str,
        body: Vec<u8>,
        session: Option<&str>,
    ) -> Result<Vec<u8>, ServiceError> {
        let started = std::time::Instant::now();
        let found = self.apps.lock().unwrap().get(app).cloned();
        let outcome = match &found {
            Some(found) => found.invoke(handler, body, session).await,
            None => Err(ServiceError::UnknownApp(app.to_owned())),
        };
        crate::metrics().invoked(app, found.is_some(), handler, started.elapsed(), &outcome);
        outcome
    }

    /// Every app.
    pub fn apps(&self) -> Vec<AppInfo> {
        let mut apps: Vec<AppInfo> = self
            .apps
            .lock()
            .unwrap()
            .values()
            .map(|a| a.info())
            .collect();
        apps.sort_by(|a, b| a.config.name.cmp(&b.config.name));
        apps
    }

    /// The recent stderr of the service instance `pid`, if it is one.
    pub fn logs(&self, pid: Pid) -> Option<Vec<u8>> {
        let apps = self.apps.lock().unwrap();
        apps.values().find_map(|app| {
            let instances = app.instances.lock().unwrap();
            let instance = instances.iter().find(|i| i.pid == pid)?;
            Some(instance.log.contents())
        })
    }

    /// Stops the service instance `pid`, discarding its state since its last
    /// snapshot; `false` if no instance has that pid.
    pub async fn kill(&self, pid: Pid) -> bool {
        let instance = {
            let apps = self.apps.lock().unwrap();
            apps.values().find_map(|app| {
                let instances = app.instances.lock().unwrap();
                instances.iter().find(|i| i.pid == pid).cloned()
            })
        };
        match instance {
            Some(instance) => instance.queue.send(Message::Kill).await.is_ok(),
            None => false,
        }
    }

    /// Swaps every live instance out to disk, e.g. before the node stops.
    pub async fn swap_out_all(&self) -> Result<(), ServiceError> {
        let apps: Vec<Arc<App>> = self.apps.lock().unwrap().values().cloned().collect();
        for app in apps {
            let instances: Vec<Arc<Instance>> = app.instances.lock().unwrap().clone();
            for instance in instances {
                let (done, swapped) = oneshot::channel();
                if instance.queue.send(Message::SwapOut(done)).await.is_ok() {
                    // An instance that ended meanwhile (its app redeployed) has
                    // nothing to save.
                    if let Ok(outcome) = swapped.await {
                        outcome?;
                    }
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn storage(path: &Path) -> impl FnOnce(std::io::Error) -> ServiceError + '_ {
    move |e| ServiceError::Storage(format!("{}: {e}", path.display()))
}

/// Writes an app's record and module into `app_dir`, replacing what was there.
fn save_app(app_dir: &Path, record: &AppRecord, module: &ModuleBytes) -> Result<(), ServiceError> {
    if app_dir.exists() {
        std::fs::remove_dir_all(app_dir).map_err(storage(app_dir))?;
    }
    std::fs::create_dir_all(app_dir).map_err(storage(app_dir))?;
    write_atomically(&app_dir.join("module.wasm"), module.bytes())?;
    let json = serde_json::to_vec_pretty(record).expect("an app record serializes");
    write_atomically(&app_dir.join("app.json"), &json)?;
    // The app directory's own entry (created, or removed and created again).
    match app_dir.parent() {
        Some(apps) => sync_dir(apps),
        None => Ok(()),
    }
}

/// How many instances the app in `app_dir` has on disk: one past the highest
/// numbered snapshot (an instance whose snapshot was set aside starts afresh).
fn swapped_instances(app_dir: &Path, max_instances: usize) -> Result<usize, ServiceError> {
    let mut count = 0;
    for entry in std::fs::read_dir(app_dir).map_err(storage(app_dir))? {
        let name = entry.map_err(storage(app_dir))?.file_name();
        let index = name
            .to_str()
            .and_then(|n| n.strip_prefix("instance-")?.strip_suffix(".snap"))
            .and_then(|n| n.parse::<usize>().ok());
        if let Some(index) = index.filter(|&i| i < max_instances) {
            count = count.max(index + 1);
        }
    }
    Ok(count)
}

/// What `open` makes of each app directory under `dir`. One it cannot open (left
/// half-written by a crash during a deployment, say) is skipped with a warning,
/// so that the other apps still serve.
pub(crate) fn each_app<T>(
    dir: &Path,
    mut open: impl FnMut(&Path) -> Result<T, ServiceError>,
) -> Result<Vec<T>, ServiceError> {
    let mut apps = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(storage(dir))? {
        let app_dir = entry.map_err(storage(dir))?.path();
        match open(&app_dir) {
            Ok(app) => apps.push(app),
            Err(error) => tracing::warn!("skipping the app in {}: {error}", app_dir.display()),
        }
    }
    Ok(apps)
}

/// Reads the record and module [`save_app`] wrote into `app_dir`.
fn load_app(app_dir: &Path) -> Result<(AppRecord, ModuleBytes), ServiceError> {
    let record_path = app_dir.join("app.json");
    let record: AppRecord =
        serde_json::from_slice(&std::fs::read(&record_path).map_err(storage(&record_path))?)
            .map_err(|e| ServiceError::Storage(format!("{}: {e}", record_path.display())))?;
    let module_path = app_dir.join("module.wasm");
    let module = ModuleBytes::new(std::fs::read(&module_path).map_err(storage(&module_path))?);
    if module.hash().to_string() != record.module {
        return Err(ServiceError::Storage(format!(
            "{}: does not match the hash in app.json",
            module_path.display()
        )));
    }
    Ok((record, module))
}

/// Writes `bytes` to `path` through a temporary file of its own, durably: the file
/// is synced before it is renamed into place, and the directory after.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ServiceError> {
    let dir = path.parent().expect("app files are in an app directory");
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(storage(dir))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(storage(tmp.path()))?;
    tmp.persist(path).map_err(|e| storage(path)(e.error))?;
    sync_dir(dir)
}

/// Makes the entries of `dir` (a rename into it, say) durable.
fn sync_dir(dir: &Path) -> Result<(), ServiceError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(storage(dir))
}

/// A deployed app and its instances.
struct App {
    core: Arc<AppCore>,
    instances: Mutex<Vec<Arc<Instance>>>,
    sessions: Mutex<HashMap<String, usize>>,
}

/// What an app's instance actors need of it. They hold this and not the [`App`], so
/// that dropping the app drops the senders of their queues and they end.
struct AppCore {
    cluster: Arc<Cluster>,
    dir: PathBuf,
    config: AppConfig,
    module: ModuleBytes,
    /// The cluster deployment it is (see [`AppRecord`]).
    generation: u64,
    lineage: Arc<Lineage>,
    rejected_snapshots: AtomicU64,
}

impl std::ops::Deref for App {
    type Target = AppCore;
    fn deref(&self) -> &AppCore {
        &self.core
    }
}

/// The most bytes of stderr kept per instance for `nimbus logs`.
const LOG_CAPACITY: usize = 256 << 10;

/// Most sessions an app remembers; beyond that a new session may forget an old
/// one, whose next request then picks an instance afresh.
const MAX_SESSIONS: usize = 100_000;

/// One instance as its app sees it: its state and the way into its actor.
struct Instance {
    state: Arc<InstanceState>,
    queue: mpsc::Sender<Message>,
    /// Disconnected when the actor has ended (nothing is ever sent).
    ended: Mutex<std::sync::mpsc::Receiver<Infallible>>,
}

/// What an instance's app and actor share.
struct InstanceState {
    index: usize,
    log: LogBuffer,
    pid: Pid,
    host: HostId,
    pending: AtomicUsize,
    live: AtomicBool,
    /// Tells the actor to end before its next message: its app is gone.
    retired: Notify,
}

impl std::ops::Deref for Instance {
    type Target = InstanceState;
    fn deref(&self) -> &InstanceState {
        &self.state
    }
}

enum Message {
    Invoke {
        handler: String,
        body: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, ServiceError>>,
    },
    SwapOut(oneshot::Sender<Result<(), ServiceError>>),
    /// Discards the live state; the next request restores the last snapshot.
    Kill,
}

impl App {
    fn new(
        cluster: Arc<Cluster>,
        dir: PathBuf,
        AppRecord {
            config, generation, ..
        }: AppRecord,
        module: ModuleBytes,
    ) -> Result<Arc<App>, ServiceError> {
        let app = AppName::new(&config.name)
            .map_err(|_| ServiceError::InvalidName(config.name.clone()))?;
        let limits = Limits {
            memory: config.memory,
            timeout: None,
        };
        let lineage = Lineage::new(
            app,
            ModuleSource::None,
            vec![],
            vec![],
            (Output::Null, Output::Null),
            limits,
        );
        Ok(Arc::new(App {
            core: Arc::new(AppCore {
                cluster,
                dir,
                config,
                module,
                generation,
                lineage: Arc::new(lineage),
                rejected_snapshots: AtomicU64::new(0),
            }),
            instances: Mutex::default(),
            sessions: Mutex::default(),
        }))
    }

    fn info(&self) -> AppInfo {
        let instances = self.instances.lock().unwrap();
        AppInfo {
            config: self.config.clone(),
            module: self.module.hash().to_string(),
            instances: instances.len(),
            live: instances
                .iter()
                .filter(|i| i.live.load(Ordering::Relaxed))
                .count(),
            queued: instances
                .iter()
                .map(|i| i.pending.load(Ordering::Relaxed))
                .sum(),
            pids: instances.iter().map(|i| i.pid).collect(),
            rejected_snapshots: self.rejected_snapshots.load(Ordering::Relaxed),
        }
    }

    /// Starts the actor of one more instance, swapped out until its first request.
    fn add_instance(
        self: &Arc<App>,
        instances: &mut Vec<Arc<Instance>>,
    ) -> Result<Arc<Instance>, ServiceError> {
        let host = self
            .cluster
            .place_service()
            .map_err(|e| ServiceError::Unavailable(e.to_string()))?;
        let (pid, mailbox) = host
            .register_service(self.module.clone(), self.lineage.clone())
            .map_err(|e| ServiceError::Unavailable(e.to_string()))?;
        let (queue, requests) = mpsc::channel(self.config.queue_depth);
        let state = Arc::new(InstanceState {
            index: instances.len(),
            log: LogBuffer::new(LOG_CAPACITY),
            pid,
            host: host.id(),
            pending: AtomicUsize::new(0),
            live: AtomicBool::new(false),
            retired: Notify::new(),
        });
        let (ended_sender, ended) = std::sync::mpsc::channel();
        let instance = Arc::new(Instance {
            state: state.clone(),
            queue,
            ended: Mutex::new(ended),
        });
        instances.push(instance.clone());
        tokio::spawn(serve(
            self.core.clone(),
            state,
            mailbox,
            requests,
            ended_sender,
        ));
        Ok(instance)
    }

    /// The instance for a request: the session's, else the least busy, else a new
    /// one while the app may grow.
    fn dispatch(self: &Arc<App>, session: Option<&str>) -> Result<Arc<Instance>, ServiceError> {
        let mut instances = self.instances.lock().unwrap();
        if let Some(session) = session
            && let Some(&index) = self.sessions.lock().unwrap().get(session)
            && let Some(instance) = instances.get(index)
        {
            return Ok(instance.clone());
        }
        let least_busy = instances
            .iter()
            .min_by_key(|i| i.pending.load(Ordering::Relaxed))
            .cloned();
        let chosen = match least_busy {
            Some(idle) if idle.pending.load(Ordering::Relaxed) == 0 => idle,
            Some(busy) if instances.len() >= self.config.max_instances => busy,
            _ => self.add_instance(&mut instances)?,
        };
        if let Some(session) = session {
            let mut sessions = self.sessions.lock().unwrap();
            if sessions.len() >= MAX_SESSIONS
                && let Some(forgotten) = sessions.keys().next().cloned()
            {
                sessions.remove(&forgotten);
            }
            sessions.insert(session.to_owned(), chosen.index);
        }
        Ok(chosen)
    }

    async fn invoke(
        self: &Arc<App>,
        handler: &str,
        body: Vec<u8>,
        session: Option<&str>,
    ) -> Result<Vec<u8>, ServiceError> {
        if body.len() > self.config.max_body {
            return Err(ServiceError::TooLarge {
                size: body.len(),
                limit: self.config.max_body,
            });
        }
        let instance = self.dispatch(session)?;
        let (reply, response) = oneshot::channel();
        instance.pending.fetch_add(1, Ordering::Relaxed);
        let message = Message::Invoke {
            handler: handler.to_owned(),
            body,
            reply,
        };
        if instance.queue.try_send(message).is_err() {
            instance.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(ServiceError::Busy {
                app: self.config.name.clone(),
                instances: self.instances.lock().unwrap().len(),
            });
        }
        response
            .await
            .map_err(|_| ServiceError::Unavailable("the instance ended".into()))?
    }

    /// Ends every instance and forgets the app's sessions, and blocks until every
    /// actor has ended: each answers the request it is serving, if any, and ends
    /// without saving its state (requests still queued fail).
    fn retire_and_wait(&self) {
        let instances = std::mem::take(&mut *self.instances.lock().unwrap());
        self.sessions.lock().unwrap().clear();
        for instance in &instances {
            instance.retired.notify_one();
            if let Some(host) = self.cluster.host(instance.host) {
                host.unregister(instance.pid);
            }
            self.cluster.release_locks(instance.pid);
        }
        for instance in &instances {
            // Returns once the actor dropped its end of the channel: it has ended.
            let _ = instance.ended.lock().unwrap().recv();
        }
    }
}

impl AppCore {
    fn snapshot_path(&self, index: usize) -> PathBuf {
        self.dir.join(format!("instance-{index}.snap"))
    }

    /// Whose state the snapshots of instance `index` are.
    fn owner(&self, index: usize) -> Owner {
        Owner {
            app: self.config.name.clone(),
            instance: index as u32,
        }
    }

    /// Brings an instance into memory: restored from its snapshot if it has one it
    /// can use, else started fresh.
    async fn swap_in(
        &self,
        instance: &InstanceState,
        mailbox: Mailbox,
    ) -> Result<ServiceInstance, ServiceError> {
        let host = self
            .cluster
            .host(instance.host)
            .ok_or_else(|| ServiceError::Unavailable("host lost".into()))?;
        let (cluster, host_id, module) = (self.cluster.clone(), instance.host, self.module.clone());
        // Loading may read the module cache or compile: off the async threads.
        let program = tokio::task::spawn_blocking(move || {
            let host = cluster
                .host(host_id)
                .ok_or_else(|| ServiceError::Unavailable("host lost".into()))?;
            host.runtime()
                .load_service(&module)
                .map_err(|e: LoadError| ServiceError::Module(e.to_string()))
        })
        .await
        .map_err(|e| ServiceError::Unavailable(e.to_string()))??;
        let mut mailbox = mailbox;
        if let Some(snapshot) = self.own_snapshot(instance.index).await? {
            let slot = host.runtime().admit().await;
            let spec = self.spec(instance, mailbox);
            match host
                .runtime()
                .start_service(&program, spec, slot, Some(&snapshot))
                .await
            {
                Ok(restored) => {
                    crate::metrics().swapped_in();
                    return Ok(restored);
                }
                Err(status) => {
                    self.set_aside(instance.index, format!("cannot be restored: {status:?}"))
                        .await;
                    mailbox = host
                        .renew_mailbox(instance.pid)
                        .ok_or_else(|| ServiceError::Unavailable("instance retired".into()))?;
                }
            }
        }
        let slot = host.runtime().admit().await;
        host.runtime()
            .start_service(&program, self.spec(instance, mailbox), slot, None)
            .await
            .map_err(|status| ServiceError::Unavailable(format!("{status:?}")))
    }

    fn spec(&self, instance: &InstanceState, mailbox: Mailbox) -> ProcessSpec {
        ProcessSpec {
            pid: instance.pid,
            args: vec![self.config.name.clone()],
            env: self.lineage.env.clone(),
            dirs: self.lineage.dirs.clone(),
            stdin: Input::Null,
            stdout: Output::Null,
            stderr: Output::Log(instance.log.clone()),
            limits: self.lineage.limits.clone(),
            deadline: None,
            mailbox,
            kernel: self.cluster.clone(),
            capture: None,
        }
    }

    /// The snapshot of instance `index`, if it has one that is intact and its own;
    /// one that is not is set aside.
    async fn own_snapshot(&self, index: usize) -> Result<Option<Snapshot>, ServiceError> {
        let path = self.snapshot_path(index);
        let read = tokio::task::spawn_blocking(move || nimbus_snapshot::read(&path))
            .await
            .map_err(|e| ServiceError::Unavailable(e.to_string()))?;
        let owner = self.owner(index);
        let refused = match read {
            Ok(snapshot) if snapshot.owner == owner => return Ok(Some(snapshot)),
            Ok(snapshot) => format!("it is the state of {}", snapshot.owner),
            Err(SnapshotError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(None);
            }
            Err(damaged @ SnapshotError::Damaged { .. }) => damaged.to_string(),
            Err(error) => return Err(ServiceError::Storage(error.to_string())),
        };
        self.set_aside(index, refused).await;
        Ok(None)
    }

    /// Logs and counts the refusal of instance `index`'s snapshot, and renames it to
    /// `instance-N.snap.rejected` (replacing an older one), out of the way of the
    /// instance, which starts afresh, but kept for inspection.
    async fn set_aside(&self, index: usize, why: String) {
        self.rejected_snapshots.fetch_add(1, Ordering::Relaxed);
        let path = self.snapshot_path(index);
        let aside = path.with_extension("snap.rejected");
        tracing::warn!(
            app = %self.config.name,
            instance = index,
            snapshot = %path.display(),
            "refusing the snapshot ({why}); it is set aside as {} and the instance starts afresh",
            aside.display()
        );
        let renamed = tokio::task::spawn_blocking(move || std::fs::rename(&path, &aside)).await;
        if let Ok(Err(e)) = renamed {
            tracing::warn!(app = %self.config.name, instance = index, error = %e, "cannot set the refused snapshot aside");
        }
    }
}

/// Writes `live`'s state to `path` off the async threads; gives the instance back
/// with the outcome, so a failed write keeps it in memory.
async fn write_snapshot(
    mut live: ServiceInstance,
    path: PathBuf,
    owner: Owner,
) -> (ServiceInstance, Result<(), ServiceError>) {
    tokio::task::spawn_blocking(move || {
        let written = live
            .snapshot(owner)
            .write(&path)
            .map_err(|e| ServiceError::Storage(e.to_string()));
        (live, written)
    })
    .await
    .expect("snapshot writing does not panic")
}

/// The actor of one instance.
async fn serve(
    app: Arc<AppCore>,
    me: Arc<InstanceState>,
    mailbox: Mailbox,
    mut messages: mpsc::Receiver<Message>,
    _ended: std::sync::mpsc::Sender<Infallible>,
) {
    let mut swapped_mailbox = Some(mailbox);
    let mut live: Option<ServiceInstance> = None;
    loop {
        let is_live = live.is_some();
        let next = async {
            if !is_live {
                return messages.recv().await;
            }
            match tokio::time::timeout(app.config.idle, messages.recv()).await {
                Ok(message) => message,
                Err(_idle) => {
                    let (done, _) = oneshot::channel();
                    Some(Message::SwapOut(done))
                }
            }
        };
        // A retired instance ends before anything else, its state unsaved: its
        // app's directory may belong to a new deployment already.
        let message = tokio::select! {
            biased;
            () = me.retired.notified() => break,
            message = next => message,
        };
        match message {
            None => break,
            Some(Message::SwapOut(done)) => {
                let outcome = match live.take() {
                    None => Ok(()),
                    Some(instance) => {
                        let (instance, written) = write_snapshot(
                            instance,
                            app.snapshot_path(me.index),
                            app.owner(me.index),
                        )
                        .await;
                        match written {
                            Ok(()) => {
                                crate::metrics().swapped_out();
                                swapped_mailbox = Some(instance.retire());
                                me.live.store(false, Ordering::Relaxed);
                            }
                            Err(_) => live = Some(instance),
                        }
                        written
                    }
                };
                let _ = done.send(outcome);
            }
            Some(Message::Kill) => {
                if let Some(instance) = live.take() {
                    swapped_mailbox = Some(instance.retire());
                    me.live.store(false, Ordering::Relaxed);
                }
            }
            Some(Message::Invoke {
                handler,
                body,
                reply,
            }) => {
                if live.is_none() {
                    let mailbox = swapped_mailbox
                        .take()
                        .or_else(|| app.cluster.host(me.host)?.renew_mailbox(me.pid));
                    let started = match mailbox {
                        Some(mailbox) => app.swap_in(&me, mailbox).await,
                        None => Err(ServiceError::Unavailable("instance retired".into())),
                    };
                    match started {
                        Ok(instance) => {
                            live = Some(instance);
                            me.live.store(true, Ordering::Relaxed);
                        }
                        Err(e) => {
                            me.pending.fetch_sub(1, Ordering::Relaxed);
                            let _ = reply.send(Err(e));
                            continue;
                        }
                    }
                }
                let instance = live.as_mut().expect("swapped in above");
                let result = instance
                    .invoke(Invocation {
                        handler,
                        body,
                        max_response: app.config.max_response,
                        timeout: Some(app.config.timeout),
                    })
                    .await;
                me.pending.fetch_sub(1, Ordering::Relaxed);
                let _ = reply.send(result.map_err(ServiceError::from));
                // Commits off the request's path (and a commit of much off the
                // async threads); a failed invocation rolled back already. An
                // instance whose state cannot be kept is dropped: the next request
                // restores the last snapshot (or starts afresh).
                let instance = live.take().expect("invoked above");
                match instance.commit().await {
                    (instance, Ok(_)) => live = Some(instance),
                    (instance, Err(_)) => {
                        swapped_mailbox = Some(instance.retire());
                        me.live.store(false, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}
