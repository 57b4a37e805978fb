//! The [`Runtime`]: two wasmtime engines with their linkers and module caches, the
//! pool of instance slots, and the epoch ticker that time-slices processes.
//!
//! Commands run on a pooling engine with copy-on-write memory images, built for
//! instantiating in microseconds. Services run on an engine whose memories can
//! commit and roll back ([`crate::memory`]), built for keeping state.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nimbus_core::ExitStatus;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, PoolingAllocationConfig,
};

use crate::cache::{CacheStats, LoadError, ModuleBytes, ModuleCache, ModuleHash};
use crate::memory::CheckpointedMemories;
use crate::process::{self, ProcessCtx, ProcessSpec};
use crate::service::ServiceInstance;
use nimbus_snapshot::Snapshot;

/// How often the engine's epoch advances.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(1);
/// How many ticks a process runs before it yields to the others.
pub(crate) const SLICE_TICKS: u64 = 10;
/// Pre-linked programs each engine keeps in memory. Past it the least recently
/// used one leaves the cache: processes running it keep it alive (each holds its
/// own [`Program`]), and its next load comes from its artifact on disk.
pub const MAX_PROGRAMS: usize = 256;

/// How a host's runtime is sized.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Where the module cache lives (`<data_dir>/modules`).
    pub data_dir: PathBuf,
    /// How many processes may be instantiated at once; more are queued.
    pub max_live_processes: u32,
    /// The largest linear memory any process on this host may have. Each slot of
    /// the pool reserves this much address space (not memory).
    pub max_memory: u64,
    /// Size of the native stack each running process gets.
    pub stack_size: usize,
}

/// Below this `max_memory`, slots reserve only `max_memory` of address space, so
/// many more fit, at the price of explicit bounds checks in compiled code.
const FULL_RESERVATION: u64 = 4 << 30;

impl RuntimeConfig {
    /// The default sizing with the module cache under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> RuntimeConfig {
        RuntimeConfig {
            data_dir: data_dir.into(),
            max_live_processes: 1000,
            max_memory: 4 << 30,
            stack_size: 2 << 20,
        }
    }
}

/// The runtime could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the WebAssembly engine: {0}")]
pub struct RuntimeError(String);

/// A module compiled and pre-linked against the host's imports, ready to
/// instantiate in microseconds.
#[derive(Clone)]
pub struct Program {
    hash: ModuleHash,
    pre: InstancePre<ProcessCtx>,
    mutable_globals: Arc<[u32]>,
    is_command: bool,
    /// Why it cannot be captured; `None` if it was transformed to be.
    uncapturable: Option<Arc<str>>,
}

impl Program {
    /// The module's identity.
    pub fn hash(&self) -> ModuleHash {
        self.hash
    }

    /// Whether the module is a WASI command (exports `_start`), runnable as a
    /// process; otherwise it can only serve as a service (a reactor).
    pub fn is_command(&self) -> bool {
        self.is_command
    }

    /// Indices of the mutable globals a snapshot must hold.
    pub(crate) fn mutable_globals(&self) -> &[u32] {
        &self.mutable_globals
    }

    pub(crate) fn pre(&self) -> &InstancePre<ProcessCtx> {
        &self.pre
    }

    /// Why the program cannot be captured, if it cannot.
    pub fn uncapturable(&self) -> Option<&str> {
        self.uncapturable.as_deref()
    }
}

/// Permission to instantiate one process: a slot of the instance pool. Counted as
/// instantiated in the runtime's load while it lives.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    gauges: Arc<Gauges>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauges.instantiated.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs processes on one host.
pub struct Runtime {
    commands: Loader,
    /// Commands transformed to be capturable, on the commands' engine.
    capturable: Loader,
    services: Loader,
    memories: Arc<CheckpointedMemories>,
    slots: Arc<Semaphore>,
    gauges: Arc<Gauges>,
}

/// Compiles (or loads from its cache), pre-links and keeps the programs of one engine.
struct Loader {
    engine: Engine,
    linker: Linker<ProcessCtx>,
    cache: ModuleCache,
    programs: Mutex<Recent<ModuleHash, Program>>,
    capturable: bool,
}

