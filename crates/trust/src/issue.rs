//! Issuing a node a certificate of its own from the cluster's CA, and revoking
//! one (`nimbus cluster issue`, `nimbus cluster revoke`): run where the CA's key
//! is, and recorded there ([`ISSUED_FILE`]) so a node is revoked by its name.

use std::io::Read;
use std::path::{Path, PathBuf};

use rcgen::{Issuer, KeyPair, SerialNumber};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    CA_FILE, CA_KEY_FILE, CERT_FILE, CRL_FILE, ISSUED_FILE, KEY_FILE, TrustError, VALIDITY,
    generate_error, node_certificate, place, replace,
};

/// The longest node name.
const MAX_NAME: usize = 64;

/// A certificate [`issue`] made.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Its node's name (its subject's common name).
    pub name: String,
    /// Its serial number, in hex.
    pub serial: String,
}

/// What [`revoke`] did.
#[derive(Debug, Clone)]
pub struct Revoked {
    /// The revoked certificate's serial number, in hex.
    pub serial: String,
    /// Whether it was revoked before (the list was written again all the same).
    pub before: bool,
    /// How many certificates the list now revokes.
    pub listed: usize,
}

/// Issues node `name` a certificate from the CA in cluster directory `dir` (a
/// fresh key, a random serial of its own, `name` as its subject's common name),
/// and writes the node's credentials into the new directory `out`: the CA's
/// certificate, the node's certificate and key, and the CA's revocation list if
/// it has one; never the CA's key. Refused for a name `dir` issued before, or one
/// that is not a name ([`TrustError::BadName`]).
pub fn issue(dir: &Path, name: &str, out: &Path) -> Result<Issued, TrustError> {
    issue_by(&Ca::open(dir)?, dir, name, out, CrlCopy::Copied)
}

/// How a node directory [`issue_by`] writes holds the CA's revocation list.
enum CrlCopy {
    /// A copy of the list as it is now.
    Copied,
    /// None: its caller links it to the CA's.
    Linked,
}

/// [`issue`], by `ca`, held.
fn issue_by(
    ca: &Ca,
    dir: &Path,
    name: &str,
    out: &Path,
    crl_copy: CrlCopy,
) -> Result<Issued, TrustError> {
    check_name(name)?;
    if out.is_file() || std::fs::read_dir(out).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(TrustError::OutExists(out.to_owned()));
    }
    let mut registry = Registry::load(dir)?;
    if registry.nodes.iter().any(|node| node.name == name) {
        return Err(TrustError::NameTaken {
            dir: dir.to_owned(),
            name: name.to_owned(),
        });
    }
    let serial = registry.new_serial()?;
    let node = node_certificate(&ca.issuer, name, Some(SerialNumber::from_slice(&serial)))?;
    let crl = match crl_copy {
        CrlCopy::Linked => Err(std::io::ErrorKind::NotFound.into()),
        CrlCopy::Copied => std::fs::read_to_string(dir.join(CRL_FILE)),
    };
    let crl = match crl {
        Ok(crl) => Some(crl),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(TrustError::Invalid {
                path: dir.join(CRL_FILE),
                reason: e.to_string(),
            });
        }
    };
    let before = registry.clone();
    registry.nodes.push(Node {
        name: name.to_owned(),
        serial: hex(&serial),
        issued_at: OffsetDateTime::now_utc().unix_timestamp(),
        revoked_at: None,
    });
    // Recorded first, so no certificate is out that cannot be revoked by name.
    registry.save(dir)?;
    let mut files = vec![
        (CA_FILE, ca.pem.as_str(), 0o644),
        (CERT_FILE, node.cert.as_str(), 0o644),
        (KEY_FILE, node.key.as_str(), 0o600),
    ];
    if let Some(crl) = &crl {
        files.push((CRL_FILE, crl.as_str(), 0o644));
    }
    if let Err(error) = place(out, &files) {
        // Nothing went out: the name is free again.
        let _ = before.save(dir);
        return Err(error);
    }
    Ok(Issued {
        name: name.to_owned(),
        serial: hex(&serial),
    })
}

