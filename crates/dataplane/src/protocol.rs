//! The wire format: framing, statuses, and pure encoding and decoding of frames.
//!
//! Every frame travels as a `u32` little-endian length of what follows, then the frame.
//! All integers are little endian; strings are UTF-8 preceded by a `u16` length.
//!
//! ```text
//! hello frame:    u8 kind = 2         (the first frame of every connection)
//!                 u16 version         (PROTOCOL_VERSION)
//!                 u16 token length    token
//! request frame:  u8 kind = 1
//!                 u64 request id
//!                 u16 app length      app name
//!                 u16 handler length  handler name
//!                 u16 session length  session id (length 0 = no session)
//!                 body                (the rest of the frame)
//! response frame: u8 status
//!                 u64 request id      (echoed from the request)
//!                 payload             (the response body for status 0, else a UTF-8 message)
//! ```
//!
//! A response about the connection rather than one request (a frame longer than the
//! maximum, a server at its connection limit, a frame too short or of an unknown kind
//! to carry an id) carries request id 0, which clients never use.
//!
//! Encoders return the length prefix followed by the frame; decoders take the frame
//! without its prefix, as the reading side sees it after reading the length. Decoders
//! never panic: any input is either a frame or a [`FrameError`].

use std::fmt;
use std::io;

use thiserror::Error;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

use crate::server::Request;

/// The kind byte of a request frame.
pub const REQUEST_KIND: u8 = 1;

/// The kind byte of a hello frame, the first a client sends on a connection.
pub const HELLO_KIND: u8 = 2;

/// The version of the protocol this crate speaks, carried by the hello frame.
/// Version 1 had no hello: its connections began with a request.
pub const PROTOCOL_VERSION: u16 = 2;

/// Bytes of the length prefix in front of every frame.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Bytes of a response frame before its payload: the status and the request id.
pub const RESPONSE_HEADER_LEN: usize = 9;

/// The longest app name, handler name or session id a frame can carry.
pub const MAX_FIELD_LEN: usize = u16::MAX as usize;

/// The default maximum length of a frame (after its prefix): 16 MiB of body, like the
/// platform's message limit, plus 1 KiB for the header fields.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024 + 1024;

/// What is reserved up front for an incoming frame; the rest grows as bytes arrive, so
/// a peer announcing a large frame and sending nothing holds no large buffer.
const INITIAL_FRAME_CAPACITY: usize = 64 * 1024;

/// The outcome of an invocation, as carried by the first byte of a response frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// The handler answered; the payload is the response body.
    Ok = 0,
    /// No app or no handler of that name.
    NotFound = 1,
    /// A request or response body exceeds a limit.
    TooLarge = 2,
    /// The server or the service is at capacity: back off and retry.
    Busy = 3,
    /// The handler failed: it trapped, returned a non-zero status, or hit a limit.
    HandlerFailed = 4,
    /// The frame was malformed or longer than the maximum.
    BadRequest = 5,
    /// The service cannot serve now (starting, stopping, or failed internally).
    Unavailable = 6,
    /// The hello carried no token the server knows; the connection is closed.
    Unauthorized = 7,
    /// The connection's token may not invoke this app.
    Forbidden = 8,
    /// The hello carried another protocol version; the connection is closed.
    WrongVersion = 9,
}

impl Status {
    /// Every status, in wire order.
    pub const ALL: [Status; 10] = [
        Status::Ok,
        Status::NotFound,
        Status::TooLarge,
        Status::Busy,
        Status::HandlerFailed,
        Status::BadRequest,
        Status::Unavailable,
        Status::Unauthorized,
        Status::Forbidden,
        Status::WrongVersion,
    ];

