//! The server: accepts connections, reads request frames, hands each request to an
//! [`Invoker`] and writes its answer.
//!
//! Each connection is one task: it first reads the client's hello (version and token)
//! and asks the [`Invoker`] once what the token may invoke, then answers its requests
//! in order: read a frame, check its app against that [`Access`], invoke, write the
//! response, flush. Connections are independent, so a slow request holds up
//! only its own connection, and a client that disconnects, even inside a frame, ends
//! only its own task.

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;

use crate::protocol::{
    self, DEFAULT_MAX_FRAME_LEN, FrameError, Incoming, LENGTH_PREFIX_LEN, PROTOCOL_VERSION,
    RESPONSE_HEADER_LEN, RequestFrame, Status,
};
use crate::spin::Spinner;

/// Buffer size of a connection's reader and writer.
const BUFFER_SIZE: usize = 16 * 1024;

/// How long a connection being closed by the server is drained of what its client still
/// sends (so the answer already written is not lost to a reset), and how long a
/// connection beyond the limit may take to send the head of its first request.
const LINGER: Duration = Duration::from_secs(2);

/// Connections beyond the limit being answered [`Status::Busy`] at once; further ones
/// are closed without an answer.
const MAX_REJECTING: usize = 256;

/// How long to pause accepting after an error such as running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long a new connection may take to send its hello before it is closed.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest hello: its kind, version and token (a field of at most
/// [`protocol::MAX_FIELD_LEN`] bytes and its length).
const LONGEST_HELLO: usize = 1 + 2 + 2 + protocol::MAX_FIELD_LEN;

/// What a connection's token may invoke, decided once when the connection opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Every app.
    All,
    /// These apps only; a request for another is answered [`Status::Forbidden`].
    Apps(HashSet<String>),
}

/// What a connection's token may invoke, until the token is revoked.
#[derive(Clone, Debug)]
pub struct Grant {
    /// What it may invoke.
    pub access: Access,
    /// Set when the token is revoked: the connection's next request is answered
    /// [`Status::Unauthorized`] and the connection closed. Checked once a request,
    /// a relaxed load, so the invoke path keeps its speed.
    pub revoked: Arc<AtomicBool>,
}

impl Access {
    /// Whether a request for `app` may be invoked.
    pub fn allows(&self, app: &str) -> bool {
        match self {
            Access::All => true,
            Access::Apps(apps) => apps.contains(app),
        }
    }
}

/// One invocation: what to invoke, and the request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The app's name.
    pub app: String,
    /// The handler's name within the app.
    pub handler: String,
    /// The session the request belongs to, if any (never `Some("")`).
    pub session: Option<String>,
    /// The request body.
    pub body: Vec<u8>,
}

/// An invocation that produced no response body: the status to answer and its message.
///
/// A failure with [`Status::Ok`] makes no sense; the server answers it as
/// [`Status::HandlerFailed`].
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{status}: {message}")]
pub struct Failure {
    /// The status to answer.
    pub status: Status,
    /// A message for the client, UTF-8.
    pub message: String,
}

impl Failure {
    /// A failure with this status and message.
    pub fn new(status: Status, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }
}

/// What the server calls for each request: the seam where the gateway plugs in the
/// service manager.
pub trait Invoker: Send + Sync + 'static {
    /// Invokes `request.handler` of `request.app` and resolves to the response body, or
    /// to the failure to answer. Requests on one connection are invoked one at a time,
    /// in order; requests on different connections concurrently. The future runs to
    /// completion even if the client disconnects meanwhile. A panic, in this call or in
    /// the future, is answered as [`Status::Unavailable`].
    fn invoke(
        &self,
        request: Request,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, Failure>> + Send + 'static>>;

    /// What a connection whose hello carried `token` may invoke, or `None` to refuse
    /// the connection ([`Status::Unauthorized`]). Called once per connection, on its
    /// task, before any request is read: it must be quick (a lookup, not I/O). The
    /// grant holds for the connection's life, or until its `revoked` flag is set.
    fn authorize(&self, token: &str) -> Option<Grant>;
}

/// Limits of a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// The longest frame accepted, after its length prefix. A longer request frame is
    /// answered [`Status::BadRequest`] and its connection closed; a longer response
    /// body is answered [`Status::TooLarge`] instead, and a longer error message is
    /// cut to fit. Default: [`DEFAULT_MAX_FRAME_LEN`] (16 MiB + 1 KiB).
    pub max_frame_len: usize,
    /// The most connections served at once. A connection beyond it is answered
    /// [`Status::Busy`] to its first request, with request id 0 if the request is too
    /// short to carry one, and closed. Default: 10,000.
    pub max_connections: usize,
    /// How long a connection polls for its next request before parking (see
    /// `spin.rs`): a latency win for back-to-back requests, paid in CPU time when
    /// none comes. Default: 50 µs; zero never polls.
    pub spin: Duration,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_connections: 10_000,
            spin: Duration::from_micros(50),
        }
    }
}

