//! A cluster's trust: the certificate authority that `nimbus cluster init` creates,
//! the credentials every node loads from its cluster directory, and the mutually
//! authenticated TLS built from them.
//!
//! Owns: creating a cluster directory (a CA, and a node credential it signs),
//! issuing each node a certificate of its own and revoking one ([`issue`],
//! [`revoke`]), loading a node's credentials, and the rustls configurations every
//! node-to-node connection uses (the mesh, the planner's calls included): a node
//! accepts a connection only from a peer whose certificate this cluster's CA signed
//! and did not revoke, connects only to such a peer, and the handshake completes
//! before either side reads a request.
//!
//! Must not: hold connections, or know what flows over them.
//!
//! Identity: nodes reach each other by address, not by name, so every node
//! certificate carries the one DNS name [`NODE_NAME`] and a peer is trusted for
//! being signed by the cluster's CA. A certificate from [`issue`] also names its node
//! (its subject's common name) and has a random serial of its own, by which the CA's
//! revocation list ([`CRL_FILE`]) refuses it. Nodes never read the CA's key
//! ([`CA_KEY_FILE`]); it stays where the cluster was created, for issuing and
//! revoking.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
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
/// The cluster CA's revocation list, written by [`revoke`] beside the CA; a node
/// refuses the certificates listed in the copy in its own directory, if it has one.
pub const CRL_FILE: &str = "crl.pem";
/// The certificates [`issue`] made, by node name: kept beside the CA.
pub const ISSUED_FILE: &str = "issued.json";

/// How often, at most, a node looks whether its [`CRL_FILE`] changed: when it
/// next builds a handshake's configuration after this long, and every this long
/// while a connection is open ([`Tls::until_revoked`]), so a replaced list holds
/// for every handshake begun, and every connection open, a second after it was
/// written.
pub const CRL_CHECK_INTERVAL: Duration = Duration::from_secs(1);

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
         and give every node of the cluster a copy, or each node its own from \
         `nimbus cluster issue`)"
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
    /// [`issue`] was asked for a node name that is not one.
    #[error(
        "{name:?} is not a node name: {reason} (1 to 64 ASCII letters, digits, '-', '_' or \
         '.', starting with a letter or digit)"
    )]
    BadName {
        /// The name asked for.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// [`issue`] was asked for a name the CA issued before.
    #[error(
        "{dir} already issued a certificate for node {name:?}: give each node a name of its own \
         (revoke it with `nimbus cluster revoke`)"
    )]
    NameTaken {
        /// The cluster directory.
        dir: PathBuf,
        /// The name.
        name: String,
    },
    /// [`revoke`] was asked for a name the CA never issued.
    #[error("{dir} issued no certificate for node {name:?} (issued: {issued})")]
    NotIssued {
        /// The cluster directory.
        dir: PathBuf,
        /// The name.
        name: String,
        /// The names it issued, comma separated.
        issued: String,
    },
    /// [`issue`] or [`revoke`] was pointed at a directory without the CA's key.
    #[error(
        "cannot read the CA's key {}: {source} (issue and revoke in the directory \
         `nimbus cluster init` created, which holds it)",
        dir.join(CA_KEY_FILE).display()
    )]
    NoCaKey {
        /// The directory.
        dir: PathBuf,
        /// Why the key could not be read.
        source: std::io::Error,
    },
    /// [`issue`] was asked to write a node's credentials where something is.
    #[error("{0} exists and is not empty: give --out a new directory")]
    OutExists(PathBuf),
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

/// Writes a new cluster's credentials into `dir` (see [`place`]).
fn create(dir: &Path) -> Result<(), TrustError> {
    let generated = generate()?;
    place(
        dir,
        &[
            (CA_FILE, &generated.ca, 0o644),
            (CA_KEY_FILE, &generated.ca_key, 0o600),
            (CERT_FILE, &generated.cert, 0o644),
            (KEY_FILE, &generated.key, 0o600),
        ],
    )
}

