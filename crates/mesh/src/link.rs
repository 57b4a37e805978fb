//! Calls over a connection: the calling side ([`Link`]) and the answering side
//! ([`serve`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};

use std::io::Cursor;

use nimbus_trust::Tls;
use tokio::io::{AsyncReadExt, BufReader, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::TlsStream;
use tokio_rustls::rustls::pki_types::CertificateDer;

use crate::frame::{self, Envelope, Frame};
use crate::stream::{self, Adoption};
use crate::{KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, MeshError};

/// A connection between two nodes: TLS, both ends certified by the cluster's CA.
pub type Connection = TlsStream<TcpStream>;

type Writer = Arc<tokio::sync::Mutex<WriteHalf<Connection>>>;

/// Socket buffers large enough that a message of a few MiB is written in one go
/// rather than in rounds that each wait for the reader to wake.
const SOCKET_BUFFER: usize = 4 << 20;

/// Frames go out at once (no Nagle delay) and big ones without stalls. The kernel
/// caps the buffers at its `net.core.{w,r}mem_max`; failing to set them is harmless.
pub(crate) fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let socket = socket2::SockRef::from(stream);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
}

/// A tuned TCP connection to the node at `addr`.
pub(crate) async fn connect_tcp(addr: &str) -> Result<TcpStream, MeshError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| MeshError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    tune(&stream);
    Ok(stream)
}

/// A connection to the node at `addr`, over TLS: `addr` must prove it is a node of
/// this cluster, and so must we. A peer that has not finished the handshake within
/// its deadline is [`MeshError::Lost`], as silent as a frozen one.
pub(crate) async fn connect(tls: &Tls, addr: &str) -> Result<Connection, MeshError> {
    let tcp = connect_tcp(addr).await?;
    let stream = tls.connect(tcp, crate::PROTOCOL).await.map_err(|source| {
        let addr = addr.to_owned();
        match source.kind() {
            _ if nimbus_trust::is_another_protocol(&source) => MeshError::AnotherVersion { addr },
            // A frozen peer's kernel takes the connection; its process never answers.
            std::io::ErrorKind::TimedOut => MeshError::Lost { addr },
            _ => MeshError::Untrusted { addr, source },
        }
    })?;
    Ok(TlsStream::Client(stream))
}

/// The certificate the peer of `connection` presented, which its handshake checked.
pub(crate) fn peer_certificate(connection: &Connection) -> Option<CertificateDer<'static>> {
    let (_, tls) = connection.get_ref();
    Some(tls.peer_certificates()?.first()?.clone().into_owned())
}

/// Resolves once `tls`'s revocation list revokes `peer`, a connection's peer
/// certificate (never without one): the connection must then end, as a new
/// one would be refused.
pub(crate) async fn revoked(tls: &Tls, peer: Option<&CertificateDer<'_>>) {
    match peer {
        Some(peer) => tls.until_revoked(peer).await,
        None => std::future::pending().await,
    }
}

/// A second descriptor of a connection's socket, through which it can be shut
/// down while its halves are held elsewhere (shutting a socket acts on it, not on
/// one descriptor).
fn shutter(connection: &Connection) -> Option<OwnedFd> {
    connection.get_ref().0.as_fd().try_clone_to_owned().ok()
}

/// Why a connection ended, when the peer refused our certificate: in TLS 1.3 the
/// server checks it after the client has finished its handshake, so the refusal
/// comes as the first thing read. Calls on such a link fail as
/// [`MeshError::Untrusted`], not [`MeshError::Lost`].
type Refusal = Arc<std::sync::OnceLock<tokio_rustls::rustls::Error>>;

/// The error of a call on the link to `addr` that ended, `refused` or lost.
fn ended(addr: &str, refused: &Refusal) -> MeshError {
    let addr = addr.to_owned();
    match refused.get() {
        Some(why) => MeshError::Untrusted {
            addr,
            source: std::io::Error::other(why.clone()),
        },
        None => MeshError::Lost { addr },
    }
}

/// Calls waiting for replies, by id. `None` once the connection is gone.
type Pending = Arc<Mutex<Option<HashMap<u64, mpsc::UnboundedSender<Envelope>>>>>;

/// When a link's peer was declared lost for its silence, if it was.
type Silence = Arc<std::sync::OnceLock<Instant>>;

/// A connection to a peer, shared by every call to it.
pub struct Link {
    addr: String,
    write: Writer,
    pending: Pending,
    refused: Refusal,
    next_id: AtomicU64,
    /// Closed when the connection ends.
    open: watch::Receiver<()>,
    /// Set, before the connection counts as ended, if it ended for the peer's silence.
    silence: Silence,
}