    /// The status's byte on the wire.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The status a wire byte stands for, or `None` for an unknown byte.
    pub const fn from_u8(byte: u8) -> Option<Status> {
        match byte {
            0 => Some(Status::Ok),
            1 => Some(Status::NotFound),
            2 => Some(Status::TooLarge),
            3 => Some(Status::Busy),
            4 => Some(Status::HandlerFailed),
            5 => Some(Status::BadRequest),
            6 => Some(Status::Unavailable),
            7 => Some(Status::Unauthorized),
            8 => Some(Status::Forbidden),
            9 => Some(Status::WrongVersion),
            _ => None,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::NotFound => "not found",
            Status::TooLarge => "too large",
            Status::Busy => "busy",
            Status::HandlerFailed => "handler failed",
            Status::BadRequest => "bad request",
            Status::Unavailable => "unavailable",
            Status::Unauthorized => "unauthorized",
            Status::Forbidden => "forbidden",
            Status::WrongVersion => "wrong version",
        })
    }
}

/// Why bytes are not a valid frame, or why a frame cannot be encoded.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// The frame ended inside the named field.
    #[error("frame truncated in its {0}")]
    Truncated(&'static str),
    /// The named string field is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    /// A request frame whose kind byte is not [`REQUEST_KIND`].
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A connection's first frame that is not a hello.
    #[error("frame kind {0} where a hello (kind {HELLO_KIND}) belongs")]
    NotHello(u8),
    /// A response frame whose status byte is no [`Status`].
    #[error("unknown status {0}")]
    UnknownStatus(u8),
    /// A string field longer than [`MAX_FIELD_LEN`] (when encoding).
    #[error("{field} is {len} bytes, more than the {MAX_FIELD_LEN} a frame can carry")]
    FieldTooLong {
        /// The field: "app name", "handler name" or "session id".
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// A frame longer than a maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The frame's length, without its prefix.
        len: usize,
        /// The maximum it exceeds.
        max: usize,
    },
}

/// A decoded request frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestFrame {
    /// The id the client chose; the response echoes it.
    pub id: u64,
    /// What to invoke, and the body.
    pub request: Request,
}

/// A decoded hello frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The protocol version the client speaks.
    pub version: u16,
    /// The client's token; empty when its version is not [`PROTOCOL_VERSION`], whose
    /// layout past the version this side cannot know.
    pub token: String,
}

/// A decoded response frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseFrame {
    /// The id of the request answered, or 0 for an answer about the connection.
    pub id: u64,
    /// The outcome.
    pub status: Status,
    /// The response body for [`Status::Ok`], else a UTF-8 error message.
    pub payload: Vec<u8>,
}

/// Encodes a request: the length prefix followed by the request frame. A session of
/// `None` or `Some("")` is sent as no session.
pub fn encode_request(
    id: u64,
    app: &str,
    handler: &str,
    session: Option<&str>,
    body: &[u8],
) -> Result<Vec<u8>, FrameError> {
    let mut out = request_header(id, app, handler, session, body.len())?;
    out.extend_from_slice(body);
    Ok(out)
}

/// Decodes a request frame (without its length prefix). The frame's buffer becomes
/// the request's body.
pub fn decode_request(mut frame: Vec<u8>) -> Result<RequestFrame, FrameError> {
    let mut cursor = Cursor {
        bytes: &frame,
        pos: 0,
    };
    let kind = cursor.u8("kind")?;
    if kind != REQUEST_KIND {
        return Err(FrameError::UnknownKind(kind));
    }
    let id = cursor.u64("request id")?;
    let app = cursor.string("app name")?;
    let handler = cursor.string("handler name")?;
    let session = cursor.string("session id")?;
    let body_start = cursor.pos;
    frame.drain(..body_start);
    Ok(RequestFrame {
        id,
        request: Request {
            app,
            handler,
            session: (!session.is_empty()).then_some(session),
            body: frame,
        },
    })
}

/// Encodes a hello of this version carrying `token`: the length prefix followed by
/// the hello frame.
pub fn encode_hello(token: &str) -> Result<Vec<u8>, FrameError> {
    encode_hello_of_version(PROTOCOL_VERSION, token)
}

