//! A global tier served to other processes over the mesh, and its client: how the
//! workers of a cluster share one embedded tier (the planner serves it, with the
//! embedded tier's capacity) without an external store. The client is the
//! [`GlobalTier`] at `nimbus://HOST:PORT`; a full tier reaches it as the same error.
//!
//! A call is one mesh frame and so is its answer, up to [`MAX_BODY`] bytes of
//! value. A longer answer comes in several frames; a call carrying a longer value
//! opens a connection of its own (an [`Upload`]) and sends the value raw after it,
//! so the tier still sets it in one step; the server checks the tier has room for
//! the announced length before it reads a byte ([`GlobalTier::room_for`]).

use std::sync::Arc;
use std::time::Duration;

use nimbus_mesh::{Adoption, Frame, Handler, HandlerFuture, Links, MAX_BODY, Replier};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::{AppName, GlobalTier, Growth, Key, LockToken, StateError, StateFuture};

/// A key on the wire.
#[derive(Debug, Serialize, Deserialize)]
struct WireKey {
    app: String,
    name: Vec<u8>,
}

impl WireKey {
    fn of(key: &Key) -> WireKey {
        WireKey {
            app: key.app().to_owned(),
            name: key.name().to_vec(),
        }
    }

    fn key(&self) -> Result<Key, StateError> {
        Key::new(&AppName::new(&self.app)?, &self.name)
    }
}

/// An operation; values travel in the frame's body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Call {
    Get(WireKey),
    Set(WireKey),
    GetRange(WireKey, u64, u64),
    SetRange(WireKey, u64),
    Append(WireKey),
    Delete(WireKey),
    Len(WireKey),
    Lock(WireKey, Duration, Duration),
    Unlock(WireKey, String),
}

/// The hello of a connection that carries a call's value of `len` bytes, raw,
/// after the server has answered it.
#[derive(Debug, Serialize, Deserialize)]
struct Upload {
    call: Call,
    len: u64,
}

/// An answer; a value travels in the frame's body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
    /// A piece of a value too long for one frame; the rest follows.
    Part,
    Value,
    Absent,
    Length(u64),
    Existed(bool),
    Token(String),
    Done,
    Failed(WireError),
}

/// The errors a tier returns that callers tell apart; the rest travel as text.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum WireError {
    ValueTooLarge(Option<u64>),
    InvalidLease(Duration),
    LockTimeout(String, Duration),
    NotHolder(String),
    /// A full tier: whether global, the app, bytes used, wanted and the capacity.
    Full(bool, String, u64, u64, u64),
    Other(String),
}

impl From<StateError> for WireError {
    fn from(error: StateError) -> WireError {
        match error {
            StateError::ValueTooLarge { len } => WireError::ValueTooLarge(len),
            StateError::InvalidLease { lease } => WireError::InvalidLease(lease),
            StateError::LockTimeout { key, timeout } => WireError::LockTimeout(key, timeout),
            StateError::NotHolder { key } => WireError::NotHolder(key),
            StateError::Full {
                global,
                app,
                used,
                wanted,
                capacity,
            } => WireError::Full(global, app.to_string(), used, wanted, capacity),
            other => WireError::Other(other.to_string()),
        }
    }
}

/// Serves `tier` on `listener` forever (accept errors pause it, see
/// [`nimbus_mesh::serve`]).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<nimbus_trust::Tls>,
    tier: Arc<dyn GlobalTier>,
) -> std::convert::Infallible {
    nimbus_mesh::serve(listener, tls, Arc::new(Server { tier })).await
}

struct Server {
    tier: Arc<dyn GlobalTier>,
}

impl Handler for Server {
    fn handle(self: Arc<Self>, request: Frame, replier: Replier) -> HandlerFuture {
        Box::pin(async move {
            let (answer, mut value) = match request.head::<Call>() {
                Ok(call) => self.answer(call, request.body).await,
                Err(e) => failed(malformed(e)),
            };
            // All but the last piece go ahead as parts.
            let last = value.len().saturating_sub(1) / MAX_BODY * MAX_BODY;
            let rest = value.split_off(last);
            for piece in value.chunks(MAX_BODY) {
                if !replier
                    .send(Frame::new(&Answer::Part, piece.to_vec()))
                    .await
                {
                    return;
                }
            }
            replier.finish(Frame::new(&answer, rest)).await;
        })
    }

