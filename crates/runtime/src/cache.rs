//! The module cache: compiled modules in memory, and precompiled artifacts on disk
//! under `<cache dir>/<engine compatibility hash>/<sha256>.cwasm`.
//!
//! Keying the directory by the engine's compatibility hash means an upgraded or
//! reconfigured engine never loads an artifact it cannot run: it starts a new
//! directory. Artifacts are written to a temporary file and renamed, so a reader
//! never sees a partial one.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

/// The sha256 of a module's bytes: its identity everywhere in nimbus.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModuleHash([u8; 32]);

impl ModuleHash {
    /// Hashes `bytes`.
    pub fn of(bytes: &[u8]) -> ModuleHash {
        ModuleHash(Sha256::digest(bytes).into())
    }

    /// The 32 bytes of the hash.
    pub fn to_bytes(self) -> [u8; 32] {
        self.0
    }
}

impl fmt::Display for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModuleHash({self})")
    }
}

/// A module's bytes with their hash, computed once.
#[derive(Clone, Debug)]
pub struct ModuleBytes {
    hash: ModuleHash,
    bytes: Arc<[u8]>,
}

impl ModuleBytes {
    /// Wraps `bytes`, hashing them.
    pub fn new(bytes: impl Into<Arc<[u8]>>) -> ModuleBytes {
        let bytes = bytes.into();
        ModuleBytes {
            hash: ModuleHash::of(&bytes),
            bytes,
        }
    }

    /// The module's identity.
    pub fn hash(&self) -> ModuleHash {
        self.hash
    }

    /// The module's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Why a module cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes do not start with the WebAssembly magic number.
    #[error("not a WebAssembly module (no \\0asm header)")]
    NotWasm,
    /// The module is malformed or fails validation.
    #[error("invalid WebAssembly module: {0}")]
    Invalid(String),
    /// A command module must export `_start`.
    #[error("module has no `_start` export (not a WASI command)")]
    NoStart,
    /// The module imports something the host does not provide.
    #[error("{0}")]
    UnknownImport(String),
    /// The cache directory could not be written.
    #[error("module cache at {path}: {source}")]
    Cache {
        /// The file or directory involved.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// Precompiled modules on disk, by hash.
pub(crate) struct ModuleCache {
    dir: PathBuf,
    compiled: AtomicU64,
    from_disk: AtomicU64,
}

/// What the module cache has done since the runtime started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Modules compiled from WebAssembly.
    pub compiled: u64,
    /// Modules loaded from precompiled artifacts on disk.
    pub from_disk: u64,
}

impl ModuleCache {
    /// A cache for `engine`'s artifacts below `root`.
    pub(crate) fn new(engine: &Engine, root: &Path) -> ModuleCache {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        // Artifacts are of instrumented modules: a change there is a new directory.
        crate::instrument::VERSION.hash(&mut hasher);
        ModuleCache {
            dir: root.join(format!("{:016x}", hasher.finish())),
            compiled: AtomicU64::new(0),
            from_disk: AtomicU64::new(0),
        }
    }

    /// The compiled form of `module`: from disk, else compiled now and written to disk.
    pub(crate) fn get(&self, engine: &Engine, module: &ModuleBytes) -> Result<Module, LoadError> {
        if !module.bytes.starts_with(b"\0asm") {
            return Err(LoadError::NotWasm);
        }
        let artifact = self.dir.join(format!("{}.cwasm", module.hash));
        if let Some(compiled) = self.load_artifact(engine, &artifact) {
            self.from_disk.fetch_add(1, Ordering::Relaxed);
            return Ok(compiled);
        }
        let instrumented = crate::instrument::export_globals(&module.bytes)
            .map_err(|e| LoadError::Invalid(e.to_string()))?;
        let compiled = Module::from_binary(engine, &instrumented.wasm)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        self.compiled.fetch_add(1, Ordering::Relaxed);
        self.store_artifact(&compiled, &artifact)?;
        Ok(compiled)
    }

    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            compiled: self.compiled.load(Ordering::Relaxed),
            from_disk: self.from_disk.load(Ordering::Relaxed),
        }
    }

    fn load_artifact(&self, engine: &Engine, path: &Path) -> Option<Module> {
        if !path.exists() {
            return None;
        }
        // SAFETY: only this cache writes into its directory, always from
        // `Module::serialize` of an engine with the same compatibility hash (the
        // directory name), and always by atomic rename. A corrupt or foreign file is
        // still rejected by wasmtime's header checks and we fall back to compiling.
        unsafe { Module::deserialize_file(engine, path) }.ok()
    }

    fn store_artifact(&self, compiled: &Module, path: &Path) -> Result<(), LoadError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| LoadError::Cache { path, source }
        };
        let bytes = compiled
            .serialize()
            .map_err(|e| LoadError::Invalid(format!("cannot serialize: {e:#}")))?;
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_that_compile_differently_use_different_directories() {
        let root = Path::new("/cache");
        let mut speed = wasmtime::Config::new();
        speed.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let mut none = wasmtime::Config::new();
        none.cranelift_opt_level(wasmtime::OptLevel::None);
        let dir =
            |config: &wasmtime::Config| ModuleCache::new(&Engine::new(config).unwrap(), root).dir;
        assert_ne!(dir(&speed), dir(&none));
        assert_eq!(dir(&speed), dir(&speed));
    }

    #[test]
    fn module_hash_is_sha256() {
        assert_eq!(
            ModuleHash::of(b"").to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
