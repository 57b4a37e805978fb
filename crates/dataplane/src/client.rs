//! The client: one TCP connection, opened with a hello carrying its token, one
//! invocation at a time.

use std::io;
use std::time::Duration;

use crate::spin::Spinner;

/// How long a client polls for a response before parking, unless set: not at all,
/// since a client with many connections on few threads would starve its own.
const DEFAULT_SPIN: Duration = Duration::ZERO;

use thiserror::Error;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::protocol::{
    self, DEFAULT_MAX_FRAME_LEN, FrameError, Incoming, LENGTH_PREFIX_LEN, PROTOCOL_VERSION, Status,
};

/// Buffer size of the connection's reader and writer.
const BUFFER_SIZE: usize = 16 * 1024;

/// How long [`Client::connect`] waits for the answer to its hello.
pub const HELLO_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Why an invocation through a [`Client`] produced no response body.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The server answered with an error status. The connection usually stays usable;
    /// the server closes it after refusing a frame longer than it accepts (the client
    /// is then [`ClientError::Broken`]) or a connection beyond its limit (the next call
    /// fails with [`ClientError::Closed`] or [`ClientError::Io`]).
    #[error("the server answered {status}: {message}")]
    Server {
        /// The status answered; never [`Status::Ok`].
        status: Status,
        /// The server's message (invalid UTF-8 replaced).
        message: String,
    },
    /// Connecting, writing or reading failed.
    #[error("data plane connection failed: {0}")]
    Io(#[from] io::Error),
    /// The server closed the connection before answering.
    #[error("the server closed the connection before answering")]
    Closed,
    /// The server's answer is not a valid response frame.
    #[error("malformed response from the server: {0}")]
    Protocol(FrameError),
    /// The server answered another request than the one waiting.
    #[error("the server answered request {got} while request {expected} was waiting")]
    UnexpectedId {
        /// The id of the request sent.
        expected: u64,
        /// The id the response carried.
        got: u64,
    },
    /// The request cannot be sent (a name longer than 65,535 bytes, or a frame longer
    /// than the maximum); nothing was sent and the connection stays usable.
    #[error("the request cannot be sent: {0}")]
    InvalidRequest(FrameError),
    /// An earlier call failed or was cancelled midway, leaving the connection in an
    /// unknown state; connect again.
    #[error("the connection is unusable after an earlier failure or cancelled call; reconnect")]
    Broken,
}

/// A connection to a data plane server. Invocations on one client are sequential;
/// open several clients for concurrency.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
    next_id: u64,
    max_frame_len: usize,
    /// Set while a call is in flight and after a failure that desynchronizes the stream.
    broken: bool,
    /// Polls for the response before parking.
    spinner: Spinner,
}

