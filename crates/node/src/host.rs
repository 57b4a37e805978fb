//! One host: its runtime and its process table.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use nimbus_core::{ExitStatus, Failure, HostId, Pid, ProcessState};
use nimbus_planner::HostLoad;
use nimbus_runtime::{
    AbiError, Capture, Input, Kernel, Mailbox, MailboxSender, ModuleBytes, Output, ProcessSpec,
    Program, Runtime, RuntimeConfig, RuntimeError, mailbox,
};
use tokio::sync::{Notify, oneshot};

use crate::lineage::Lineage;
use nimbus_state::HostState;
use nimbus_wire::peer::ProcessInfo;

/// Who learns how a process ended.
pub(crate) enum Parent {
    /// A process, through its children table.
    Process(Pid),
    /// Whoever started the process from outside (the command line, later the
    /// gateway).
    External(oneshot::Sender<ExitStatus>),
    /// A process on another host, told through the call that started this one.
    Remote(Pid, oneshot::Sender<ExitStatus>),
}

/// How a host reports its processes' ends to the node above it (the cluster
/// implements it), so that the host never reaches up into the cluster.
pub(crate) trait Exits: Send + Sync {
    /// `pid` ended with `status`: what it held is to be released, and `parent`, if
    /// named, is a process of this node to tell (a starter outside is told by the
    /// host itself, through the request's channel, once this returns).
    fn ended(&self, pid: Pid, parent: Option<Pid>, status: ExitStatus);
}

/// A request to start a process on a host.
pub(crate) struct StartRequest {
    pub(crate) module: ModuleBytes,
    /// `module` loaded by the host's runtime, before the request (off the async
    /// threads: [`Runtime::load_command`] may compile or read the module cache),
    /// so that starting never loads.
    pub(crate) program: Program,
    pub(crate) args: Vec<String>,
    pub(crate) stdin: Input,
    pub(crate) lineage: Arc<Lineage>,
    pub(crate) parent: Parent,
    /// The root's capture, if it may be captured (or is restored).
    pub(crate) capture: Option<Capture>,
}

/// A live process in the table. Ended processes leave the table at once; their
/// status waits in their parent's `children` until the parent reaps it.
struct Entry {
    parent: Option<Pid>,
    state: ProcessState,
    mailbox: MailboxSender,
    module: ModuleBytes,
    lineage: Arc<Lineage>,
    /// Children not yet reaped: `None` while running.
    children: HashMap<Pid, Option<ExitStatus>>,
    child_ended: Arc<Notify>,
    /// Stops the process; `None` for service instances, which their app stops.
    kill: Option<oneshot::Sender<()>>,
}

/// One host of a node: its runtime, the local state tiers of its apps, and its
/// process table.
pub struct Host {
    id: HostId,
    runtime: Runtime,
    state: HostState,
    table: Mutex<HashMap<Pid, Entry>>,
    /// Processes of each app being started here (their module fetched or
    /// compiled, not yet in the table), by app; see [`Host::starting`].
    starting: Mutex<HashMap<String, usize>>,
    last_seq: AtomicU64,
    admitted: AtomicUsize,
    max_processes: usize,
}

impl Host {
    pub(crate) fn new(
        id: HostId,
        config: &RuntimeConfig,
        max_processes: usize,
        state: HostState,
    ) -> Result<Host, RuntimeError> {
        Ok(Host {
            id,
            state,
            runtime: Runtime::new(config)?,
            table: Mutex::default(),
            starting: Mutex::default(),
            last_seq: AtomicU64::new(0),
            admitted: AtomicUsize::new(0),
            max_processes,
        })
    }

    /// The host's id.
    pub fn id(&self) -> HostId {
        self.id
    }

    /// The runtime running the host's processes.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The local tiers of the apps with processes here.
    pub(crate) fn state(&self) -> &HostState {
        &self.state
    }

    pub(crate) fn load(&self) -> HostLoad {
        HostLoad::new(
            self.id,
            self.admitted.load(Ordering::Relaxed),
            self.max_processes,
        )
    }

