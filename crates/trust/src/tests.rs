use std::os::unix::fs::PermissionsExt;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// The protocol the tests' servers and clients speak.
const PROTOCOL: &str = "nimbus-test/1";

fn cluster() -> (tempfile::TempDir, Arc<Tls>) {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("cluster");
    init(&dir).unwrap();
    let tls = Tls::load(&dir).unwrap();
    (parent, tls)
}

/// A server on loopback answering each connection it accepts over TLS with one
/// byte; returns its address and what each handshake came to.
async fn server(tls: Arc<Tls>) -> (String, tokio::sync::mpsc::Receiver<std::io::Result<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (outcomes, received) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let outcome = match tls.accept(tcp, PROTOCOL).await {
                Ok(mut stream) => stream.write_all(b"!").await.and(stream.flush().await),
                Err(e) => Err(e),
            };
            outcomes.send(outcome).await.unwrap();
        }
    });
    (addr, received)
}

#[test]
fn init_writes_a_ca_and_a_node_credential_and_keeps_the_keys_private() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("cluster");
    init(&dir).unwrap();
    for (name, mode) in [
        (CA_FILE, 0o644),
        (CA_KEY_FILE, 0o600),
        (CERT_FILE, 0o644),
        (KEY_FILE, 0o600),
    ] {
        let meta = std::fs::metadata(dir.join(name)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
    }
    assert!(matches!(init(&dir), Err(TrustError::Exists(_))));
    // Nothing was left beside it.
    let entries: Vec<_> = std::fs::read_dir(parent.path()).unwrap().collect();
    assert_eq!(entries.len(), 1);
}

#[test]
fn nodes_ensuring_one_directory_at_once_end_with_one_ca() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("cluster");
    let created: Vec<bool> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| ensure(&dir).unwrap()))
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(created.iter().filter(|c| **c).count(), 1, "{created:?}");
    assert!(Tls::load(&dir).is_ok());
    assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 1);
}

#[test]
fn a_missing_or_damaged_directory_is_a_clear_error() {
    let parent = tempfile::tempdir().unwrap();
    let missing = Tls::load(&parent.path().join("none")).err().unwrap();
    assert!(
        missing.to_string().contains("nimbus cluster init"),
        "{missing}"
    );

    let dir = parent.path().join("cluster");
    init(&dir).unwrap();
    std::fs::write(dir.join(KEY_FILE), "junk").unwrap();
    let damaged = Tls::load(&dir).err().unwrap();
    assert!(damaged.to_string().contains(KEY_FILE), "{damaged}");
}

#[tokio::test]
async fn nodes_of_one_cluster_talk() {
    let (_dir, tls) = cluster();
    let (addr, mut outcomes) = server(tls.clone()).await;
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let mut stream = tls.connect(tcp, PROTOCOL).await.unwrap();
    let mut byte = [0];
    stream.read_exact(&mut byte).await.unwrap();
    assert_eq!(&byte, b"!");
    outcomes.recv().await.unwrap().unwrap();
}

#[tokio::test]
async fn a_node_of_another_cluster_is_refused_both_ways() {
    let (_ours, ours) = cluster();
    let (_theirs, theirs) = cluster();
    let (addr, mut outcomes) = server(ours.clone()).await;

    // Their client to our server: our server refuses the handshake.
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let connected = async {
        let mut stream = theirs.connect(tcp, PROTOCOL).await?;
        let mut byte = [0];
        stream.read_exact(&mut byte).await.map(|_| ())
    };
    assert!(connected.await.is_err());
    assert!(outcomes.recv().await.unwrap().is_err());

    // Our client to their server: our client refuses it.
    let (addr, _theirs_outcomes) = server(theirs).await;
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let refused = ours.connect(tcp, PROTOCOL).await.err().unwrap();
    assert!(refused.to_string().contains("certificate"), "{refused}");
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let (dir, tls) = cluster();
    let (addr, mut outcomes) = server(tls).await;
    let mut roots = RootCertStore::empty();
    let ca = std::fs::read(dir.path().join("cluster").join(CA_FILE)).unwrap();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let anonymous =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let name = ServerName::try_from(NODE_NAME).unwrap();
    let connected = async {
        let mut stream = TlsConnector::from(Arc::new(anonymous))
            .connect(name, tcp)
            .await?;
        let mut byte = [0];
        stream.read_exact(&mut byte).await.map(|_| ())
    };
    assert!(connected.await.is_err());
    let refused = outcomes.recv().await.unwrap().err().unwrap();
    assert!(refused.to_string().contains("certificate"), "{refused}");
}

