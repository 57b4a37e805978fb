//! The embedded global tier: values and locks in this process's memory.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{
    AppName, GlobalTier, Growth, Key, LockToken, StateError, StateFuture, check_len, clip,
    lease_millis, write_end,
};

/// What an embedded tier holds at most unless told otherwise: values and key
/// names of every app together.
pub const DEFAULT_GLOBAL_CAPACITY: u64 = 1 << 30;

/// The global tier of a single-process deployment (`nimbus run`, `nimbus up` without
/// `--state`): every host lives in this process, so a map in memory is global. The
/// planner serves one to a cluster's workers.
///
/// Bounded: its values and key names together never exceed its capacity
/// ([`StateError::Full`] with `global` set). Values are shared buffers under one
/// mutex, held only to look a value up or swap one in: a read clones a pointer and
/// copies out after the lock is released; a write into a value nobody is reading
/// changes it in place, and one into a value being read is made on a copy, outside
/// the lock, and swapped in only if the value is still the one copied. Locks are
/// records (token, lease end) in a second map; waiters sleep on one [`Notify`] woken
/// by every unlock, or until the holder's lease ends or their own timeout, whichever
/// is first.
pub struct Embedded {
    values: Mutex<Values>,
    locks: Mutex<HashMap<Key, Held>>,
    released: Notify,
}

/// The values and what they take.
struct Values {
    map: HashMap<Key, Bytes>,
    /// Bytes held: each value and its key.
    used: u64,
    capacity: u64,
}

/// What an entry costs beyond its key and value bytes (its map slot, the key's and
/// the value's headers), charged so that many tiny entries cannot hold memory far
/// past the capacity, as the mailbox charges each message.
pub const ENTRY_OVERHEAD: u64 = 128;

impl Values {
    /// What `key` with a value of `len` bytes takes.
    fn cost(key: &Key, len: usize) -> u64 {
        (key.as_bytes().len() + len) as u64 + ENTRY_OVERHEAD
    }

    /// Checks that `key`'s value (if any) may become `len` bytes long; returns what
    /// the tier will then hold.
    fn room(&self, key: &Key, len: usize) -> Result<u64, StateError> {
        let old = self
            .map
            .get(key)
            .map_or(0, |value| Values::cost(key, value.len()));
        let new = Values::cost(key, len);
        let used = self.used - old + new;
        if new > old && used > self.capacity {
            return Err(StateError::Full {
                global: true,
                app: AppName::new(key.app()).expect("a key's app name is valid"),
                used: self.used,
                wanted: new - old,
                capacity: self.capacity,
            });
        }
        Ok(used)
    }

    /// Makes `value` `key`'s, `used` having come from [`Values::room`] under the same
    /// lock; returns the value it replaces, to be dropped after the lock.
    fn put(&mut self, key: &Key, value: Bytes, used: u64) -> Option<Bytes> {
        self.used = used;
        self.map.insert(key.clone(), value)
    }
}

/// A held lock.
struct Held {
    token: LockToken,
    until: Instant,
}

impl Default for Embedded {
    fn default() -> Embedded {
        Embedded::with_capacity(DEFAULT_GLOBAL_CAPACITY)
    }
}

/// Whether `now` is still `then`: the same buffer (which holding `then` keeps from
/// being freed or changed in place), or both absent.
fn unchanged(now: Option<&Bytes>, then: Option<&Bytes>) -> bool {
    match (now, then) {
        (Some(now), Some(then)) => now.as_ptr() == then.as_ptr() && now.len() == then.len(),
        (None, None) => true,
        _ => false,
    }
}

impl Embedded {
    /// An empty tier of [`DEFAULT_GLOBAL_CAPACITY`].
    pub fn new() -> Embedded {
        Embedded::default()
    }

    /// An empty tier holding at most `capacity` bytes (values and key names).
    pub fn with_capacity(capacity: u64) -> Embedded {
        Embedded {
            values: Mutex::new(Values {
                map: HashMap::new(),
                used: 0,
                capacity,
            }),
            locks: Mutex::default(),
            released: Notify::new(),
        }
    }