impl Loader {
    fn new(
        engine: Engine,
        modules: &std::path::Path,
        capturable: bool,
    ) -> Result<Loader, RuntimeError> {
        let mut linker = Linker::new(&engine);
        process::add_to_linker(&mut linker).map_err(|e| RuntimeError(format!("{e:#}")))?;
        if capturable {
            crate::capture::add_to_linker(&mut linker)
                .map_err(|e| RuntimeError(format!("{e:#}")))?;
        }
        Ok(Loader {
            cache: ModuleCache::new(&engine, modules, capturable),
            engine,
            linker,
            programs: Mutex::new(Recent::new(MAX_PROGRAMS)),
            capturable,
        })
    }

    /// The program of `module` if it is held in memory: no compiling, no disk.
    fn loaded(&self, module: &ModuleBytes) -> Option<Program> {
        self.programs.lock().unwrap().get(&module.hash()).cloned()
    }

    fn load(&self, module: &ModuleBytes) -> Result<Program, LoadError> {
        if let Some(program) = self.loaded(module) {
            return Ok(program);
        }
        let compiled = self.cache.get(&self.engine, module)?;
        let is_command = compiled
            .get_export("_start")
            .and_then(|e| e.func().cloned())
            .is_some();
        let mutable_globals = compiled
            .exports()
            .filter_map(|export| crate::instrument::global_index_of(export.name()))
            .collect();
        let pre =
            self.linker.instantiate_pre(&compiled).map_err(|e| match e
                .downcast_ref::<wasmtime::UnknownImportError>()
            {
                Some(unknown) => LoadError::UnknownImport(format!(
                    "unknown import `{}::{}` (nimbus provides WASI preview 1 and the `nimbus` ABI)",
                    unknown.module(),
                    unknown.name()
                )),
                None => LoadError::UnknownImport(format!("unusable import: {e:#}")),
            })?;
        let program = Program {
            hash: module.hash(),
            pre,
            mutable_globals,
            is_command,
            uncapturable: (!self.capturable)
                .then(|| "it was not loaded for capture (`Runtime::load_capturable`)".into()),
        };
        self.programs
            .lock()
            .unwrap()
            .insert(module.hash(), program.clone());
        Ok(program)
    }
}

/// The `capacity` most recently used values by key: inserting one more drops the
/// least recently used. Linear eviction, which is cheap beside what each insertion
/// follows (a compilation or a read of an artifact).
struct Recent<K, V> {
    capacity: usize,
    /// Advanced at every use; each entry keeps the tick of its last.
    clock: u64,
    entries: HashMap<K, (V, u64)>,
}

