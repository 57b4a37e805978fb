//! Frames and their encoding.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::MeshError;

/// The largest frame either side accepts: a 16 MiB message with room for its head.
pub const MAX_FRAME: usize = (16 << 20) + (64 << 10);

/// The longest body a frame carries beside a head of up to 64 KiB.
pub const MAX_BODY: usize = MAX_FRAME - (64 << 10);

const REQUEST: u8 = 1;
const LAST: u8 = 2;
/// A keepalive probe (from a caller) or its answer: no call, no head, no body.
const PING: u8 = 4;
/// Length of everything after the length field up to the head: id, flags, head length.
const PREAMBLE: usize = 8 + 1 + 4;
/// Bodies at least this long are written separately instead of copied behind the head.
const COPY_LIMIT: usize = 64 << 10;

/// Bytes of frames read and written by this process (see [`crate::traffic`]).
pub(crate) static RECEIVED: AtomicU64 = AtomicU64::new(0);
pub(crate) static SENT: AtomicU64 = AtomicU64::new(0);

/// One message: a small JSON head saying what it is and a raw body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    /// What the frame is, as JSON.
    pub head: Vec<u8>,
    /// Its payload, uninterpreted.
    pub body: Vec<u8>,
}

impl Frame {
    /// A frame with `head` serialised as JSON and `body`.
    pub fn new<T: Serialize>(head: &T, body: Vec<u8>) -> Frame {
        Frame {
            head: serde_json::to_vec(head).expect("frame heads serialise"),
            body,
        }
    }

    /// The head, parsed.
    pub fn head<T: DeserializeOwned>(&self) -> Result<T, MeshError> {
        serde_json::from_slice(&self.head).map_err(|e| MeshError::Malformed(e.to_string()))
    }
}

/// A frame as it travels: with its call id and flags.
#[derive(Debug)]
pub(crate) struct Envelope {
    pub(crate) id: u64,
    pub(crate) request: bool,
    pub(crate) last: bool,
    /// A keepalive probe or its answer, which belongs to no call.
    pub(crate) ping: bool,
    pub(crate) frame: Frame,
}

pub(crate) async fn write(
    out: &mut (impl AsyncWrite + Unpin),
    id: u64,
    request: bool,
    last: bool,
    frame: &Frame,
) -> std::io::Result<()> {
    // Refused whole rather than cut off by the reader, which would drop the
    // connection and every call on it.
    let len = PREAMBLE + frame.head.len() + frame.body.len();
    if len > MAX_FRAME {
        return Err(invalid(format!(
            "a frame of {len} bytes is over {MAX_FRAME}"
        )));
    }
    let mut buf =
        Vec::with_capacity(4 + PREAMBLE + frame.head.len() + COPY_LIMIT.min(frame.body.len()));
    if frame.body.len() < COPY_LIMIT {
        encode(&mut buf, id, request, last, frame);
        out.write_all(&buf).await?;
    } else {
        encode_head(&mut buf, id, request, last, frame);
        out.write_all(&buf).await?;
        out.write_all(&frame.body).await?;
    }
    // TLS may hold the last records of a write back until it is flushed.
    out.flush().await
}

/// Writes a keepalive probe (`request`) or the answer to one.
pub(crate) async fn write_ping(
    out: &mut (impl AsyncWrite + Unpin),
    request: bool,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4 + PREAMBLE);
    encode_head(&mut buf, 0, request, false, &Frame::default());
    *buf.get_mut(4 + 8).expect("a preamble") |= PING;
    out.write_all(&buf).await?;
    out.flush().await
}

/// Appends `frame`, whole, to `buf`.
pub(crate) fn encode(buf: &mut Vec<u8>, id: u64, request: bool, last: bool, frame: &Frame) {
    encode_head(buf, id, request, last, frame);
    buf.extend_from_slice(&frame.body);
}

