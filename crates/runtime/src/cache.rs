//! The module cache: compiled modules in memory, and precompiled artifacts on disk
//! under `<cache dir>/<engine compatibility hash>/<sha256>.cwasm`.
//!
//! Keying the directory by the engine's compatibility hash means an upgraded or
//! reconfigured engine never loads an artifact it cannot run: it starts a new
//! directory. Artifacts are written to a temporary file of their own and renamed,
//! so a reader never sees a partial one.
//!
//! Nothing read back is trusted: each artifact file starts with a digest (sha256)
//! binding the module it was compiled from to the artifact's bytes, and is
//! deserialised only if the digest holds, from the very bytes that were checked. A
//! damaged file, or one program's artifact copied over another's, is logged and the
//! module compiled again (and the artifact rewritten), never run.
//!
//! Layout of `<sha256>.cwasm`: `"NIMBUSCW"`, the 32-byte digest
//! `sha256("nimbus artifact v1" ‖ module sha256 ‖ artifact)`, the artifact.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::io::Write;
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

    /// Reads a module of `len` bytes from `source` into one allocation of that
    /// size, hashing it piece by piece as it arrives. Blocking: call it off the
    /// async threads.
    pub fn read(source: &mut impl std::io::Read, len: usize) -> std::io::Result<ModuleBytes> {
        /// How much is read and hashed at a time.
        const PIECE: usize = 1 << 20;
        // SAFETY: all-zero bytes are valid `u8`s.
        let mut bytes: Arc<[u8]> = unsafe { Arc::new_zeroed_slice(len).assume_init() };
        let mut digest = Sha256::new();
        let unshared = Arc::get_mut(&mut bytes).expect("a new allocation is not shared");
        for piece in unshared.chunks_mut(PIECE) {
            source.read_exact(piece)?;
            digest.update(&*piece);
        }
        Ok(ModuleBytes {
            hash: ModuleHash(digest.finalize().into()),
            bytes,
        })
    }

    /// [`ModuleBytes::new`] on a blocking thread, for bytes that came from the
    /// network (hashing 16 MiB takes tens of milliseconds); `None` if the runtime is
    /// shutting down.
    pub async fn hash_off_thread(bytes: Vec<u8>) -> Option<ModuleBytes> {
        tokio::task::spawn_blocking(|| ModuleBytes::new(bytes))
            .await
            .ok()
    }

    /// The module's identity.
    pub fn hash(&self) -> ModuleHash {
        self.hash
    }

    /// The module's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The module, held weakly: for keeping track of it without keeping it.
    pub fn downgrade(&self) -> WeakModule {
        WeakModule {
            hash: self.hash,
            bytes: Arc::downgrade(&self.bytes),
        }
    }
}

/// A module held weakly: its bytes live as long as some [`ModuleBytes`] of them.
#[derive(Clone, Debug)]
pub struct WeakModule {
    hash: ModuleHash,
    bytes: std::sync::Weak<[u8]>,
}

impl WeakModule {
    /// The module, if something still holds it.
    pub fn upgrade(&self) -> Option<ModuleBytes> {
        Some(ModuleBytes {
            hash: self.hash,
            bytes: self.bytes.upgrade()?,
        })
    }

    /// Whether something still holds it.
    pub fn is_held(&self) -> bool {
        self.bytes.strong_count() > 0
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
    /// The module cannot be made capturable (see [`crate::AsyncifyError`]).
    #[error("{0}")]
    Uncapturable(String),
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
    /// Whether modules are transformed to be capturable before compiling.
    capturable: bool,
    compiled: AtomicU64,
    from_disk: AtomicU64,
    rejected: AtomicU64,
}

/// The start of every artifact file this cache writes.
const ARTIFACT_MAGIC: &[u8; 8] = b"NIMBUSCW";
/// Bytes before the artifact: the magic and the digest.
const ARTIFACT_HEADER: usize = ARTIFACT_MAGIC.len() + 32;

/// The digest that binds an artifact's bytes to the module it was compiled from.
fn artifact_digest(module: ModuleHash, artifact: &[u8]) -> [u8; 32] {
    let mut digest = Sha256::new();
    digest.update(b"nimbus artifact v1");
    digest.update(module.0);
    digest.update(artifact);
    digest.finalize().into()
}

/// The artifact in `file` (the bytes of an artifact file) if its digest says it was
/// compiled from `module`; else why not.
fn verified_artifact(module: ModuleHash, file: &[u8]) -> Result<&[u8], &'static str> {
    if file.len() < ARTIFACT_HEADER || !file.starts_with(ARTIFACT_MAGIC) {
        return Err("not an artifact of this cache");
    }
    let (digest, artifact) = file[ARTIFACT_MAGIC.len()..].split_at(32);
    if artifact_digest(module, artifact) != digest {
        return Err("its digest does not match (damaged, or of another module)");
    }
    Ok(artifact)
}

/// What the module cache has done since the runtime started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Modules compiled from WebAssembly.
    pub compiled: u64,
    /// Modules loaded from precompiled artifacts on disk.
    pub from_disk: u64,
    /// Artifacts on disk refused (damaged, foreign, or of another module) and
    /// replaced by compiling again.
    pub rejected: u64,
}