impl Link {
    /// Connects to the peer at `addr`. The link ends once `tls`'s revocation list
    /// revokes the peer's certificate, its calls failing as
    /// [`MeshError::Untrusted`].
    pub async fn connect(tls: &Arc<Tls>, addr: &str) -> Result<Arc<Link>, MeshError> {
        let stream = connect(tls, addr).await?;
        let socket = shutter(&stream);
        let peer = peer_certificate(&stream);
        let tls = tls.clone();
        let peer_addr = addr.to_owned();
        let (read, write) = tokio::io::split(stream);
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let replies = pending.clone();
        let refused = Refusal::default();
        let refusal = refused.clone();
        let (connected, open) = watch::channel(());
        let silence = Silence::default();
        let fell_silent = silence.clone();
        let write = Arc::new(tokio::sync::Mutex::new(write));
        tokio::spawn(probe(Arc::downgrade(&write), open.clone()));
        tokio::spawn(async move {
            let _connected = connected;
            let mut read = BufReader::with_capacity(256 << 10, read);
            // Until the connection ends: when, if the peer answered no probe for
            // the timeout (it is frozen or gone).
            let reading = async {
                loop {
                    let envelope =
                        match tokio::time::timeout(KEEPALIVE_TIMEOUT, frame::read(&mut read)).await
                        {
                            Ok(Ok(Some(envelope))) => envelope,
                            Ok(Err(error)) => {
                                if let Some(refused) = nimbus_trust::refused_certificate(&error) {
                                    let _ = refusal.set(refused.clone());
                                }
                                return None;
                            }
                            Ok(Ok(None)) => return None,
                            Err(_) => return Some(Instant::now()),
                        };
                    if envelope.ping {
                        continue;
                    }
                    let mut pending = replies.lock().unwrap();
                    // Gone already: not for the peer's silence.
                    let calls = pending.as_mut()?;
                    let id = envelope.id;
                    let last = envelope.last;
                    if let Some(call) = calls.get(&id) {
                        let _ = call.send(envelope);
                    }
                    if last {
                        calls.remove(&id);
                    }
                }
            };
            let (silent, was_revoked) = tokio::select! {
                silent = reading => (silent, false),
                () = revoked(&tls, peer.as_ref()) => (None, true),
            };
            // Recorded first, so that whoever sees the link closed knows why.
            if let Some(at) = silent {
                let _ = fell_silent.set(at);
            }
            if was_revoked {
                tracing::warn!(peer = %peer_addr, "mesh: closed the link to a peer whose certificate was revoked");
                let _ = refusal.set(tokio_rustls::rustls::Error::InvalidCertificate(
                    tokio_rustls::rustls::CertificateError::Revoked,
                ));
            }
            // Dropping the senders tells every waiting call the peer is gone.
            replies.lock().unwrap().take();
            if silent.is_some() || was_revoked {
                shut(socket.as_ref());
            }
        });
        Ok(Arc::new(Link {
            addr: addr.to_owned(),
            write,
            pending,
            refused,
            next_id: AtomicU64::new(1),
            open,
            silence,
        }))
    }

    /// The peer's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether the connection still stands (a broken one is never repaired: connect
    /// anew).
    pub fn is_open(&self) -> bool {
        self.pending.lock().unwrap().is_some()
    }

    /// Resolves when the connection has ended: the peer is gone (or broke the
    /// protocol).
    pub async fn closed(&self) {
        let mut open = self.open.clone();
        while open.changed().await.is_ok() {}
    }

    /// Sends `request`; its replies arrive through the returned [`Replies`].
    pub async fn call(&self, request: Frame) -> Result<Replies, MeshError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::unbounded_channel();
        self.pending
            .lock()
            .unwrap()
            .as_mut()
            .ok_or_else(|| self.lost())?
            .insert(id, sender);
        // Written by a task of its own: a call dropped midway (its caller killed or
        // past a deadline) must not leave half a frame on the connection that
        // every other call shares.
        let write = self.write.clone();
        let written = tokio::spawn(async move {
            frame::write(&mut *write.lock().await, id, true, true, &request).await
        })
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("the runtime is shutting down")));
        if let Err(error) = written {
            if let Some(calls) = self.pending.lock().unwrap().as_mut() {
                calls.remove(&id);
            }
            // The peer refused our certificate (TLS 1.3 tells after the handshake):
            // the write may be what meets its alert, before the reader does.
            if let Some(refused) = nimbus_trust::refused_certificate(&error) {
                let _ = self.refused.set(refused.clone());
                return Err(MeshError::Untrusted {
                    addr: self.addr.clone(),
                    source: error,
                });
            }
            // A frame refused whole (too long) leaves the connection as it was.
            return Err(match error.kind() {
                std::io::ErrorKind::InvalidData => MeshError::Malformed(error.to_string()),
                _ => self.lost(),
            });
        }
        Ok(Replies {
            addr: self.addr.clone(),
            receiver,
            done: false,
            pending: self.pending.clone(),
            refused: self.refused.clone(),
            id,
        })
    }

    /// Sends `request` and returns its one reply.
    pub async fn call_one(&self, request: Frame) -> Result<Frame, MeshError> {
        self.call(request).await?.next().await
    }

    fn lost(&self) -> MeshError {
        ended(&self.addr, &self.refused)
    }
}

/// Probes the peer every [`KEEPALIVE_INTERVAL`] while the link is in use (its
/// writer alive) and open.
async fn probe(
    write: std::sync::Weak<tokio::sync::Mutex<WriteHalf<Connection>>>,
    mut open: watch::Receiver<()>,
) {
    let mut ticks = tokio::time::interval(KEEPALIVE_INTERVAL);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let Some(write) = write.upgrade() else { return };
                if frame::write_ping(&mut *write.lock().await, true).await.is_err() {
                    return;
                }
            }
            closed = open.changed() => if closed.is_err() { return },
        }
    }
}

