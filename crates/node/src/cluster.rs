//! The embedded cluster: N in-process hosts and the planner's placement, joined
//! into the [`Kernel`] that serves the guests' spawn, wait and send.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use nimbus_core::{ExitStatus, Failure, HostId, Limits, Pid};
use nimbus_runtime::{
    AbiError, BoxFuture, Capture, Input, InputStream, Kernel, LoadError, MailboxSender,
    ModuleBytes, Output, Preopen, Program, Route, RuntimeConfig, RuntimeError, RuntimeLoad,
    StateCall, StateReply,
};
use nimbus_state::{AppName, GlobalTier, HostState};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use nimbus_wire::peer::{Home, LineageWire, ProcessInfo, Reply, Request};

use crate::host::{Exits, Host, Parent, StartRequest};
use crate::lineage::{Lineage, ModuleSource};
use crate::mesh::{Mesh, MeshConfig, RemoteStdin, ReplyFrame, error_reply};
use crate::state::Locks;

/// How long a spawn waits for room by default when every host is full.
pub(crate) const SPAWN_WAIT: Duration = Duration::from_secs(10);

/// How an embedded cluster is sized.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Number of in-process hosts.
    pub hosts: u16,
    /// The global tier of app state, shared by all hosts.
    pub global_state: GlobalState,
    /// The most bytes of local-tier state each app may keep on each host.
    pub local_state_per_app: u64,
    /// The id of the first host; the others follow. A worker's host takes the id
    /// the planner assigned it, so its pids are unique across the cluster.
    pub first_host: HostId,
    /// Each host's runtime.
    pub runtime: RuntimeConfig,
    /// Most processes (queued or running) a host admits.
    pub max_processes_per_host: usize,
    /// How long a spawn waits for room when every host is full before it fails.
    pub spawn_wait: Duration,
    /// When set, the cluster is one worker of many: its planner places children on
    /// any worker, and processes elsewhere are reached over the mesh.
    pub mesh: Option<MeshConfig>,
}

impl ClusterConfig {
    /// One host with default sizing, caching modules under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> ClusterConfig {
        ClusterConfig {
            hosts: 1,
            global_state: GlobalState(Arc::new(nimbus_state::Embedded::new())),
            local_state_per_app: 1 << 30,
            first_host: HostId(1),
            runtime: RuntimeConfig::new(data_dir),
            max_processes_per_host: 100_000,
            spawn_wait: SPAWN_WAIT,
            mesh: None,
        }
    }
}

/// The global tier of app state (embedded or Redis: [`nimbus_state::open`]).
#[derive(Clone)]
pub struct GlobalState(pub Arc<dyn GlobalTier>);

impl std::fmt::Debug for GlobalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GlobalState({})", self.0.location())
    }
}

/// The cluster could not start a process.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A host's runtime could not start.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The module cannot run.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Every host is full.
    #[error(transparent)]
    NoCapacity(#[from] nimbus_planner::NoCapacity),
    /// The cluster was asked for zero hosts.
    #[error("a cluster needs at least one host, and host ids up to 1048575")]
    NoHosts,
    /// The cluster of workers could not be reached or could not start the process.
    #[error("the cluster cannot run it: {0}")]
    Remote(String),
}

/// A process started from outside the cluster: the root of a process tree.
pub struct RootProcess {
    /// The app it belongs to: its tree shares the app's state.
    pub app: AppName,
    /// Its module.
    pub module: ModuleBytes,
    /// Where its children's modules come from.
    pub modules: ModuleSource,
    /// Its arguments, `argv[0]` included.
    pub args: Vec<String>,
    /// Its environment, inherited by its children.
    pub env: Vec<(String, String)>,
    /// Its preopened directories, inherited by its children.
    pub dirs: Vec<Preopen>,
    /// Its stdin (children get none).
    pub stdin: Input,
    /// Its stdout and stderr, shared with its children.
    pub output: (Output, Output),
    /// Limits of each process of the tree; the timeout covers the whole tree.
    pub limits: Limits,
}