/// Writes `files` (name, contents, mode) into a fresh directory beside `dir`, then
/// renames it into place (over nothing, or an empty directory), so they appear
/// together or not at all.
fn place(dir: &Path, files: &[(&str, &str, u32)]) -> Result<(), TrustError> {
    let parent = parent_of(dir);
    std::fs::create_dir_all(parent).map_err(write_error(parent))?;
    let staging = tempfile_dir(parent).map_err(write_error(parent))?;
    let written = files.iter().try_for_each(|(name, contents, mode)| {
        let path = staging.join(name);
        write_file(&path, contents.as_bytes(), *mode).map_err(write_error(&path))
    });
    let renamed = written.and_then(|()| {
        std::fs::rename(&staging, dir).map_err(write_error(dir))?;
        sync_dir(parent)
    });
    if renamed.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    renamed
}

/// Replaces the file at `path` with `contents` (mode `mode`) in one step: written
/// beside it, then renamed over it, so a reader sees the old file or the new one.
fn replace(path: &Path, contents: &[u8], mode: u32) -> Result<(), TrustError> {
    let dir = parent_of(path);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let staged = dir.join(format!(".{name}.{}", unique_suffix()));
    let replaced = write_file(&staged, contents, mode)
        .and_then(|()| std::fs::rename(&staged, path))
        .map_err(write_error(path));
    if replaced.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    replaced.and_then(|()| sync_dir(dir))
}

/// The directory `path` is in.
fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A rename is durable once its directory is.
fn sync_dir(dir: &Path) -> Result<(), TrustError> {
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(write_error(dir))
}

fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> TrustError {
    let path = path.to_owned();
    move |source| TrustError::Write { path, source }
}

/// A name part no other writer of this or another process uses.
fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A new, empty directory in `parent`, named so no two callers share one.
fn tempfile_dir(parent: &Path) -> std::io::Result<PathBuf> {
    let path = parent.join(format!(".cluster-{}", unique_suffix()));
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
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let now = time::OffsetDateTime::now_utc();

    let mut ca = CertificateParams::default();
    // A name of its own: a node takes a revocation list for its CA's by the
    // issuer's name, so two clusters' CAs must never share one.
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("nimbus cluster CA {}", random_id()?),
    );
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = now + VALIDITY;
    let ca_key = KeyPair::generate().map_err(generate_error)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(generate_error)?;
    let issuer = Issuer::from_params(&ca, &ca_key);
    let node = node_certificate(&issuer, NODE_NAME, None)?;
    Ok(Generated {
        ca: ca_cert.pem(),
        ca_key: ca_key.serialize_pem(),
        cert: node.cert,
        key: node.key,
    })
}

/// 64 random bits from the OS, in hex.
fn random_id() -> Result<String, TrustError> {
    let mut id = [0; 8];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut id)
        .map_err(|_| TrustError::Generate("no randomness from the OS".into()))?;
    Ok(id.iter().map(|b| format!("{b:02x}")).collect())
}

fn generate_error(error: rcgen::Error) -> TrustError {
    TrustError::Generate(error.to_string())
}

/// A node's certificate and its new key, as PEM.
struct NodeCertificate {
    cert: String,
    key: String,
}