/// Ends both directions of a connection whose peer fell silent, so that a writer
/// blocked on a peer that stopped reading fails instead of waiting for good.
fn shut(socket: Option<&OwnedFd>) {
    if let Some(socket) = socket {
        let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Both);
    }
}

/// Links to peers by address, each opened on first use and again once broken.
///
/// A peer found silent (its link's keepalive timed out, or a new connection's
/// handshake did) is lost to every call for [`KEEPALIVE_TIMEOUT`] from then on:
/// connecting anew to a peer that is still frozen would fail only after the
/// handshake's deadline, so each later call (a parent's send to its next child
/// there) would take as long again as the keepalive took to declare it lost.
pub struct Links {
    tls: Arc<Tls>,
    open: Mutex<HashMap<String, Peer>>,
}

/// What [`Links`] knows of a peer.
enum Peer {
    /// Its link, standing or ended.
    Linked(Arc<Link>),
    /// A new connection to it did not finish its handshake in time, then.
    Silent(Instant),
}

impl Peer {
    /// The link, if it stands.
    fn standing(&self) -> Option<&Arc<Link>> {
        match self {
            Peer::Linked(link) if link.is_open() => Some(link),
            _ => None,
        }
    }

    /// Whether the peer was found silent less than [`KEEPALIVE_TIMEOUT`] ago.
    fn lately_silent(&self) -> bool {
        let silent = match self {
            Peer::Linked(link) => link.silence.get().copied(),
            Peer::Silent(at) => Some(*at),
        };
        silent.is_some_and(|at| at.elapsed() < KEEPALIVE_TIMEOUT)
    }
}

impl Links {
    /// No links yet; each will be opened with `tls`.
    pub fn new(tls: Arc<Tls>) -> Links {
        Links {
            tls,
            open: Mutex::default(),
        }
    }

    /// The TLS the links are opened with.
    pub fn tls(&self) -> &Arc<Tls> {
        &self.tls
    }

    /// The link to `addr`, connecting (again) if there is none standing;
    /// [`MeshError::Lost`] at once while the peer is lately silent.
    pub async fn get(&self, addr: &str) -> Result<Arc<Link>, MeshError> {
        if let Some(peer) = self.open.lock().unwrap().get(addr) {
            if let Some(link) = peer.standing() {
                return Ok(link.clone());
            }
            if peer.lately_silent() {
                return Err(MeshError::Lost {
                    addr: addr.to_owned(),
                });
            }
        }
        let connected = Link::connect(&self.tls, addr).await;
        let mut open = self.open.lock().unwrap();
        // Another caller may have connected meanwhile: one link per peer, so that
        // no link in use is dropped from under its calls (a dropped link closes,
        // and its peer takes its callers for gone).
        if let Some(standing) = open.get(addr).and_then(Peer::standing) {
            return Ok(standing.clone());
        }
        let peer = match &connected {
            Ok(link) => Peer::Linked(link.clone()),
            Err(MeshError::Lost { .. }) => Peer::Silent(Instant::now()),
            Err(_) => return connected,
        };
        open.insert(addr.to_owned(), peer);
        connected
    }
}

/// The replies to one call, in order; the last one ends the call. Dropped before
/// the last, it stops waiting: later replies to it are dropped on arrival.
pub struct Replies {
    addr: String,
    receiver: mpsc::UnboundedReceiver<Envelope>,
    done: bool,
    pending: Pending,
    refused: Refusal,
    id: u64,
}

impl Drop for Replies {
    fn drop(&mut self) {
        if !self.done
            && let Some(calls) = self.pending.lock().unwrap().as_mut()
        {
            calls.remove(&self.id);
        }
    }
}

impl Replies {
    /// The next reply. After the last one, or when the connection broke first,
    /// [`MeshError::Lost`].
    pub async fn next(&mut self) -> Result<Frame, MeshError> {
        if !self.done
            && let Some(envelope) = self.receiver.recv().await
        {
            self.done = envelope.last;
            return Ok(envelope.frame);
        }
        self.done = true;
        Err(ended(&self.addr, &self.refused))
    }
}

/// A boxed, sendable future, what a [`Handler`] returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Answers requests. Each request runs on its own task, so a slow one does not
/// hold up the others on its connection.
pub trait Handler: Send + Sync + 'static {
    /// Answers `request` through `replier`, which it must finish.
    fn handle(self: Arc<Self>, request: Frame, replier: Replier) -> HandlerFuture;

    /// Takes over a connection opened with [`open_stream`](crate::open_stream),
    /// `hello` being what its opener sent; it must answer through `adoption`. A
    /// handler that takes none drops it, and the opener sees the connection lost.
    fn adopt(self: Arc<Self>, hello: Frame, adoption: Adoption) -> HandlerFuture {
        drop((hello, adoption));
        Box::pin(async {})
    }

    /// Takes over a message channel opened with [`open_channel`](crate::open_channel)
    /// on `ticket`, which the handler issued (through a call) and must check before
    /// it uses `stream`, answering with [`crate::accept_channel`]. A handler that
    /// issues no tickets drops it.
    fn redeem(self: Arc<Self>, ticket: crate::Ticket, stream: TcpStream) -> HandlerFuture {
        drop((ticket, stream));
        Box::pin(async {})
    }
}