impl<K: std::hash::Hash + Eq + Clone, V> Recent<K, V> {
    fn new(capacity: usize) -> Recent<K, V> {
        assert!(capacity > 0, "a cache that holds nothing");
        Recent {
            capacity,
            clock: 0,
            entries: HashMap::new(),
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The value of `key`, now the most recently used.
    fn get(&mut self, key: &K) -> Option<&V> {
        let now = self.tick();
        let (value, used) = self.entries.get_mut(key)?;
        *used = now;
        Some(value)
    }

    /// Whether `key` is held, without counting as a use.
    #[cfg(test)]
    fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// Holds `value` as `key`'s, the most recently used, dropping the least recently
    /// used entry if that would exceed the capacity.
    fn insert(&mut self, key: K, value: V) {
        let now = self.tick();
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, (value, now));
    }
}

/// Live counts of a runtime's processes.
#[derive(Debug, Default)]
pub(crate) struct Gauges {
    pub(crate) instantiated: AtomicUsize,
    pub(crate) waiting: AtomicUsize,
    /// Processes waiting in [`Runtime::admit`] for a slot.
    pub(crate) queued: AtomicUsize,
}

/// Counts a wait for a slot in [`Gauges::queued`] while it lasts, however it ends
/// (a start given up on drops its wait).
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn enter(queued: &'a AtomicUsize) -> Queued<'a> {
        queued.fetch_add(1, Ordering::Relaxed);
        Queued(queued)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A snapshot of a runtime's processes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeLoad {
    /// Processes holding an instance slot.
    pub instantiated: usize,
    /// Of those, processes blocked in `recv` or `wait`.
    pub waiting: usize,
    /// Processes waiting for an instance slot (every slot taken).
    pub queued: usize,
}

impl Runtime {
    /// Creates the engines, the instance pool and the epoch ticker.
    pub fn new(config: &RuntimeConfig) -> Result<Runtime, RuntimeError> {
        let slots = config.max_live_processes;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(slots)
            .total_memories(slots)
            .total_tables(slots)
            .total_stacks(slots)
            .total_component_instances(0)
            .max_memory_size(config.max_memory as usize);
        let mut base = Config::new();
        base.epoch_interruption(true)
            .async_stack_size(config.stack_size)
            .max_wasm_stack(config.stack_size / 2);

        let mut commands = base.clone();
        if config.max_memory < FULL_RESERVATION {
            commands
                .memory_reservation(config.max_memory)
                .memory_reservation_for_growth(0)
                .memory_guard_size(64 << 10);
        }
        commands
            .memory_init_cow(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));

        let memories = Arc::new(CheckpointedMemories::default());
        let mut services = base;
        // Copy-on-write images need wasmtime's own memories; services bring theirs.
        services
            .memory_init_cow(false)
            .with_host_memory(memories.clone());

        let modules = config.data_dir.join("modules");
        let engine =
            |config: &Config| Engine::new(config).map_err(|e| RuntimeError(format!("{e:#}")));
        let commands = engine(&commands)?;
        let capturable = Loader::new(commands.clone(), &modules, true)?;
        let commands = Loader::new(commands, &modules, false)?;
        let services = Loader::new(engine(&services)?, &modules, false)?;
        spawn_epoch_ticker(&[&commands.engine, &services.engine])
            .map_err(|e| RuntimeError(format!("epoch thread: {e}")))?;
        Ok(Runtime {
            commands,
            capturable,
            services,
            memories,
            slots: Arc::new(Semaphore::new(slots as usize)),
            gauges: Arc::default(),
        })
    }

    /// Makes the command `module` (a WASI program with `_start`) ready to run as a
    /// process: compiled (or loaded from the cache) and pre-linked. Cheap once
    /// the module has been loaded.
    pub fn load_command(&self, module: &ModuleBytes) -> Result<Program, LoadError> {
        let program = self.commands.load(module)?;
        if !program.is_command {
            return Err(LoadError::NoStart);
        }
        Ok(program)
    }

    /// [`Runtime::load_command`] of `module` transformed so that its processes can
    /// be captured at their blocking calls and restored ([`crate::Capture`]):
    /// compiled once (the transform runs `wasm-opt`, which takes a second or two)
    /// and cached apart from the plain program. A module the transform cannot
    /// handle is loaded plain: it runs, and a capture of it is refused with
    /// [`Program::uncapturable`]'s reason.
    pub fn load_capturable(&self, module: &ModuleBytes) -> Result<Program, LoadError> {
        let program = match self.capturable.load(module) {
            Err(LoadError::Uncapturable(why)) => {
                tracing::warn!(module = %module.hash(), "cannot make the program capturable: {why}");
                let mut program = self.commands.load(module)?;
                program.uncapturable = Some(why.into());
                program
            }
            loaded => loaded?,
        };
        if !program.is_command {
            return Err(LoadError::NoStart);
        }
        Ok(program)
    }

    /// Makes `module` ready to serve as a service (a reactor, or any module with
    /// handlers).
    pub fn load_service(&self, module: &ModuleBytes) -> Result<Program, LoadError> {
        self.services.load(module)
    }

    /// The command `module`'s program if it is ready to run without compiling or
    /// reading the disk (so this never blocks): `None` if it must be loaded first
    /// ([`Runtime::load_command`], off the async threads), or is no command.
    pub fn loaded_command(&self, module: &ModuleBytes) -> Option<Program> {
        self.commands.loaded(module).filter(Program::is_command)
    }

    /// What the module cache has done so far.
    pub fn cache_stats(&self) -> CacheStats {
        [&self.commands, &self.capturable, &self.services]
            .iter()
            .map(|loader| loader.cache.stats())
            .fold(CacheStats::default(), |sum, one| CacheStats {
                compiled: sum.compiled + one.compiled,
                from_disk: sum.from_disk + one.from_disk,
                rejected: sum.rejected + one.rejected,
            })
    }

    /// How many processes are instantiated, how many of them wait, and how many
    /// wait for a slot.
    pub fn load_now(&self) -> RuntimeLoad {
        RuntimeLoad {
            instantiated: self.gauges.instantiated.load(Ordering::Relaxed),
            waiting: self.gauges.waiting.load(Ordering::Relaxed),
            queued: self.gauges.queued.load(Ordering::Relaxed),
        }
    }

    /// Waits for a free instance slot: admission control for processes.
    pub async fn admit(&self) -> Slot {
        let queued = Queued::enter(&self.gauges.queued);
        let permit = self.slots.clone().acquire_owned().await;
        drop(queued);
        self.gauges.instantiated.fetch_add(1, Ordering::Relaxed);
        Slot {
            _permit: permit.expect("the slot semaphore is never closed"),
            gauges: self.gauges.clone(),
        }
    }

    /// Runs `program` as the process described by `spec` until it ends. Never
    /// panics on guest behaviour: every outcome is an [`ExitStatus`].
    pub async fn run(&self, program: &Program, spec: ProcessSpec, slot: Slot) -> ExitStatus {
        let status = process::run(&self.commands.engine, program, spec, self.gauges.clone()).await;
        drop(slot);
        status
    }

    /// Instantiates the service module `program` in `slot`, and initialises it
    /// (`_initialize`) or restores it `from` a snapshot.
    pub async fn start_service(
        &self,
        program: &Program,
        spec: ProcessSpec,
        slot: Slot,
        from: Option<&Snapshot>,
    ) -> Result<ServiceInstance, ExitStatus> {
        let stderr = spec.stderr.clone();
        let (store, setup) =
            process::new_store(&self.services.engine, spec, self.gauges.clone(), None)
                .map_err(ExitStatus::Failed)?;
        ServiceInstance::start(store, setup, stderr, program, slot, &self.memories, from).await
    }
}

/// Advances the engines' epochs every tick until the engines are dropped.
fn spawn_epoch_ticker(engines: &[&Engine]) -> std::io::Result<()> {
    let engines: Vec<_> = engines.iter().map(|engine| engine.weak()).collect();
    std::thread::Builder::new()
        .name("nimbus-epoch".into())
        .spawn(move || {
            loop {
                let live: Vec<_> = engines.iter().filter_map(|e| e.upgrade()).collect();
                if live.is_empty() {
                    break;
                }
                live.iter().for_each(Engine::increment_epoch);
                drop(live);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::Recent;

    #[test]
    fn recent_drops_the_least_recently_used_past_its_capacity() {
        let mut recent = Recent::new(3);
        for key in 1..=3 {
            recent.insert(key, key * 10);
        }
        // 1 is used again, so 2 is now the least recently used.
        assert_eq!(recent.get(&1), Some(&10));
        recent.insert(4, 40);
        assert!(!recent.contains(&2));
        assert_eq!(recent.entries.len(), 3);
        // Replacing a held key drops nothing.
        recent.insert(4, 41);
        assert_eq!(recent.entries.len(), 3);
        assert_eq!(
            [1, 3, 4].map(|key| recent.get(&key).copied()),
            [Some(10), Some(30), Some(41)]
        );
        // `contains` is not a use: 1 is the oldest again after the gets above.
        assert!(recent.contains(&1));
        recent.insert(5, 50);
        assert!(!recent.contains(&1));
    }
}
