//! What a process tree shares: the app's modules, environment, directories, output
//! streams, limits and deadline. Children inherit their parent's lineage, as a
//! POSIX child inherits environment and working directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nimbus_core::{Limits, Pid};
use nimbus_runtime::{AbiError, ModuleBytes, Output, Preopen};
use nimbus_state::AppName;
use nimbus_wire::peer::{Home, LineageWire};
use tokio::sync::watch;

/// The ranks of a world (the processes `nimbus run --ranks N` starts together), by
/// rank; `None` until every rank has started.
pub(crate) type World = watch::Receiver<Option<Arc<[Pid]>>>;

/// Keeps the lineage `wire` within the directories a worker allows: every directory
/// to preopen must resolve (symbolic links followed) to one under `allowed`, and is
/// preopened by that resolved path; a module directory outside them is dropped
/// (spawning by name then fails here; the tree's own module still comes by hash).
/// A peer's word is never enough to open a path.
pub(crate) fn confine(wire: &mut LineageWire, allowed: &[PathBuf]) -> Result<(), String> {
    let resolve = |path: &Path| {
        std::fs::canonicalize(path)
            .ok()
            .filter(|real| allowed.iter().any(|root| real.starts_with(root)))
    };
    for (host, _) in &mut wire.dirs {
        *host = resolve(host).ok_or_else(|| {
            format!(
                "directory {} is not under a directory this worker allows (--allow-dir)",
                host.display()
            )
        })?;
    }
    wire.modules = wire.modules.as_deref().and_then(resolve);
    Ok(())
}

/// Where the modules a process tree may spawn by name come from.
#[derive(Clone, Debug)]
pub enum ModuleSource {
    /// Files `NAME.wasm` in this directory (for `nimbus run`, the program's own).
    Directory(PathBuf),
    /// Only the process's own module can be spawned.
    None,
}

/// What a process tree shares: its app, modules, environment, directories, output
/// streams, limits and deadline.
pub struct Lineage {
    /// The app whose state the tree's processes share.
    pub(crate) app: AppName,
    pub(crate) modules: ModuleSource,
    /// The environment of its processes.
    pub env: Vec<(String, String)>,
    /// The directories its processes have preopened.
    pub dirs: Vec<Preopen>,
    pub(crate) stdout: Output,
    pub(crate) stderr: Output,
    /// The limits of each of its processes.
    pub limits: Limits,
    pub(crate) deadline: Option<Instant>,
    /// The world whose ranks share this lineage, if any. Their children inherit
    /// the lineage but are no ranks.
    pub(crate) world: Option<World>,
    /// The node the tree was started from, when its processes may run on other
    /// hosts: their output and world questions go there.
    pub(crate) home: Option<Home>,
    /// Modules already read and hashed, by name.
    loaded: Mutex<HashMap<String, ModuleBytes>>,
}

impl Lineage {
    /// The lineage of a new tree of `app`, whose processes spawn modules from
    /// `modules`, with their environment, directories, output and limits.
    pub fn new(
        app: AppName,
        modules: ModuleSource,
        env: Vec<(String, String)>,
        dirs: Vec<Preopen>,
        (stdout, stderr): (Output, Output),
        limits: Limits,
    ) -> Lineage {
        let deadline = limits.timeout.map(|t| Instant::now() + t);
        Lineage {
            app,
            modules,
            env,
            dirs,
            stdout,
            stderr,
            limits,
            deadline,
            world: None,
            home: None,
            loaded: Mutex::default(),
        }
    }

    /// The lineage of a tree started from the node at `home`, as its form on the
    /// wire gives it, with its output going to `output`.
    pub(crate) fn from_wire(
        wire: LineageWire,
        output: (Output, Output),
        world: Option<World>,
    ) -> Result<Lineage, String> {
        let app = AppName::new(&wire.app).map_err(|e| e.to_string())?;
        let limits = Limits {
            memory: wire.memory,
            timeout: wire.timeout_ms.map(Duration::from_millis),
        };
        let dirs = wire
            .dirs
            .into_iter()
            .map(|(host, guest)| Preopen { host, guest })
            .collect();
        let modules = wire
            .modules
            .map_or(ModuleSource::None, ModuleSource::Directory);
        let mut lineage = Lineage::new(app, modules, wire.env, dirs, output, limits);
        lineage.deadline = wire
            .remaining_ms
            .map(|ms| Instant::now() + Duration::from_millis(ms));
        lineage.world = world;
        lineage.home = Some(wire.home);
        Ok(lineage)
    }