/// Where the answers to one request go.
pub struct Replier {
    id: u64,
    write: Writer,
    /// Closed when the caller's connection ends.
    caller: watch::Receiver<()>,
}

impl Replier {
    /// Resolves when the caller's connection has ended: nobody will read the
    /// replies, and a caller that was a host is gone.
    pub async fn caller_gone(&self) {
        let mut caller = self.caller.clone();
        while caller.changed().await.is_ok() {}
    }

    /// Sends a reply that is not the last; `false` if the caller is gone.
    pub async fn send(&self, reply: Frame) -> bool {
        self.write_reply(reply, false).await
    }

    /// Sends the last reply, ending the call.
    pub async fn finish(self, reply: Frame) {
        self.write_reply(reply, true).await;
    }

    async fn write_reply(&self, reply: Frame, last: bool) -> bool {
        let mut write = self.write.lock().await;
        match frame::write(&mut *write, self.id, false, last, &reply).await {
            Ok(()) => true,
            // A reply too long to send: the caller must not wait for it forever,
            // so the connection ends and every call on it fails.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut *write).await;
                false
            }
            Err(_) => false,
        }
    }
}

/// How long [`serve`] pauses accepting after an error such as running out of file
/// descriptors, which only connections closing elsewhere can cure.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// Accepts connections on `listener` and hands every request to `handler`, forever.
///
/// Every connection is TLS from a node of this cluster (`tls`: its certificate
/// signed by the cluster's CA), or a message channel presenting a ticket
/// ([`crate::open_channel`]); any other is dropped before a byte of it is read as
/// a request.
///
/// An error accepting is logged and, unless it concerns only the one connection,
/// pauses accepting briefly ([`ACCEPT_BACKOFF`]); it never ends the server, so a guest
/// that uses up the process's descriptors cannot take its node down. Dropping the
/// future stops accepting.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    tls: Arc<Tls>,
    handler: Arc<H>,
) -> Infallible {
    let unproven = Arc::new(tokio::sync::Semaphore::new(
        nimbus_trust::MAX_UNPROVEN_CONNECTIONS,
    ));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Connections not yet proven (handshake, or ticket, under way) are
                // bounded, so a flood of idle sockets cannot use up the descriptors.
                let Ok(proving) = unproven.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "mesh: too many connections still proving themselves: dropped");
                    continue;
                };
                tune(&stream);
                tokio::spawn(answer(stream, tls.clone(), handler.clone(), proving));
            }
            Err(error) if is_connection_error(&error) => {
                tracing::debug!(%error, "mesh: a connection failed while being accepted");
            }
            Err(error) => {
                tracing::warn!(%error, "mesh: accepting failed; pausing before accepting again");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Errors about one incoming connection, which say nothing about the listener.
fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    )
}

async fn answer<H: Handler>(
    tcp: TcpStream,
    tls: Arc<Tls>,
    handler: Arc<H>,
    proving: tokio::sync::OwnedSemaphorePermit,
) {
    let peer = tcp
        .peer_addr()
        .map_or_else(|_| "an unknown peer".to_owned(), |addr| addr.to_string());
    let mut first = [0; 1];
    // A connection that says nothing is dropped like one that fails its handshake.
    match tokio::time::timeout(KEEPALIVE_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return,
    }
    if first[0] == crate::channel::MAGIC[0] {
        crate::channel::accept(tcp, handler, proving).await;
        return;
    }
    let mut stream = match tls.accept(tcp, crate::PROTOCOL).await {
        Ok(stream) => TlsStream::Server(stream),
        Err(error) if nimbus_trust::is_another_protocol(&error) => {
            tracing::warn!(%peer, %error, "mesh: refused a peer that does not speak this release's protocol");
            return;
        }
        Err(error) => {
            tracing::info!(%peer, %error, "mesh: refused a connection that is not from a node of this cluster");
            return;
        }
    };
    drop(proving);
    let socket = shutter(&stream);
    let peer_cert = peer_certificate(&stream);
    let mut first = [0; 4];
    match tokio::time::timeout(KEEPALIVE_TIMEOUT, stream.read_exact(&mut first)).await {
        Ok(Ok(_)) => {}
        _ => return,
    }
    let revocation = shut_once_revoked(&tls, peer_cert.as_ref(), socket.as_ref(), &peer);
    if first == stream::MAGIC {
        let hello = tokio::time::timeout(KEEPALIVE_TIMEOUT, stream::hello(&mut stream)).await;
        if let Ok(Ok(hello)) = hello {
            let adopted = handler.adopt(hello, Adoption::new(stream));
            tokio::pin!(adopted);
            tokio::select! {
                () = &mut adopted => return,
                () = revocation => {}
            }
            // Finished on its shut connection rather than dropped midway.
            adopted.await;
        }
        return;
    }
    let (read, write) = tokio::io::split(stream);
    let write: Writer = Arc::new(tokio::sync::Mutex::new(write));
    let (_connected, caller) = watch::channel(());
    // The first four bytes, read to tell the connection's kind, are a frame's length.
    let mut read = BufReader::with_capacity(256 << 10, Cursor::new(first).chain(read));
    // A peer that breaks the format loses its connection; nothing else is affected.
    // A caller probes every second: one silent for the timeout is frozen or gone.
    let serving = async {
        loop {
            let envelope =
                match tokio::time::timeout(KEEPALIVE_TIMEOUT, frame::read(&mut read)).await {
                    Ok(Ok(Some(envelope))) => envelope,
                    // The caller closed (or broke the format): replies already under
                    // way still reach it through its half of the connection.
                    Ok(_) => return,
                    Err(_) => {
                        shut(socket.as_ref());
                        return;
                    }
                };
            if envelope.ping {
                // Answered off this loop, so a reply stuck on a frozen caller never
                // keeps the loop from noticing the silence.
                let write = write.clone();
                tokio::spawn(async move {
                    let _ = frame::write_ping(&mut *write.lock().await, false).await;
                });
                continue;
            }
            if !envelope.request {
                return;
            }
            let replier = Replier {
                id: envelope.id,
                write: write.clone(),
                caller: caller.clone(),
            };
            // Most requests finish without waiting (a kill, a list of processes):
            // running their first step here spares them a hand-off to another
            // task. One that waits goes on on its own task; a future may be
            // polled by any waker.
            let mut request = handler.clone().handle(envelope.frame, replier);
            let mut first_step = Context::from_waker(Waker::noop());
            if request.as_mut().poll(&mut first_step).is_pending() {
                tokio::spawn(request);
            }
        }
    };
    tokio::select! {
        () = serving => {}
        // Ending the connection tells its handlers their caller is gone.
        () = revocation => {}
    }
}

