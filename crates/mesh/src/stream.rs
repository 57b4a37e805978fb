//! Connections handed over whole: a node opens one (TLS, like every connection
//! between nodes) to a peer with a hello frame, the peer's
//! [`Handler::adopt`](crate::Handler::adopt) answers with a frame, and from then on
//! the bytes are the two owners' business (the served state tier writes long
//! values over them).
//!
//! Such a connection starts, after its handshake, with [`MAGIC`], four bytes that
//! read as a frame length no frame may have, so [`serve`](crate::serve) tells the
//! two kinds apart on the listener every node already has.

use nimbus_trust::Tls;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::frame::{self, Frame};
use crate::{Connection, MeshError};

/// The first bytes of a handed-over connection: as a little-endian frame length,
/// far above [`crate::MAX_FRAME`].
pub(crate) const MAGIC: [u8; 4] = *b"NMST";

/// Opens a connection to the node at `addr` and hands it to its handler with
/// `hello`; returns the handler's answer and the connection. A peer that has not
/// answered within [`crate::KEEPALIVE_TIMEOUT`] is lost.
pub async fn open_stream(
    tls: &Tls,
    addr: &str,
    hello: &Frame,
) -> Result<(Frame, Connection), MeshError> {
    let lost = || MeshError::Lost {
        addr: addr.to_owned(),
    };
    let opened = async {
        let mut stream = crate::link::connect(tls, addr).await?;
        let mut opening = MAGIC.to_vec();
        frame::encode(&mut opening, 0, true, true, hello);
        let sent = async {
            tokio::io::AsyncWriteExt::write_all(&mut stream, &opening).await?;
            tokio::io::AsyncWriteExt::flush(&mut stream).await
        };
        sent.await.map_err(|_| lost())?;
        match read_frame(&mut stream).await {
            Ok(Some(answer)) => Ok((answer, stream)),
            Ok(None) | Err(_) => Err(lost()),
        }
    };
    // A frozen peer's kernel still accepts the connection: its answer never comes.
    tokio::time::timeout(crate::KEEPALIVE_TIMEOUT, opened)
        .await
        .unwrap_or_else(|_| Err(lost()))
}

/// Resolves once `tls`'s revocation list revokes the peer of `connection` (one
/// opened with [`open_stream`]): its owner must then end it, as a new one would be
/// refused. The accepting side is ended by [`serve`](crate::serve) itself. Owns what
/// it needs, so the owner can race it against its own use of the connection.
pub fn peer_revoked(
    tls: &std::sync::Arc<Tls>,
    connection: &Connection,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (tls, peer) = (tls.clone(), crate::link::peer_certificate(connection));
    async move { crate::link::revoked(&tls, peer.as_ref()).await }
}

/// A connection opened with [`open_stream`], waiting for its handler's answer.
pub struct Adoption {
    stream: Connection,
}

impl Adoption {
    pub(crate) fn new(stream: Connection) -> Adoption {
        Adoption { stream }
    }

    /// Sends `answer` to the opener and hands over the connection.
    pub async fn answer(mut self, answer: &Frame) -> std::io::Result<Connection> {
        write_frame(&mut self.stream, answer).await?;
        Ok(self.stream)
    }
}

/// Reads the hello of a handed-over connection, whose magic has been read.
pub(crate) async fn hello(stream: &mut Connection) -> std::io::Result<Frame> {
    read_frame(stream)
        .await?
        .ok_or_else(|| std::io::ErrorKind::UnexpectedEof.into())
}

/// Writes `frame` on a handed-over connection, for owners that go on in frames.
pub async fn write_frame(
    stream: &mut (impl AsyncWrite + Unpin),
    frame: &Frame,
) -> std::io::Result<()> {
    frame::write(stream, 0, false, true, frame).await
}