/// Accepts connections on `listener` forever, serving each on its own task and every
/// request through `invoker`.
///
/// Errors accepting one connection are skipped, and running out of resources (such as
/// file descriptors) pauses accepting briefly, so this returns only if the listener
/// itself is unusable. Dropping the future stops accepting; connections already
/// accepted are served until their clients close them.
pub async fn serve(
    listener: TcpListener,
    invoker: Arc<dyn Invoker>,
    config: ServerConfig,
) -> io::Result<()> {
    let connections = Arc::new(Semaphore::new(
        config.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let rejecting = Arc::new(Semaphore::new(MAX_REJECTING));
    let activity = Arc::new(Activity::default());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) if is_connection_error(&error) => continue,
            Err(error) if error.kind() == io::ErrorKind::InvalidInput => return Err(error),
            Err(error) => {
                tracing::warn!(%error, "data plane: accepting failed; pausing before accepting again");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // A failure here means the connection is already gone; reading will tell.
        let _ = stream.set_nodelay(true);
        if let Ok(permit) = connections.clone().try_acquire_owned() {
            let (invoker, activity) = (invoker.clone(), activity.clone());
            tokio::spawn(async move {
                serve_connection(stream, &*invoker, &activity, config).await;
                drop(permit);
            });
        } else if let Ok(permit) = rejecting.clone().try_acquire_owned() {
            tokio::spawn(async move {
                reject_connection(stream, config).await;
                drop(permit);
            });
        }
    }
}

/// Errors about one incoming connection, which say nothing about the listener.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Answers the requests of one connection in order until the client closes it.
async fn serve_connection(
    stream: TcpStream,
    invoker: &dyn Invoker,
    activity: &Activity,
    config: ServerConfig,
) {
    let (read, write) = stream.into_split();
    let mut reader = BufReader::with_capacity(BUFFER_SIZE, read);
    let mut writer = BufWriter::with_capacity(BUFFER_SIZE, write);
    let Some(grant) = handshake(&mut reader, &mut writer, invoker, config).await else {
        return;
    };
    let mut spinner = Spinner::new(config.spin);
    loop {
        // Polling only pays while the server has nothing else to do.
        if reader.buffer().is_empty() && activity.serving.load(Ordering::Relaxed) == 0 {
            spinner.wait(reader.get_ref().as_ref(), Some(&activity.polling));
        }
        let frame = match protocol::read_frame(&mut reader, config.max_frame_len).await {
            Ok(Incoming::Frame(frame)) => frame,
            // Closed between frames, or inside one: either way the client is gone.
            Ok(Incoming::Closed) | Err(_) => return,
            Ok(Incoming::TooLarge(len)) => {
                return refuse_oversized(&mut reader, &mut writer, len, config).await;
            }
        };
        let _serving = activity.serve();
        let echo_id = protocol::echo_id(&frame);
        let revoked = grant.revoked.load(Ordering::Relaxed);
        let (id, outcome) = match protocol::decode_request(frame) {
            Ok(RequestFrame { id, .. }) if revoked => (
                id,
                Err(Failure::new(
                    Status::Unauthorized,
                    "this connection's token was revoked: connect with another",
                )),
            ),
            Ok(RequestFrame { id, request }) if !grant.access.allows(&request.app) => (
                id,
                Err(Failure::new(
                    Status::Forbidden,
                    format!(
                        "this connection's token may not invoke app `{}`",
                        request.app
                    ),
                )),
            ),
            Ok(RequestFrame { id, request }) => (id, invoke(invoker, request).await),
            Err(error) => (
                echo_id,
                Err(Failure::new(
                    Status::BadRequest,
                    format!("malformed request frame: {error}"),
                )),
            ),
        };
        if write_response(&mut writer, id, outcome, config.max_frame_len)
            .await
            .is_err()
            || revoked
        {
            return;
        }
    }
}

/// Answers a frame announced longer than the maximum [`Status::BadRequest`] and
/// closes the connection.
async fn refuse_oversized(
    reader: &mut BufReader<OwnedReadHalf>,
    writer: &mut BufWriter<OwnedWriteHalf>,
    len: u32,
    config: ServerConfig,
) {
    let message = format!(
        "frame of {len} bytes exceeds the maximum of {} bytes",
        config.max_frame_len
    );
    let answered = write_response(
        writer,
        0,
        Err(Failure::new(Status::BadRequest, message)),
        config.max_frame_len,
    )
    .await;
    if answered.is_ok() {
        linger(reader, writer, len.into()).await;
    }
}

/// Reads a connection's hello and answers it: [`Status::Ok`] with this server's
/// version (a `u16`) and the token's access, or a refusal (another version, an
/// unknown token, not a hello), after which the connection is closed.
async fn handshake(
    reader: &mut BufReader<OwnedReadHalf>,
    writer: &mut BufWriter<OwnedWriteHalf>,
    invoker: &dyn Invoker,
    config: ServerConfig,
) -> Option<Grant> {
    // Nothing longer than a hello is read from a caller not yet authorised.
    let longest = config.max_frame_len.min(LONGEST_HELLO);
    let frame = match timeout(HELLO_TIMEOUT, protocol::read_frame(reader, longest)).await {
        Ok(Ok(Incoming::Frame(frame))) => frame,
        Ok(Ok(Incoming::TooLarge(len))) => {
            let message = format!(
                "a connection opens with a hello of at most {longest} bytes, not a frame of {len}"
            );
            let _ = write_response(
                writer,
                0,
                Err(Failure::new(Status::BadRequest, message)),
                config.max_frame_len,
            )
            .await;
            return None;
        }
        // Gone, or silent past the bound.
        _ => return None,
    };
    let refusal = match protocol::decode_hello(&frame) {
        Ok(hello) if hello.version != PROTOCOL_VERSION => Failure::new(
            Status::WrongVersion,
            format!(
                "this server speaks data plane version {PROTOCOL_VERSION}, the client version {}",
                hello.version
            ),
        ),
        Ok(hello) => match invoker.authorize(&hello.token) {
            Some(grant) => {
                let version = PROTOCOL_VERSION.to_le_bytes().to_vec();
                return write_response(writer, 0, Ok(version), config.max_frame_len)
                    .await
                    .ok()
                    .map(|()| grant);
            }
            None => Failure::new(
                Status::Unauthorized,
                if hello.token.is_empty() {
                    "no token: connect with a token (`nimbus up` writes one to the client config)"
                } else {
                    "unknown token: it was revoked, or belongs to another nimbus"
                },
            ),
        },
        Err(FrameError::NotHello(protocol::REQUEST_KIND)) => Failure::new(
            Status::BadRequest,
            format!(
                "a request before the hello: this server speaks data plane version \
                 {PROTOCOL_VERSION}, whose connections open with a hello frame carrying \
                 the client's version and token; the client speaks version 1"
            ),
        ),
        Err(error) => Failure::new(
            Status::BadRequest,
            format!("malformed hello frame: {error}"),
        ),
    };
    // Answered with the request's id if a version 1 client sent one, so it reads the
    // message rather than an unexpected id.
    let id = protocol::echo_id(&frame);
    if write_response(writer, id, Err(refusal), config.max_frame_len)
        .await
        .is_ok()
    {
        linger(reader, writer, config.max_frame_len as u64).await;
    }
    None
}

/// What a server's connections are doing, to decide whether polling for a request
/// is worth a thread (see `spin.rs`).
#[derive(Default)]
struct Activity {
    /// Set while one connection polls for its next request: one at a time.
    polling: AtomicBool,
    /// Requests being served.
    serving: AtomicUsize,
}

impl Activity {
    fn serve(&self) -> Serving<'_> {
        self.serving.fetch_add(1, Ordering::Relaxed);
        Serving(&self.serving)
    }
}