/// What nimbus changes in wasmtime's code generator (`vendor/README.md`): artifacts
/// compiled before a change are in another directory. Change it with the patch.
const CODEGEN: &str = "epoch slow path through a register-preserving trampoline";

impl ModuleCache {
    /// A cache for `engine`'s artifacts below `root`, of modules made
    /// `capturable` ([`crate::asyncify`]) or not.
    pub(crate) fn new(engine: &Engine, root: &Path, capturable: bool) -> ModuleCache {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        // Artifacts are of instrumented modules: a change there is a new directory.
        crate::instrument::VERSION.hash(&mut hasher);
        // And of nimbus's patched code generator, which wasmtime's hash cannot see.
        CODEGEN.hash(&mut hasher);
        let mut name = format!("{:016x}", hasher.finish());
        if capturable {
            name.push_str(&format!("-capturable-{}", crate::asyncify::VERSION));
        }
        ModuleCache {
            dir: root.join(name),
            capturable,
            compiled: AtomicU64::new(0),
            from_disk: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    /// The compiled form of `module`: from disk, else compiled now and written to disk.
    pub(crate) fn get(&self, engine: &Engine, module: &ModuleBytes) -> Result<Module, LoadError> {
        if !module.bytes.starts_with(b"\0asm") {
            return Err(LoadError::NotWasm);
        }
        let artifact = self.dir.join(format!("{}.cwasm", module.hash));
        if let Some(compiled) = self.load_artifact(engine, module.hash, &artifact) {
            self.from_disk.fetch_add(1, Ordering::Relaxed);
            return Ok(compiled);
        }
        let transformed = match self.capturable {
            true => Some(
                crate::asyncify::asyncify(&module.bytes)
                    .map_err(|e| LoadError::Uncapturable(e.to_string()))?,
            ),
            false => None,
        };
        // After the capture transform, whose own globals a checkpoint holds too.
        let instrumented =
            crate::instrument::export_globals(transformed.as_deref().unwrap_or(&module.bytes))
                .map_err(|e| LoadError::Invalid(e.to_string()))?;
        let compiled = Module::from_binary(engine, &instrumented.wasm)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        self.compiled.fetch_add(1, Ordering::Relaxed);
        self.store_artifact(&compiled, module.hash, &artifact)?;
        Ok(compiled)
    }

    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            compiled: self.compiled.load(Ordering::Relaxed),
            from_disk: self.from_disk.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }

    /// The artifact at `path` for `module`, if there is one and it verifies.
    fn load_artifact(&self, engine: &Engine, module: ModuleHash, path: &Path) -> Option<Module> {
        let file = match std::fs::read(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read a cached artifact; compiling again");
                return None;
            }
        };
        let artifact = match verified_artifact(module, &file) {
            Ok(artifact) => artifact,
            Err(why) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path = %path.display(), "refusing a cached artifact: {why}; compiling again");
                return None;
            }
        };
        // SAFETY: `artifact` is exactly what `Module::serialize` produced for
        // `module` on an engine with this directory's compatibility hash: its digest,
        // which binds the module's hash to these very bytes (they are deserialised
        // from memory, not read again), matches, and only `store_artifact` writes
        // files with such a digest into this directory. wasmtime's own header checks
        // still refuse an artifact of another engine configuration.
        match unsafe { Module::deserialize(engine, artifact) } {
            Ok(compiled) => Some(compiled),
            Err(e) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "refusing a cached artifact; compiling again");
                None
            }
        }
    }

    /// Writes `compiled`'s artifact to `path` by a temporary file of this write's own
    /// (so concurrent writers never share one) renamed into place.
    fn store_artifact(
        &self,
        compiled: &Module,
        module: ModuleHash,
        path: &Path,
    ) -> Result<(), LoadError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| LoadError::Cache { path, source }
        };
        let artifact = compiled
            .serialize()
            .map_err(|e| LoadError::Invalid(format!("cannot serialize: {e:#}")))?;
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".artifact")
            .tempfile_in(&self.dir)
            .map_err(io_err(&self.dir))?;
        tmp.write_all(ARTIFACT_MAGIC)
            .and_then(|()| tmp.write_all(&artifact_digest(module, &artifact)))
            .and_then(|()| tmp.write_all(&artifact))
            .map_err(io_err(tmp.path()))?;
        tmp.persist(path).map_err(|e| LoadError::Cache {
            path: path.to_owned(),
            source: e.error,
        })?;
        Ok(())
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
        let dir = |config: &wasmtime::Config| {
            ModuleCache::new(&Engine::new(config).unwrap(), root, false).dir
        };
        assert_ne!(dir(&speed), dir(&none));
        assert_eq!(dir(&speed), dir(&speed));
    }

    #[test]
    fn a_module_read_piece_by_piece_is_hashed_as_a_whole() {
        let bytes: Vec<u8> = (0..(3 << 20) + 5).map(|i| (i % 251) as u8).collect();
        let read = ModuleBytes::read(&mut &bytes[..], bytes.len()).unwrap();
        assert_eq!(read.bytes(), &bytes[..]);
        assert_eq!(read.hash(), ModuleBytes::new(bytes.clone()).hash());
        let short = ModuleBytes::read(&mut &bytes[..10], 11).unwrap_err();
        assert_eq!(short.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn module_hash_is_sha256() {
        assert_eq!(
            ModuleHash::of(b"").to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