/// Encodes a hello claiming `version`, for tests of how a peer of another version
/// is refused.
pub fn encode_hello_of_version(version: u16, token: &str) -> Result<Vec<u8>, FrameError> {
    if token.len() > MAX_FIELD_LEN {
        return Err(FrameError::FieldTooLong {
            field: "token",
            len: token.len(),
        });
    }
    let frame_len = 1 + 2 + 2 + token.len();
    let mut out = Vec::with_capacity(LENGTH_PREFIX_LEN + frame_len);
    out.extend_from_slice(&(frame_len as u32).to_le_bytes());
    out.push(HELLO_KIND);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(token.len() as u16).to_le_bytes());
    out.extend_from_slice(token.as_bytes());
    Ok(out)
}

/// Decodes a hello frame (without its length prefix). The token of a hello of
/// another version is not read (see [`Hello::token`]).
pub fn decode_hello(frame: &[u8]) -> Result<Hello, FrameError> {
    let mut cursor = Cursor {
        bytes: frame,
        pos: 0,
    };
    let kind = cursor.u8("kind")?;
    if kind != HELLO_KIND {
        return Err(FrameError::NotHello(kind));
    }
    let mut version = [0; 2];
    version.copy_from_slice(cursor.take(2, "version")?);
    let version = u16::from_le_bytes(version);
    if version != PROTOCOL_VERSION {
        return Ok(Hello {
            version,
            token: String::new(),
        });
    }
    let token = cursor.string("token")?;
    Ok(Hello { version, token })
}

/// Encodes a response: the length prefix followed by the response frame.
pub fn encode_response(id: u64, status: Status, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let header = response_header(id, status, payload.len())?;
    let mut out = Vec::with_capacity(header.len() + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    Ok(out)
}

/// Decodes a response frame (without its length prefix). The frame's buffer becomes
/// the payload.
pub fn decode_response(mut frame: Vec<u8>) -> Result<ResponseFrame, FrameError> {
    let mut cursor = Cursor {
        bytes: &frame,
        pos: 0,
    };
    let byte = cursor.u8("status")?;
    let status = Status::from_u8(byte).ok_or(FrameError::UnknownStatus(byte))?;
    let id = cursor.u64("request id")?;
    let payload_start = cursor.pos;
    frame.drain(..payload_start);
    Ok(ResponseFrame {
        id,
        status,
        payload: frame,
    })
}

/// The length prefix and every field of a request frame except the body, for a body of
/// `body_len` bytes.
pub(crate) fn request_header(
    id: u64,
    app: &str,
    handler: &str,
    session: Option<&str>,
    body_len: usize,
) -> Result<Vec<u8>, FrameError> {
    let session = session.unwrap_or("");
    let fields = [
        ("app name", app),
        ("handler name", handler),
        ("session id", session),
    ];
    for (field, value) in fields {
        if value.len() > MAX_FIELD_LEN {
            return Err(FrameError::FieldTooLong {
                field,
                len: value.len(),
            });
        }
    }
    let header_len = 1 + 8 + 3 * 2 + app.len() + handler.len() + session.len();
    let frame_len = header_len.saturating_add(body_len);
    let prefix = u32::try_from(frame_len).map_err(|_| FrameError::TooLarge {
        len: frame_len,
        max: u32::MAX as usize,
    })?;
    let mut out = Vec::with_capacity(LENGTH_PREFIX_LEN + header_len + body_len);
    out.extend_from_slice(&prefix.to_le_bytes());
    out.push(REQUEST_KIND);
    out.extend_from_slice(&id.to_le_bytes());
    for (_, value) in fields {
        // Checked above: every field fits in a u16.
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    Ok(out)
}

/// The length prefix, status and request id of a response frame with a payload of
/// `payload_len` bytes.
pub(crate) fn response_header(
    id: u64,
    status: Status,
    payload_len: usize,
) -> Result<[u8; LENGTH_PREFIX_LEN + RESPONSE_HEADER_LEN], FrameError> {
    let frame_len = RESPONSE_HEADER_LEN.saturating_add(payload_len);
    let prefix = u32::try_from(frame_len).map_err(|_| FrameError::TooLarge {
        len: frame_len,
        max: u32::MAX as usize,
    })?;
    let mut out = [0; LENGTH_PREFIX_LEN + RESPONSE_HEADER_LEN];
    out[..4].copy_from_slice(&prefix.to_le_bytes());
    out[4] = status.as_u8();
    out[5..].copy_from_slice(&id.to_le_bytes());
    Ok(out)
}

/// The request id to echo when answering a frame that may not decode: its id if it is
/// a request frame long enough to hold one, else 0.
pub(crate) fn echo_id(frame: &[u8]) -> u64 {
    match frame {
        [REQUEST_KIND, id @ ..] if id.len() >= 8 => {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&id[..8]);
            u64::from_le_bytes(bytes)
        }
        _ => 0,
    }
}

/// What reading one frame from a stream produced.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A whole frame, without its length prefix.
    Frame(Vec<u8>),
    /// The peer closed the stream cleanly between frames.
    Closed,
    /// The length prefix announced a frame longer than the maximum; nothing after the
    /// prefix has been read.
    TooLarge(u32),
}