impl Client {
    /// Connects to a server, with `TCP_NODELAY` set, and opens the connection with a
    /// hello carrying `token`, waiting for the server to accept it. A server that
    /// refuses the token answers [`Status::Unauthorized`], one of another version
    /// [`Status::WrongVersion`] (or, speaking version 1, which had no hello,
    /// [`Status::BadRequest`], reported with a message saying so); either is a
    /// [`ClientError::Server`], and the server closes the connection.
    pub async fn connect(addr: impl ToSocketAddrs, token: &str) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        let mut client = Client {
            reader: BufReader::with_capacity(BUFFER_SIZE, read),
            writer: BufWriter::with_capacity(BUFFER_SIZE, write),
            next_id: 1,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            broken: false,
            spinner: Spinner::new(DEFAULT_SPIN),
        };
        let hello = protocol::encode_hello(token).map_err(ClientError::InvalidRequest)?;
        client.writer.write_all(&hello).await?;
        client.writer.flush().await?;
        // A server that takes the connection but never answers is not waited on
        // for good.
        let response = tokio::time::timeout(HELLO_DEADLINE, client.read_response())
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the server did not answer the hello in time",
                )
            })??;
        match response.status {
            Status::Ok if response.id == 0 => Ok(client),
            Status::Ok => Err(ClientError::UnexpectedId {
                expected: 0,
                got: response.id,
            }),
            Status::BadRequest
                if String::from_utf8_lossy(&response.payload).contains("unknown frame kind") =>
            {
                Err(ClientError::Server {
                    status: Status::WrongVersion,
                    message: format!(
                        "the server does not know the hello frame of data plane version \
                         {PROTOCOL_VERSION}: it speaks an older version ({})",
                        String::from_utf8_lossy(&response.payload)
                    ),
                })
            }
            status => Err(ClientError::Server {
                status,
                message: String::from_utf8_lossy(&response.payload).into_owned(),
            }),
        }
    }

    /// Reads and decodes one response frame.
    async fn read_response(&mut self) -> Result<protocol::ResponseFrame, ClientError> {
        let frame = match protocol::read_frame(&mut self.reader, self.max_frame_len).await? {
            Incoming::Frame(frame) => frame,
            Incoming::Closed => return Err(ClientError::Closed),
            Incoming::TooLarge(len) => {
                return Err(ClientError::Protocol(FrameError::TooLarge {
                    len: len as usize,
                    max: self.max_frame_len,
                }));
            }
        };
        protocol::decode_response(frame).map_err(ClientError::Protocol)
    }

    /// Sets how long an invocation polls for its response before parking its thread
    /// (see the server's `spin`): lower latency for fast handlers, paid in CPU time;
    /// for a client with few connections and a thread to spare. Default: zero, never.
    pub fn set_spin(&mut self, spin: Duration) {
        self.spinner = Spinner::new(spin);
    }

    /// Sets the longest frame this client sends or accepts, after its length prefix.
    /// Default: [`DEFAULT_MAX_FRAME_LEN`] (16 MiB + 1 KiB), the server's default.
    pub fn set_max_frame_len(&mut self, max_frame_len: usize) {
        self.max_frame_len = max_frame_len;
    }

    /// Invokes `handler` of `app`, in `session` if given (`Some("")` counts as none),
    /// with `body`, and waits for the response body.
    ///
    /// Cancelling the call (dropping its future) leaves the connection
    /// [`ClientError::Broken`], as does any failure other than [`ClientError::Server`]
    /// for this request and [`ClientError::InvalidRequest`].
    pub async fn invoke(
        &mut self,
        app: &str,
        handler: &str,
        session: Option<&str>,
        body: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        if self.broken {
            return Err(ClientError::Broken);
        }
        let id = self.next_id;
        let header = protocol::request_header(id, app, handler, session, body.len())
            .map_err(ClientError::InvalidRequest)?;
        let frame_len = header.len() - LENGTH_PREFIX_LEN + body.len();
        if frame_len > self.max_frame_len {
            return Err(ClientError::InvalidRequest(FrameError::TooLarge {
                len: frame_len,
                max: self.max_frame_len,
            }));
        }
        // Id 0 is reserved for answers about the connection.
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        self.broken = true;
        self.writer.write_all(&header).await?;
        self.writer.write_all(body).await?;
        self.writer.flush().await?;
        if self.reader.buffer().is_empty() {
            self.spinner.wait(self.reader.get_ref().as_ref(), None);
        }
        let response = self.read_response().await?;
        let server_error = |payload: &[u8]| ClientError::Server {
            status: response.status,
            message: String::from_utf8_lossy(payload).into_owned(),
        };
        if response.id != id {
            if response.id == 0 && response.status != Status::Ok {
                // About the connection, which the server is closing.
                return Err(server_error(&response.payload));
            }
            return Err(ClientError::UnexpectedId {
                expected: id,
                got: response.id,
            });
        }
        self.broken = false;
        match response.status {
            Status::Ok => Ok(response.payload),
            _ => Err(server_error(&response.payload)),
        }
    }
}
