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