impl RootProcess {
    /// What the root's tree shares, and the root's own module, arguments and stdin.
    pub(crate) fn into_parts(self) -> (Lineage, ModuleBytes, Vec<String>, Input) {
        let lineage = Lineage::new(
            self.app,
            self.modules,
            self.env,
            self.dirs,
            self.output,
            self.limits,
        );
        (lineage, self.module, self.args, self.stdin)
    }
}

/// N hosts in this OS process.
pub struct Cluster {
    hosts: Vec<Arc<Host>>,
    /// Woken whenever a process leaves a host, for spawns waiting for room.
    room: Notify,
    spawn_wait: Duration,
    locks: Locks,
    mesh: Option<Arc<Mesh>>,
    me: Weak<Cluster>,
}

impl Exits for Cluster {
    fn ended(&self, pid: Pid, parent: Option<Pid>, status: ExitStatus) {
        self.release_locks(pid);
        // A process left a host: spawns waiting for room may go ahead.
        self.room.notify_waiters();
        if let Some(parent) = parent {
            self.child_ended(parent, pid, status);
        }
    }
}

impl Cluster {
    /// Starts `config.hosts` hosts.
    pub fn new(config: &ClusterConfig) -> Result<Arc<Cluster>, ClusterError> {
        if config.hosts == 0 {
            return Err(ClusterError::NoHosts);
        }
        let first = config.first_host.0;
        let last = first
            .checked_add(u32::from(config.hosts) - 1)
            .filter(|&last| last <= HostId::BESIDE_CLUSTER.0)
            .ok_or(ClusterError::NoHosts)?;
        let hosts = (first..=last)
            .map(|id| {
                let state =
                    HostState::new(config.global_state.0.clone(), config.local_state_per_app);
                Host::new(
                    HostId(id),
                    &config.runtime,
                    config.max_processes_per_host,
                    state,
                )
                .map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mesh = match &config.mesh {
            Some(mesh) => Some(Arc::new(
                Mesh::new(mesh).map_err(|e| ClusterError::Remote(e.to_string()))?,
            )),
            None => None,
        };
        Ok(Arc::new_cyclic(|me| Cluster {
            hosts,
            room: Notify::new(),
            spawn_wait: config.spawn_wait,
            locks: Locks::default(),
            mesh,
            me: me.clone(),
        }))
    }

    fn arc(&self) -> Arc<Cluster> {
        self.me.upgrade().expect("a cluster in use is alive")
    }

    /// The host `id` of this cluster, if it is one.
    pub fn host(&self, id: HostId) -> Option<&Arc<Host>> {
        self.hosts.iter().find(|h| h.id() == id)
    }

    /// The host a process runs on. Processes do not move yet, so it is the host
    /// that minted the pid.
    fn host_of(&self, pid: Pid) -> Option<&Arc<Host>> {
        self.host(pid.origin_host())
    }

    /// Some host, for work that any host can do (validating a module).
    pub fn any_host(&self) -> &Arc<Host> {
        &self.hosts[0]
    }

    /// The host for a new service instance.
    pub fn place_service(&self) -> Result<&Arc<Host>, nimbus_planner::NoCapacity> {
        self.place(None)
    }

    fn place(&self, near: Option<HostId>) -> Result<&Arc<Host>, nimbus_planner::NoCapacity> {
        let loads: Vec<_> = self.hosts.iter().map(|host| host.load()).collect();
        let chosen = nimbus_planner::place(&loads, near)?;
        Ok(self.host(chosen).expect("the planner picks a known host"))
    }

    /// Starts `root`. Returns its pid, and its exit status once it ends. Loads its
    /// module (reading the module cache, or compiling), so it blocks: call it off
    /// the async threads, as [`Cluster::run`] does.
    pub fn start(
        &self,
        root: RootProcess,
    ) -> Result<(Pid, oneshot::Receiver<ExitStatus>), ClusterError> {
        self.start_with(root, None)
    }

    /// [`Cluster::start`], loading the module capturable if `capture` is given.
    fn start_with(
        &self,
        root: RootProcess,
        capture: Option<Capture>,
    ) -> Result<(Pid, oneshot::Receiver<ExitStatus>), ClusterError> {
        let (lineage, module, args, stdin) = root.into_parts();
        let host = self.place(None)?;
        // Load first so a bad module is reported as such, not as a spawn failure.
        let program = match capture {
            Some(_) => host.runtime().load_capturable(&module)?,
            None => host.runtime().load_command(&module)?,
        };
        self.start_root(
            host,
            program,
            module,
            args,
            stdin,
            Arc::new(lineage),
            capture,
        )
    }

    /// Starts a root process of `module` on `host`, whose runtime loaded it as
    /// `program`.
    #[allow(clippy::too_many_arguments)]
    fn start_root(
        &self,
        host: &Arc<Host>,
        program: Program,
        module: ModuleBytes,
        args: Vec<String>,
        stdin: Input,
        lineage: Arc<Lineage>,
        capture: Option<Capture>,
    ) -> Result<(Pid, oneshot::Receiver<ExitStatus>), ClusterError> {
        let (notify, exited) = oneshot::channel();
        let request = StartRequest {
            module,
            program,
            args,
            stdin,
            lineage,
            parent: Parent::External(notify),
            capture,
        };
        let pid = host.start(self.arc(), self.arc(), request).map_err(|_| {
            ClusterError::NoCapacity(nimbus_planner::NoCapacity {
                hosts: self.hosts.len(),
            })
        })?;
        Ok((pid, exited))
    }

    /// Runs `root` to the end.
    pub async fn run(&self, root: RootProcess) -> Result<ExitStatus, ClusterError> {
        self.run_with(root, None).await
    }

    /// Runs `root` to the end, capturable through `capture` (or restored from the
    /// checkpoint it holds, [`Capture::restoring`]). A captured root ends as
    /// killed, its state in [`Capture::checkpoint`]. Only the root of a tree on the
    /// embedded cluster can be captured, and only while it has no children.
    pub async fn run_capturable(
        &self,
        root: RootProcess,
        capture: Capture,
    ) -> Result<ExitStatus, ClusterError> {
        self.run_with(root, Some(capture)).await
    }

    async fn run_with(
        &self,
        root: RootProcess,
        capture: Option<Capture>,
    ) -> Result<ExitStatus, ClusterError> {
        let host = self.place(None)?;
        let held = match capture {
            None => host.runtime().loaded_command(&root.module),
            Some(_) => None,
        };
        let (_, exited) = match held {
            // Held in memory: nothing blocks, so no hop to a blocking thread (it
            // would cost more than the whole start).
            Some(program) => {
                let (lineage, module, args, stdin) = root.into_parts();
                let lineage = Arc::new(lineage);
                self.start_root(host, program, module, args, stdin, lineage, None)?
            }
            // Loading reads the module cache, or compiles: off the async threads.
            None => {
                let cluster = self.arc();
                tokio::task::spawn_blocking(move || cluster.start_with(root, capture))
                    .await
                    .map_err(|e| ClusterError::Remote(format!("starting the root: {e}")))??
            }
        };
        Ok(exited
            .await
            .unwrap_or(ExitStatus::Failed(Failure::HostLost)))
    }

    /// Runs `ranks` processes of `root` as one world (MPI's `MPI_COMM_WORLD`), each
    /// placed by the planner, all with `root`'s arguments; rank 0 gets its stdin.
    /// Like `mpirun`, the first rank to fail or exit non-zero ends the world: the
    /// others are killed and its status is the world's; else the status is 0.
    pub async fn run_world(
        &self,
        root: RootProcess,
        ranks: u16,
    ) -> Result<ExitStatus, ClusterError> {
        let (members, world) = watch::channel(None);
        let (lineage, module, args, stdin) = root.into_parts();
        let lineage = Arc::new(lineage.with_world(world));
        let mut stdin = Some(stdin);
        let mut pids = Vec::new();
        let (ended, endings) = mpsc::unbounded_channel();
        // The ranks spread over the hosts: load the module on each first, off the
        // async threads (reading the module cache, or compiling, blocks).
        let (cluster, loading) = (self.arc(), module.clone());
        let programs = tokio::task::spawn_blocking(move || {
            cluster
                .hosts
                .iter()
                .map(|host| Ok((host.id(), host.runtime().load_command(&loading)?)))
                .collect::<Result<Vec<_>, LoadError>>()
        })
        .await
        .map_err(|e| ClusterError::Remote(format!("loading the ranks' module: {e}")))??;
        for _ in 0..ranks {
            let stdin = stdin.take().unwrap_or(Input::Null);
            let started = self
                .place(None)
                .map_err(ClusterError::from)
                .and_then(|host| {
                    let (_, program) = programs
                        .iter()
                        .find(|(id, _)| *id == host.id())
                        .expect("the module was loaded on every host");
                    let (module, args) = (module.clone(), args.clone());
                    self.start_root(
                        host,
                        program.clone(),
                        module,
                        args,
                        stdin,
                        lineage.clone(),
                        None,
                    )
                });
            match started {
                Ok((pid, exited)) => {
                    pids.push(pid);
                    let ended = ended.clone();
                    tokio::spawn(async move {
                        let status = exited
                            .await
                            .unwrap_or(ExitStatus::Failed(Failure::HostLost));
                        let _ = ended.send(status);
                    });
                }
                Err(e) => {
                    // The started ranks wait for a world that will never be whole.
                    for pid in pids {
                        let _ = self.kill(pid);
                    }
                    return Err(e);
                }
            }
        }
        members.send_replace(Some(pids.clone().into()));
        drop(ended);
        Ok(world_outcome(endings, || {
            for &pid in &pids {
                let _ = self.kill(pid);
            }
        })
        .await)
    }

    /// Instantiated, waiting and queued processes, summed over hosts.
    pub fn runtime_load(&self) -> RuntimeLoad {
        self.hosts.iter().fold(RuntimeLoad::default(), |sum, host| {
            let load = host.runtime().load_now();
            RuntimeLoad {
                instantiated: sum.instantiated + load.instantiated,
                waiting: sum.waiting + load.waiting,
                queued: sum.queued + load.queued,
            }
        })
    }

    /// Stops the process `pid` (not a service instance: see `Services::kill`).
    pub fn kill(&self, pid: Pid) -> Result<(), AbiError> {
        self.host_of(pid).ok_or(AbiError::NoSuchProcess)?.kill(pid)
    }

    /// How many processes of each app run on this cluster's hosts.
    pub fn apps(&self) -> std::collections::BTreeMap<String, usize> {
        let mut apps = std::collections::BTreeMap::new();
        for host in &self.hosts {
            for (app, count) in host.apps() {
                *apps.entry(app).or_default() += count;
            }
        }
        apps
    }

    /// The bytes of local-tier state each app keeps on this cluster's hosts.
    pub fn local_state(&self) -> std::collections::BTreeMap<String, u64> {
        let mut apps = std::collections::BTreeMap::new();
        for host in &self.hosts {
            for (app, used) in host.state().local_usage() {
                *apps.entry(app.as_str().to_owned()).or_default() += used;
            }
        }
        apps
    }

    /// Every live process on every host.
    pub fn processes(&self) -> Vec<ProcessInfo> {
        self.hosts
            .iter()
            .flat_map(|host| host.processes())
            .collect()
    }

    /// Places a process, waiting up to the spawn wait for room if every host is full.
    async fn place_when_room(
        &self,
        near: Option<HostId>,
    ) -> Result<&Arc<Host>, nimbus_planner::NoCapacity> {
        let deadline = tokio::time::Instant::now() + self.spawn_wait;
        loop {
            // Registered before looking, so a process leaving in between is not missed.
            let freed = self.room.notified();
            let placed = self.place(near);
            if placed.is_ok() || tokio::time::timeout_at(deadline, freed).await.is_err() {
                return placed;
            }
        }
    }

    /// Releases the state locks `pid` held, for a process or instance that ended.
    pub fn release_locks(&self, pid: Pid) {
        self.locks.release_all(pid);
    }

    /// Tells `parent` that its child `child` ended with `status`.
    fn child_ended(&self, parent: Pid, child: Pid, status: ExitStatus) {
        if let Some(host) = self.host_of(parent) {
            host.child_ended(parent, child, status);
        }
    }

    async fn spawn_child(
        &self,
        parent: Pid,
        module: &str,
        args: Vec<String>,
    ) -> Result<Pid, AbiError> {
        let parent_host = self.host_of(parent).ok_or(AbiError::Internal)?;
        let (own, lineage) = parent_host.origin(parent).ok_or(AbiError::Internal)?;
        let module_bytes = lineage.resolve(module, &own).await?;
        let argv0 = if module.is_empty() { "self" } else { module };
        let args: Vec<String> = std::iter::once(argv0.to_owned()).chain(args).collect();
        let Some(mesh) = &self.mesh else {
            let target = self
                .place_when_room(Some(parent_host.id()))
                .await
                .map_err(|_| AbiError::Quota)?;
            return self
                .spawn_here(target, parent, lineage, module_bytes, args)
                .await;
        };
        let near = Some(parent_host.id());
        let app = lineage.app.as_str();
        mesh.place_and_start(near, app, self.spawn_wait, |host, address| {
            let (lineage, module, args) = (lineage.clone(), module_bytes.clone(), args.clone());
            async move {
                if host == parent_host.id() {
                    self.spawn_here(parent_host, parent, lineage, module, args)
                        .await
                } else {
                    self.spawn_remote(mesh, parent_host, parent, &lineage, &module, args, &address)
                        .await
                }
            }
        })
        .await
    }

    /// Starts a child of `parent` on `target`, a host of this cluster.
    async fn spawn_here(
        &self,
        target: &Arc<Host>,
        parent: Pid,
        lineage: Arc<Lineage>,
        module: ModuleBytes,
        args: Vec<String>,
    ) -> Result<Pid, AbiError> {
        let _starting = target.starting(lineage.app.as_str());
        let program = self.load_off_thread(target, &module).await?;
        let request = StartRequest {
            module,
            program,
            args,
            stdin: Input::Null,
            lineage,
            parent: Parent::Process(parent),
            capture: None,
        };
        let child = target.start(self.arc(), self.arc(), request)?;
        self.host_of(parent)
            .ok_or(AbiError::Internal)?
            .add_child(parent, child);
        Ok(child)
    }

    /// The program of `module` on `host`: the one its runtime holds, else loaded
    /// (compiled, or read from the module cache: milliseconds to seconds) off the
    /// threads that run processes. Starting with it never loads again, so a program
    /// the runtime drops meanwhile costs the async threads nothing.
    async fn load_off_thread(
        &self,
        host: &Host,
        module: &ModuleBytes,
    ) -> Result<Program, AbiError> {
        if let Some(program) = host.runtime().loaded_command(module) {
            return Ok(program);
        }
        let (cluster, host, module) = (self.arc(), host.id(), module.clone());
        tokio::task::spawn_blocking(move || {
            let host = cluster.host(host).expect("a known host");
            host.runtime().load_command(&module)
        })
        .await
        .map_err(|_| AbiError::Internal)?
        .map_err(|_| AbiError::Module)
    }

    /// Starts a child of `parent` on the worker at `address`; its end reaches the
    /// parent like a local child's, or as a lost host if the worker dies first.
    #[allow(clippy::too_many_arguments)]
    async fn spawn_remote(
        &self,
        mesh: &Arc<Mesh>,
        parent_host: &Host,
        parent: Pid,
        lineage: &Lineage,
        module: &ModuleBytes,
        args: Vec<String>,
        address: &str,
    ) -> Result<Pid, AbiError> {
        mesh.offer(module);
        let request = Request::Start {
            lineage: Box::new(lineage.wire().ok_or(AbiError::Internal)?),
            module: module.hash().to_string(),
            from: mesh.address().to_owned(),
            args,
            parent: Some(parent),
            stdin: false,
        };
        let (pid, replies) = crate::mesh::start(mesh, address, &request).await?;
        parent_host.add_child(parent, pid);
        let cluster = self.arc();
        tokio::spawn(async move {
            let status = crate::mesh::ended(replies).await;
            cluster.child_ended(parent, pid, status);
        });
        Ok(pid)
    }

    /// Starts a process a peer asked for and answers the call: `Started`, then
    /// `Ended` once it ended and its output reached the tree's home.
    pub(crate) async fn start_for_peer(&self, start: PeerStart, replier: nimbus_mesh::Replier) {
        let host = self.any_host();
        // Counted from the first moment: the planner's own count of its placement
        // lasts only 50 ms.
        let starting = host.starting(&start.lineage.app);
        let started = async {
            let mesh = self.mesh.as_ref().ok_or(AbiError::Internal)?;
            let lineage = mesh.confine(start.lineage).await?;
            let (lineage, new) = mesh.guest_lineage(lineage)?;
            if new && let Some(home) = lineage.home.clone() {
                // A tree whose home is gone (its run was interrupted, its machine
                // died) has no one left to report to: it ends, as a local run's
                // processes end with it.
                let (cluster, mesh) = (self.arc(), mesh.clone());
                tokio::spawn(async move {
                    mesh.home_gone(&home).await;
                    cluster.end_tree(&home);
                });
            }
            let module = mesh.module(&start.module, &start.from).await?;
            let program = self.load_off_thread(host, &module).await?;
            let (notify, ended) = oneshot::channel();
            let parent = match start.parent {
                Some(parent) => Parent::Remote(parent, notify),
                None => Parent::External(notify),
            };
            let stdin = match (&lineage.home, start.stdin) {
                (Some(home), true) => Input::Stream(InputStream::new(RemoteStdin::new(
                    mesh.clone(),
                    home.clone(),
                ))),
                _ => Input::Null,
            };
            let request = StartRequest {
                module,
                program,
                args: start.args,
                stdin,
                lineage: lineage.clone(),
                parent,
                capture: None,
            };
            let pid = host.start(self.arc(), self.arc(), request)?;
            Ok::<_, AbiError>((pid, ended, lineage))
        };
        let started = started.await;
        // In the table now, or never to be.
        drop(starting);
        match started {
            Err(error) => replier.finish(error_reply(error).frame()).await,
            Ok((pid, ended, lineage)) => {
                replier.send(Reply::Started { pid }.frame()).await;
                let status = tokio::select! {
                    status = ended => status.unwrap_or(ExitStatus::Failed(Failure::HostLost)),
                    // No process is left whose parent's host is gone.
                    () = replier.caller_gone() => {
                        let _ = self.kill(pid);
                        return;
                    }
                };
                lineage.stdout.drained().await;
                lineage.stderr.drained().await;
                replier.finish(Reply::Ended { status }.frame()).await;
            }
        }
    }

    /// Stops every process here of the tree homed at `home`.
    pub(crate) fn end_tree(&self, home: &Home) {
        for host in &self.hosts {
            host.kill_where(|lineage| lineage.home.as_ref() == Some(home));
        }
    }

    /// The mesh this cluster is part of, if it is a worker of many.
    pub(crate) fn mesh(&self) -> Option<&Arc<Mesh>> {
        self.mesh.as_ref()
    }

    /// Delivers a message to a process on this cluster's hosts.
    pub(crate) async fn deliver(&self, from: Pid, to: Pid, data: Vec<u8>) -> Result<(), AbiError> {
        let mailbox = self.mailbox(to).ok_or(AbiError::NoSuchProcess)?;
        mailbox.send(from, data).await
    }

    /// The mailbox of process `pid`, if it runs on one of this cluster's hosts.
    pub(crate) fn mailbox(&self, pid: Pid) -> Option<MailboxSender> {
        self.host_of(pid).and_then(|host| host.mailbox(pid))
    }
}

/// What a peer asks a worker to start.
pub(crate) struct PeerStart {
    pub(crate) lineage: LineageWire,
    pub(crate) module: String,
    pub(crate) from: String,
    pub(crate) args: Vec<String>,
    pub(crate) parent: Option<Pid>,
    pub(crate) stdin: bool,
}

/// How a world ends, from its ranks' statuses as they end: like `mpirun`, the
/// first rank to fail or exit non-zero gives the world's status and `end_all` is
/// called to stop the others; else 0.
pub(crate) async fn world_outcome(
    mut endings: mpsc::UnboundedReceiver<ExitStatus>,
    mut end_all: impl FnMut(),
) -> ExitStatus {
    let mut outcome = ExitStatus::Exited(0);
    while let Some(status) = endings.recv().await {
        if outcome == ExitStatus::Exited(0) && status != ExitStatus::Exited(0) {
            outcome = status;
            end_all();
        }
    }
    outcome
}

impl Kernel for Cluster {
    fn spawn(
        &self,
        parent: Pid,
        module: String,
        args: Vec<String>,
    ) -> BoxFuture<'_, Result<Pid, AbiError>> {
        Box::pin(async move { self.spawn_child(parent, &module, args).await })
    }

    fn wait(&self, parent: Pid, child: Pid) -> BoxFuture<'_, Result<ExitStatus, AbiError>> {
        Box::pin(async move {
            let host = self.host_of(parent).ok_or(AbiError::Internal)?;
            host.wait_child(parent, child).await
        })
    }