    /// The bytes it holds now (values and key names).
    pub fn used(&self) -> u64 {
        self.values().used
    }

    fn values(&self) -> MutexGuard<'_, Values> {
        // A panic while holding the lock leaves every value a whole byte string.
        self.values.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn locks(&self) -> MutexGuard<'_, HashMap<Key, Held>> {
        self.locks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value of `key`, shared: a pointer copied under the lock.
    fn value(&self, key: &Key) -> Option<Bytes> {
        self.values().map.get(key).cloned()
    }

    /// Changes `key`'s value (absent: empty) with `edit` into one of
    /// `new_len(old length)` bytes, and returns that length. In place if the map
    /// holds the only reference to the value and it has room; else on a copy made
    /// outside the lock, swapped in only if the value is unchanged meanwhile (else
    /// done again).
    fn edit(
        &self,
        key: &Key,
        new_len: impl Fn(u64) -> Result<u64, StateError>,
        edit: impl Fn(&mut BytesMut),
    ) -> Result<u64, StateError> {
        loop {
            let mut guard = self.values();
            let old_len = guard.map.get(key).map_or(0, |value| value.len() as u64);
            let len = new_len(old_len)?;
            let used = guard.room(key, len as usize)?;
            let values = &mut *guard;
            let copied = match values.map.get_mut(key) {
                // Taken out of the map, so that it is unique unless someone reads it.
                Some(slot) => match std::mem::take(slot).try_into_mut() {
                    // In place only within the room it has: growing it would copy
                    // the whole value under the lock.
                    Ok(mut unique) if unique.capacity() >= len as usize => {
                        edit(&mut unique);
                        *slot = unique.freeze();
                        values.used = used;
                        return Ok(len);
                    }
                    Ok(unique) => {
                        *slot = unique.freeze();
                        Some(slot.clone())
                    }
                    Err(shared) => {
                        *slot = shared.clone();
                        Some(shared)
                    }
                },
                None => None,
            };
            drop(guard);
            // A value that grows is given room to grow on in place (a quarter
            // more), so that appends do not copy it whole each time.
            let room = match len > old_len {
                true => len + len / 4,
                false => len,
            };
            let mut new = BytesMut::with_capacity(room as usize);
            new.extend_from_slice(copied.as_deref().unwrap_or_default());
            edit(&mut new);
            let mut values = self.values();
            if !unchanged(values.map.get(key), copied.as_ref()) {
                continue;
            }
            let used = values.room(key, new.len())?;
            let old = values.put(key, new.freeze(), used);
            drop(values);
            drop((old, copied));
            return Ok(len);
        }
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
        ready(Ok(self.value(key).map(|value| value.to_vec())))
    }

    fn set<'a>(&'a self, key: &'a Key, value: Vec<u8>) -> StateFuture<'a, ()> {
        ready(check_len(value.len() as u64).and_then(|()| {
            let value = Bytes::from(value);
            let mut values = self.values();
            let used = values.room(key, value.len())?;
            let old = values.put(key, value, used);
            drop(values);
            drop(old);
            Ok(())
        }))
    }

    fn get_range<'a>(&'a self, key: &'a Key, offset: u64, len: u64) -> StateFuture<'a, Vec<u8>> {
        let bytes = self
            .value(key)
            .map(|value| value[clip(value.len(), offset, len)].to_vec())
            .unwrap_or_default();
        ready(Ok(bytes))
    }

