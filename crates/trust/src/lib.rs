//! A cluster's trust: the certificate authority that `nimbus cluster init` creates,
//! the credentials every node loads from its cluster directory, and the mutually
//! authenticated TLS built from them.
//!
//! Owns: creating a cluster directory (a CA, and a node credential it signs),
//! loading one, and the rustls configurations every node-to-node connection uses
//! (the mesh, the planner's calls included): a node accepts a connection only from
//! a peer whose certificate this cluster's CA signed, connects only to such a peer, and
//! the handshake completes before either side reads a request.
//!
//! Must not: hold connections, or know what flows over them.
//!
//! Identity: nodes reach each other by address, not by name, so every node
//! certificate carries the one name [`NODE_NAME`] and a peer is trusted for being
//! signed by the cluster's CA. Nodes never read the CA's key ([`CA_KEY_FILE`]); it
//! stays where the cluster was created, for issuing later.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

/// The name in every node certificate, and the one a node expects of its peer.
pub const NODE_NAME: &str = "node.nimbus.internal";
/// The cluster CA's certificate, which every node trusts.
pub const CA_FILE: &str = "ca.pem";
/// The cluster CA's private key: never read by a node.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The node certificate, signed by the cluster CA.
pub const CERT_FILE: &str = "node.pem";
/// The node certificate's private key.
pub const KEY_FILE: &str = "node-key.pem";

/// The longest a TLS handshake may take before the connection is dropped, so a
/// peer that connects and then says nothing costs a task only this long.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(3);

/// The most connections a node holds at once that have not yet proven they come
/// from the cluster (handshake under way); more are dropped on arrival, so idle
/// sockets cannot use up a node's descriptors.
pub const MAX_UNPROVEN_CONNECTIONS: usize = 1024;

/// How long certificates made by [`init`] are valid.
const VALIDITY: time::Duration = time::Duration::days(10 * 365);

/// Setting up or loading a cluster's credentials failed.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The directory holds no credentials.
    #[error(
        "no cluster credentials in {dir}: {reason} (create them with `nimbus cluster init {dir}` \
         and give every node of the cluster a copy)"
    )]
    Missing {
        /// The cluster directory.
        dir: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// A credential file is not what it should be.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// [`init`] was asked to create a cluster where one exists.
    #[error("{0} already holds cluster credentials: remove the directory to start a new CA")]
    Exists(PathBuf),
    /// Writing the credentials failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// What was being written.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Making the certificates failed.
    #[error("cannot create the cluster's certificates: {0}")]
    Generate(String),
}

/// Creates a cluster directory `dir`: a new CA and a node credential it signs.
/// Refused if `dir` already holds one. The files appear together or not at all.
pub fn init(dir: &Path) -> Result<(), TrustError> {
    if dir.join(CA_FILE).exists() {
        return Err(TrustError::Exists(dir.to_owned()));
    }
    match create(dir) {
        Err(TrustError::Write { source, .. }) if dir.join(CA_FILE).exists() => {
            drop(source);
            Err(TrustError::Exists(dir.to_owned()))
        }
        created => created,
    }
}

/// Creates the cluster directory `dir` unless it holds credentials already (a node
/// started on one machine with no setup); returns whether it created them. Safe
/// against other nodes doing the same at once: one CA wins, and all use it.
pub fn ensure(dir: &Path) -> Result<bool, TrustError> {
    if dir.join(CA_FILE).exists() {
        return Ok(false);
    }
    match create(dir) {
        Ok(()) => Ok(true),
        Err(_) if dir.join(CA_FILE).exists() => Ok(false),
        Err(error) => Err(error),
    }
}