/// Where the credentials of node `name`, a node started beside the CA in
/// cluster directory `dir` (`nimbus up --workers`'s planner, gateway and
/// workers), are: `dir/nodes/NAME`, issued there ([`issue`]) the first time. Its
/// [`CRL_FILE`] is a link to the CA's own, so a [`revoke`] in `dir` reaches the
/// node with nothing to copy. A node whose directory is gone while `dir` still
/// records its name is refused ([`TrustError::NameTaken`]). Blocking.
pub fn local_node(dir: &Path, name: &str) -> Result<PathBuf, TrustError> {
    // Held throughout, so that of two `nimbus up` sharing `dir`, one issues and
    // the other finds the node's directory whole.
    let ca = Ca::open(dir)?;
    let out = dir.join("nodes").join(name);
    if out.join(CERT_FILE).exists() {
        return Ok(out);
    }
    issue_by(&ca, dir, name, &out, CrlCopy::Linked)?;
    let crl = out.join(CRL_FILE);
    std::os::unix::fs::symlink(Path::new("../..").join(CRL_FILE), &crl)
        .map_err(|source| TrustError::Write { path: crl, source })?;
    Ok(out)
}

/// Revokes the certificate `dir`'s CA issued node `name`: writes the CA's
/// revocation list, listing it and every one revoked before, to `dir`'s
/// [`CRL_FILE`] in one step. Nodes refuse it once their own copy of the list
/// has it.
pub fn revoke(dir: &Path, name: &str) -> Result<Revoked, TrustError> {
    let ca = Ca::open(dir)?;
    let mut registry = Registry::load(dir)?;
    let Some(node) = registry.nodes.iter_mut().find(|node| node.name == name) else {
        let issued: Vec<&str> = registry.nodes.iter().map(|n| n.name.as_str()).collect();
        return Err(TrustError::NotIssued {
            dir: dir.to_owned(),
            name: name.to_owned(),
            issued: match issued.is_empty() {
                true => "none".into(),
                false => issued.join(", "),
            },
        });
    };
    let before = node.revoked_at.is_some();
    node.revoked_at
        .get_or_insert(OffsetDateTime::now_utc().unix_timestamp());
    let serial = node.serial.clone();
    registry.crl_number += 1;
    registry.save(dir)?;
    let crl = registry.crl(&ca.issuer)?;
    replace(&dir.join(CRL_FILE), crl.as_bytes(), 0o644)?;
    Ok(Revoked {
        serial,
        before,
        listed: registry.revoked().count(),
    })
}

/// Refuses what is not a node name.
fn check_name(name: &str) -> Result<(), TrustError> {
    let bad = |reason| {
        Err(TrustError::BadName {
            name: name.to_owned(),
            reason,
        })
    };
    match name.as_bytes() {
        [] => bad("it is empty"),
        _ if name.len() > MAX_NAME => bad("it is too long"),
        [first, ..] if !first.is_ascii_alphanumeric() => {
            bad("it does not start with a letter or digit")
        }
        bytes
            if !bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b)) =>
        {
            bad("it holds another character")
        }
        _ => Ok(()),
    }
}

/// The cluster's CA, held (its key file locked) so that one issue or revoke on a
/// directory runs at a time.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// Holds the lock until dropped.
    _key_file: std::fs::File,
}

