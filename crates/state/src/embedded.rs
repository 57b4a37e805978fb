//! The embedded global tier: values and locks in this process's memory.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{
    GlobalTier, Key, LockToken, StateError, StateFuture, check_len, clip, lease_millis, write_end,
};

/// The global tier of a single-process deployment (`nimbus run`, `nimbus up` without
/// `--state`): every host lives in this process, so a map in memory is global.
///
/// Values live under one mutex, held for the copy of one value. Locks are records
/// (token, lease end) in a second map; waiters sleep on one [`Notify`] woken by every
/// unlock, or until the holder's lease ends or their own timeout, whichever is first.
#[derive(Default)]
pub struct Embedded {
    values: Mutex<HashMap<Key, Vec<u8>>>,
    locks: Mutex<HashMap<Key, Held>>,
    released: Notify,
}

/// A held lock.
struct Held {
    token: LockToken,
    until: Instant,
}

impl Embedded {
    /// An empty tier.
    pub fn new() -> Embedded {
        Embedded::default()
    }

    fn values(&self) -> MutexGuard<'_, HashMap<Key, Vec<u8>>> {
        // A panic while holding the lock leaves every value a whole byte string.
        self.values.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn locks(&self) -> MutexGuard<'_, HashMap<Key, Held>> {
        self.locks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the lock if it is free or its lease has ended; otherwise returns when the
    /// current lease ends.
    fn try_lock(&self, key: &Key, lease: Duration) -> Result<LockToken, Instant> {
        let now = Instant::now();
        let mut locks = self.locks();
        match locks.get(key) {
            Some(held) if held.until > now => Err(held.until),
            _ => {
                let token = LockToken::new();
                locks.insert(
                    key.clone(),
                    Held {
                        token,
                        until: after(now, lease),
                    },
                );
                Ok(token)
            }
        }
    }
}

/// `now + duration`, a century at most (so `Duration::MAX` means forever, not overflow).
fn after(now: Instant, duration: Duration) -> Instant {
    now + duration.min(Duration::from_secs(100 * 365 * 24 * 3600))
}

fn ready<'a, T: Send + 'a>(result: Result<T, StateError>) -> StateFuture<'a, T> {
    Box::pin(std::future::ready(result))
}

impl GlobalTier for Embedded {
    fn get<'a>(&'a self, key: &'a Key) -> StateFuture<'a, Option<Vec<u8>>> {
        ready(Ok(self.values().get(key).cloned()))
    }

    fn set<'a>(&'a self, key: &'a Key, value: Vec<u8>) -> StateFuture<'a, ()> {
        ready(check_len(value.len() as u64).map(|()| {
            self.values().insert(key.clone(), value);
        }))
    }

    fn get_range<'a>(&'a self, key: &'a Key, offset: u64, len: u64) -> StateFuture<'a, Vec<u8>> {
        let values = self.values();
        let bytes = values
            .get(key)
            .map(|value| value[clip(value.len(), offset, len)].to_vec())
            .unwrap_or_default();
        ready(Ok(bytes))
    }

    fn set_range<'a>(&'a self, key: &'a Key, offset: u64, bytes: &'a [u8]) -> StateFuture<'a, u64> {
        ready(write_end(offset, bytes.len()).map(|end| {
            let mut values = self.values();
            if bytes.is_empty() {
                return values.get(key).map_or(0, |value| value.len() as u64);
            }
            let value = values.entry(key.clone()).or_default();
            let (offset, end) = (offset as usize, end as usize);
            if value.len() < end {
                value.resize(end, 0);
            }
            value[offset..end].copy_from_slice(bytes);
            value.len() as u64
        }))
    }

    fn append<'a>(&'a self, key: &'a Key, bytes: &'a [u8]) -> StateFuture<'a, u64> {
        let mut values = self.values();
        let len = values.get(key).map_or(0, Vec::len);
        let result = write_end(len as u64, bytes.len());
        if result.is_ok() {
            values
                .entry(key.clone())
                .or_default()
                .extend_from_slice(bytes);
        }
        ready(result)
    }

    fn delete<'a>(&'a self, key: &'a Key) -> StateFuture<'a, bool> {
        ready(Ok(self.values().remove(key).is_some()))
    }

    fn len<'a>(&'a self, key: &'a Key) -> StateFuture<'a, u64> {
        ready(Ok(self.values().get(key).map_or(0, |v| v.len() as u64)))
    }

    fn lock<'a>(
        &'a self,
        key: &'a Key,
        lease: Duration,
        timeout: Duration,
    ) -> StateFuture<'a, LockToken> {
        Box::pin(async move {
            lease_millis(lease)?;
            let deadline = after(Instant::now(), timeout);
            loop {
                // Registered before trying, so an unlock between the try and the wait
                // still wakes this waiter.
                let released = self.released.notified();
                tokio::pin!(released);
                released.as_mut().enable();
                let lease_end = match self.try_lock(key, lease) {
                    Ok(token) => return Ok(token),
                    Err(lease_end) => lease_end,
                };
                if Instant::now() >= deadline {
                    return Err(StateError::LockTimeout {
                        key: key.to_string(),
                        timeout,
                    });
                }
                tokio::select! {
                    () = released => {}
                    () = tokio::time::sleep_until(lease_end.min(deadline)) => {}
                }
            }
        })
    }

    fn unlock<'a>(&'a self, key: &'a Key, token: LockToken) -> StateFuture<'a, ()> {
        let mut locks = self.locks();
        let held = match locks.get(key) {
            Some(held) if held.token == token => held,
            _ => {
                return ready(Err(StateError::NotHolder {
                    key: key.to_string(),
                }));
            }
        };
        let expired = held.until <= Instant::now();
        locks.remove(key);
        drop(locks);
        if expired {
            return ready(Err(StateError::NotHolder {
                key: key.to_string(),
            }));
        }
        self.released.notify_waiters();
        ready(Ok(()))
    }

    fn location(&self) -> String {
        "embedded".to_owned()
    }
}
