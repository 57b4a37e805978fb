//! A node's copy of the CA's revocation list ([`CRL_FILE`]): read at load, and
//! looked at again, at most every [`CRL_CHECK_INTERVAL`], when a handshake begins.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use rustls::pki_types::CertificateRevocationListDer;
use rustls::pki_types::pem::PemObject;

use crate::{CRL_CHECK_INTERVAL, TrustError};

#[cfg(doc)]
use crate::CRL_FILE;

/// Which file a revocation list was read from: replacing the file (a rename) or
/// writing it changes this.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Fingerprint {
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl Fingerprint {
    fn of(meta: &std::fs::Metadata) -> Fingerprint {
        Fingerprint {
            inode: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
        }
    }
}

/// The revocation list file as read: absent (nothing is revoked), or its bytes.
pub(crate) enum Found {
    Absent,
    Present(Fingerprint, Vec<u8>),
}

impl Found {
    pub(crate) fn fingerprint(&self) -> Option<Fingerprint> {
        match self {
            Found::Absent => None,
            Found::Present(fingerprint, _) => Some(*fingerprint),
        }
    }

    /// The revocation lists the file holds (none if there is no file). Their
    /// signatures and contents are checked when the verifiers are built and used.
    pub(crate) fn parse(
        &self,
        path: &Path,
    ) -> Result<Vec<CertificateRevocationListDer<'static>>, TrustError> {
        let invalid = |reason: String| TrustError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let Found::Present(_, pem) = self else {
            return Ok(Vec::new());
        };
        let lists = CertificateRevocationListDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("not a PEM revocation list: {e}")))?;
        if lists.is_empty() {
            return Err(invalid(
                "holds no revocation list (copy the CA's crl.pem, made by `nimbus cluster \
                 revoke`)"
                    .into(),
            ));
        }
        Ok(lists)
    }
}

/// What looking at the revocation list again came to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reload {
    /// The file is as it was.
    Unchanged,
    /// The file changed and its list is now in force.
    Loaded,
    /// The file changed but cannot be used: the last good list stays in force.
    Kept,
}

/// A node's watch on its revocation list file.
pub(crate) struct Watch {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    /// When the file is next looked at.
    next_check: Instant,
    /// The file last read.
    seen: Option<Fingerprint>,
}

impl Watch {
    /// Reads the revocation list at `path` (blocking): what it revokes (nothing if
    /// there is no file), and a watch on it. An unreadable or invalid file is an
    /// error.
    pub(crate) fn load(
        path: PathBuf,
    ) -> Result<(Watch, Vec<CertificateRevocationListDer<'static>>), TrustError> {
        let found = read(&path).map_err(|e| TrustError::Invalid {
            path: path.clone(),
            reason: format!("cannot read the revocation list: {e}"),
        })?;
        let revoked = found.parse(&path)?;
        let watch = Watch {
            state: Mutex::new(State {
                next_check: Instant::now() + CRL_CHECK_INTERVAL,
                seen: found.fingerprint(),
            }),
            path,
        };
        Ok((watch, revoked))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// If the file is due to be looked at again, the one last read (and the next
    /// look is [`CRL_CHECK_INTERVAL`] away): one caller a second gets it.
    pub(crate) fn due(&self) -> Option<Option<Fingerprint>> {
        let now = Instant::now();
        let mut state = self.state.lock().expect("no holder panics");
        if now < state.next_check {
            return None;
        }
        state.next_check = now + CRL_CHECK_INTERVAL;
        Some(state.seen)
    }

    /// The file last read.
    #[cfg(test)]
    pub(crate) fn seen(&self) -> Option<Fingerprint> {
        self.state.lock().expect("no holder panics").seen
    }

    /// Records that the file now read is `seen`, usable or not, so that one file
    /// is read (and warned about) once.
    pub(crate) fn saw(&self, seen: Option<Fingerprint>) {
        self.state.lock().expect("no holder panics").seen = seen;
    }
}

/// Reads the file at `path` (blocking); absent is no error.
fn read(path: &Path) -> std::io::Result<Found> {
    use std::io::Read;
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Absent),
        Err(e) => return Err(e),
    };
    let fingerprint = Fingerprint::of(&file.metadata()?);
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(Found::Present(fingerprint, bytes))
}

/// The file at `path` if it is not the one `seen` (blocking).
pub(crate) fn read_if_changed(
    path: &Path,
    seen: Option<Fingerprint>,
) -> std::io::Result<Option<Found>> {
    let now = match std::fs::metadata(path) {
        Ok(meta) => Some(Fingerprint::of(&meta)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    if now == seen {
        return Ok(None);
    }
    read(path).map(Some)
}