#[tokio::test]
async fn a_peer_that_never_completes_the_handshake_is_dropped() {
    let (_dir, tls) = cluster();
    let (addr, mut outcomes) = server(tls).await;
    let _silent = TcpStream::connect(&addr).await.unwrap();
    let outcome = tokio::time::timeout(HANDSHAKE_DEADLINE * 3, outcomes.recv())
        .await
        .expect("the handshake deadline holds")
        .unwrap();
    assert_eq!(outcome.err().unwrap().kind(), std::io::ErrorKind::TimedOut);
}

#[tokio::test]
async fn a_node_speaking_another_protocol_is_refused_in_the_handshake_and_says_so() {
    let (_dir, tls) = cluster();
    let (addr, mut outcomes) = server(tls.clone()).await;
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let refused = tls.connect(tcp, "nimbus-test/2").await.err().unwrap();
    assert!(is_another_protocol(&refused), "{refused}");
    let refusal = outcomes.recv().await.unwrap().err().unwrap();
    assert!(is_another_protocol(&refusal), "{refusal}");
    assert!(
        refusal.to_string().contains("another nimbus release"),
        "{refusal}"
    );
}

/// A CA in a temporary directory, and that directory.
fn ca() -> (tempfile::TempDir, PathBuf) {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("ca");
    init(&dir).unwrap();
    (parent, dir)
}

/// Issues node `name` from the CA in `dir` into a directory beside it.
fn issued(dir: &Path, name: &str) -> PathBuf {
    let out = dir.parent().unwrap().join(name);
    let made = issue(dir, name, &out).unwrap();
    assert_eq!(made.name, name);
    out
}

/// Connects `client` to the server at `addr` and reads its byte.
async fn talk(client: &Tls, addr: &str) -> std::io::Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    let mut stream = client.connect(tcp, PROTOCOL).await?;
    let mut byte = [0];
    stream.read_exact(&mut byte).await.map(|_| ())
}

/// Puts the CA's revocation list into node directory `node` in one step, as an
/// operator's `cp` then `mv` does.
fn copy_crl(ca: &Path, node: &Path) {
    let staged = node.join(".crl.pem.new");
    std::fs::copy(ca.join(CRL_FILE), &staged).unwrap();
    std::fs::rename(&staged, node.join(CRL_FILE)).unwrap();
}