/// Reads a frame from a handed-over connection; `None` if it ended first.
pub async fn read_frame(stream: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Option<Frame>> {
    Ok(frame::read(stream).await?.map(|envelope| envelope.frame))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::{Handler, HandlerFuture, Link, Replier, serve};

    /// Answers calls with their own head; adopts a connection whose hello is "echo",
    /// answering "ok" and then echoing its bytes, and refuses any other.
    struct Adopter;

    impl Handler for Adopter {
        fn handle(self: Arc<Self>, request: Frame, replier: Replier) -> HandlerFuture {
            Box::pin(async move { replier.finish(request).await })
        }

        fn adopt(self: Arc<Self>, hello: Frame, adoption: Adoption) -> HandlerFuture {
            Box::pin(async move {
                if hello.head::<String>().unwrap() != "echo" {
                    drop(adoption.answer(&Frame::new(&"refused", Vec::new())).await);
                    return;
                }
                let mut stream = adoption
                    .answer(&Frame::new(&"ok", Vec::new()))
                    .await
                    .unwrap();
                let mut buf = vec![0; 64 << 10];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            stream.write_all(&buf[..n]).await.unwrap();
                            stream.flush().await.unwrap();
                        }
                    }
                }
            })
        }
    }

    async fn listening(handler: impl Handler) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(serve(listener, crate::test_tls(), Arc::new(handler)));
        addr
    }

    #[tokio::test]
    async fn a_handed_over_connection_carries_raw_bytes_beside_calls() {
        let addr = listening(Adopter).await;
        let (answer, stream) =
            open_stream(&crate::test_tls(), &addr, &Frame::new(&"echo", vec![1, 2]))
                .await
                .unwrap();
        assert_eq!(answer.head::<String>().unwrap(), "ok");
        let bytes: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let (mut read, mut write) = tokio::io::split(stream);
        let (echoed, ()) = tokio::join!(
            async {
                let mut echoed = vec![0; bytes.len()];
                read.read_exact(&mut echoed).await.unwrap();
                echoed
            },
            async {
                write.write_all(&bytes).await.unwrap();
                write.flush().await.unwrap();
            }
        );
        assert_eq!(echoed, bytes);

        // Calls on the same listener are unaffected.
        let link = Link::connect(&crate::test_tls(), &addr).await.unwrap();
        let answer = link.call_one(Frame::new(&"call", vec![7])).await.unwrap();
        assert_eq!(answer, Frame::new(&"call", vec![7]));

        let (refused, _) =
            open_stream(&crate::test_tls(), &addr, &Frame::new(&"other", Vec::new()))
                .await
                .unwrap();
        assert_eq!(refused.head::<String>().unwrap(), "refused");
    }

    #[tokio::test]
    async fn a_handler_that_adopts_nothing_leaves_the_opener_a_lost_connection() {
        struct CallsOnly;
        impl Handler for CallsOnly {
            fn handle(self: Arc<Self>, request: Frame, replier: Replier) -> HandlerFuture {
                Box::pin(async move { replier.finish(request).await })
            }
        }
        let addr = listening(CallsOnly).await;
        let opened = open_stream(&crate::test_tls(), &addr, &Frame::new(&"echo", Vec::new())).await;
        assert!(matches!(opened, Err(MeshError::Lost { .. })), "{opened:?}");
    }
    #[tokio::test]
    async fn a_handed_over_connection_ends_on_either_side_once_its_peer_is_revoked() {
        use nimbus_trust::{CRL_CHECK_INTERVAL, CRL_FILE};
        let (_parent, ca, mut nodes) = crate::test_nodes(&["opener", "revoked-opener", "server"]);
        let (server, server_dir) = nodes.pop().unwrap();
        let (revoked_opener, _) = nodes.pop().unwrap();
        let (opener, opener_dir) = nodes.pop().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(serve(listener, server, Arc::new(Adopter)));
        let open = |tls: Arc<Tls>| {
            let addr = addr.clone();
            async move {
                let (answer, mut stream) = open_stream(&tls, &addr, &Frame::new(&"echo", vec![]))
                    .await
                    .unwrap();
                assert_eq!(answer.head::<String>().unwrap(), "ok");
                stream.write_all(b"ping").await.unwrap();
                stream.flush().await.unwrap();
                let mut echoed = [0; 4];
                stream.read_exact(&mut echoed).await.unwrap();
                assert_eq!(&echoed, b"ping");
                stream
            }
        };
        let mut kept = open(opener.clone()).await;
        let mut cut = open(revoked_opener).await;
        // A node takes a new list in one step, as an operator's cp and mv.
        let hand_to = |dir: &std::path::Path| {
            let staged = dir.join(".crl.pem.new");
            std::fs::copy(ca.join(CRL_FILE), &staged).unwrap();
            std::fs::rename(&staged, dir.join(CRL_FILE)).unwrap();
        };
        // A look at the file within the check interval; slack for a loaded machine.
        let bound = CRL_CHECK_INTERVAL + Duration::from_secs(2);

        // The accepting side: the server shuts the connection of the opener it
        // learns is revoked, and keeps the other.
        nimbus_trust::revoke(&ca, "revoked-opener").unwrap();
        hand_to(&server_dir);
        let mut rest = Vec::new();
        tokio::time::timeout(bound, cut.read_to_end(&mut rest))
            .await
            .expect("the server kept the connection of a revoked peer")
            .ok();
        kept.write_all(b"more").await.unwrap();
        kept.flush().await.unwrap();
        let mut echoed = [0; 4];
        kept.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"more");

        // The opening side learns the server it opened to is revoked.
        nimbus_trust::revoke(&ca, "server").unwrap();
        hand_to(&opener_dir);
        tokio::time::timeout(bound, peer_revoked(&opener, &kept))
            .await
            .expect("the opener never learned its server was revoked");
    }
}
