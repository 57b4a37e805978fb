//! What a process tree shares: the app's modules, environment, directories, output
//! streams, limits and deadline. Children inherit their parent's lineage, as a
//! POSIX child inherits environment and working directory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use std::sync::Arc;

use nimbus_core::{Limits, Pid};
use nimbus_runtime::{AbiError, ModuleBytes, Output, Preopen};
use nimbus_state::AppName;
use tokio::sync::watch;

/// The ranks of a world (the processes `nimbus run --ranks N` starts together), by
/// rank; `None` until every rank has started.
pub(crate) type World = watch::Receiver<Option<Arc<[Pid]>>>;

/// Where the modules a process tree may spawn by name come from.
#[derive(Clone, Debug)]
pub enum ModuleSource {
    /// Files `NAME.wasm` in this directory (for `nimbus run`, the program's own).
    Directory(PathBuf),
    /// Only the process's own module can be spawned.
    None,
}

pub(crate) struct Lineage {
    /// The app whose state the tree's processes share.
    pub(crate) app: AppName,
    pub(crate) modules: ModuleSource,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) dirs: Vec<Preopen>,
    pub(crate) stdout: Output,
    pub(crate) stderr: Output,
    pub(crate) limits: Limits,
    pub(crate) deadline: Option<Instant>,
    /// The world whose ranks share this lineage, if any. Their children inherit
    /// the lineage but are no ranks.
    pub(crate) world: Option<World>,
    /// Modules already read and hashed, by name.
    loaded: Mutex<HashMap<String, ModuleBytes>>,
}

impl Lineage {
    pub(crate) fn new(
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
            loaded: Mutex::default(),
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
    pub(crate) fn resolve(&self, name: &str, own: &ModuleBytes) -> Result<ModuleBytes, AbiError> {
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
        let bytes = std::fs::read(dir.join(name)).map_err(|_| AbiError::Module)?;
        let module = ModuleBytes::new(bytes);
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

    #[test]
    fn resolves_own_module_and_files_by_name_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("child.wasm"), b"\0asm child").unwrap();
        let own = ModuleBytes::new(b"\0asm own".to_vec());
        let lineage = lineage(ModuleSource::Directory(dir.path().into()));

        assert_eq!(lineage.resolve("", &own).unwrap().hash(), own.hash());
        let child = lineage.resolve("child.wasm", &own).unwrap();
        assert_eq!(child.bytes(), b"\0asm child");
        assert_eq!(
            lineage.resolve("missing.wasm", &own).unwrap_err(),
            AbiError::Module
        );
        for escape in ["../child.wasm", "/etc/passwd", "..", "a/b.wasm"] {
            assert_eq!(
                lineage.resolve(escape, &own).unwrap_err(),
                AbiError::Invalid
            );
        }
    }

    #[test]
    fn without_a_source_only_self_spawns() {
        let own = ModuleBytes::new(b"\0asm own".to_vec());
        let lineage = lineage(ModuleSource::None);
        assert!(lineage.resolve("", &own).is_ok());
        assert_eq!(
            lineage.resolve("x.wasm", &own).unwrap_err(),
            AbiError::Module
        );
    }
}