    /// Admits a process and starts it in the background, its guest calls going to
    /// `kernel` and its end reported to `exits`; returns its pid.
    pub(crate) fn start(
        self: &Arc<Self>,
        kernel: Arc<dyn Kernel>,
        exits: Arc<dyn Exits>,
        request: StartRequest,
    ) -> Result<Pid, AbiError> {
        debug_assert_eq!(request.program.hash(), request.module.hash());
        let program = request.program;
        let lineage = request.lineage;
        let (parent, notify) = match request.parent {
            Parent::Process(parent) => (Some(parent), None),
            Parent::External(notify) => (None, Some(notify)),
            Parent::Remote(parent, notify) => (Some(parent), Some(notify)),
        };
        let (kill, mut killed) = oneshot::channel();
        let (pid, mailbox) = self.enter(
            parent,
            ProcessState::Starting,
            request.module,
            lineage.clone(),
            Some(kill),
        )?;
        let name = request.args.first().cloned().unwrap_or_default();
        let spec = ProcessSpec {
            pid,
            args: request.args,
            env: lineage.env.clone(),
            dirs: lineage.dirs.clone(),
            stdin: request.stdin,
            stdout: lineage.stdout.clone(),
            stderr: lineage.stderr.clone(),
            limits: lineage.limits.clone(),
            deadline: lineage.deadline,
            mailbox,
            kernel,
            capture: request.capture,
        };
        let host = self.clone();
        crate::metrics().started();
        let starting = std::time::Instant::now();
        tokio::spawn(async move {
            let run = async {
                let slot = host.runtime.admit().await;
                crate::metrics().admitted_after(starting.elapsed());
                host.set_state(pid, ProcessState::Running);
                host.runtime.run(&program, spec, slot).await
            };
            let status = tokio::select! {
                status = run => status,
                Ok(()) = &mut killed => ExitStatus::Failed(Failure::Killed),
            };
            if let (ExitStatus::Failed(failure), Some(_), Output::Inherit) =
                (&status, parent, &lineage.stderr)
            {
                // The root's failure is reported by whoever started it; a child's
                // would otherwise only be seen by a parent that waits.
                tracing::warn!(%pid, "process {pid} ({name}) failed: {failure}");
            }
            host.table.lock().unwrap().remove(&pid);
            host.admitted.fetch_sub(1, Ordering::Relaxed);
            crate::metrics().ended(&status);
            match notify {
                Some(notify) => {
                    exits.ended(pid, None, status.clone());
                    drop(notify.send(status));
                }
                None => exits.ended(pid, parent, status),
            }
        });
        Ok(pid)
    }

    /// Enters a long-lived service instance in the table: it gets a pid and a
    /// mailbox like any process and stays listed while it is swapped out.
    pub fn register_service(
        &self,
        module: ModuleBytes,
        lineage: Arc<Lineage>,
    ) -> Result<(Pid, Mailbox), AbiError> {
        self.enter(None, ProcessState::Running, module, lineage, None)
    }

    /// Admits a process under the host's quota: mints its pid, makes its mailbox and
    /// enters it in the table.
    fn enter(
        &self,
        parent: Option<Pid>,
        state: ProcessState,
        module: ModuleBytes,
        lineage: Arc<Lineage>,
        kill: Option<oneshot::Sender<()>>,
    ) -> Result<(Pid, Mailbox), AbiError> {
        if self.admitted.fetch_add(1, Ordering::Relaxed) >= self.max_processes {
            self.admitted.fetch_sub(1, Ordering::Relaxed);
            return Err(AbiError::Quota);
        }
        let pid = Pid::new(self.id, self.last_seq.fetch_add(1, Ordering::Relaxed) + 1);
        let (sender, mailbox) = mailbox();
        let entry = Entry {
            parent,
            state,
            mailbox: sender,
            module,
            lineage,
            children: HashMap::new(),
            child_ended: Arc::default(),
            kill,
        };
        self.table.lock().unwrap().insert(pid, entry);
        Ok((pid, mailbox))
    }

