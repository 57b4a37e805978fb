//! Two-tier application state: named byte values per app, a local tier on each host and
//! a global tier shared by all hosts.
//!
//! Owns: the state model and its limits. An app's state is a set of named keys whose
//! values are byte strings (binary-safe, up to [`MAX_VALUE_LEN`]). Each host keeps a
//! **local tier** per app ([`LocalTier`]), shared by all the app's processes on that
//! host and operated synchronously at memory speed. Behind it is the **global tier**,
//! one [`GlobalTier`] trait with two backends: [`Embedded`] (in this process, the
//! default) and [`Redis`] (`--state redis://host:port[/db]`), chosen by [`open`]. Both
//! tiers offer get and set, reads and writes of a byte range at an offset, append and
//! delete; the global tier also offers a lock per key with an expiring lease; and
//! [`LocalTier::push`] / [`LocalTier::pull`] copy a value between the tiers.
//!
//! Tenancy: every key is qualified by its app ([`Key`] = [`AppName`] + name), and an
//! app's handle ([`AppState`]) only ever builds keys of its own app, so one app can
//! never name, read or lock another's keys.
//!
//! Consistency: the global tier is linearisable per key (each operation is atomic).
//! The local tier is per host and is **not** coherent across hosts: a write to one
//! host's local tier is seen by processes on other hosts only after it is pushed there
//! and they pull it. Processes that share a key across hosts coordinate with the
//! global lock.
//!
//! Must not: know about processes, hosts' tables or the guest ABI (the worker maps
//! guest calls onto [`AppState`]), or hold a tier without a bound: values are capped at
//! [`MAX_VALUE_LEN`], each local tier at the capacity it is given, and an embedded
//! global tier at its own ([`DEFAULT_GLOBAL_CAPACITY`] unless told otherwise).

mod embedded;
mod key;
mod local;
mod redis_tier;
mod served;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

pub use embedded::{DEFAULT_GLOBAL_CAPACITY, ENTRY_OVERHEAD, Embedded};
pub use key::{AppName, Key};
pub use local::{AppState, HostState, LocalTier};
pub use redis_tier::Redis;
pub use served::{Served, serve};

/// The longest app name, in bytes.
pub const MAX_APP_NAME_LEN: usize = 64;
/// The longest key name, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// The largest value, in bytes: 512 MiB, the largest string Redis stores.
pub const MAX_VALUE_LEN: u64 = 512 << 20;

/// Why a state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The app name is empty, too long or has a character outside `[A-Za-z0-9_-]`.
    #[error(
        "invalid app name {name:?}: {reason} (1 to {MAX_APP_NAME_LEN} characters of A-Z, a-z, 0-9, '_' and '-')"
    )]
    InvalidAppName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The key name is empty.
    #[error("invalid key name: it is empty")]
    EmptyKey,
    /// The key name is longer than [`MAX_KEY_LEN`].
    #[error("invalid key name: it is {len} bytes, the limit is {MAX_KEY_LEN}")]
    KeyTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The value would be longer than [`MAX_VALUE_LEN`].
    #[error("value too large: {} than the limit of {MAX_VALUE_LEN} bytes (512 MiB)", too_large(*.len))]
    ValueTooLarge {
        /// The length it would have, when known (Redis reports only that it is over).
        len: Option<u64>,
    },
    /// A tier has no room for the write: the app's local tier on this host, or
    /// (`global`) an embedded global tier, whose capacity all apps share.
    // One variant for both, so that guests get one error code for a full tier
    // (the worker maps this one to `ERR_QUOTA`).
    #[error("{}", full(*global, app, *used, *wanted, *capacity))]
    Full {
        /// Whether it is the embedded global tier (else the app's local tier).
        global: bool,
        /// The app that wrote.
        app: AppName,
        /// Bytes in use: values and key names.
        used: u64,
        /// More bytes the write needed.
        wanted: u64,
        /// The tier's capacity.
        capacity: u64,
    },
    /// A lock lease of zero, or one too long to express in milliseconds.
    #[error("invalid lock lease {lease:?}: it must be at least 1 ms")]
    InvalidLease {
        /// The lease as given.
        lease: Duration,
    },
    /// The lock stayed held by another holder for the whole timeout.
    #[error("timed out after {timeout:?} waiting for the lock on {key}")]
    LockTimeout {
        /// The key, as `app:name`.
        key: String,
        /// How long the caller waited.
        timeout: Duration,
    },
    /// Unlock with a token that does not hold the lock: never taken, already released,
    /// or its lease expired (and maybe another holder has it now).
    #[error("the lock on {key} is not held by this token (released, expired or never taken)")]
    NotHolder {
        /// The key, as `app:name`.
        key: String,
    },
    /// The global tier's URL is neither absent (embedded) nor `redis://`.
    #[error(
        "unsupported state store {url:?}: {reason}; use redis://host:port[/db], or nothing for the embedded store"
    )]
    UnsupportedUrl {
        /// The URL as given, password hidden.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The Redis server could not be reached.
    #[error("cannot connect to the Redis state store at {url}: {source}")]
    Connect {
        /// The URL, password hidden.
        url: String,
        /// The client's error.
        source: redis::RedisError,
    },
    /// The served tier (`nimbus://`) could not be reached or failed.
    #[error("state store at nimbus://{addr}: {message}")]
    Served {
        /// Its address.
        addr: String,
        /// What failed.
        message: String,
    },
    /// A Redis command failed (connection lost, timeout, server error).
    #[error("Redis state store at {url}: {source}")]
    Redis {
        /// The URL, password hidden.
        url: String,
        /// The client's error.
        source: redis::RedisError,
    },
}