/// A node certificate `issuer` signs for a fresh key: for the DNS name
/// [`NODE_NAME`], with `common_name` as its subject, and `serial` as its serial
/// number (by default one derived from the key), valid from an hour ago for
/// [`VALIDITY`].
fn node_certificate(
    issuer: &rcgen::Issuer<'_, impl rcgen::SigningKey>,
    common_name: &str,
    serial: Option<rcgen::SerialNumber>,
) -> Result<NodeCertificate, TrustError> {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
    let now = time::OffsetDateTime::now_utc();
    let mut node = CertificateParams::new(vec![NODE_NAME.to_owned()]).map_err(generate_error)?;
    node.distinguished_name
        .push(DnType::CommonName, common_name);
    node.serial_number = serial;
    node.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    node.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    node.not_before = now - time::Duration::hours(1);
    node.not_after = now + VALIDITY;
    let key = KeyPair::generate().map_err(generate_error)?;
    let cert = node.signed_by(&key, issuer).map_err(generate_error)?;
    Ok(NodeCertificate {
        cert: cert.pem(),
        key: key.serialize_pem(),
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

/// A node's TLS: it connects to and accepts only peers of its cluster whose
/// certificates are not revoked, each connection for one application protocol
/// (ALPN), so that a peer speaking another version is refused in the handshake,
/// before a byte of it is read.
pub struct Tls {
    identity: Arc<Identity>,
    /// The configurations of the revocation list loaded last.
    configs: RwLock<Configs>,
    /// The serial numbers that list revokes, for open connections to watch.
    revoked: tokio::sync::watch::Sender<Arc<Serials>>,
    /// The revocation list file a loaded node watches; none in memory.
    crl: Option<crl::Watch>,
}

/// Serial numbers of revoked certificates (the contents of their DER integers).
type Serials = HashSet<Vec<u8>>;

/// What a node trusts and who it is, parsed.
struct Identity {
    /// Where the credentials were read, named in errors.
    dir: PathBuf,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: Arc<CryptoProvider>,
}

/// The configurations handshakes start from (each one clones its own).
#[derive(Clone)]
struct Configs {
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
    /// Loads the credentials of the cluster directory `dir` (blocking file reads),
    /// and its revocation list [`CRL_FILE`] if there is one (none: nothing is
    /// revoked), which handshakes then follow as it is replaced (see
    /// [`CRL_CHECK_INTERVAL`]).
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
        let identity = Identity::parse(pem, dir)?;
        let (crl, lists) = crl::Watch::load(dir.join(CRL_FILE))?;
        let (configs, serials) = identity.admit(lists, crl.path())?;
        Ok(Arc::new(Tls {
            identity: Arc::new(identity),
            configs: RwLock::new(configs),
            revoked: tokio::sync::watch::Sender::new(Arc::new(serials)),
            crl: Some(crl),
        }))
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

    /// The TLS of credentials `pem` (read from `dir`, named in errors), revoking
    /// nothing.
    pub fn from_pem(pem: Pem, dir: &Path) -> Result<Arc<Tls>, TrustError> {
        let identity = Identity::parse(pem, dir)?;
        let configs = identity.configs(Vec::new())?;
        Ok(Arc::new(Tls {
            identity: Arc::new(identity),
            configs: RwLock::new(configs),
            revoked: tokio::sync::watch::Sender::new(Arc::default()),
            crl: None,
        }))
    }

    /// Opens TLS over `tcp` to a node of this cluster, for `protocol` (its ALPN
    /// name, such as `nimbus-mesh/3`); fails if the peer is not one, does not speak
    /// `protocol` ([`is_another_protocol`]), or has not completed the handshake
    /// within [`HANDSHAKE_DEADLINE`].
    pub async fn connect(
        &self,
        tcp: TcpStream,
        protocol: &str,
    ) -> std::io::Result<client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(NODE_NAME).expect("NODE_NAME is a valid DNS name");
        let mut config = (*self.configs().await.client).clone();
        config.alpn_protocols = vec![protocol.as_bytes().to_vec()];
        let connector = TlsConnector::from(Arc::new(config));
        let stream = within_deadline(connector.connect(name, tcp))
            .await
            .map_err(|e| named(e, protocol))?;
        spoken(stream.get_ref().1.alpn_protocol(), protocol)?;
        Ok(stream)
    }

    /// Accepts TLS over `tcp` from a node of this cluster (one whose certificate the
    /// cluster CA signed and has not revoked) for `protocol`; fails otherwise, or
    /// past [`HANDSHAKE_DEADLINE`].
    pub async fn accept(
        &self,
        tcp: TcpStream,
        protocol: &str,
    ) -> std::io::Result<server::TlsStream<TcpStream>> {
        let mut config = (*self.configs().await.server).clone();
        config.alpn_protocols = vec![protocol.as_bytes().to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let stream = within_deadline(acceptor.accept(tcp))
            .await
            .map_err(|e| named(e, protocol))?;
        spoken(stream.get_ref().1.alpn_protocol(), protocol)?;
        Ok(stream)
    }

    /// The configurations for a handshake beginning now: those of the revocation
    /// list on disk, looked at again if [`CRL_CHECK_INTERVAL`] has passed.
    async fn configs(&self) -> Configs {
        self.look_again().await;
        self.configs.read().expect("no writer panics").clone()
    }

    /// Looks at the revocation list file again if [`CRL_CHECK_INTERVAL`] has
    /// passed since anyone last did.
    async fn look_again(&self) {
        if let Some(watch) = &self.crl
            && let Some(seen) = watch.due()
        {
            self.reload(watch, seen).await;
        }
    }

    /// Resolves once the revocation list in force revokes `peer`, the certificate
    /// a connection's peer presented, looking at the file at least every
    /// [`CRL_CHECK_INTERVAL`] meanwhile: what ends a connection of a node revoked
    /// after it connected. Never, for a node with no list file to follow
    /// ([`Tls::ephemeral`]) or a certificate without a serial number.
    pub async fn until_revoked(&self, peer: &CertificateDer<'_>) {
        let serial =
            x509_parser::parse_x509_certificate(peer).map(|(_, cert)| cert.raw_serial().to_vec());
        let (Some(_), Ok(serial)) = (&self.crl, serial) else {
            return std::future::pending().await;
        };
        let mut revoked = self.revoked.subscribe();
        let mut tick = tokio::time::interval(CRL_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !revoked.borrow_and_update().contains(&serial) {
            tokio::select! {
                _ = tick.tick() => self.look_again().await,
                // Another connection or a handshake loaded a new list.
                _ = revoked.changed() => {}
            }
        }
    }

    /// Reads the revocation list again if it changed since `seen`, and builds the
    /// configurations of an admissible one (see [`Identity::admit`]), all off the
    /// async threads; an unreadable or refused list leaves the last good one in
    /// force.
    async fn reload(&self, watch: &crl::Watch, seen: Option<crl::Fingerprint>) -> crl::Reload {
        let path = watch.path().to_owned();
        let identity = self.identity.clone();
        let read = tokio::task::spawn_blocking(move || {
            let invalid = |error: std::io::Error| TrustError::Invalid {
                path: path.clone(),
                reason: error.to_string(),
            };
            let Some(found) = crl::read_if_changed(&path, seen).map_err(invalid)? else {
                return Ok(None);
            };
            let admitted = found
                .parse(&path)
                .and_then(|lists| identity.admit(lists, &path));
            Ok(Some((found.fingerprint(), admitted)))
        })
        .await;
        let outcome = match read {
            Ok(Ok(None)) => return crl::Reload::Unchanged,
            Ok(Ok(Some((fingerprint, admitted)))) => {
                watch.saw(fingerprint);
                admitted
            }
            Ok(Err(error)) => Err(error),
            // The runtime is shutting down: no handshake will need it.
            Err(_) => return crl::Reload::Unchanged,
        };
        match outcome {
            Ok((configs, serials)) => {
                *self.configs.write().expect("no writer panics") = configs;
                self.revoked.send_replace(Arc::new(serials));
                tracing::info!(path = %watch.path().display(), "loaded the changed revocation list");
                crl::Reload::Loaded
            }
            Err(error) => {
                tracing::error!(
                    "refused the revocation list {error}: keeping the one loaded before \
                     (replace the file with this cluster's CA's crl.pem)"
                );
                crl::Reload::Kept
            }
        }
    }
}

impl Identity {
    /// Parses credentials `pem`, read from `dir`.
    fn parse(pem: Pem, dir: &Path) -> Result<Identity, TrustError> {
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
        Ok(Identity {
            dir: dir.to_owned(),
            roots: Arc::new(roots),
            chain: certificates(CERT_FILE, &pem.cert)?,
            key: PrivateKeyDer::from_pem_slice(pem.key.as_bytes())
                .map_err(|e| invalid(KEY_FILE, format!("not a PEM private key: {e}")))?,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        })
    }

    /// The configurations refusing what `lists`, read from `path`, revoke, and
    /// the serial numbers they revoke, if this node may follow them: each list
    /// well-formed, signed by this node's CA (a list from another cluster would
    /// leave every peer's status unknown, so refused), and not revoking this
    /// node's own certificate. A node never follows a list revoking itself: its
    /// peers refuse it all the same, and a list revoking a certificate nodes
    /// share (`init`'s) must not make each of them refuse all the others.
    fn admit(
        &self,
        lists: Vec<CertificateRevocationListDer<'static>>,
        path: &Path,
    ) -> Result<(Configs, Serials), TrustError> {
        use rustls::{CertRevocationListError as CrlError, CertificateError, Error};
        let refused = |reason: String| TrustError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let (own, intermediates) = self.chain.split_first().expect("parse checked the chain");
        let mut serials = Serials::new();
        for (n, list) in lists.iter().enumerate() {
            let which = format!("its list {}", n + 1);
            let (_, parsed) = x509_parser::parse_x509_crl(list)
                .map_err(|e| refused(format!("{which} is not a revocation list: {e}")))?;
            // Verifying our own certificate with this list alone checks the list
            // as every handshake will: its issuer, its signature, and us.
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                self.roots.clone(),
                self.provider.clone(),
            )
            .with_crls([list.clone()])
            .build()
            .map_err(|e| refused(format!("{which}: {e}")))?;
            let checked = verifier.verify_client_cert(own, intermediates, UnixTime::now());
            let issuer = parsed.issuer();
            let reason = match checked {
                Ok(_) => None,
                Err(Error::InvalidCertificate(CertificateError::Revoked)) => Some(format!(
                    "{which} revokes this node's own certificate (its peers will refuse it: \
                     issue it a new one)"
                )),
                Err(Error::InvalidCertificate(CertificateError::UnknownRevocationStatus)) => {
                    Some(format!(
                        "{which} is not this cluster's: it was issued by \"{issuer}\", not by \
                         this node's CA"
                    ))
                }
                Err(Error::InvalidCertRevocationList(CrlError::BadSignature)) => Some(format!(
                    "{which}, issued by \"{issuer}\", is not signed by this node's CA"
                )),
                Err(other) => Some(format!("{which}: {other}")),
            };
            if let Some(reason) = reason {
                return Err(refused(reason));
            }
            serials.extend(
                parsed
                    .iter_revoked_certificates()
                    .map(|revoked| revoked.raw_serial().to_vec()),
            );
        }
        Ok((self.configs(lists)?, serials))
    }

    /// The configurations of this identity refusing the certificates `revoked`
    /// lists.
    fn configs(
        &self,
        revoked: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<Configs, TrustError> {
        use rustls::client::VerifierBuilderError;
        let invalid = |name: &str, reason: String| TrustError::Invalid {
            path: self.dir.join(name),
            reason,
        };
        let unverifiable = |e: VerifierBuilderError| match e {
            VerifierBuilderError::InvalidCrl(e) => {
                invalid(CRL_FILE, rustls::Error::from(e).to_string())
            }
            e => invalid(CA_FILE, e.to_string()),
        };
        let rejected = |e: rustls::Error| invalid(CERT_FILE, e.to_string());
        let provider = &self.provider;
        let servers = rustls::client::WebPkiServerVerifier::builder_with_provider(
            self.roots.clone(),
            provider.clone(),
        )
        .with_crls(revoked.clone())
        .build()
        .map_err(unverifiable)?;
        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(rejected)?
            .with_webpki_verifier(servers)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(rejected)?;
        let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots.clone(),
            provider.clone(),
        )
        .with_crls(revoked)
        .build()
        .map_err(unverifiable)?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(rejected)?
            .with_client_cert_verifier(clients)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(rejected)?;
        Ok(Configs {
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }
}

/// The TLS error behind `error`, a failed handshake or a failed read of a TLS
/// stream, if TLS is why it failed.
pub fn tls_error(error: &std::io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// The alert by which the peer refused our certificate (unknown, revoked, expired
/// or none), if that is why `error`, a read of a TLS stream, failed. In TLS 1.3 the
/// server checks the client's certificate after the client has finished its
/// handshake, so the refusal comes as the first thing the client reads.
pub fn refused_certificate(error: &std::io::Error) -> Option<&rustls::Error> {
    use rustls::AlertDescription as Alert;
    tls_error(error).filter(|tls| {
        matches!(
            tls,
            rustls::Error::AlertReceived(
                Alert::BadCertificate
                    | Alert::UnknownCA
                    | Alert::CertificateRequired
                    | Alert::CertificateUnknown
                    | Alert::CertificateRevoked
                    | Alert::CertificateExpired
                    | Alert::UnsupportedCertificate
                    | Alert::AccessDenied
            )
        )
    })
}

/// Whether a connection failed for a revoked certificate: the peer's (our
/// revocation list lists it) or ours (the peer said so).
pub fn is_revoked(error: &std::io::Error) -> bool {
    matches!(
        tls_error(error),
        Some(
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRevoked)
                | rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
        )
    )
}

/// A handshake's failure, said in our words when it failed for want of a common
/// protocol.
fn named(error: std::io::Error, protocol: &str) -> std::io::Error {
    let no_common_protocol = matches!(
        tls_error(&error),
        Some(
            rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)
                | rustls::Error::NoApplicationProtocol
        )
    );
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

mod crl;
mod issue;

pub use issue::{Issued, Revoked, issue, local_node, revoke};

#[cfg(test)]
mod tests;