#[tokio::test]
async fn nodes_issued_by_one_ca_talk_and_a_node_of_another_ca_is_refused() {
    let (_parent, dir) = ca();
    let a = issued(&dir, "planner");
    let b = issued(&dir, "worker-1");
    for node in [&a, &b] {
        assert!(!node.join(CA_KEY_FILE).exists(), "the CA key went out");
        let mode = std::fs::metadata(node.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let recorded = std::fs::read_to_string(dir.join(ISSUED_FILE)).unwrap();
    assert!(recorded.contains("\"planner\"") && recorded.contains("\"worker-1\""));

    let (a, b) = (Tls::load(&a).unwrap(), Tls::load(&b).unwrap());
    let (addr, mut outcomes) = server(a.clone()).await;
    talk(&b, &addr).await.unwrap();
    outcomes.recv().await.unwrap().unwrap();
    // And the other way round.
    let (addr_b, mut outcomes_b) = server(b).await;
    talk(&a, &addr_b).await.unwrap();
    outcomes_b.recv().await.unwrap().unwrap();

    let (_other_parent, other) = ca();
    let stranger = Tls::load(&issued(&other, "worker-1")).unwrap();
    // It refuses our certificate before we see its own.
    let refused = talk(&stranger, &addr).await.unwrap_err();
    assert!(refused.to_string().contains("certificate"), "{refused}");
    assert!(outcomes.recv().await.unwrap().is_err());
    // As a server, our client refuses it.
    let (addr_s, _outcomes_s) = server(stranger).await;
    let refused = talk(&a, &addr_s).await.unwrap_err();
    assert!(refused.to_string().contains("certificate"), "{refused}");
}

#[test]
fn issue_refuses_a_name_issued_before_a_bad_name_and_a_taken_directory() {
    let (parent, dir) = ca();
    issued(&dir, "worker-1");
    let again = issue(&dir, "worker-1", &parent.path().join("again")).unwrap_err();
    assert!(matches!(again, TrustError::NameTaken { .. }), "{again}");
    assert!(!parent.path().join("again").exists());
    for bad in ["", "-x", ".x", "a b", "a/b", "ü", &"x".repeat(65)] {
        let refused = issue(&dir, bad, &parent.path().join("bad")).unwrap_err();
        assert!(
            matches!(refused, TrustError::BadName { .. }),
            "{bad:?}: {refused}"
        );
    }
    let taken = issue(&dir, "worker-2", &dir).unwrap_err();
    assert!(matches!(taken, TrustError::OutExists(_)), "{taken}");
    // A node directory holds no CA key to issue with.
    let node = parent.path().join("worker-1");
    let keyless = issue(&node, "worker-3", &parent.path().join("worker-3")).unwrap_err();
    assert!(keyless.to_string().contains(CA_KEY_FILE), "{keyless}");
    let unknown = revoke(&dir, "worker-9").unwrap_err();
    assert!(unknown.to_string().contains("worker-1"), "{unknown}");
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_by_servers_and_clients() {
    let (_parent, dir) = ca();
    let a = issued(&dir, "planner");
    let b = issued(&dir, "worker-1");
    let revoked = revoke(&dir, "worker-1").unwrap();
    assert_eq!((revoked.before, revoked.listed), (false, 1));
    copy_crl(&dir, &a);
    // A node issued after the revocation gets the list with its credentials.
    let c = issued(&dir, "worker-2");
    assert!(c.join(CRL_FILE).exists());
    let (a, b, c) = (
        Tls::load(&a).unwrap(),
        Tls::load(&b).unwrap(),
        Tls::load(&c).unwrap(),
    );

    // The revoked node as a client: the server refuses it.
    let (addr, mut outcomes) = server(a.clone()).await;
    assert!(talk(&b, &addr).await.is_err());
    let refusal = outcomes.recv().await.unwrap().err().unwrap();
    assert!(refusal.to_string().contains("Revoked"), "{refusal}");
    // A node not revoked still gets in.
    talk(&c, &addr).await.unwrap();
    outcomes.recv().await.unwrap().unwrap();

    // The revoked node as a server: the client refuses it.
    let (addr_b, _outcomes_b) = server(b).await;
    let refused = talk(&a, &addr_b).await.unwrap_err();
    assert!(refused.to_string().contains("Revoked"), "{refused}");
    let (addr_b, _outcomes_b) = server(c.clone()).await;
    talk(&a, &addr_b).await.unwrap();
}

#[tokio::test]
async fn a_replaced_revocation_list_is_followed_without_a_restart() {
    let (_parent, dir) = ca();
    let a = issued(&dir, "planner");
    let b = Tls::load(&issued(&dir, "worker-1")).unwrap();
    let a_dir = a.clone();
    let a = Tls::load(&a).unwrap();
    let (addr, mut outcomes) = server(a).await;
    talk(&b, &addr).await.unwrap();
    outcomes.recv().await.unwrap().unwrap();

    revoke(&dir, "worker-1").unwrap();
    copy_crl(&dir, &a_dir);
    // Within a few check intervals, the running server refuses the revoked node.
    let bound = std::time::Instant::now() + CRL_CHECK_INTERVAL * 10;
    loop {
        let _ = talk(&b, &addr).await;
        if outcomes.recv().await.unwrap().is_err() {
            break;
        }
        assert!(
            std::time::Instant::now() < bound,
            "the replaced list was never loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_invalid_revocation_list_fails_the_load_and_leaves_the_last_good_one_in_force() {
    let (_parent, dir) = ca();
    let a_dir = issued(&dir, "planner");
    let b = Tls::load(&issued(&dir, "worker-1")).unwrap();
    std::fs::write(a_dir.join(CRL_FILE), "junk").unwrap();
    let refused = Tls::load(&a_dir).unwrap_err();
    assert!(refused.to_string().contains(CRL_FILE), "{refused}");

    revoke(&dir, "worker-1").unwrap();
    copy_crl(&dir, &a_dir);
    let a = Tls::load(&a_dir).unwrap();
    let watch = a.crl.as_ref().unwrap();
    // Damaged on disk: the list loaded before stays in force.
    std::fs::write(a_dir.join(".junk"), "junk").unwrap();
    std::fs::rename(a_dir.join(".junk"), a_dir.join(CRL_FILE)).unwrap();
    assert_eq!(a.reload(watch, watch.seen()).await, crl::Reload::Kept);
    // Read once: the same damaged file is not read (nor warned about) again.
    assert_eq!(a.reload(watch, watch.seen()).await, crl::Reload::Unchanged);
    let (addr, mut outcomes) = server(a.clone()).await;
    assert!(talk(&b, &addr).await.is_err());
    assert!(outcomes.recv().await.unwrap().is_err());

    // Gone: nothing is revoked.
    std::fs::remove_file(a_dir.join(CRL_FILE)).unwrap();
    assert_eq!(a.reload(watch, watch.seen()).await, crl::Reload::Loaded);
    talk(&b, &addr).await.unwrap();
    outcomes.recv().await.unwrap().unwrap();
}

/// A revocation list signed by a CA of our CA's very name but another key: a
/// forgery, or another cluster's from before CAs had names of their own.
fn forged_crl(ca: &Path, serial: &[u8]) -> String {
    use rcgen::{CertificateRevocationListParams, Issuer, KeyPair};
    let ours = std::fs::read_to_string(ca.join(CA_FILE)).unwrap();
    let impostor = Issuer::from_ca_cert_pem(&ours, KeyPair::generate().unwrap()).unwrap();
    let now = time::OffsetDateTime::now_utc();
    CertificateRevocationListParams {
        this_update: now,
        next_update: now + VALIDITY,
        crl_number: rcgen::SerialNumber::from(1),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(serial),
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&impostor)
    .unwrap()
    .pem()
    .unwrap()
}

/// The serial number of the certificate in node directory `node`.
fn serial_of(node: &Path) -> Vec<u8> {
    let pem = std::fs::read(node.join(CERT_FILE)).unwrap();
    let der = CertificateDer::from_pem_slice(&pem).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.raw_serial().to_vec()
}

#[test]
fn every_ca_has_a_name_of_its_own() {
    let name = |dir: &Path| {
        let pem = std::fs::read(dir.join(CA_FILE)).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        cert.subject().to_string()
    };
    let ((_a, a), (_b, b)) = (ca(), ca());
    assert_ne!(name(&a), name(&b));
}

#[tokio::test]
async fn a_foreign_or_bad_revocation_list_is_refused_and_the_last_good_one_stays_in_force() {
    let (_parent, dir) = ca();
    let ours_dir = issued(&dir, "ours");
    let revoked_dir = issued(&dir, "revoked");
    let peer = Tls::load(&issued(&dir, "peer")).unwrap();
    let revoked = Tls::load(&revoked_dir).unwrap();
    // The list in force before: "revoked" is revoked.
    revoke(&dir, "revoked").unwrap();
    copy_crl(&dir, &ours_dir);
    let good = std::fs::read_to_string(dir.join(CRL_FILE)).unwrap();

    let (_other_parent, other) = ca();
    issued(&other, "peer");
    revoke(&other, "peer").unwrap();
    let foreign = std::fs::read_to_string(other.join(CRL_FILE)).unwrap();
    revoke(&dir, "ours").unwrap();
    let revoking_ours = std::fs::read_to_string(dir.join(CRL_FILE)).unwrap();
    let cases: [(&str, String, &str); 5] = [
        (
            "another cluster's",
            foreign.clone(),
            "is not this cluster's",
        ),
        (
            "one of our CA's name but another key",
            forged_crl(&dir, &serial_of(&ours_dir)),
            "is not signed by this node's CA",
        ),
        (
            "ours and another cluster's",
            format!("{good}{foreign}"),
            "its list 2 is not this cluster's",
        ),
        (
            "one revoking this node",
            revoking_ours,
            "revokes this node's own certificate",
        ),
        ("damaged", good.replace('A', "B"), CRL_FILE),
    ];
    let ours = Tls::load(&ours_dir).unwrap();
    let watch = ours.crl.as_ref().unwrap();
    let (addr, mut outcomes) = server(ours.clone()).await;
    for (what, crl, refusal) in cases {
        // At start: a clear error.
        let fresh = tempfile::tempdir().unwrap();
        for name in [CA_FILE, CERT_FILE, KEY_FILE] {
            std::fs::copy(ours_dir.join(name), fresh.path().join(name)).unwrap();
        }
        std::fs::write(fresh.path().join(CRL_FILE), &crl).unwrap();
        let error = Tls::load(fresh.path()).unwrap_err().to_string();
        assert!(error.contains(refusal), "{what}: {error}");

        // Replaced while running: refused, and the list before stays in force.
        std::fs::write(ours_dir.join(".staged"), &crl).unwrap();
        std::fs::rename(ours_dir.join(".staged"), ours_dir.join(CRL_FILE)).unwrap();
        assert_eq!(
            ours.reload(watch, watch.seen()).await,
            crl::Reload::Kept,
            "{what}"
        );
        talk(&peer, &addr).await.unwrap();
        outcomes.recv().await.unwrap().unwrap();
        assert!(talk(&revoked, &addr).await.is_err(), "{what}");
        let refused = outcomes.recv().await.unwrap().unwrap_err();
        assert!(is_revoked(&refused), "{what}: {refused}");
    }
}

#[tokio::test]
async fn an_open_connection_learns_its_peer_was_revoked_within_the_check_interval() {
    let (_parent, dir) = ca();
    let ours_dir = issued(&dir, "ours");
    let ours = Tls::load(&ours_dir).unwrap();
    let certificate = |name: &str| {
        let pem = std::fs::read(issued(&dir, name).join(CERT_FILE)).unwrap();
        CertificateDer::from_pem_slice(&pem).unwrap()
    };
    let (revoked, kept) = (certificate("revoked"), certificate("kept"));
    revoke(&dir, "revoked").unwrap();
    copy_crl(&dir, &ours_dir);
    // No handshake looks at the file: the watch itself does.
    let slack = Duration::from_secs(2);
    tokio::time::timeout(CRL_CHECK_INTERVAL + slack, ours.until_revoked(&revoked))
        .await
        .expect("the revocation was not seen in time");
    // Each look at the file after the one that loaded it finds nothing new.
    let kept = tokio::time::timeout(CRL_CHECK_INTERVAL * 2, ours.until_revoked(&kept)).await;
    assert!(kept.is_err(), "a node not revoked was taken for revoked");
}

#[test]
fn a_local_node_is_issued_once_and_follows_the_cas_own_list() {
    let (_parent, dir) = ca();
    let worker = local_node(&dir, "worker-1").unwrap();
    assert_eq!(
        local_node(&dir, "worker-1").unwrap(),
        worker,
        "issued again"
    );
    let other = local_node(&dir, "worker-2").unwrap();
    assert_ne!(
        std::fs::read(worker.join(CERT_FILE)).unwrap(),
        std::fs::read(other.join(CERT_FILE)).unwrap()
    );
    assert!(!worker.join(CA_KEY_FILE).exists(), "the CA key went out");
    // No list yet: nothing is revoked. Then the CA's list, with nothing copied.
    Tls::load(&worker).unwrap();
    revoke(&dir, "worker-2").unwrap();
    let refused = Tls::load(&other).unwrap_err().to_string();
    assert!(
        refused.contains("revokes this node's own certificate"),
        "{refused}"
    );
    Tls::load(&worker).unwrap();
}