/// Writes the credentials into a fresh directory beside `dir`, then renames it into
/// place (over nothing, or an empty directory).
fn create(dir: &Path) -> Result<(), TrustError> {
    let generated = generate()?;
    let parent = dir
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let write_error = |path: &Path| {
        let path = path.to_owned();
        move |source| TrustError::Write { path, source }
    };
    std::fs::create_dir_all(parent).map_err(write_error(parent))?;
    let staging = tempfile_dir(parent).map_err(write_error(parent))?;
    let files = [
        (CA_FILE, &generated.ca, 0o644),
        (CA_KEY_FILE, &generated.ca_key, 0o600),
        (CERT_FILE, &generated.cert, 0o644),
        (KEY_FILE, &generated.key, 0o600),
    ];
    let written = files.iter().try_for_each(|(name, contents, mode)| {
        let path = staging.join(name);
        write_file(&path, contents.as_bytes(), *mode).map_err(write_error(&path))
    });
    let renamed = written.and_then(|()| {
        std::fs::rename(&staging, dir).map_err(write_error(dir))?;
        // The rename is durable once the parent directory is.
        std::fs::File::open(parent)
            .and_then(|parent| parent.sync_all())
            .map_err(write_error(parent))
    });
    if renamed.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    renamed
}

/// A new, empty directory in `parent`, named so no two callers share one.
fn tempfile_dir(parent: &Path) -> std::io::Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        ".cluster-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let path = parent.join(name);
    std::fs::create_dir(&path)?;
    Ok(path)
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// The PEM texts of a new cluster.
struct Generated {
    ca: String,
    ca_key: String,
    cert: String,
    key: String,
}

fn generate() -> Result<Generated, TrustError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let failed = |e: rcgen::Error| TrustError::Generate(e.to_string());
    let now = time::OffsetDateTime::now_utc();

    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "nimbus cluster CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = now + VALIDITY;
    let ca_key = KeyPair::generate().map_err(failed)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(failed)?;

    let mut node = CertificateParams::new(vec![NODE_NAME.to_owned()]).map_err(failed)?;
    node.distinguished_name.push(DnType::CommonName, NODE_NAME);
    node.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    node.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    node.not_before = ca.not_before;
    node.not_after = ca.not_after;
    let node_key = KeyPair::generate().map_err(failed)?;
    let issuer = Issuer::from_params(&ca, &ca_key);
    let node_cert = node.signed_by(&node_key, &issuer).map_err(failed)?;

    Ok(Generated {
        ca: ca_cert.pem(),
        ca_key: ca_key.serialize_pem(),
        cert: node_cert.pem(),
        key: node_key.serialize_pem(),
    })
}

/// A node's credentials as PEM text: what it trusts and who it is.
#[derive(Clone)]
pub struct Pem {
    /// The cluster CA's certificate.
    pub ca: String,
    /// This node's certificate.
    pub cert: String,
    /// This node's private key.
    pub key: String,
}

