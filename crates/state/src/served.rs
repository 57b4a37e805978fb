//! A global tier served to other processes over the mesh, and its client: how the
//! workers of a cluster share one embedded tier (the planner serves it) without an
//! external store. The client is the [`GlobalTier`] at `nimbus://HOST:PORT`.

use std::sync::Arc;
use std::time::Duration;

use nimbus_mesh::{Frame, Handler, HandlerFuture, Link, Replier};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::{AppName, GlobalTier, Key, LockToken, StateError, StateFuture};

/// The largest value one call carries: a mesh frame's payload.
const MAX_CARRIED: usize = nimbus_mesh::MAX_FRAME - (64 << 10);

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

/// An answer; a value travels in the frame's body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
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
    Other(String),
}

impl From<StateError> for WireError {
    fn from(error: StateError) -> WireError {
        match error {
            StateError::ValueTooLarge { len } => WireError::ValueTooLarge(len),
            StateError::InvalidLease { lease } => WireError::InvalidLease(lease),
            StateError::LockTimeout { key, timeout } => WireError::LockTimeout(key, timeout),
            StateError::NotHolder { key } => WireError::NotHolder(key),
            other => WireError::Other(other.to_string()),
        }
    }
}

/// Serves `tier` on `listener` until accepting fails.
pub async fn serve(listener: TcpListener, tier: Arc<dyn GlobalTier>) -> std::io::Result<()> {
    nimbus_mesh::serve(listener, Arc::new(Server { tier })).await
}

struct Server {
    tier: Arc<dyn GlobalTier>,
}

impl Handler for Server {
    fn handle(self: Arc<Self>, request: Frame, replier: Replier) -> HandlerFuture {
        Box::pin(async move {
            let answer = match request.head::<Call>() {
                Ok(call) => self.perform(call, request.body).await,
                Err(e) => Err(StateError::Served {
                    addr: "this server".into(),
                    message: e.to_string(),
                }),
            };
            let frame = match answer {
                Ok((answer, body)) => Frame::new(&answer, body),
                Err(error) => Frame::new(&Answer::Failed(error.into()), Vec::new()),
            };
            replier.finish(frame).await;
        })
    }
}

impl Server {
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
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
}

impl Served {
    /// Connects to the tier served at `addr` (`HOST:PORT`).
    pub async fn connect(addr: &str) -> Result<Served, StateError> {
        let served = Served {
            addr: addr.to_owned(),
            link: tokio::sync::Mutex::new(None),
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
    async fn link(&self) -> Result<Arc<Link>, StateError> {
        let mut link = self.link.lock().await;
        match &*link {
            Some(open) if open.is_open() => Ok(open.clone()),
            _ => {
                let fresh = Link::connect(&self.addr)
                    .await
                    .map_err(|e| self.failed(e))?;
                *link = Some(fresh.clone());
                Ok(fresh)
            }
        }
    }

    async fn call(&self, call: Call, body: Vec<u8>) -> Result<(Answer, Vec<u8>), StateError> {
        if body.len() > MAX_CARRIED {
            return Err(self.failed(format!(
                "a value of {} bytes is over the {MAX_CARRIED} one call carries",
                body.len()
            )));
        }
        let reply = self
            .link()
            .await?
            .call_one(Frame::new(&call, body))
            .await
            .map_err(|e| self.failed(e))?;
        match reply.head::<Answer>().map_err(|e| self.failed(e))? {
            Answer::Failed(error) => Err(match error {
                WireError::ValueTooLarge(len) => StateError::ValueTooLarge { len },
                WireError::InvalidLease(lease) => StateError::InvalidLease { lease },
                WireError::LockTimeout(key, timeout) => StateError::LockTimeout { key, timeout },
                WireError::NotHolder(key) => StateError::NotHolder { key },
                WireError::Other(message) => self.failed(message),
            }),
            answer => Ok((answer, reply.body)),
        }
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