impl Ca {
    fn open(dir: &Path) -> Result<Ca, TrustError> {
        let missing = |reason: String| TrustError::Missing {
            dir: dir.to_owned(),
            reason,
        };
        let invalid = |name: &str, reason: String| TrustError::Invalid {
            path: dir.join(name),
            reason,
        };
        let ca_path = dir.join(CA_FILE);
        let pem = std::fs::read_to_string(&ca_path)
            .map_err(|e| missing(format!("cannot read {}: {e}", ca_path.display())))?;
        let key_path = dir.join(CA_KEY_FILE);
        let mut key_file =
            std::fs::File::open(&key_path).map_err(|source| TrustError::NoCaKey {
                dir: dir.to_owned(),
                source,
            })?;
        key_file
            .lock()
            .map_err(|e| invalid(CA_KEY_FILE, format!("cannot lock it: {e}")))?;
        let mut key = String::new();
        key_file
            .read_to_string(&mut key)
            .map_err(|e| invalid(CA_KEY_FILE, e.to_string()))?;
        let key = KeyPair::from_pem(&key)
            .map_err(|e| invalid(CA_KEY_FILE, format!("not a PEM private key: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(&pem, key)
            .map_err(|e| invalid(CA_FILE, format!("not a CA certificate: {e}")))?;
        Ok(Ca {
            pem,
            issuer,
            _key_file: key_file,
        })
    }
}

/// What a CA issued and revoked ([`ISSUED_FILE`]).
#[derive(Serialize, Deserialize, Default, Clone)]
struct Registry {
    /// The number of the revocation list last written.
    crl_number: u64,
    nodes: Vec<Node>,
}

/// A certificate issued.
#[derive(Serialize, Deserialize, Clone)]
struct Node {
    name: String,
    /// The serial number, in hex.
    serial: String,
    /// When it was issued (Unix seconds).
    issued_at: i64,
    /// When it was revoked (Unix seconds).
    revoked_at: Option<i64>,
}

impl Registry {
    /// The registry of `dir`: empty if it has issued nothing.
    fn load(dir: &Path) -> Result<Registry, TrustError> {
        let path = dir.join(ISSUED_FILE);
        let invalid = |reason: String| TrustError::Invalid {
            path: path.clone(),
            reason,
        };
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Registry::default()),
            Err(e) => return Err(invalid(e.to_string())),
        };
        let registry: Registry =
            serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
        if let Some(node) = registry.nodes.iter().find(|n| unhex(&n.serial).is_none()) {
            return Err(invalid(format!(
                "node {:?} has no serial number",
                node.name
            )));
        }
        Ok(registry)
    }

    fn save(&self, dir: &Path) -> Result<(), TrustError> {
        let mut text = serde_json::to_vec_pretty(self).expect("a registry serializes");
        text.push(b'\n');
        replace(&dir.join(ISSUED_FILE), &text, 0o644)
    }

    /// A random serial number no certificate in the registry has: 16 bytes from
    /// the OS, positive and without a leading zero byte.
    fn new_serial(&self) -> Result<[u8; 16], TrustError> {
        let random = rustls::crypto::ring::default_provider().secure_random;
        loop {
            let mut serial = [0; 16];
            random
                .fill(&mut serial)
                .map_err(|_| TrustError::Generate("no randomness from the OS".into()))?;
            serial[0] = serial[0] & 0x7f | 0x40;
            if !self.nodes.iter().any(|node| node.serial == hex(&serial)) {
                return Ok(serial);
            }
        }
    }

    fn revoked(&self) -> impl Iterator<Item = (&Node, i64)> {
        self.nodes
            .iter()
            .filter_map(|node| Some((node, node.revoked_at?)))
    }

    /// The revocation list of the registry, signed by `issuer`, as PEM.
    fn crl(&self, issuer: &Issuer<'_, KeyPair>) -> Result<String, TrustError> {
        use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams};
        let revoked_certs = self
            .revoked()
            .map(|(node, at)| {
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from(
                        unhex(&node.serial).expect("checked at load"),
                    ),
                    revocation_time: OffsetDateTime::from_unix_timestamp(at)
                        .map_err(|e| TrustError::Generate(e.to_string()))?,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, TrustError>>()?;
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + VALIDITY,
            crl_number: SerialNumber::from(self.crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(issuer)
            .and_then(|crl| crl.pem())
            .map_err(generate_error)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}
