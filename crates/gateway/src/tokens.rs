//! Bearer tokens: who may call the gateway and the data plane, and on which apps.
//!
//! A token is 32 random bytes from the operating system, shown once as `nmb_` and 64
//! hex digits. Only its sha256 is kept: a request's token is hashed and looked up by
//! that hash, so the plaintext is never stored nor compared.
//!
//! The tokens live in one JSON file, `<data>/gateway/tokens.json`, rewritten whole
//! through a temporary file (fsynced, renamed over the old one, the directory
//! fsynced) at each change. A file rather than a `redb` database: there are at most
//! [`MAX_TOKENS`] small records, changed only by an administrator, read once at
//! start and then served from memory, so a database's transactions buy nothing,
//! and an operator can read (and back up) the file. Every lookup is served from
//! the map in memory; every change is written before it is answered.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// The most tokens a store holds (`docs/limits.md`).
pub const MAX_TOKENS: usize = 1_000;

/// The longest token name, and the longest app name a scope may list.
pub const MAX_NAME_LEN: usize = 64;

/// The most apps one token's scope may list.
pub const MAX_SCOPE_APPS: usize = 256;

/// What every token starts with, so that one found in a log or a file is recognisable.
pub const TOKEN_PREFIX: &str = "nmb_";

/// The version of the file's format; a file of another version is refused.
const FILE_VERSION: u32 = 1;

/// What a token may do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Everything: every app, processes, hosts, tokens.
    Admin,
    /// Deploy, invoke and read the logs of these apps only.
    Apps(BTreeSet<String>),
}

impl Scope {
    /// Whether the token may touch `app`.
    pub fn allows_app(&self, app: &str) -> bool {
        match self {
            Scope::Admin => true,
            Scope::Apps(apps) => apps.contains(app),
        }
    }

    /// Whether the token is an administrator's.
    pub fn is_admin(&self) -> bool {
        matches!(self, Scope::Admin)
    }
}

/// A token as listed: its name and scope, never its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// The name it was created with.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
}

/// Why the store could not do what was asked.
#[derive(Debug, Error)]
pub enum TokenError {
    /// A token name or an app name that is empty, too long, or not made of letters,
    /// digits, `-`, `_` and `.`.
    #[error("invalid name `{0}`: use 1 to {MAX_NAME_LEN} letters, digits, `-`, `_` or `.`")]
    InvalidName(String),
    /// A scope listing no app, or too many.
    #[error("a token's scope lists 1 to {MAX_SCOPE_APPS} apps, or is admin")]
    InvalidScope,
    /// A token of this name exists.
    #[error("a token named `{0}` exists; revoke it first")]
    Exists(String),
    /// The store is full.
    #[error("the store holds its maximum of {MAX_TOKENS} tokens; revoke some first")]
    Full,
    /// The file could not be read or written.
    #[error("token store {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not a token store this version reads.
    #[error("token store {path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The operating system gave no random bytes.
    #[error("no random bytes from the operating system: {0}")]
    Random(String),
}

/// One token as kept, in memory and in the file.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Stored {
    name: String,
    /// Hex sha256 of the token's text.
    sha256: String,
    scope: Scope,
    /// Set once the token is revoked, for the data-plane connections it opened
    /// (shared by every copy of the map).
    #[serde(skip)]
    revoked: Arc<AtomicBool>,
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    tokens: Vec<Stored>,
}

/// The tokens, by the sha256 of their text.
type ByHash = HashMap<[u8; 32], Stored>;

/// The gateway's tokens: looked up in memory, changed through the file.
pub struct TokenStore {
    path: PathBuf,
    tokens: RwLock<Arc<ByHash>>,
    /// Held by a change from reading the map to replacing it, so that changes are
    /// written one at a time, in order.
    writing: Mutex<()>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Checks a name and a scope a token is to be created with.
fn check(name: &str, scope: &Scope) -> Result<(), TokenError> {
    if !valid_name(name) {
        return Err(TokenError::InvalidName(name.to_owned()));
    }
    if let Scope::Apps(apps) = scope {
        if apps.is_empty() || apps.len() > MAX_SCOPE_APPS {
            return Err(TokenError::InvalidScope);
        }
        if let Some(bad) = apps.iter().find(|app| !valid_name(app)) {
            return Err(TokenError::InvalidName(bad.clone()));
        }
    }
    Ok(())
}

/// A fresh token's text: [`TOKEN_PREFIX`] and 32 random bytes in hex.
fn fresh_token() -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
}

impl TokenStore {
    /// Opens the store in `dir` (creating the directory; a missing file is an empty
    /// store). Blocking: call it off the async threads.
    pub fn open(dir: &Path) -> Result<TokenStore, TokenError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| TokenError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join("tokens.json");
        let mut tokens = ByHash::new();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let corrupt = |message: String| TokenError::Corrupt {
                    path: path.clone(),
                    message,
                };
                let file: File =
                    serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
                if file.version != FILE_VERSION {
                    return Err(corrupt(format!(
                        "format version {}, this nimbus reads version {FILE_VERSION}",
                        file.version
                    )));
                }
                for token in file.tokens {
                    let mut hash = [0u8; 32];
                    hex::decode_to_slice(&token.sha256, &mut hash)
                        .map_err(|e| corrupt(format!("token `{}`: {e}", token.name)))?;
                    tokens.insert(hash, token);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        Ok(TokenStore {
            path,
            tokens: RwLock::new(Arc::new(tokens)),
            writing: Mutex::new(()),
        })
    }