    fn world(&self, pid: Pid) -> BoxFuture<'_, Option<Arc<[Pid]>>> {
        Box::pin(async move {
            let (_, lineage) = self.host_of(pid)?.origin(pid)?;
            let mut world = lineage.world.clone()?;
            let members = world.wait_for(Option::is_some).await.ok()?.clone()?;
            members.contains(&pid).then_some(members)
        })
    }

    fn state(&self, pid: Pid, call: StateCall) -> BoxFuture<'_, Result<StateReply, AbiError>> {
        Box::pin(async move {
            let host = self.host_of(pid).ok_or(AbiError::Internal)?;
            let (_, lineage) = host.origin(pid).ok_or(AbiError::Internal)?;
            let app = host.state().app(&lineage.app);
            crate::state::perform(&app, &self.locks, pid, call).await
        })
    }

    fn send(&self, from: Pid, to: Pid, data: Vec<u8>) -> BoxFuture<'_, Result<(), AbiError>> {
        Box::pin(async move { self.deliver(from, to, data).await })
    }

    fn is_local(&self, pid: Pid) -> bool {
        self.mesh.is_none() || self.host_of(pid).is_some()
    }

    fn route(&self, from: Pid, to: Pid) -> BoxFuture<'_, Result<Route, AbiError>> {
        Box::pin(async move {
            match &self.mesh {
                Some(mesh) if self.host_of(to).is_none() => {
                    mesh.open_channel(from, to).await.map(Route::Stream)
                }
                _ => Ok(Route::Kernel),
            }
        })
    }
}