    /// Stops process `pid`; it ends as killed. Service instances are stopped by
    /// their app instead.
    pub(crate) fn kill(&self, pid: Pid) -> Result<(), AbiError> {
        let mut table = self.table.lock().unwrap();
        let entry = table.get_mut(&pid).ok_or(AbiError::NoSuchProcess)?;
        let kill = entry.kill.take().ok_or(AbiError::Invalid)?;
        // The process may be ending on its own at this instant; either way it ends.
        let _ = kill.send(());
        Ok(())
    }

    /// Stops every process (not service instance) whose lineage matches.
    pub(crate) fn kill_where(&self, matches: impl Fn(&Lineage) -> bool) {
        let mut table = self.table.lock().unwrap();
        for entry in table.values_mut().filter(|entry| matches(&entry.lineage)) {
            if let Some(kill) = entry.kill.take() {
                let _ = kill.send(());
            }
        }
    }

    /// Gives a service instance a new, empty mailbox (its old one was lost with a
    /// failed start); `None` if it is no longer in the table.
    pub fn renew_mailbox(&self, pid: Pid) -> Option<Mailbox> {
        let (sender, mailbox) = mailbox();
        self.table.lock().unwrap().get_mut(&pid)?.mailbox = sender;
        Some(mailbox)
    }