fn full(global: bool, app: &AppName, used: u64, wanted: u64, capacity: u64) -> String {
    let usage = format!("{used} of {capacity} bytes used, {wanted} more wanted");
    match global {
        true => format!("the global state tier is full (all apps): {usage} by app {app}"),
        false => format!("the local state of app {app} is full: {usage}"),
    }
}

fn too_large(len: Option<u64>) -> String {
    match len {
        Some(len) => format!("{len} bytes, more"),
        None => "longer".to_owned(),
    }
}

/// The future every [`GlobalTier`] operation returns.
pub type StateFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StateError>> + Send + 'a>>;

/// The global tier: state shared by all hosts, one value per [`Key`].
///
/// Keys arrive already qualified by their app; an implementation stores them so that
/// keys of different apps never meet (and never meets its own lock records). Every
/// operation is atomic on its key. A missing key reads as absent ([`get`]) or empty
/// ([`get_range`], [`len`]).
///
/// [`get`]: GlobalTier::get
/// [`get_range`]: GlobalTier::get_range
/// [`len`]: GlobalTier::len
pub trait GlobalTier: Send + Sync {
    /// The whole value, or `None` if the key does not exist.
    fn get<'a>(&'a self, key: &'a Key) -> StateFuture<'a, Option<Vec<u8>>>;

    /// Replaces the value (creating the key).
    fn set<'a>(&'a self, key: &'a Key, value: Vec<u8>) -> StateFuture<'a, ()>;

    /// Up to `len` bytes at `offset`. A read past the end returns what exists: the bytes
    /// from `offset` to the end of the value, and nothing when `offset` is at or past the
    /// end or the key does not exist (as Redis `GETRANGE`).
    fn get_range<'a>(&'a self, key: &'a Key, offset: u64, len: u64) -> StateFuture<'a, Vec<u8>>;

    /// Overwrites bytes at `offset`, extending the value with zero bytes when `offset` is
    /// past its end, and creating the key if `bytes` is not empty (as Redis `SETRANGE`).
    /// Returns the value's new length.
    fn set_range<'a>(&'a self, key: &'a Key, offset: u64, bytes: &'a [u8]) -> StateFuture<'a, u64>;

    /// Appends `bytes` (creating the key), returning the value's new length.
    fn append<'a>(&'a self, key: &'a Key, bytes: &'a [u8]) -> StateFuture<'a, u64>;

    /// Removes the key, returning whether it existed. Its lock, if held, is not touched.
    fn delete<'a>(&'a self, key: &'a Key) -> StateFuture<'a, bool>;

    /// The value's length, 0 if the key does not exist.
    fn len<'a>(&'a self, key: &'a Key) -> StateFuture<'a, u64>;

    /// Takes the lock on `key`, waiting up to `timeout` while another holder has it
    /// ([`StateError::LockTimeout`] after that; a zero timeout tries once). The lock is
    /// released by [`unlock`](GlobalTier::unlock) with the returned token, or when
    /// `lease` runs out, whichever comes first: a holder that dies never blocks others
    /// for longer than its lease. The lock is advisory: it guards nothing by itself, the
    /// processes sharing a key agree to take it.
    fn lock<'a>(
        &'a self,
        key: &'a Key,
        lease: Duration,
        timeout: Duration,
    ) -> StateFuture<'a, LockToken>;

    /// Releases the lock on `key` held with `token`; [`StateError::NotHolder`] if the
    /// token does not hold it (released, expired, or someone else's).
    fn unlock<'a>(&'a self, key: &'a Key, token: LockToken) -> StateFuture<'a, ()>;

    /// Whether `key`'s value may change length as `growth` says: [`StateError::Full`]
    /// if the tier has no room for it now ([`StateError::ValueTooLarge`] past
    /// [`MAX_VALUE_LEN`]). A served tier asks before it reads a long
    /// value's bytes ([`serve`]), so that a write refused anyway costs neither their
    /// transfer nor memory to hold them. A check, not a reservation: the write
    /// checks again. A tier with no capacity of its own to check (Redis, or a served
    /// tier, whose server checks) has room for anything: the default.
    fn room_for<'a>(&'a self, key: &'a Key, growth: Growth) -> StateFuture<'a, ()> {
        let _ = (key, growth);
        Box::pin(std::future::ready(Ok(())))
    }

    /// Where the tier lives, for messages: `embedded`, or the Redis URL with any
    /// password hidden.
    fn location(&self) -> String;
}