    fn adopt(self: Arc<Self>, hello: Frame, adoption: Adoption) -> HandlerFuture {
        Box::pin(async move {
            let upload = match self.admit(&hello).await {
                Ok(upload) => upload,
                Err(error) => {
                    // Refused before a byte of the value is read; the caller sends
                    // none after this answer, and the connection, its own, ends.
                    let _ = adoption
                        .answer(&Frame::new(&failed(error).0, Vec::new()))
                        .await;
                    return;
                }
            };
            let Ok(mut stream) = adoption
                .answer(&Frame::new(&Answer::Done, Vec::new()))
                .await
            else {
                return;
            };
            // Grown as the bytes arrive, not on the word of the hello; a caller that
            // stops sending is given up on, bounded by the length.
            let mut value = Vec::with_capacity((upload.len as usize).min(MAX_BODY));
            let read = tokio::time::timeout(
                upload_deadline(upload.len),
                (&mut stream).take(upload.len).read_to_end(&mut value),
            )
            .await;
            if !matches!(read, Ok(Ok(_))) || value.len() as u64 != upload.len {
                return;
            }
            let (answer, _) = self.answer(upload.call, value).await;
            let _ = nimbus_mesh::write_frame(&mut stream, &Frame::new(&answer, Vec::new())).await;
        })
    }
}

/// The slowest a long value may travel before its upload is given up on: a peer
/// that stops reading or sending (frozen, say) never holds a task for good.
const SLOWEST_UPLOAD: u64 = 4 << 20; // bytes per second

/// How long an upload of `len` bytes may take, on both sides.
fn upload_deadline(len: u64) -> Duration {
    Duration::from_secs(5) + Duration::from_secs(len / SLOWEST_UPLOAD)
}

fn malformed(e: impl std::fmt::Display) -> StateError {
    StateError::Served {
        addr: "this server".into(),
        message: e.to_string(),
    }
}

fn failed(error: StateError) -> (Answer, Vec<u8>) {
    (Answer::Failed(error.into()), Vec::new())
}

impl Server {
    /// The upload `hello` announces, if the tier takes it: a write, of a value no
    /// longer than a value may be, that the tier has room for now. Checked on the
    /// announced length, so a refused value costs neither its transfer nor memory.
    async fn admit(&self, hello: &Frame) -> Result<Upload, StateError> {
        let upload = hello.head::<Upload>().map_err(malformed)?;
        crate::check_len(upload.len)?;
        let (key, growth) = match &upload.call {
            Call::Set(key) => (key, Growth::To(upload.len)),
            Call::SetRange(key, offset) => {
                (key, Growth::AtLeast(offset.saturating_add(upload.len)))
            }
            Call::Append(key) => (key, Growth::By(upload.len)),
            _ => return Err(malformed("only a value to write is uploaded")),
        };
        self.tier.room_for(&key.key()?, growth).await?;
        Ok(upload)
    }

    async fn answer(&self, call: Call, body: Vec<u8>) -> (Answer, Vec<u8>) {
        self.perform(call, body).await.unwrap_or_else(failed)
    }

    async fn perform(&self, call: Call, body: Vec<u8>) -> Result<(Answer, Vec<u8>), StateError> {
        let tier = &*self.tier;
        let plain = |answer| (answer, Vec::new());
        Ok(match call {
            Call::Get(key) => match tier.get(&key.key()?).await? {
                Some(value) => (Answer::Value, value),
                None => plain(Answer::Absent),
            },
            Call::Set(key) => plain({
                tier.set(&key.key()?, body).await?;
                Answer::Done
            }),
            Call::GetRange(key, offset, len) => (
                Answer::Value,
                tier.get_range(&key.key()?, offset, len).await?,
            ),
            Call::SetRange(key, offset) => plain(Answer::Length(
                tier.set_range(&key.key()?, offset, &body).await?,
            )),
            Call::Append(key) => plain(Answer::Length(tier.append(&key.key()?, &body).await?)),
            Call::Delete(key) => plain(Answer::Existed(tier.delete(&key.key()?).await?)),
            Call::Len(key) => plain(Answer::Length(tier.len(&key.key()?).await?)),
            Call::Lock(key, lease, timeout) => {
                let token = tier.lock(&key.key()?, lease, timeout).await?;
                plain(Answer::Token(token.to_hex()))
            }
            Call::Unlock(key, token) => {
                let token = u128::from_str_radix(&token, 16).unwrap_or(0);
                tier.unlock(&key.key()?, LockToken::from(token)).await?;
                plain(Answer::Done)
            }
        })
    }
}

/// The global tier served at `nimbus://ADDR`.
pub struct Served {
    addr: String,
    links: Links,
}

impl Served {
    /// Connects to the tier served at `addr` (`HOST:PORT`) with the cluster's
    /// credentials `tls`.
    pub async fn connect(addr: &str, tls: Arc<nimbus_trust::Tls>) -> Result<Served, StateError> {
        let served = Served {
            addr: addr.to_owned(),
            links: Links::new(tls),
        };
        served.link().await?;
        Ok(served)
    }