    /// The lineage as it travels to another host; `None` if it has no home node.
    pub(crate) fn wire(&self) -> Option<LineageWire> {
        Some(LineageWire {
            home: self.home.clone()?,
            app: self.app.as_str().to_owned(),
            modules: match &self.modules {
                ModuleSource::Directory(dir) => Some(dir.clone()),
                ModuleSource::None => None,
            },
            env: self.env.clone(),
            dirs: self
                .dirs
                .iter()
                .map(|d| (d.host.clone(), d.guest.clone()))
                .collect(),
            memory: self.limits.memory,
            timeout_ms: self.limits.timeout.map(|t| t.as_millis() as u64),
            remaining_ms: self
                .deadline
                .map(|d| d.saturating_duration_since(Instant::now()).as_millis() as u64),
            world: self.world.is_some(),
        })
    }

    /// This lineage, homed at `home`.
    pub(crate) fn with_home(self, home: Home) -> Lineage {
        Lineage {
            home: Some(home),
            ..self
        }
    }

    /// The lineage of the ranks of `world`.
    pub(crate) fn with_world(self, world: World) -> Lineage {
        Lineage {
            world: Some(world),
            ..self
        }
    }

    /// The module a guest names in `spawn`: "" is the caller's own.
    /// Reading and hashing a module file is blocking work: done off the async
    /// threads, once per name.
    pub(crate) async fn resolve(
        &self,
        name: &str,
        own: &ModuleBytes,
    ) -> Result<ModuleBytes, AbiError> {
        if name.is_empty() {
            return Ok(own.clone());
        }
        if let Some(module) = self.loaded.lock().unwrap().get(name) {
            return Ok(module.clone());
        }
        let ModuleSource::Directory(dir) = &self.modules else {
            return Err(AbiError::Module);
        };
        let plain_file_name = !name.contains(['/', '\\']) && name != "." && name != "..";
        if !plain_file_name {
            return Err(AbiError::Invalid);
        }
        let path = dir.join(name);
        let module = tokio::task::spawn_blocking(move || std::fs::read(path).map(ModuleBytes::new))
            .await
            .map_err(|_| AbiError::Internal)?
            .map_err(|_| AbiError::Module)?;
        self.loaded
            .lock()
            .unwrap()
            .insert(name.to_owned(), module.clone());
        Ok(module)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lineage(modules: ModuleSource) -> Lineage {
        Lineage::new(
            AppName::new("test").unwrap(),
            modules,
            vec![],
            vec![],
            (Output::Null, Output::Null),
            Limits::default(),
        )
    }

    #[tokio::test]
    async fn resolves_own_module_and_files_by_name_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("child.wasm"), b"\0asm child").unwrap();
        let own = ModuleBytes::new(b"\0asm own".to_vec());
        let lineage = lineage(ModuleSource::Directory(dir.path().into()));

        assert_eq!(lineage.resolve("", &own).await.unwrap().hash(), own.hash());
        let child = lineage.resolve("child.wasm", &own).await.unwrap();
        assert_eq!(child.bytes(), b"\0asm child");
        assert_eq!(
            lineage.resolve("missing.wasm", &own).await.unwrap_err(),
            AbiError::Module
        );
        for escape in ["../child.wasm", "/etc/passwd", "..", "a/b.wasm"] {
            assert_eq!(
                lineage.resolve(escape, &own).await.unwrap_err(),
                AbiError::Invalid
            );
        }
    }

    #[tokio::test]
    async fn without_a_source_only_self_spawns() {
        let own = ModuleBytes::new(b"\0asm own".to_vec());
        let lineage = lineage(ModuleSource::None);
        assert!(lineage.resolve("", &own).await.is_ok());
        assert_eq!(
            lineage.resolve("x.wasm", &own).await.unwrap_err(),
            AbiError::Module
        );
    }
}