    /// The file the tokens are kept in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn current(&self) -> Arc<ByHash> {
        self.tokens
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The scope of `token`, or `None` if the store does not know it. Cheap (one
    /// sha256 of the text and a map lookup), so callable on an async thread.
    pub fn authorize(&self, token: &str) -> Option<Scope> {
        self.current()
            .get(&sha256(token))
            .map(|stored| stored.scope.clone())
    }

    /// The scope of `token` and the flag its revocation sets, or `None` if the
    /// store does not know it: what a connection that stays open holds. Cheap, as
    /// [`TokenStore::authorize`].
    pub fn grant(&self, token: &str) -> Option<(Scope, Arc<AtomicBool>)> {
        self.current()
            .get(&sha256(token))
            .map(|stored| (stored.scope.clone(), stored.revoked.clone()))
    }

    /// Every token's name and scope, by name.
    pub fn list(&self) -> Vec<TokenInfo> {
        let mut tokens: Vec<TokenInfo> = self
            .current()
            .values()
            .map(|stored| TokenInfo {
                name: stored.name.clone(),
                scope: stored.scope.clone(),
            })
            .collect();
        tokens.sort_by(|a, b| a.name.cmp(&b.name));
        tokens
    }

    /// Creates a token named `name` with `scope` and returns its text, which is
    /// never kept. With `replace`, a token of that name is revoked in the same
    /// change; without, its existence is an error. Blocking (writes the file).
    pub fn create(&self, name: &str, scope: Scope, replace: bool) -> Result<String, TokenError> {
        check(name, &scope)?;
        let token = fresh_token()?;
        self.change(|tokens| {
            let existing = tokens
                .iter()
                .find_map(|(hash, t)| (t.name == name).then_some(*hash));
            match existing {
                Some(hash) if replace => {
                    tokens.remove(&hash);
                }
                Some(_) => return Err(TokenError::Exists(name.to_owned())),
                None if tokens.len() >= MAX_TOKENS => return Err(TokenError::Full),
                None => {}
            }
            let stored = Stored {
                name: name.to_owned(),
                sha256: hex::encode(sha256(&token)),
                scope,
                revoked: Arc::default(),
            };
            tokens.insert(sha256(&token), stored);
            Ok(())
        })?;
        Ok(token)
    }

    /// Revokes the token named `name`; whether there was one. Blocking (writes the
    /// file).
    pub fn revoke(&self, name: &str) -> Result<bool, TokenError> {
        let mut found = false;
        self.change(|tokens| {
            let before = tokens.len();
            tokens.retain(|_, t| t.name != name);
            found = tokens.len() < before;
            Ok(())
        })?;
        Ok(found)
    }

    /// Applies `edit` to a copy of the tokens, writes the copy to the file and then
    /// makes it the one lookups see; an error leaves everything as it was.
    fn change(
        &self,
        edit: impl FnOnce(&mut ByHash) -> Result<(), TokenError>,
    ) -> Result<(), TokenError> {
        let _writing = self
            .writing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = self.current();
        let mut tokens = (*before).clone();
        edit(&mut tokens)?;
        self.write(&tokens)?;
        let revoked: Vec<&Stored> = (before.iter())
            .filter(|(hash, _)| !tokens.contains_key(*hash))
            .map(|(_, stored)| stored)
            .collect();
        *self
            .tokens
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(tokens);
        // Once no lookup finds them, the connections they opened end too.
        for stored in revoked {
            stored.revoked.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Writes `tokens` atomically: a temporary file, fsynced, renamed over the file,
    /// the directory fsynced. The file is readable by its owner only.
    fn write(&self, tokens: &ByHash) -> Result<(), TokenError> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut list: Vec<Stored> = tokens.values().cloned().collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        let file = File {
            version: FILE_VERSION,
            tokens: list,
        };
        let bytes = serde_json::to_vec_pretty(&file).expect("tokens serialise");
        let temporary = self.path.with_extension("json.tmp");
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| TokenError::Io { path, source }
        };
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(io(&temporary))?;
        out.write_all(&bytes)
            .and_then(|()| out.sync_all())
            .map_err(io(&temporary))?;
        std::fs::rename(&temporary, &self.path).map_err(io(&self.path))?;
        let dir = self.path.parent().expect("the file is in a directory");
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apps(names: &[&str]) -> Scope {
        Scope::Apps(names.iter().map(|&n| n.to_owned()).collect())
    }

    #[test]
    fn a_token_is_kept_as_its_hash_only_and_found_again_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap();
        let token = store.create("ci", apps(&["shop"]), false).unwrap();
        assert!(token.starts_with(TOKEN_PREFIX), "{token}");
        assert_eq!(token.len(), TOKEN_PREFIX.len() + 64);

        let file = std::fs::read_to_string(store.path()).unwrap();
        assert!(!file.contains(&token), "{file}");
        assert!(!file.contains(&token[TOKEN_PREFIX.len()..]), "{file}");
        assert!(file.contains(&hex::encode(sha256(&token))), "{file}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let reopened = TokenStore::open(dir.path()).unwrap();
        assert_eq!(reopened.authorize(&token), Some(apps(&["shop"])));
        assert_eq!(reopened.authorize("nmb_00"), None);
        assert_eq!(reopened.authorize(""), None);
        assert_eq!(
            reopened.list(),
            vec![TokenInfo {
                name: "ci".into(),
                scope: apps(&["shop"])
            }]
        );
    }

    #[test]
    fn tokens_are_random_and_names_unique_unless_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap();
        let first = store.create("admin", Scope::Admin, false).unwrap();
        let error = store.create("admin", Scope::Admin, false).unwrap_err();
        assert!(matches!(error, TokenError::Exists(_)), "{error}");
        let second = store.create("admin", Scope::Admin, true).unwrap();
        assert_ne!(first, second);
        assert_eq!(store.authorize(&first), None, "the replaced token is gone");
        assert_eq!(store.authorize(&second), Some(Scope::Admin));
        assert_eq!(store.list().len(), 1);
    }

    #[test]
    fn revoking_a_token_or_replacing_it_sets_the_flag_its_connections_hold() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap();
        let kept = store.create("kept", Scope::Admin, false).unwrap();
        let gone = store.create("gone", Scope::Admin, false).unwrap();
        let replaced = store.create("replaced", Scope::Admin, false).unwrap();
        let flag = |token: &str| store.grant(token).unwrap().1;
        let (kept, gone, replaced) = (flag(&kept), flag(&gone), flag(&replaced));
        assert!(store.revoke("gone").unwrap());
        store.create("replaced", Scope::Admin, true).unwrap();
        assert!(gone.load(Ordering::Relaxed));
        assert!(replaced.load(Ordering::Relaxed));
        assert!(!kept.load(Ordering::Relaxed));
    }

