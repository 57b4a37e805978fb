//! The client config file: where the client commands find their server and token
//! when no flag or environment variable gives them.
//!
//! `nimbus up` writes it on each start (the last one started wins the file):
//! `$NIMBUS_CONFIG`, else `$XDG_CONFIG_HOME/nimbus/config.json`, else
//! `~/.config/nimbus/config.json`, JSON, readable by its owner only (mode 0600),
//! written through a temporary file renamed into place.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the client commands need to reach a nimbus.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ClientConfig {
    /// The gateway's URL, `http://HOST:PORT`.
    pub(crate) server: String,
    /// The binary data plane's address, `HOST:PORT`.
    pub(crate) data_plane: String,
    /// The bearer token (admin, for the user who ran `nimbus up`).
    pub(crate) token: String,
    /// The planner of the cluster behind the gateway, if there is one.
    pub(crate) planner: Option<String>,
    /// The directory of the cluster's credentials (its CA, a node certificate), for
    /// `nimbus run --cluster`; with `planner`.
    pub(crate) cluster_dir: Option<PathBuf>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("ClientConfig")
            .field("server", &self.server)
            .field("data_plane", &self.data_plane)
            .field("planner", &self.planner)
            .field("cluster_dir", &self.cluster_dir)
            .finish_non_exhaustive()
    }
}

/// Where the config file is: `$NIMBUS_CONFIG`, else under `$XDG_CONFIG_HOME`, else
/// under `~/.config`; `None` without any of them.
pub(crate) fn path() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|value| !value.is_empty());
    if let Some(path) = var("NIMBUS_CONFIG") {
        return Some(PathBuf::from(path));
    }
    let base = var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("nimbus").join("config.json"))
}

/// The config at `path`: `Ok(None)` if there is no file, an error naming the file
/// if it cannot be read or is not a config.
pub(crate) fn load(path: &Path) -> Result<Option<ClientConfig>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("client config {}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("client config {}: {e}", path.display())),
    }
}

/// Writes `config` to `path` (creating its directory), mode 0600, through a
/// temporary file renamed over the old one.
pub(crate) fn save(path: &Path, config: &ClientConfig) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = PathBuf::from(temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    let mut bytes = serde_json::to_vec_pretty(config).expect("the config serialises");
    bytes.push(b'\n');
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_round_trips_with_its_mode_and_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.json");
        assert_eq!(load(&path).unwrap(), None);
        let config = ClientConfig {
            server: "http://127.0.0.1:1".into(),
            data_plane: "127.0.0.1:2".into(),
            token: "nmb_x".into(),
            planner: None,
            cluster_dir: None,
        };
        save(&path, &config).unwrap();
        assert_eq!(load(&path).unwrap(), Some(config));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        for field in ["server", "data_plane", "token", "planner", "cluster_dir"] {
            assert!(text.contains(&format!("\"{field}\"")), "{text}");
        }
        std::fs::write(&path, b"[]").unwrap();
        let error = load(&path).unwrap_err();
        assert!(error.contains("config.json"), "{error}");
    }
}