/// A request being served, until dropped.
struct Serving<'a>(&'a AtomicUsize);

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Answers the first request of a connection beyond the limit [`Status::Busy`], from
/// the head of its frame alone, and closes it.
async fn reject_connection(stream: TcpStream, config: ServerConfig) {
    let (read, write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut writer = BufWriter::new(write);
    let head = timeout(LINGER, async {
        let mut prefix = [0; LENGTH_PREFIX_LEN];
        reader.read_exact(&mut prefix).await?;
        let len = u32::from_le_bytes(prefix);
        let mut head = [0; RESPONSE_HEADER_LEN];
        let head_len = RESPONSE_HEADER_LEN.min(len as usize);
        reader.read_exact(&mut head[..head_len]).await?;
        io::Result::Ok((len, head, head_len))
    })
    .await;
    let Ok(Ok((len, head, head_len))) = head else {
        return;
    };
    let message = format!(
        "the server is at its limit of {} connections; retry later",
        config.max_connections
    );
    let outcome = Err(Failure::new(Status::Busy, message));
    let id = protocol::echo_id(&head[..head_len]);
    if write_response(&mut writer, id, outcome, config.max_frame_len)
        .await
        .is_ok()
    {
        linger(&mut reader, &mut writer, u64::from(len) - head_len as u64).await;
    }
}

/// Closes a connection the server gives up on after answering: ends the writing side
/// first, then discards up to `unread` bytes the client still sends (for at most
/// [`LINGER`]), so that closing with unread data does not reset the connection and
/// destroy the answer before the client reads it.
async fn linger(
    reader: &mut BufReader<OwnedReadHalf>,
    writer: &mut BufWriter<OwnedWriteHalf>,
    unread: u64,
) {
    if writer.shutdown().await.is_err() {
        return;
    }
    let mut rest = reader.take(unread);
    let _ = timeout(LINGER, tokio::io::copy(&mut rest, &mut tokio::io::sink())).await;
}

/// Invokes one request, turning a panic of the invoker into a failure.
async fn invoke(invoker: &dyn Invoker, request: Request) -> Result<Vec<u8>, Failure> {
    let panicked = || Failure::new(Status::Unavailable, "the service failed internally");
    let Ok(future) = panic::catch_unwind(AssertUnwindSafe(|| invoker.invoke(request))) else {
        return Err(panicked());
    };
    CatchUnwind(future)
        .await
        .unwrap_or_else(|()| Err(panicked()))
}

/// A future that resolves to `Err(())` if polling its inner future panics.
struct CatchUnwind<F>(Pin<Box<F>>)
where
    F: Future + ?Sized;

impl<F: Future + ?Sized> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

/// Writes the answer to request `id` and flushes it. A body too long for a frame of
/// `max_frame_len` is answered [`Status::TooLarge`]; a message too long is cut.
async fn write_response<W: AsyncWrite + Unpin>(
    writer: &mut W,
    id: u64,
    outcome: Result<Vec<u8>, Failure>,
    max_frame_len: usize,
) -> io::Result<()> {
    let max_payload = max_frame_len.saturating_sub(RESPONSE_HEADER_LEN);
    let outcome = match outcome {
        Ok(body) if body.len() > max_payload => Err(Failure::new(
            Status::TooLarge,
            format!(
                "response body of {} bytes exceeds the maximum of {max_payload} bytes",
                body.len()
            ),
        )),
        Err(Failure {
            status: Status::Ok,
            message,
        }) => Err(Failure::new(Status::HandlerFailed, message)),
        other => other,
    };
    let (status, payload) = match outcome {
        Ok(body) => (Status::Ok, body),
        Err(Failure {
            status,
            mut message,
        }) => {
            message.truncate(message.floor_char_boundary(max_payload));
            (status, message.into_bytes())
        }
    };
    let header = protocol::response_header(id, status, payload.len())
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
    writer.write_all(&header).await?;
    writer.write_all(&payload).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn written(outcome: Result<Vec<u8>, Failure>, max_frame_len: usize) -> (Status, Vec<u8>) {
        let mut out = Vec::new();
        write_response(&mut out, 9, outcome, max_frame_len)
            .await
            .unwrap();
        let frame = protocol::decode_response(out[LENGTH_PREFIX_LEN..].to_vec()).unwrap();
        assert_eq!(frame.id, 9);
        (frame.status, frame.payload)
    }

    #[tokio::test]
    async fn bodies_too_long_for_a_frame_are_answered_too_large() {
        assert_eq!(
            written(Ok(vec![1; 11]), 20).await,
            (Status::Ok, vec![1; 11])
        );
        let (status, message) = written(Ok(vec![1; 12]), 20).await;
        assert_eq!(status, Status::TooLarge);
        assert!(message.len() <= 11);
    }

    #[tokio::test]
    async fn long_messages_are_cut_at_a_character_boundary() {
        let failure = Failure::new(Status::HandlerFailed, "ééééé");
        let (status, message) = written(Err(failure), RESPONSE_HEADER_LEN + 5).await;
        assert_eq!(status, Status::HandlerFailed);
        assert_eq!(message, "éé".as_bytes());
    }

    #[tokio::test]
    async fn a_failure_with_status_ok_is_answered_handler_failed() {
        let failure = Failure::new(Status::Ok, "confused");
        let (status, message) = written(Err(failure), 100).await;
        assert_eq!(
            (status, message),
            (Status::HandlerFailed, b"confused".to_vec())
        );
    }
}