    #[test]
    fn revoked_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap();
        let token = store.create("temp", Scope::Admin, false).unwrap();
        assert!(store.revoke("temp").unwrap());
        assert!(!store.revoke("temp").unwrap());
        assert_eq!(store.authorize(&token), None);
        let reopened = TokenStore::open(dir.path()).unwrap();
        assert_eq!(reopened.authorize(&token), None);
        assert!(reopened.list().is_empty());
    }

    #[test]
    fn scopes_allow_their_apps_only() {
        assert!(Scope::Admin.allows_app("anything"));
        assert!(Scope::Admin.is_admin());
        let scope = apps(&["a", "b"]);
        assert!(scope.allows_app("a") && scope.allows_app("b"));
        assert!(!scope.allows_app("c") && !scope.allows_app(""));
        assert!(!scope.is_admin());
    }

    #[test]
    fn bad_names_and_scopes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap();
        let long = "x".repeat(MAX_NAME_LEN + 1);
        for name in ["", "a b", "a/b", &long] {
            let error = store.create(name, Scope::Admin, false).unwrap_err();
            assert!(
                matches!(error, TokenError::InvalidName(_)),
                "{name}: {error}"
            );
        }
        let error = store.create("t", apps(&[]), false).unwrap_err();
        assert!(matches!(error, TokenError::InvalidScope), "{error}");
        let error = store.create("t", apps(&["../x"]), false).unwrap_err();
        assert!(matches!(error, TokenError::InvalidName(_)), "{error}");
        assert!(store.list().is_empty());
    }

    #[test]
    fn the_store_holds_at_most_max_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap();
        // Filled in memory and written once, as a thousand writes would be slow.
        store
            .change(|tokens| {
                for n in 0..MAX_TOKENS {
                    let name = format!("t{n}");
                    let stored = Stored {
                        sha256: hex::encode(sha256(&name)),
                        name: name.clone(),
                        scope: Scope::Admin,
                        revoked: Arc::default(),
                    };
                    tokens.insert(sha256(&name), stored);
                }
                Ok(())
            })
            .unwrap();
        let error = store.create("one-more", Scope::Admin, false).unwrap_err();
        assert!(matches!(error, TokenError::Full), "{error}");
        // Replacing one of them stays within the bound.
        store.create("t0", Scope::Admin, true).unwrap();
        assert_eq!(store.list().len(), MAX_TOKENS);
        assert_eq!(
            TokenStore::open(dir.path()).unwrap().list().len(),
            MAX_TOKENS
        );
    }

    #[test]
    fn a_damaged_file_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokens.json"), b"{not json").unwrap();
        let error = TokenStore::open(dir.path()).unwrap_err();
        assert!(matches!(error, TokenError::Corrupt { .. }), "{error}");
        std::fs::write(
            dir.path().join("tokens.json"),
            br#"{"version": 9, "tokens": []}"#,
        )
        .unwrap();
        let error = TokenStore::open(dir.path()).unwrap_err();
        assert!(error.to_string().contains("version 9"), "{error}");
    }
}