/// A node's TLS: it connects to and accepts only peers of its cluster, each
/// connection for one application protocol (ALPN), so that a peer speaking another
/// version is refused in the handshake, before a byte of it is read.
pub struct Tls {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the credentials of the cluster directory `dir` (blocking file reads).
    pub fn load(dir: &Path) -> Result<Arc<Tls>, TrustError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| TrustError::Missing {
                dir: dir.to_owned(),
                reason: format!("cannot read {}: {e}", path.display()),
            })
        };
        let pem = Pem {
            ca: read(CA_FILE)?,
            cert: read(CERT_FILE)?,
            key: read(KEY_FILE)?,
        };
        Tls::from_pem(pem, dir)
    }

    /// The TLS of a new cluster kept in memory, of which this process holds the only
    /// credentials: for tests, where every node runs in one process.
    pub fn ephemeral() -> Result<Arc<Tls>, TrustError> {
        let generated = generate()?;
        let pem = Pem {
            ca: generated.ca,
            cert: generated.cert,
            key: generated.key,
        };
        Tls::from_pem(pem, Path::new("(in memory)"))
    }

    /// The TLS of credentials `pem` (read from `dir`, named in errors).
    pub fn from_pem(pem: Pem, dir: &Path) -> Result<Arc<Tls>, TrustError> {
        let invalid = |name: &str, reason: String| TrustError::Invalid {
            path: dir.join(name),
            reason,
        };
        let certificates = |name: &str, text: &str| {
            let certificates = CertificateDer::pem_slice_iter(text.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(name, format!("not a PEM certificate: {e}")))?;
            if certificates.is_empty() {
                return Err(invalid(name, "holds no certificate".into()));
            }
            Ok(certificates)
        };
        let mut roots = RootCertStore::empty();
        for ca in certificates(CA_FILE, &pem.ca)? {
            roots
                .add(ca)
                .map_err(|e| invalid(CA_FILE, format!("not a CA certificate: {e}")))?;
        }
        let roots = Arc::new(roots);
        let chain = certificates(CERT_FILE, &pem.cert)?;
        let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes())
            .map_err(|e| invalid(KEY_FILE, format!("not a PEM private key: {e}")))?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let rejected = |e: rustls::Error| invalid(CERT_FILE, e.to_string());
        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(rejected)?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(rejected)?;
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| invalid(CA_FILE, e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(rejected)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(rejected)?;
        Ok(Arc::new(Tls {
            client: Arc::new(client),
            server: Arc::new(server),
        }))
    }

    /// Opens TLS over `tcp` to a node of this cluster, for `protocol` (its ALPN
    /// name, such as `nimbus-mesh/2`); fails if the peer is not one, does not speak
    /// `protocol` ([`is_another_protocol`]), or has not completed the handshake
    /// within [`HANDSHAKE_DEADLINE`].
    pub async fn connect(
        &self,
        tcp: TcpStream,
        protocol: &str,
    ) -> std::io::Result<client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(NODE_NAME).expect("NODE_NAME is a valid DNS name");
        let mut config = (*self.client).clone();
        config.alpn_protocols = vec![protocol.as_bytes().to_vec()];
        let connector = TlsConnector::from(Arc::new(config));
        let stream = within_deadline(connector.connect(name, tcp))
            .await
            .map_err(|e| named(e, protocol))?;
        spoken(stream.get_ref().1.alpn_protocol(), protocol)?;
        Ok(stream)
    }

    /// Accepts TLS over `tcp` from a node of this cluster (one whose certificate the
    /// cluster CA signed) for `protocol`; fails otherwise, or past
    /// [`HANDSHAKE_DEADLINE`].
    pub async fn accept(
        &self,
        tcp: TcpStream,
        protocol: &str,
    ) -> std::io::Result<server::TlsStream<TcpStream>> {
        let mut config = (*self.server).clone();
        config.alpn_protocols = vec![protocol.as_bytes().to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let stream = within_deadline(acceptor.accept(tcp))
            .await
            .map_err(|e| named(e, protocol))?;
        spoken(stream.get_ref().1.alpn_protocol(), protocol)?;
        Ok(stream)
    }
}

/// A handshake's failure, said in our words when it failed for want of a common
/// protocol.
fn named(error: std::io::Error, protocol: &str) -> std::io::Error {
    let no_common_protocol = error.get_ref().is_some_and(|inner| {
        matches!(
            inner.downcast_ref::<rustls::Error>(),
            Some(
                rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)
                    | rustls::Error::NoApplicationProtocol
            )
        )
    });
    match no_common_protocol {
        true => spoken(None, protocol).unwrap_err(),
        false => error,
    }
}

/// The error of a peer that does not speak `protocol` (it offered none, as a node of
/// a release before protocols were named does).
fn spoken(negotiated: Option<&[u8]>, protocol: &str) -> std::io::Result<()> {
    match negotiated {
        Some(spoken) if spoken == protocol.as_bytes() => Ok(()),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            AnotherProtocol(protocol.to_owned()),
        )),
    }
}

/// A peer of the cluster that does not speak the protocol asked for: another
/// nimbus release.
#[derive(Debug, thiserror::Error)]
#[error(
    "the peer does not speak {0}: it runs another nimbus release, or is no nimbus node (run the same release on every node)"
)]
pub struct AnotherProtocol(String);

/// Whether a failed [`Tls::connect`] or [`Tls::accept`] failed for the peer speaking
/// another protocol (version) rather than for its credentials.
pub fn is_another_protocol(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<AnotherProtocol>())
}

async fn within_deadline<T>(
    handshake: impl Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(HANDSHAKE_DEADLINE, handshake)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the TLS handshake did not complete in time",
            ))
        })
}

#[cfg(test)]
mod tests;