/// Resolves once `tls`'s revocation list revokes `peer_cert`, the certificate of
/// the connection's peer at `peer`, having shut the connection's `socket`.
async fn shut_once_revoked(
    tls: &Tls,
    peer_cert: Option<&CertificateDer<'_>>,
    socket: Option<&OwnedFd>,
    peer: &str,
) {
    revoked(tls, peer_cert).await;
    tracing::warn!(%peer, "mesh: closed the connection of a peer whose certificate was revoked");
    shut(socket);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Echoes the body `n` times as separate replies, `n` from the head; "hang"
    /// never answers.
    struct Echo;

    impl Handler for Echo {
        fn handle(self: Arc<Self>, request: Frame, replier: Replier) -> HandlerFuture {
            Box::pin(async move {
                match request.head::<String>().unwrap().as_str() {
                    "hang" => std::future::pending().await,
                    "slow" => {
                        tokio::time::sleep(KEEPALIVE_INTERVAL * 3).await;
                        replier.finish(Frame::new(&"last", request.body)).await;
                    }
                    times => {
                        let n: usize = times.parse().unwrap();
                        for _ in 1..n {
                            replier
                                .send(Frame::new(&"more", request.body.clone()))
                                .await;
                        }
                        replier.finish(Frame::new(&"last", request.body)).await;
                    }
                }
            })
        }
    }

    async fn server() -> (String, tokio::task::JoinHandle<Infallible>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        (
            addr,
            tokio::spawn(serve(listener, crate::test_tls(), Arc::new(Echo))),
        )
    }

    /// The next connection to `listener`, past its TLS handshake as a node's.
    async fn accept_node(listener: &TcpListener) -> tokio_rustls::server::TlsStream<TcpStream> {
        let (stream, _) = listener.accept().await.unwrap();
        crate::test_tls()
            .accept(stream, crate::PROTOCOL)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn concurrent_calls_get_their_own_streams_of_replies() {
        let (addr, _server) = server().await;
        let link = Link::connect(&crate::test_tls(), &addr).await.unwrap();
        let calls = (1..=20u8).map(|i| {
            let link = link.clone();
            tokio::spawn(async move {
                let mut replies = link
                    .call(Frame::new(&(i % 3 + 1).to_string(), vec![i; 100]))
                    .await
                    .unwrap();
                let mut got = Vec::new();
                while let Ok(reply) = replies.next().await {
                    assert_eq!(reply.body, vec![i; 100]);
                    got.push(reply.head::<String>().unwrap());
                }
                assert_eq!(got.len(), usize::from(i % 3 + 1));
                assert_eq!(got.last().unwrap(), "last");
            })
        });
        for call in calls {
            call.await.unwrap();
        }
        assert!(link.is_open());
    }

    #[tokio::test]
    async fn a_lost_peer_fails_every_waiting_call() {
        // A peer that takes the requests and then dies without answering.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (taken, mut requests_in) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let stream = accept_node(&listener).await;
            let mut read = BufReader::new(stream);
            for _ in 0..2 {
                frame::read(&mut read).await.unwrap().unwrap();
                taken.send(()).unwrap();
            }
        });
        let link = Link::connect(&crate::test_tls(), &addr).await.unwrap();
        let mut first = link.call(Frame::new(&"1", vec![])).await.unwrap();
        let mut second = link.call(Frame::new(&"1", vec![])).await.unwrap();
        for _ in 0..2 {
            requests_in.recv().await.unwrap();
        }
        for replies in [&mut first, &mut second] {
            let outcome = tokio::time::timeout(Duration::from_secs(10), replies.next()).await;
            assert!(
                matches!(outcome, Ok(Err(MeshError::Lost { .. }))),
                "{outcome:?}"
            );
        }
        assert!(!link.is_open());
        tokio::time::timeout(Duration::from_secs(10), link.closed())
            .await
            .expect("a lost link reports itself closed");
        assert!(matches!(
            link.call(Frame::new(&"1", vec![])).await,
            Err(MeshError::Lost { .. })
        ));
    }

    /// Answers nothing, but reports when each request's caller is gone.
    struct Watcher(mpsc::UnboundedSender<()>);

    impl Handler for Watcher {
        fn handle(self: Arc<Self>, _: Frame, replier: Replier) -> HandlerFuture {
            Box::pin(async move {
                replier.caller_gone().await;
                let _ = self.0.send(());
            })
        }
    }

    #[tokio::test]
    async fn a_handler_learns_its_caller_is_gone() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (gone, mut gone_seen) = mpsc::unbounded_channel();
        tokio::spawn(serve(listener, crate::test_tls(), Arc::new(Watcher(gone))));
        let link = Link::connect(&crate::test_tls(), &addr).await.unwrap();
        let _replies = link.call(Frame::new(&"wait", vec![])).await.unwrap();
        drop(link);
        tokio::time::timeout(Duration::from_secs(10), gone_seen.recv())
            .await
            .expect("the handler never saw its caller go")
            .unwrap();
    }

    #[tokio::test]
    async fn a_frozen_peer_is_declared_lost_within_the_keepalive_timeout() {
        // A peer whose kernel takes the bytes but whose process never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut stream = accept_node(&listener).await;
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink).await;
        });
        let link = Link::connect(&crate::test_tls(), &addr).await.unwrap();
        let mut replies = link.call(Frame::new(&"1", vec![])).await.unwrap();
        let outcome = tokio::time::timeout(KEEPALIVE_TIMEOUT * 3, replies.next()).await;
        assert!(
            matches!(outcome, Ok(Err(MeshError::Lost { .. }))),
            "{outcome:?}"
        );
        assert!(!link.is_open());
    }

    /// A peer that answers probes, and each request with a first reply that is not
    /// the last (a start answering "started"), until told to freeze: then it reads
    /// and writes nothing more, its socket left open, and accepts no connection, as
    /// a stopped process. Told to thaw, it serves new connections as [`Echo`].
    async fn freezing_peer() -> (String, [tokio::sync::oneshot::Sender<()>; 2]) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (freeze, frozen) = tokio::sync::oneshot::channel::<()>();
        let (thaw, thawed) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let stream = accept_node(&listener).await;
            let (read, mut write) = tokio::io::split(stream);
            let mut read = BufReader::new(read);
            let answering = async {
                while let Ok(Some(envelope)) = frame::read(&mut read).await {
                    let answered = match envelope.ping {
                        true => frame::write_ping(&mut write, false).await,
                        false => {
                            let started = Frame::new(&"started", vec![]);
                            frame::write(&mut write, envelope.id, false, false, &started).await
                        }
                    };
                    answered.unwrap();
                }
            };
            tokio::select! {
                () = answering => {}
                _ = frozen => {}
            }
            // Frozen: the connection stays open, and nothing more is read or written.
            let _ = thawed.await;
            serve(listener, crate::test_tls(), Arc::new(Echo)).await;
            drop((read, write));
        });
        (addr, [freeze, thaw])
    }

    #[tokio::test]
    async fn every_call_to_a_peer_that_froze_fails_within_the_keepalive_timeout() {
        let (addr, [freeze, thaw]) = freezing_peer().await;
        let links = Links::new(crate::test_tls());
        // A call whose first reply came (a child's start: "started", its end to follow).
        let mut started = links
            .get(&addr)
            .await
            .unwrap()
            .call(Frame::new(&"start", vec![]))
            .await
            .unwrap();
        started.next().await.unwrap();
        let ended = tokio::spawn(async move { started.next().await });
        freeze.send(()).unwrap();
        let froze = tokio::time::Instant::now();
        // The keepalive bound: lost at most the timeout after the last frame heard,
        // which came before the freeze; two seconds of slack for a loaded machine.
        let bound = froze + KEEPALIVE_TIMEOUT + Duration::from_secs(2);
        // A second call (a channel's ticket), made on the same links a while later.
        tokio::time::sleep(KEEPALIVE_INTERVAL * 2).await;
        let second = async {
            let mut replies = links
                .get(&addr)
                .await?
                .call(Frame::new(&"ticket", vec![]))
                .await?;
            replies.next().await
        };
        let second = tokio::time::timeout_at(bound, second).await;
        assert!(
            matches!(second, Ok(Err(MeshError::Lost { .. }))),
            "the second call: {second:?}"
        );
        let ended = tokio::time::timeout_at(bound, ended).await;
        assert!(
            matches!(ended, Ok(Ok(Err(MeshError::Lost { .. })))),
            "the call answered once: {ended:?}"
        );
        // A call made once the peer was declared lost (a send to the next child
        // there) is not kept waiting for it again.
        let after = tokio::time::timeout_at(bound, links.get(&addr)).await;
        assert!(
            matches!(after, Ok(Err(MeshError::Lost { .. }))),
            "a call after the loss: {:?}",
            after.map(|link| link.map(|link| link.addr().to_owned()))
        );

        // Lost for the timeout only: a peer that answers again is connected to anew.
        thaw.send(()).unwrap();
        let reconnected = async {
            loop {
                match links.get(&addr).await {
                    Ok(link) => return link.call_one(Frame::new(&"1", b"x".to_vec())).await,
                    Err(_) => tokio::time::sleep(KEEPALIVE_INTERVAL / 10).await,
                }
            }
        };
        let reply = tokio::time::timeout(KEEPALIVE_TIMEOUT * 3, reconnected).await;
        assert_eq!(reply.expect("connected again").unwrap().body, b"x");
    }

    #[tokio::test]
    async fn a_caller_that_falls_silent_is_gone_for_its_handlers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (gone, mut gone_seen) = mpsc::unbounded_channel();
        tokio::spawn(serve(listener, crate::test_tls(), Arc::new(Watcher(gone))));
        // A request, then nothing: no probes, yet the connection stays open.
        let stream = TcpStream::connect(&addr).await.unwrap();
        let mut stream = crate::test_tls()
            .connect(stream, crate::PROTOCOL)
            .await
            .unwrap();
        frame::write(&mut stream, 1, true, true, &Frame::new(&"wait", vec![]))
            .await
            .unwrap();
        tokio::time::timeout(KEEPALIVE_TIMEOUT * 3, gone_seen.recv())
            .await
            .expect("the handler never saw its silent caller go")
            .unwrap();
        drop(stream);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_cancelled_midway_leave_the_link_whole() {
        let (addr, _server) = server().await;
        let link = Link::connect(&crate::test_tls(), &addr).await.unwrap();
        // Big frames, each call dropped at once or soon: most are cut off in the
        // middle of their writes.
        for round in 0..200u32 {
            let call = link.call(Frame::new(&"1", vec![round as u8; 4 << 20]));
            let _ = tokio::time::timeout(Duration::from_micros(u64::from(round % 50)), call).await;
        }
        for n in 0..20u8 {
            let sent = Frame::new(&"1", vec![n; 1000]);
            let reply = tokio::time::timeout(Duration::from_secs(30), link.call_one(sent.clone()))
                .await
                .expect("the link still answers")
                .unwrap();
            assert_eq!(reply.body, sent.body);
        }
        assert!(link.is_open());
        // Nothing is kept for the calls given up on once their replies came.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while link.pending.lock().unwrap().as_ref().map(HashMap::len) != Some(0) {
            assert!(std::time::Instant::now() < deadline, "calls left pending");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_reply_that_takes_several_probes_still_arrives() {
        let (addr, _server) = server().await;
        let link = Link::connect(&crate::test_tls(), &addr).await.unwrap();
        let reply = link
            .call_one(Frame::new(&"slow", b"x".to_vec()))
            .await
            .unwrap();
        assert_eq!(reply.body, b"x");
    }

    #[tokio::test]
    async fn an_idle_link_stays_open_past_the_timeout() {
        let (addr, _server) = server().await;
        let link = Link::connect(&crate::test_tls(), &addr).await.unwrap();
        tokio::time::sleep(KEEPALIVE_TIMEOUT * 2).await;
        assert!(link.is_open());
        let reply = link
            .call_one(Frame::new(&"1", b"x".to_vec()))
            .await
            .unwrap();
        assert_eq!(reply.body, b"x");
    }

    #[tokio::test]
    async fn a_request_stuck_in_its_handler_holds_up_no_other() {
        let (addr, _server) = server().await;
        let link = Link::connect(&crate::test_tls(), &addr).await.unwrap();
        let _hanging = link.call(Frame::new(&"hang", vec![])).await.unwrap();
        let reply = link
            .call_one(Frame::new(&"1", b"x".to_vec()))
            .await
            .unwrap();
        assert_eq!(reply.body, b"x");
    }

    #[tokio::test]
    async fn a_peer_without_tls_is_dropped_before_its_request_is_read() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        /// Reports each request the moment it is handed over.
        struct Seen(mpsc::UnboundedSender<()>);
        impl Handler for Seen {
            fn handle(self: Arc<Self>, _: Frame, replier: Replier) -> HandlerFuture {
                let _ = self.0.send(());
                Box::pin(async move { replier.finish(Frame::new(&"seen", vec![])).await })
            }
        }
        let (handled, mut handled_seen) = mpsc::unbounded_channel();
        tokio::spawn(serve(listener, crate::test_tls(), Arc::new(Seen(handled))));
        // A well-formed request frame, in the clear.
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        frame::write(&mut stream, 1, true, true, &Frame::new(&"wait", vec![]))
            .await
            .unwrap();
        let mut rest = Vec::new();
        let ended =
            tokio::time::timeout(KEEPALIVE_TIMEOUT * 3, stream.read_to_end(&mut rest)).await;
        assert!(ended.is_ok(), "the connection was not dropped");
        assert!(handled_seen.try_recv().is_err(), "a request was handled");

        // A client of another cluster fares no better.
        let theirs = nimbus_trust::Tls::ephemeral().unwrap();
        // TLS 1.3: the server refuses the client's certificate after the client
        // finished its handshake, so the refusal comes with the first call.
        let refused = match Link::connect(&theirs, &addr).await {
            Ok(link) => link.call_one(Frame::new(&"wait", vec![])).await.err(),
            Err(error) => Some(error),
        };
        assert!(
            matches!(refused, Some(MeshError::Untrusted { .. })),
            "{refused:?}"
        );
        assert!(handled_seen.try_recv().is_err(), "a request was handled");

        // A node of this cluster speaking another mesh version is refused in the
        // handshake, and told why.
        let tcp = TcpStream::connect(&addr).await.unwrap();
        let refused = crate::test_tls()
            .connect(tcp, "nimbus-mesh/1")
            .await
            .err()
            .unwrap();
        assert!(nimbus_trust::is_another_protocol(&refused), "{refused}");
        assert!(handled_seen.try_recv().is_err(), "a request was handled");
    }

    #[tokio::test]
    async fn a_peer_that_never_answers_a_new_connection_is_lost_and_then_at_once() {
        // A frozen process's listener: its kernel takes connections, nothing answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let links = Links::new(crate::test_tls());
        let slack = Duration::from_secs(2);
        let first =
            tokio::time::timeout(nimbus_trust::HANDSHAKE_DEADLINE + slack, links.get(&addr));
        assert!(
            matches!(first.await, Ok(Err(MeshError::Lost { .. }))),
            "a handshake never answered"
        );
        // Found silent: the next call is not kept waiting for it again.
        let next = tokio::time::timeout(slack, links.get(&addr)).await;
        assert!(
            matches!(next, Ok(Err(MeshError::Lost { .. }))),
            "a call right after"
        );
        drop(listener);
    }

    #[tokio::test]
    async fn a_revoked_peers_links_end_both_ways_and_the_others_stay_open() {
        use nimbus_trust::{CRL_CHECK_INTERVAL, CRL_FILE};
        let (_parent, ca, mut nodes) = crate::test_nodes(&["ours", "revoked", "kept"]);
        let (kept, _) = nodes.pop().unwrap();
        let (revoked, _) = nodes.pop().unwrap();
        let (ours, our_dir) = nodes.pop().unwrap();
        async fn serving(tls: &Arc<Tls>) -> String {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            tokio::spawn(serve(listener, tls.clone(), Arc::new(Echo)));
            addr
        }
        // Links in to our server from both others, and out from ours to theirs.
        let our_addr = serving(&ours).await;
        let revoked_in = Link::connect(&revoked, &our_addr).await.unwrap();
        let kept_in = Link::connect(&kept, &our_addr).await.unwrap();
        let revoked_out = Link::connect(&ours, &serving(&revoked).await)
            .await
            .unwrap();
        let kept_out = Link::connect(&ours, &serving(&kept).await).await.unwrap();
        let links = [&revoked_in, &kept_in, &revoked_out, &kept_out];
        for link in links {
            link.call_one(Frame::new(&"1", b"x".to_vec()))
                .await
                .unwrap();
        }

        nimbus_trust::revoke(&ca, "revoked").unwrap();
        // Only our node gets the new list, in one step as an operator's cp and mv.
        let staged = our_dir.join(".crl.pem.new");
        std::fs::copy(ca.join(CRL_FILE), &staged).unwrap();
        std::fs::rename(&staged, our_dir.join(CRL_FILE)).unwrap();
        // A look at the file within the check interval; slack for a loaded machine.
        let bound = Instant::now() + CRL_CHECK_INTERVAL + Duration::from_secs(2);
        for (link, side) in [(&revoked_in, "accepting"), (&revoked_out, "connecting")] {
            tokio::time::timeout_at(bound, link.closed())
                .await
                .unwrap_or_else(|_| panic!("the {side} side kept the revoked peer's link"));
        }
        let refused = revoked_out.call_one(Frame::new(&"1", vec![])).await;
        assert!(
            matches!(refused, Err(MeshError::Untrusted { .. })),
            "{refused:?}"
        );
        for link in [&kept_in, &kept_out] {
            let reply = link.call_one(Frame::new(&"1", b"x".to_vec())).await;
            assert_eq!(reply.unwrap().body, b"x");
        }
    }

    #[tokio::test]
    async fn an_unreachable_peer_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        assert!(matches!(
            Link::connect(&crate::test_tls(), &addr).await,
            Err(MeshError::Connect { .. })
        ));
    }
}

#[cfg(test)]
mod big_frames {
    use super::*;
    use crate::MAX_FRAME;

    struct Echo;

    impl Handler for Echo {
        fn handle(self: Arc<Self>, request: Frame, replier: Replier) -> HandlerFuture {
            Box::pin(async move { replier.finish(request).await })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn big_frames_go_back_and_forth() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(serve(listener, crate::test_tls(), Arc::new(Echo)));
        let link = Link::connect(&crate::test_tls(), &addr).await.unwrap();
        for len in [8usize, 70_000, 262_144, 1 << 20, 3 << 20, 16 << 20] {
            for _ in 0..10 {
                let sent = Frame::new(&len, vec![7; len]);
                let got = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    link.call_one(sent.clone()),
                )
                .await
                .unwrap_or_else(|_| panic!("a {len}-byte frame never came back"))
                .unwrap();
                assert_eq!(got, sent);
            }
        }
        // One over the limit is refused before a byte is written, and the link
        // carries on.
        let over = Frame::new(&0, vec![7; MAX_FRAME]);
        assert!(link.call_one(over).await.is_err());
        let sent = Frame::new(&"after", vec![1; 10]);
        assert_eq!(link.call_one(sent.clone()).await.unwrap(), sent);
    }
}