    fn set_range<'a>(&'a self, key: &'a Key, offset: u64, bytes: &'a [u8]) -> StateFuture<'a, u64> {
        ready(write_end(offset, bytes.len()).and_then(|end| {
            if bytes.is_empty() {
                return Ok(self.value(key).map_or(0, |value| value.len() as u64));
            }
            let (offset, end) = (offset as usize, end as usize);
            self.edit(
                key,
                |len| Ok(len.max(end as u64)),
                |value| {
                    if value.len() < end {
                        value.resize(end, 0);
                    }
                    value[offset..end].copy_from_slice(bytes);
                },
            )
        }))
    }

    fn append<'a>(&'a self, key: &'a Key, bytes: &'a [u8]) -> StateFuture<'a, u64> {
        ready(self.edit(
            key,
            |len| write_end(len, bytes.len()),
            |value| value.extend_from_slice(bytes),
        ))
    }

    fn delete<'a>(&'a self, key: &'a Key) -> StateFuture<'a, bool> {
        let mut values = self.values();
        let old = values.map.remove(key);
        if let Some(value) = &old {
            values.used -= Values::cost(key, value.len());
        }
        drop(values);
        ready(Ok(old.is_some()))
    }

    fn len<'a>(&'a self, key: &'a Key) -> StateFuture<'a, u64> {
        ready(Ok(self
            .values()
            .map
            .get(key)
            .map_or(0, |value| value.len() as u64)))
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

    fn room_for<'a>(&'a self, key: &'a Key, growth: Growth) -> StateFuture<'a, ()> {
        let values = self.values();
        let old = values.map.get(key).map_or(0, |value| value.len() as u64);
        let len = growth.new_len(old);
        ready(check_len(len).and_then(|()| values.room(key, len as usize).map(drop)))
    }

    fn location(&self) -> String {
        "embedded".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::AppName;

    fn key(name: &[u8]) -> Key {
        Key::new(&AppName::new("app").unwrap(), name).unwrap()
    }

    #[tokio::test]
    async fn a_value_nobody_reads_is_changed_in_place_and_one_being_read_on_a_copy() {
        let tier = Embedded::new();
        let k = key(b"k");
        tier.set(&k, b"0123456789".to_vec()).await.unwrap();
        let before = tier.value(&k).unwrap().as_ptr();
        tier.set_range(&k, 0, b"a").await.unwrap();
        // Written into the very buffer, not a copy.
        assert_eq!(tier.value(&k).unwrap().as_ptr(), before);
        tier.append(&k, b"!").await.unwrap();
        assert_eq!(tier.value(&k).unwrap(), &b"a123456789!"[..]);

        // A reader's value stays what it read while a writer changes the key.
        let read = tier.value(&k).unwrap();
        tier.set_range(&k, 1, b"b").await.unwrap();
        tier.append(&k, b"?").await.unwrap();
        assert_eq!(&read[..], b"a123456789!");
        assert_eq!(tier.value(&k).unwrap(), &b"ab23456789!?"[..]);
        assert_ne!(tier.value(&k).unwrap().as_ptr(), read.as_ptr());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writes_beside_readers_lose_nothing() {
        const EACH: usize = 2_000;
        let tier = Arc::new(Embedded::with_capacity(1 << 20));
        let k = key(b"log");
        let mut tasks = Vec::new();
        for byte in [b'a', b'b'] {
            let (tier, k) = (tier.clone(), k.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..EACH {
                    tier.append(&k, &[byte]).await.unwrap();
                }
            }));
        }
        for _ in 0..2 {
            let (tier, k) = (tier.clone(), k.clone());
            tasks.push(tokio::spawn(async move {
                // Readers hold the value now and then, sending writers to the copy.
                for _ in 0..EACH {
                    let value = tier.get(&k).await.unwrap().unwrap_or_default();
                    assert!(value.iter().all(|b| *b == b'a' || *b == b'b'));
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let value = tier.get(&k).await.unwrap().unwrap();
        assert_eq!(value.len(), 2 * EACH);
        assert_eq!(value.iter().filter(|b| **b == b'a').count(), EACH);
        assert_eq!(
            tier.used(),
            (k.as_bytes().len() + 2 * EACH) as u64 + ENTRY_OVERHEAD
        );
    }
}