/// Appends everything of `frame` before its body to `buf`.
fn encode_head(buf: &mut Vec<u8>, id: u64, request: bool, last: bool, frame: &Frame) {
    let rest = PREAMBLE + frame.head.len() + frame.body.len();
    SENT.fetch_add(4 + rest as u64, Ordering::Relaxed);
    buf.extend_from_slice(
        &u32::try_from(rest)
            .expect("frames are under 4 GiB")
            .to_le_bytes(),
    );
    buf.extend_from_slice(&id.to_le_bytes());
    let flags = if request { REQUEST } else { 0 } | if last { LAST } else { 0 };
    buf.push(flags);
    buf.extend_from_slice(&(frame.head.len() as u32).to_le_bytes());
    buf.extend_from_slice(&frame.head);
}

/// Reads one frame; `None` at a clean end of the stream between frames.
pub(crate) async fn read(
    input: &mut (impl AsyncRead + Unpin),
) -> std::io::Result<Option<Envelope>> {
    let mut len = [0; 4];
    match input.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let rest = u32::from_le_bytes(len) as usize;
    RECEIVED.fetch_add(4 + rest as u64, Ordering::Relaxed);
    if !(PREAMBLE..=MAX_FRAME).contains(&rest) {
        return Err(invalid(format!("a frame of {rest} bytes")));
    }
    let mut preamble = [0; PREAMBLE];
    input.read_exact(&mut preamble).await?;
    let id = u64::from_le_bytes(preamble[..8].try_into().expect("8 bytes"));
    let flags = preamble[8];
    let head_len = u32::from_le_bytes(preamble[9..].try_into().expect("4 bytes")) as usize;
    if head_len > rest - PREAMBLE {
        return Err(invalid(format!(
            "a head of {head_len} bytes in a frame of {rest}"
        )));
    }
    let mut head = vec![0; head_len];
    input.read_exact(&mut head).await?;
    let mut body = vec![0; rest - PREAMBLE - head_len];
    input.read_exact(&mut body).await?;
    Ok(Some(Envelope {
        id,
        request: flags & REQUEST != 0,
        last: flags & LAST != 0,
        ping: flags & PING != 0,
        frame: Frame { head, body },
    }))
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_small_and_large() {
        for body_len in [0, 5, COPY_LIMIT, 1 << 20] {
            let frame = Frame::new(&("send", 7), vec![0xab; body_len]);
            let mut wire = Vec::new();
            write(&mut wire, 42, true, false, &frame).await.unwrap();
            let mut input = &wire[..];
            let envelope = read(&mut input).await.unwrap().unwrap();
            assert_eq!(
                (envelope.id, envelope.request, envelope.last),
                (42, true, false)
            );
            assert_eq!(envelope.frame, frame);
            assert_eq!(
                envelope.frame.head::<(String, u32)>().unwrap(),
                ("send".into(), 7)
            );
            assert!(read(&mut input).await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn pings_are_told_apart_from_calls() {
        let mut wire = Vec::new();
        write_ping(&mut wire, true).await.unwrap();
        write(&mut wire, 0, true, true, &Frame::default())
            .await
            .unwrap();
        let mut input = &wire[..];
        let ping = read(&mut input).await.unwrap().unwrap();
        assert!(ping.ping && ping.request && !ping.last);
        let call = read(&mut input).await.unwrap().unwrap();
        assert!(!call.ping && call.request && call.last);
    }

    #[tokio::test]
    async fn oversized_and_inconsistent_lengths_are_refused() {
        let too_long = ((MAX_FRAME + 1) as u32).to_le_bytes();
        assert!(read(&mut &too_long[..]).await.is_err());
        let mut bad_head = Vec::new();
        bad_head.extend_from_slice(&(PREAMBLE as u32 + 2).to_le_bytes());
        bad_head.extend_from_slice(&[0; 9]);
        bad_head.extend_from_slice(&100u32.to_le_bytes());
        bad_head.extend_from_slice(&[0; 2]);
        assert!(read(&mut &bad_head[..]).await.is_err());
        let cut_short = [9u8, 0, 0, 0, 1];
        assert!(read(&mut &cut_short[..]).await.is_err());
    }
}