/// How a write changes the length of its value, for [`GlobalTier::room_for`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Growth {
    /// The value becomes this long ([`GlobalTier::set`]).
    To(u64),
    /// The value becomes at least this long ([`GlobalTier::set_range`] ending here).
    AtLeast(u64),
    /// The value grows by this much ([`GlobalTier::append`]).
    By(u64),
}

impl Growth {
    /// The length of a value of `old` bytes after the write.
    pub fn new_len(self, old: u64) -> u64 {
        match self {
            Growth::To(len) => len,
            Growth::AtLeast(end) => old.max(end),
            Growth::By(len) => old.saturating_add(len),
        }
    }
}

/// Opens the global tier: the embedded one of `capacity` bytes for `None`, Redis for a `redis://` URL
/// (`redis://[user:password@]host[:port][/db]`), the tier a node of the cluster
/// serves for `nimbus://HOST:PORT` (reached with the cluster's credentials `tls`,
/// which it requires), an error for anything else.
pub async fn open(
    url: Option<&str>,
    capacity: u64,
    tls: Option<Arc<nimbus_trust::Tls>>,
) -> Result<Arc<dyn GlobalTier>, StateError> {
    match url {
        None => Ok(Arc::new(Embedded::with_capacity(capacity))),
        Some(url) => match (url.strip_prefix("nimbus://"), tls) {
            (Some(addr), Some(tls)) => Ok(Arc::new(Served::connect(addr, tls).await?)),
            (Some(addr), None) => Err(StateError::Served {
                addr: addr.to_owned(),
                message: "only a node of the cluster (with its credentials) may use it".into(),
            }),
            (None, _) => Ok(Arc::new(Redis::connect(url).await?)),
        },
    }
}

/// Proof of holding a global lock, returned by [`GlobalTier::lock`]. Random, so no two
/// holders on any hosts share one. It converts to and from `u128` to cross the guest
/// ABI; a made-up token holds nothing ([`StateError::NotHolder`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LockToken(u128);

impl LockToken {
    /// A fresh token.
    pub(crate) fn new() -> LockToken {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        // Each `RandomState` is seeded from the operating system's randomness; the
        // counter and clock make two tokens of one process differ even so.
        let seed = (
            COUNTER.fetch_add(1, Ordering::Relaxed),
            SystemTime::now(),
            std::process::id(),
        );
        let high = RandomState::new().hash_one(seed);
        let low = RandomState::new().hash_one(seed);
        LockToken((u128::from(high) << 64) | u128::from(low))
    }

    /// The token as 32 hexadecimal digits, as stored by the Redis backend.
    pub fn to_hex(self) -> String {
        format!("{:032x}", self.0)
    }
}

impl From<LockToken> for u128 {
    fn from(token: LockToken) -> u128 {
        token.0
    }
}

impl From<u128> for LockToken {
    fn from(bits: u128) -> LockToken {
        LockToken(bits)
    }
}

/// Checks that a value reaching `end` bytes stays within [`MAX_VALUE_LEN`].
pub(crate) fn check_len(end: u64) -> Result<(), StateError> {
    if end > MAX_VALUE_LEN {
        return Err(StateError::ValueTooLarge { len: Some(end) });
    }
    Ok(())
}

/// The end of a write of `len` bytes at `offset`, checked against [`MAX_VALUE_LEN`].
pub(crate) fn write_end(offset: u64, len: usize) -> Result<u64, StateError> {
    let end = offset.saturating_add(len as u64);
    check_len(end)?;
    Ok(end)
}

/// The range `[offset, offset + len)` of a value of `size` bytes, clipped to it.
pub(crate) fn clip(size: usize, offset: u64, len: u64) -> std::ops::Range<usize> {
    let start = offset.min(size as u64) as usize;
    let end = offset.saturating_add(len).min(size as u64) as usize;
    start..end
}

/// A lease as whole milliseconds (rounded up), refusing zero.
pub(crate) fn lease_millis(lease: Duration) -> Result<u64, StateError> {
    let millis = lease.as_nanos().div_ceil(1_000_000);
    if millis == 0 || millis > u128::from(i64::MAX as u64) {
        return Err(StateError::InvalidLease { lease });
    }
    Ok(millis as u64)
}