    /// Removes a service instance from the table.
    pub fn unregister(&self, pid: Pid) {
        if self.table.lock().unwrap().remove(&pid).is_some() {
            self.admitted.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn set_state(&self, pid: Pid, state: ProcessState) {
        if let Some(entry) = self.table.lock().unwrap().get_mut(&pid) {
            entry.state = state;
        }
    }

    /// What a spawn by `pid` needs: its own module and its lineage.
    pub(crate) fn origin(&self, pid: Pid) -> Option<(ModuleBytes, Arc<Lineage>)> {
        let table = self.table.lock().unwrap();
        let entry = table.get(&pid)?;
        Some((entry.module.clone(), entry.lineage.clone()))
    }

    pub(crate) fn mailbox(&self, pid: Pid) -> Option<MailboxSender> {
        Some(self.table.lock().unwrap().get(&pid)?.mailbox.clone())
    }

    /// Records `child` as a running child of `parent`, unless it already ended.
    pub(crate) fn add_child(&self, parent: Pid, child: Pid) {
        if let Some(entry) = self.table.lock().unwrap().get_mut(&parent) {
            entry.children.entry(child).or_insert(None);
        }
    }

    /// Records that `child` of `parent` ended. Dropped if the parent is gone.
    pub(crate) fn child_ended(&self, parent: Pid, child: Pid, status: ExitStatus) {
        if let Some(entry) = self.table.lock().unwrap().get_mut(&parent) {
            entry.children.insert(child, Some(status));
            entry.child_ended.notify_one();
        }
    }

    /// Waits for `child` of `parent` to end and reaps it.
    pub(crate) async fn wait_child(&self, parent: Pid, child: Pid) -> Result<ExitStatus, AbiError> {
        loop {
            let child_ended = {
                let mut table = self.table.lock().unwrap();
                let entry = table.get_mut(&parent).ok_or(AbiError::Internal)?;
                match entry.children.remove(&child) {
                    None => return Err(AbiError::NotChild),
                    Some(Some(status)) => return Ok(status),
                    Some(None) => {
                        entry.children.insert(child, None);
                        entry.child_ended.clone()
                    }
                }
            };
            child_ended.notified().await;
        }
    }

    /// How many processes of each app are here, those being started included.
    pub(crate) fn apps(&self) -> std::collections::BTreeMap<String, usize> {
        let mut apps = std::collections::BTreeMap::<String, usize>::new();
        // Under the table's lock, which spawns wait for: a name is copied once per
        // app, not once per process.
        for entry in self.table.lock().unwrap().values() {
            let app = entry.lineage.app.as_str();
            match apps.get_mut(app) {
                Some(count) => *count += 1,
                None => {
                    apps.insert(app.to_owned(), 1);
                }
            }
        }
        for (app, starting) in self.starting.lock().unwrap().iter() {
            *apps.entry(app.clone()).or_default() += starting;
        }
        apps
    }

    /// Counts a process of `app` as here from now on, while it is being started
    /// (its module fetched and compiled, which may take seconds), until the guard
    /// is dropped once it is in the table. The planner caps an app's processes
    /// across the cluster by what hosts report: one being compiled must not drop
    /// out of the count between its placement and its start.
    pub(crate) fn starting(&self, app: &str) -> Starting<'_> {
        *self
            .starting
            .lock()
            .unwrap()
            .entry(app.to_owned())
            .or_default() += 1;
        Starting {
            host: self,
            app: app.to_owned(),
        }
    }

    pub(crate) fn processes(&self) -> Vec<ProcessInfo> {
        let table = self.table.lock().unwrap();
        let mut list: Vec<ProcessInfo> = table
            .iter()
            .map(|(pid, entry)| ProcessInfo {
                pid: *pid,
                parent: entry.parent,
                state: entry.state.clone(),
                host: self.id,
            })
            .collect();
        list.sort_by_key(|p| p.pid);
        list
    }
}

/// A process of `app` being started on `host`: counted there until dropped.
pub(crate) struct Starting<'a> {
    host: &'a Host,
    app: String,
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        let mut starting = self.host.starting.lock().unwrap();
        if let Some(count) = starting.get_mut(&self.app) {
            *count -= 1;
            if *count == 0 {
                starting.remove(&self.app);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use nimbus_core::Limits;
    use nimbus_runtime::MAX_PROGRAMS;

    use super::*;
    use crate::{Cluster, ClusterConfig, ModuleSource, RootProcess};

    fn module(n: usize) -> ModuleBytes {
        let wat = format!(
            r#"(module (memory (export "memory") 1) (global i32 (i32.const {n})) (func (export "_start")))"#
        );
        ModuleBytes::new(wat::parse_str(wat).unwrap())
    }

    #[test]
    fn a_process_being_started_counts_for_its_app_until_it_is_in_the_table() {
        let data = tempfile::tempdir().unwrap();
        let cluster = Cluster::new(&ClusterConfig::new(data.path())).unwrap();
        let host = cluster.any_host();
        let first = host.starting("budgeted");
        let second = host.starting("budgeted");
        assert_eq!(host.apps().get("budgeted"), Some(&2));
        drop(first);
        assert_eq!(host.apps().get("budgeted"), Some(&1));
        drop(second);
        assert!(host.apps().is_empty(), "{:?}", host.apps());
    }

    #[tokio::test]
    async fn a_start_runs_the_program_it_carries_though_the_runtime_dropped_it() {
        let data = tempfile::tempdir().unwrap();
        let mut config = ClusterConfig::new(data.path());
        config.runtime.max_live_processes = 4;
        config.runtime.max_memory = 1 << 20;
        let cluster = Cluster::new(&config).unwrap();
        let host = cluster.any_host();
        let root = RootProcess {
            app: nimbus_state::AppName::new("test").unwrap(),
            module: module(0),
            modules: ModuleSource::None,
            args: vec!["zero".into()],
            env: vec![],
            dirs: vec![],
            stdin: Input::Null,
            output: (Output::Null, Output::Null),
            limits: Limits::default(),
        };
        let (lineage, module_bytes, args, stdin) = root.into_parts();
        let program = host.runtime().load_command(&module_bytes).unwrap();
        // Loading as many other programs as the runtime holds drops this one, as
        // other starts may between a load off the async threads and its start.
        for n in 1..=MAX_PROGRAMS {
            host.runtime().load_command(&module(n)).unwrap();
        }
        assert!(host.runtime().loaded_command(&module_bytes).is_none());
        let loads = host.runtime().cache_stats();

        let (notify, exited) = oneshot::channel();
        let request = StartRequest {
            module: module_bytes.clone(),
            program,
            args,
            stdin,
            lineage: Arc::new(lineage),
            parent: Parent::External(notify),
            capture: None,
        };
        host.start(cluster.clone(), cluster.clone(), request)
            .unwrap();
        assert_eq!(exited.await.unwrap(), ExitStatus::Exited(0));
        // Nothing was compiled or read from the module cache to start it.
        assert_eq!(host.runtime().cache_stats(), loads);
        assert!(host.runtime().loaded_command(&module_bytes).is_none());
    }
}