/// Reads one frame of at most `max_len` bytes. The peer closing the stream inside a
/// frame is an [`io::ErrorKind::UnexpectedEof`] error.
pub(crate) async fn read_frame<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max_len: usize,
) -> io::Result<Incoming> {
    if reader.fill_buf().await?.is_empty() {
        return Ok(Incoming::Closed);
    }
    let mut prefix = [0; LENGTH_PREFIX_LEN];
    reader.read_exact(&mut prefix).await?;
    let len = u32::from_le_bytes(prefix);
    if len as usize > max_len {
        return Ok(Incoming::TooLarge(len));
    }
    let len = len as usize;
    let mut frame = Vec::with_capacity(len.min(INITIAL_FRAME_CAPACITY));
    (&mut *reader)
        .take(len as u64)
        .read_to_end(&mut frame)
        .await?;
    if frame.len() < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Incoming::Frame(frame))
}

/// Reads fields front to back, reporting which one a frame ended in.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], FrameError> {
        let bytes = self
            .bytes
            .get(self.pos..)
            .and_then(|rest| rest.get(..n))
            .ok_or(FrameError::Truncated(field))?;
        self.pos += n;
        Ok(bytes)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, FrameError> {
        Ok(self.take(1, field)?[0])
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, FrameError> {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(self.take(8, field)?);
        Ok(u64::from_le_bytes(bytes))
    }

    fn string(&mut self, field: &'static str) -> Result<String, FrameError> {
        let mut len = [0; 2];
        len.copy_from_slice(self.take(2, field)?);
        let bytes = self.take(u16::from_le_bytes(len).into(), field)?;
        let text = std::str::from_utf8(bytes).map_err(|_| FrameError::InvalidUtf8(field))?;
        Ok(text.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(app: &str, handler: &str, session: Option<&str>, body: &[u8]) -> Request {
        Request {
            app: app.into(),
            handler: handler.into(),
            session: session.map(Into::into),
            body: body.to_vec(),
        }
    }

    /// The frame of encoded bytes, after checking the prefix is its length.
    fn strip_prefix(wire: Vec<u8>) -> Vec<u8> {
        let len = u32::from_le_bytes(wire[..4].try_into().unwrap()) as usize;
        assert_eq!(len, wire.len() - 4);
        wire[4..].to_vec()
    }

    fn encoded_request(
        id: u64,
        app: &str,
        handler: &str,
        session: Option<&str>,
        body: &[u8],
    ) -> Vec<u8> {
        strip_prefix(encode_request(id, app, handler, session, body).unwrap())
    }

    /// A deterministic xorshift generator, so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    #[test]
    fn status_bytes_round_trip() {
        for (byte, status) in Status::ALL.into_iter().enumerate() {
            assert_eq!(status.as_u8() as usize, byte);
            assert_eq!(Status::from_u8(status.as_u8()), Some(status));
        }
        for byte in 10..=u8::MAX {
            assert_eq!(Status::from_u8(byte), None);
        }
        assert_eq!(Status::HandlerFailed.to_string(), "handler failed");
    }

    #[test]
    fn hello_layout_is_as_documented_and_round_trips() {
        let wire = encode_hello("nmb_ab").unwrap();
        let mut expected = vec![11, 0, 0, 0, HELLO_KIND, 2, 0, 6, 0];
        expected.extend_from_slice(b"nmb_ab");
        assert_eq!(wire, expected);
        let hello = decode_hello(&strip_prefix(wire)).unwrap();
        assert_eq!((hello.version, hello.token.as_str()), (2, "nmb_ab"));
    }

    #[test]
    fn hellos_of_other_versions_and_other_frames_are_told_apart() {
        // Whatever a version 3 puts after its version is not read.
        let mut other = strip_prefix(encode_hello_of_version(3, "").unwrap());
        other.truncate(3);
        let hello = decode_hello(&other).unwrap();
        assert_eq!((hello.version, hello.token.as_str()), (3, ""));
        let request = encoded_request(1, "a", "h", None, b"");
        assert_eq!(
            decode_hello(&request),
            Err(FrameError::NotHello(REQUEST_KIND))
        );
        assert_eq!(decode_hello(&[]), Err(FrameError::Truncated("kind")));
        assert_eq!(
            decode_hello(&[HELLO_KIND, 2]),
            Err(FrameError::Truncated("version"))
        );
        assert_eq!(
            decode_hello(&[HELLO_KIND, 2, 0, 5, 0, b'x']),
            Err(FrameError::Truncated("token"))
        );
        assert_eq!(
            decode_hello(&[HELLO_KIND, 2, 0, 1, 0, 0xff]),
            Err(FrameError::InvalidUtf8("token"))
        );
    }

    #[test]
    fn request_round_trips() {
        let cases = [
            (1, "app", "handler", None, &b"body"[..]),
            (u64::MAX, "app", "h", Some("session-1"), &b""[..]),
            (7, "", "", None, &[0u8, 255, 1, 2][..]),
            (42, "ünïcødé", "ハンドラ", Some("séssion"), &b"\x00\x01"[..]),
        ];
        for (id, app, handler, session, body) in cases {
            let frame = decode_request(encoded_request(id, app, handler, session, body)).unwrap();
            assert_eq!(frame.id, id);
            assert_eq!(frame.request, request(app, handler, session, body));
        }
    }

    #[test]
    fn request_fields_of_the_maximum_length_round_trip() {
        let long = "x".repeat(MAX_FIELD_LEN);
        let frame = decode_request(encoded_request(3, &long, &long, Some(&long), b"b")).unwrap();
        assert_eq!(frame.request, request(&long, &long, Some(&long), b"b"));
    }

    #[test]
    fn empty_session_is_no_session() {
        let frame = decode_request(encoded_request(1, "a", "h", Some(""), b"")).unwrap();
        assert_eq!(frame.request.session, None);
    }

    #[test]
    fn request_layout_is_as_documented() {
        let wire = encode_request(0x0102, "ab", "c", Some("s"), b"xyz").unwrap();
        let mut expected = vec![22, 0, 0, 0, 1, 2, 1, 0, 0, 0, 0, 0, 0];
        expected.extend_from_slice(&[2, 0, b'a', b'b', 1, 0, b'c', 1, 0, b's', b'x', b'y', b'z']);
        assert_eq!(wire, expected);
    }

    #[test]
    fn response_round_trips_for_every_status() {
        for status in Status::ALL {
            let payload = format!("payload of {status}");
            let wire = encode_response(99, status, payload.as_bytes()).unwrap();
            assert_eq!(wire[4], status.as_u8());
            let frame = decode_response(strip_prefix(wire)).unwrap();
            assert_eq!(
                frame,
                ResponseFrame {
                    id: 99,
                    status,
                    payload: payload.into_bytes()
                }
            );
        }
        let frame =
            decode_response(strip_prefix(encode_response(0, Status::Ok, b"").unwrap())).unwrap();
        assert!(frame.payload.is_empty());
    }

    #[test]
    fn overlong_fields_are_refused_when_encoding() {
        let long = "x".repeat(MAX_FIELD_LEN + 1);
        let cases = [
            (encode_request(1, &long, "h", None, b""), "app name"),
            (encode_request(1, "a", &long, None, b""), "handler name"),
            (encode_request(1, "a", "h", Some(&long), b""), "session id"),
        ];
        for (result, name) in cases {
            assert_eq!(
                result,
                Err(FrameError::FieldTooLong {
                    field: name,
                    len: MAX_FIELD_LEN + 1
                })
            );
        }
    }

    #[test]
    fn frames_beyond_u32_are_refused_when_encoding() {
        let error = request_header(1, "a", "h", None, u32::MAX as usize).unwrap_err();
        assert!(matches!(error, FrameError::TooLarge { .. }), "{error}");
        let error = response_header(1, Status::Ok, u32::MAX as usize).unwrap_err();
        assert!(matches!(error, FrameError::TooLarge { .. }), "{error}");
    }

    #[test]
    fn malformed_requests_are_refused() {
        let bad_utf8 = |field: usize| {
            let mut frame = vec![REQUEST_KIND];
            frame.extend_from_slice(&5u64.to_le_bytes());
            for index in 0..3 {
                let value: &[u8] = if index == field { b"\xff\xfe" } else { b"ok" };
                frame.extend_from_slice(&(value.len() as u16).to_le_bytes());
                frame.extend_from_slice(value);
            }
            frame
        };
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (vec![], FrameError::Truncated("kind")),
            (vec![0], FrameError::UnknownKind(0)),
            (vec![2, 0, 0, 0, 0, 0, 0, 0, 0], FrameError::UnknownKind(2)),
            (vec![1, 0, 0, 0], FrameError::Truncated("request id")),
            (
                vec![1, 0, 0, 0, 0, 0, 0, 0, 0],
                FrameError::Truncated("app name"),
            ),
            (
                vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                FrameError::Truncated("app name"),
            ),
            (
                vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, b'a'],
                FrameError::Truncated("app name"),
            ),
            (
                vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                FrameError::Truncated("handler name"),
            ),
            (
                vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0],
                FrameError::Truncated("handler name"),
            ),
            (
                vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                FrameError::Truncated("session id"),
            ),
            (
                vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, b's'],
                FrameError::Truncated("session id"),
            ),
            (bad_utf8(0), FrameError::InvalidUtf8("app name")),
            (bad_utf8(1), FrameError::InvalidUtf8("handler name")),
            (bad_utf8(2), FrameError::InvalidUtf8("session id")),
        ];
        for (frame, expected) in cases {
            assert_eq!(decode_request(frame.clone()), Err(expected), "{frame:?}");
        }
    }

    #[test]
    fn malformed_responses_are_refused() {
        assert_eq!(
            decode_response(vec![]),
            Err(FrameError::Truncated("status"))
        );
        assert_eq!(
            decode_response(vec![10; 9]),
            Err(FrameError::UnknownStatus(10))
        );
        assert_eq!(
            decode_response(vec![255]),
            Err(FrameError::UnknownStatus(255))
        );
        assert_eq!(
            decode_response(vec![0, 1, 2, 3]),
            Err(FrameError::Truncated("request id"))
        );
    }

    #[test]
    fn every_truncated_request_header_is_refused_and_longer_cuts_shorten_the_body() {
        let frame = encoded_request(77, "app", "handler", Some("session"), b"the body");
        let header_len = frame.len() - b"the body".len();
        for cut in 0..frame.len() {
            let result = decode_request(frame[..cut].to_vec());
            if cut < header_len {
                assert!(
                    matches!(result, Err(FrameError::Truncated(_))),
                    "cut {cut}: {result:?}"
                );
            } else {
                let decoded = result.unwrap();
                assert_eq!(decoded.request.body, &b"the body"[..cut - header_len]);
            }
        }
    }

    #[test]
    fn every_truncated_response_header_is_refused() {
        let frame = strip_prefix(encode_response(5, Status::Busy, b"retry").unwrap());
        for cut in 0..RESPONSE_HEADER_LEN {
            assert!(decode_response(frame[..cut].to_vec()).is_err(), "cut {cut}");
        }
        for cut in RESPONSE_HEADER_LEN..=frame.len() {
            let decoded = decode_response(frame[..cut].to_vec()).unwrap();
            assert_eq!(decoded.payload, &b"retry"[..cut - RESPONSE_HEADER_LEN]);
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..20_000 {
            let len = (rng.next() % 64) as usize;
            let mut bytes = rng.bytes(len);
            // Most rounds look like a request, so decoding gets past the kind byte.
            if round % 4 != 0 && !bytes.is_empty() {
                bytes[0] = REQUEST_KIND;
            }
            // Some rounds have small field lengths, so decoding reaches later fields.
            if round % 3 == 0 && bytes.len() > 12 {
                bytes[9] %= 4;
                bytes[10] = 0;
            }
            if let Ok(frame) = decode_request(bytes.clone()) {
                let session = frame.request.session.as_deref();
                let r = &frame.request;
                assert_eq!(
                    encoded_request(frame.id, &r.app, &r.handler, session, &r.body),
                    bytes
                );
            }
            let _ = decode_response(bytes.clone());
            let _ = decode_hello(&bytes);
            let _ = echo_id(&bytes);
        }
    }

    #[test]
    fn echo_id_reads_only_request_frames_that_hold_an_id() {
        let frame = encoded_request(0xabcd, "a", "h", None, b"");
        assert_eq!(echo_id(&frame), 0xabcd);
        assert_eq!(echo_id(&frame[..9]), 0xabcd);
        assert_eq!(echo_id(&frame[..8]), 0);
        assert_eq!(echo_id(&[2, 1, 1, 1, 1, 1, 1, 1, 1]), 0);
        assert_eq!(echo_id(&[]), 0);
    }

    #[tokio::test]
    async fn frames_are_read_from_a_stream() {
        let mut wire = encode_request(1, "a", "h", None, b"one").unwrap();
        wire.extend(encode_request(2, "a", "h", None, b"two").unwrap());
        let mut reader = &wire[..];
        for id in [1, 2] {
            let Incoming::Frame(frame) = read_frame(&mut reader, 1024).await.unwrap() else {
                panic!("expected a frame");
            };
            assert_eq!(decode_request(frame).unwrap().id, id);
        }
        assert!(matches!(
            read_frame(&mut reader, 1024).await.unwrap(),
            Incoming::Closed
        ));
    }

    #[tokio::test]
    async fn oversized_and_cut_frames_are_reported() {
        let wire = encode_request(1, "a", "h", None, &[0; 100]).unwrap();
        let mut reader = &wire[..];
        let incoming = read_frame(&mut reader, 50).await.unwrap();
        assert!(matches!(incoming, Incoming::TooLarge(len) if len as usize == wire.len() - 4));
        for cut in 1..wire.len() {
            let mut reader = &wire[..cut];
            let error = read_frame(&mut reader, 1024).await.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "cut {cut}");
        }
    }
}