    fn failed(&self, message: impl std::fmt::Display) -> StateError {
        StateError::Served {
            addr: self.addr.clone(),
            message: message.to_string(),
        }
    }

    /// The connection, opened again if it broke.
    async fn link(&self) -> Result<Arc<nimbus_mesh::Link>, StateError> {
        self.links.get(&self.addr).await.map_err(|e| self.failed(e))
    }

    async fn call(&self, call: Call, body: Vec<u8>) -> Result<(Answer, Vec<u8>), StateError> {
        let (answer, value) = match body.len() > MAX_BODY {
            true => self.upload(call, body).await?,
            false => self.exchange(call, body).await?,
        };
        match answer {
            Answer::Failed(error) => Err(match error {
                WireError::ValueTooLarge(len) => StateError::ValueTooLarge { len },
                WireError::InvalidLease(lease) => StateError::InvalidLease { lease },
                WireError::LockTimeout(key, timeout) => StateError::LockTimeout { key, timeout },
                WireError::NotHolder(key) => StateError::NotHolder { key },
                WireError::Full(global, app, used, wanted, capacity) => match AppName::new(&app) {
                    Ok(app) => StateError::Full {
                        global,
                        app,
                        used,
                        wanted,
                        capacity,
                    },
                    Err(e) => self.failed(format!("a full tier, for an app it names wrongly: {e}")),
                },
                WireError::Other(message) => self.failed(message),
            }),
            answer => Ok((answer, value)),
        }
    }

    /// A call in one frame, over the shared connection; its answer's value may
    /// come in parts.
    async fn exchange(&self, call: Call, body: Vec<u8>) -> Result<(Answer, Vec<u8>), StateError> {
        let mut replies = self
            .link()
            .await?
            .call(Frame::new(&call, body))
            .await
            .map_err(|e| self.failed(e))?;
        let mut value = Vec::new();
        loop {
            let reply = replies.next().await.map_err(|e| self.failed(e))?;
            match reply.head::<Answer>().map_err(|e| self.failed(e))? {
                Answer::Part => value.extend_from_slice(&reply.body),
                answer if value.is_empty() => return Ok((answer, reply.body)),
                answer => {
                    value.extend_from_slice(&reply.body);
                    return Ok((answer, value));
                }
            }
        }
    }

    /// A call whose value is too long for a frame, over a connection of its own.
    async fn upload(&self, call: Call, value: Vec<u8>) -> Result<(Answer, Vec<u8>), StateError> {
        let hello = Upload {
            call,
            len: value.len() as u64,
        };
        let (ready, mut stream) = nimbus_mesh::open_stream(
            self.links.tls(),
            &self.addr,
            &Frame::new(&hello, Vec::new()),
        )
        .await
        .map_err(|e| self.failed(e))?;
        let ready = ready.head::<Answer>().map_err(|e| self.failed(e))?;
        if let Answer::Failed(_) = ready {
            return Ok((ready, Vec::new()));
        }
        // A frozen server never reads the value or answers: bounded by its length.
        // One whose certificate is revoked meanwhile is given up on within a second.
        let revoked = nimbus_mesh::peer_revoked(self.links.tls(), &stream);
        let sent = async {
            stream.write_all(&value).await?;
            // TLS may hold the last records back until flushed.
            stream.flush().await?;
            nimbus_mesh::read_frame(&mut stream).await
        };
        let reply = tokio::select! {
            reply = tokio::time::timeout(upload_deadline(hello.len), sent) => reply,
            () = revoked => return Err(self.failed("the server's certificate was revoked")),
        };
        let reply = reply
            .map_err(|_| self.failed("the value was not taken in time"))?
            .map_err(|e| self.failed(e))?
            .ok_or_else(|| self.failed("the connection ended before the answer"))?;
        let answer = reply.head::<Answer>().map_err(|e| self.failed(e))?;
        Ok((answer, reply.body))
    }

    fn unexpected(&self, answer: Answer) -> StateError {
        self.failed(format!("unexpected answer {answer:?}"))
    }

    async fn length(&self, call: Call, body: Vec<u8>) -> Result<u64, StateError> {
        match self.call(call, body).await? {
            (Answer::Length(len), _) => Ok(len),
            (other, _) => Err(self.unexpected(other)),
        }
    }
}

impl GlobalTier for Served {
    fn get<'a>(&'a self, key: &'a Key) -> StateFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            match self.call(Call::Get(WireKey::of(key)), Vec::new()).await? {
                (Answer::Value, value) => Ok(Some(value)),
                (Answer::Absent, _) => Ok(None),
                (other, _) => Err(self.unexpected(other)),
            }
        })
    }

    fn set<'a>(&'a self, key: &'a Key, value: Vec<u8>) -> StateFuture<'a, ()> {
        Box::pin(async move {
            crate::check_len(value.len() as u64)?;
            self.call(Call::Set(WireKey::of(key)), value)
                .await
                .map(drop)
        })
    }

    fn get_range<'a>(&'a self, key: &'a Key, offset: u64, len: u64) -> StateFuture<'a, Vec<u8>> {
        Box::pin(async move {
            let call = Call::GetRange(WireKey::of(key), offset, len);
            match self.call(call, Vec::new()).await? {
                (Answer::Value, value) => Ok(value),
                (other, _) => Err(self.unexpected(other)),
            }
        })
    }

    fn set_range<'a>(&'a self, key: &'a Key, offset: u64, bytes: &'a [u8]) -> StateFuture<'a, u64> {
        Box::pin(async move {
            crate::write_end(offset, bytes.len())?;
            let call = Call::SetRange(WireKey::of(key), offset);
            self.length(call, bytes.to_vec()).await
        })
    }

    fn append<'a>(&'a self, key: &'a Key, bytes: &'a [u8]) -> StateFuture<'a, u64> {
        Box::pin(async move {
            self.length(Call::Append(WireKey::of(key)), bytes.to_vec())
                .await
        })
    }

    fn delete<'a>(&'a self, key: &'a Key) -> StateFuture<'a, bool> {
        Box::pin(async move {
            match self
                .call(Call::Delete(WireKey::of(key)), Vec::new())
                .await?
            {
                (Answer::Existed(existed), _) => Ok(existed),
                (other, _) => Err(self.unexpected(other)),
            }
        })
    }

    fn len<'a>(&'a self, key: &'a Key) -> StateFuture<'a, u64> {
        Box::pin(async move { self.length(Call::Len(WireKey::of(key)), Vec::new()).await })
    }

    fn lock<'a>(
        &'a self,
        key: &'a Key,
        lease: Duration,
        timeout: Duration,
    ) -> StateFuture<'a, LockToken> {
        Box::pin(async move {
            let call = Call::Lock(WireKey::of(key), lease, timeout);
            match self.call(call, Vec::new()).await? {
                (Answer::Token(hex), _) => u128::from_str_radix(&hex, 16)
                    .map(LockToken::from)
                    .map_err(|e| self.failed(e)),
                (other, _) => Err(self.unexpected(other)),
            }
        })
    }

    fn unlock<'a>(&'a self, key: &'a Key, token: LockToken) -> StateFuture<'a, ()> {
        Box::pin(async move {
            let call = Call::Unlock(WireKey::of(key), token.to_hex());
            self.call(call, Vec::new()).await.map(drop)
        })
    }

    fn location(&self) -> String {
        format!("nimbus://{}", self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Embedded;

    #[tokio::test]
    async fn a_long_value_the_tier_has_no_room_for_is_refused_before_it_is_read() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let tls = nimbus_trust::Tls::ephemeral().unwrap();
        let tier = Arc::new(Embedded::with_capacity(1 << 20));
        tokio::spawn(serve(listener, tls.clone(), tier.clone()));
        let key = Key::new(&AppName::new("app").unwrap(), b"big").unwrap();

        // Announced and never sent: each is answered at once, refused as full.
        let len = 4 * MAX_BODY as u64;
        let key_ = || WireKey::of(&key);
        for call in [
            Call::Set(key_()),
            Call::SetRange(key_(), 7),
            Call::Append(key_()),
        ] {
            let hello = Frame::new(&Upload { call, len }, Vec::new());
            let (answer, _stream) = nimbus_mesh::open_stream(&tls, &addr, &hello).await.unwrap();
            let answer = answer.head::<Answer>().unwrap();
            assert!(
                matches!(answer, Answer::Failed(WireError::Full(true, ..))),
                "{answer:?}"
            );
        }

        // Through the client: the same error, nothing held, and it serves on.
        let served = Served::connect(&addr, tls).await.unwrap();
        let refused = served.set(&key, vec![1; MAX_BODY + 1]).await;
        assert!(
            matches!(refused, Err(StateError::Full { global: true, .. })),
            "{refused:?}"
        );
        assert_eq!(tier.used(), 0);
        served.set(&key, b"small".to_vec()).await.unwrap();
        let value = served.get(&key).await.unwrap();
        assert_eq!(value.as_deref(), Some(&b"small"[..]));
    }
}
