//! The local tier of one app on one host, an app's handle on both tiers, and a host's
//! set of them.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use crate::key::check_name;
use crate::{AppName, GlobalTier, Key, LockToken, StateError, check_len, clip, write_end};

/// One app's values on one host, shared by all the app's processes there and operated
/// synchronously at memory speed.
///
/// Each key has its own lock, so processes working on different keys never wait for
/// each other; an operation on one key is atomic. The tier is bounded: its values and
/// key names together never exceed the capacity it was given
/// ([`StateError::Full`]).
///
/// Consistency: this tier is per host and is not coherent across hosts. Another host's
/// tier of the same app sees a write only after it is [`push`](LocalTier::push)ed to
/// the global tier there and [`pull`](LocalTier::pull)ed from it on the other host;
/// until then each host reads its own copy. The global tier's lock is the way to order
/// pushes and pulls of processes on different hosts.
pub struct LocalTier {
    app: AppName,
    global: Arc<dyn GlobalTier>,
    capacity: u64,
    used: AtomicU64,
    slots: RwLock<HashMap<Box<[u8]>, SharedSlot>>,
}

/// One key's value.
struct Slot {
    bytes: Vec<u8>,
    /// False once the key is deleted: a writer that got the slot before the deletion
    /// looks the key up again instead of writing to a value nobody can see.
    live: bool,
}

/// A value, shared by the map and whoever is working on it.
type SharedSlot = Arc<RwLock<Slot>>;

// A panic while holding one of these locks leaves whole byte strings behind, so a
// poisoned lock is used as it is.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl LocalTier {
    /// An empty local tier of `app` holding at most `capacity` bytes (values and key
    /// names), pushing to and pulling from `global`.
    pub fn new(app: AppName, global: Arc<dyn GlobalTier>, capacity: u64) -> LocalTier {
        LocalTier {
            app,
            global,
            capacity,
            used: AtomicU64::new(0),
            slots: RwLock::default(),
        }
    }

    /// The app.
    pub fn app(&self) -> &AppName {
        &self.app
    }

    /// The most bytes (values and key names) the tier holds.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The bytes it holds now (values and key names).
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The whole value, or `None` if the key does not exist here.
    pub fn get(&self, name: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.read(name, |bytes| bytes.to_vec())
    }

    /// Replaces the value (creating the key).
    pub fn set(&self, name: &[u8], value: Vec<u8>) -> Result<(), StateError> {
        let len = value.len() as u64;
        check_len(len)?;
        self.update(name, |_| Ok(len), |bytes| *bytes = value)
    }

    /// Up to `len` bytes at `offset`; a read past the end returns what exists (nothing
    /// at or past the end, or for a missing key), as [`GlobalTier::get_range`].
    pub fn get_range(&self, name: &[u8], offset: u64, len: u64) -> Result<Vec<u8>, StateError> {
        Ok(self
            .read(name, |bytes| bytes[clip(bytes.len(), offset, len)].to_vec())?
            .unwrap_or_default())
    }

    /// Overwrites bytes at `offset`, extending with zero bytes past the end and creating
    /// the key if `bytes` is not empty, as [`GlobalTier::set_range`]. Returns the new
    /// length.
    pub fn set_range(&self, name: &[u8], offset: u64, bytes: &[u8]) -> Result<u64, StateError> {
        let end = write_end(offset, bytes.len())?;
        if bytes.is_empty() {
            return self.len(name);
        }
        let (start, end) = (offset as usize, end as usize);
        self.update(
            name,
            |len| Ok(len.max(end as u64)),
            |value| {
                if value.len() < end {
                    value.resize(end, 0);
                }
                value[start..end].copy_from_slice(bytes);
                value.len() as u64
            },
        )
    }

    /// Appends `bytes` (creating the key), returning the new length.
    pub fn append(&self, name: &[u8], bytes: &[u8]) -> Result<u64, StateError> {
        self.update(
            name,
            |len| write_end(len, bytes.len()),
            |value| {
                value.extend_from_slice(bytes);
                value.len() as u64
            },
        )
    }

    /// Removes the key here, returning whether it existed. The global tier is not
    /// touched.
    pub fn delete(&self, name: &[u8]) -> Result<bool, StateError> {
        check_name(name)?;
        let Some(slot) = write(&self.slots).remove(name) else {
            return Ok(false);
        };
        let mut slot = write(&slot);
        slot.live = false;
        self.used
            .fetch_sub((name.len() + slot.bytes.len()) as u64, Ordering::Relaxed);
        slot.bytes = Vec::new();
        Ok(true)
    }

    /// The value's length, 0 if the key does not exist here.
    pub fn len(&self, name: &[u8]) -> Result<u64, StateError> {
        Ok(self
            .read(name, |bytes| bytes.len() as u64)?
            .unwrap_or_default())
    }

    /// Local → global: writes this host's value of `name` to the global tier, replacing
    /// the global value. Returns false, changing nothing, if the key does not exist
    /// here.
    pub async fn push(&self, name: &[u8]) -> Result<bool, StateError> {
        let key = Key::new(&self.app, name)?;
        let Some(value) = self.get(name)? else {
            return Ok(false);
        };
        self.global.set(&key, value).await?;
        Ok(true)
    }

    /// Global → local: replaces this host's value of `name` with the global one.
    /// Returns false, changing nothing, if the key does not exist globally.
    pub async fn pull(&self, name: &[u8]) -> Result<bool, StateError> {
        let key = Key::new(&self.app, name)?;
        let Some(value) = self.global.get(&key).await? else {
            return Ok(false);
        };
        self.set(name, value)?;
        Ok(true)
    }

    /// Local → global for the bytes `[offset, offset + len)` of this host's value,
    /// clipped to its end: written at the same offset globally (extending the global
    /// value with zero bytes if needed). Returns the number of bytes copied; 0, changing
    /// nothing, if the range holds nothing here.
    pub async fn push_range(&self, name: &[u8], offset: u64, len: u64) -> Result<u64, StateError> {
        let key = Key::new(&self.app, name)?;
        let bytes = self.get_range(name, offset, len)?;
        if !bytes.is_empty() {
            self.global.set_range(&key, offset, &bytes).await?;
        }
        Ok(bytes.len() as u64)
    }

    /// Global → local for the bytes `[offset, offset + len)` of the global value,
    /// clipped to its end: written at the same offset here (extending with zero bytes
    /// and creating the key if needed). Returns the number of bytes copied; 0, changing
    /// nothing, if the range holds nothing globally.
    pub async fn pull_range(&self, name: &[u8], offset: u64, len: u64) -> Result<u64, StateError> {
        let key = Key::new(&self.app, name)?;
        let bytes = self.global.get_range(&key, offset, len).await?;
        if !bytes.is_empty() {
            self.set_range(name, offset, &bytes)?;
        }
        Ok(bytes.len() as u64)
    }

    /// `f` of the value of `name`, or `None` if the key does not exist.
    fn read<R>(&self, name: &[u8], f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>, StateError> {
        check_name(name)?;
        let Some(slot) = read(&self.slots).get(name).cloned() else {
            return Ok(None);
        };
        let slot = read(&slot);
        Ok(slot.live.then(|| f(&slot.bytes)))
    }

    /// Changes the value of `name` (an empty one if the key does not exist yet, which
    /// then does): `new_len` says from the current length how long it will be, which
    /// is reserved against the capacity before `apply` changes it.
    fn update<R>(
        &self,
        name: &[u8],
        new_len: impl FnOnce(u64) -> Result<u64, StateError>,
        apply: impl FnOnce(&mut Vec<u8>) -> R,
    ) -> Result<R, StateError> {
        check_name(name)?;
        loop {
            let existing = read(&self.slots).get(name).cloned();
            if let Some(slot) = existing {
                let mut slot = write(&slot);
                if !slot.live {
                    continue; // deleted meanwhile: look again
                }
                let old = slot.bytes.len() as u64;
                let new = new_len(old)?;
                if new > old {
                    self.reserve(new - old)?;
                } else {
                    self.used.fetch_sub(old - new, Ordering::Relaxed);
                }
                return Ok(apply(&mut slot.bytes));
            }
            let mut slots = write(&self.slots);
            if slots.contains_key(name) {
                continue; // created meanwhile
            }
            let new = new_len(0)?;
            self.reserve(name.len() as u64 + new)?;
            let mut bytes = Vec::new();
            let result = apply(&mut bytes);
            let slot = Slot { bytes, live: true };
            slots.insert(name.into(), Arc::new(RwLock::new(slot)));
            return Ok(result);
        }
    }

    fn reserve(&self, more: u64) -> Result<(), StateError> {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(more)
                    .filter(|&total| total <= self.capacity)
            })
            .map(drop)
            .map_err(|used| StateError::Full {
                global: false,
                app: self.app.clone(),
                used,
                wanted: more,
                capacity: self.capacity,
            })
    }
}

impl fmt::Debug for LocalTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalTier")
            .field("app", &self.app)
            .field("used", &self.used())
            .field("capacity", &self.capacity)
            .field("global", &self.global.location())
            .finish()
    }
}

/// An app's handle on its state: the global tier seen through the app's own keys, and
/// the app's local tier on this host. Cheap to clone; every process of the app on a
/// host gets a clone of the same handle (see [`HostState::app`]).
///
/// Its methods take key names, never qualified keys, so a holder reaches only its own
/// app's keys.
#[derive(Clone, Debug)]
pub struct AppState {
    local: Arc<LocalTier>,
}

impl AppState {
    /// The handle of `app` with a fresh local tier of `local_capacity` bytes.
    pub fn new(app: AppName, global: Arc<dyn GlobalTier>, local_capacity: u64) -> AppState {
        AppState {
            local: Arc::new(LocalTier::new(app, global, local_capacity)),
        }
    }

    /// The app.
    pub fn app(&self) -> &AppName {
        &self.local.app
    }

    /// The app's local tier on this host (with push and pull to the global tier).
    pub fn local(&self) -> &LocalTier {
        &self.local
    }

    /// The global key `name` of this app.
    pub fn key(&self, name: &[u8]) -> Result<Key, StateError> {
        Key::new(&self.local.app, name)
    }

    fn global(&self) -> &dyn GlobalTier {
        &*self.local.global
    }

    /// [`GlobalTier::get`] of this app's key `name`.
    pub async fn get(&self, name: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.global().get(&self.key(name)?).await
    }

    /// [`GlobalTier::set`] of this app's key `name`.
    pub async fn set(&self, name: &[u8], value: Vec<u8>) -> Result<(), StateError> {
        self.global().set(&self.key(name)?, value).await
    }

    /// [`GlobalTier::get_range`] of this app's key `name`.
    pub async fn get_range(
        &self,
        name: &[u8],
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StateError> {
        self.global().get_range(&self.key(name)?, offset, len).await
    }

    /// [`GlobalTier::set_range`] of this app's key `name`.
    pub async fn set_range(
        &self,
        name: &[u8],
        offset: u64,
        bytes: &[u8],
    ) -> Result<u64, StateError> {
        self.global()
            .set_range(&self.key(name)?, offset, bytes)
            .await
    }

    /// [`GlobalTier::append`] to this app's key `name`.
    pub async fn append(&self, name: &[u8], bytes: &[u8]) -> Result<u64, StateError> {
        self.global().append(&self.key(name)?, bytes).await
    }

    /// [`GlobalTier::delete`] of this app's key `name`.
    pub async fn delete(&self, name: &[u8]) -> Result<bool, StateError> {
        self.global().delete(&self.key(name)?).await
    }

    /// [`GlobalTier::len`] of this app's key `name`.
    pub async fn len(&self, name: &[u8]) -> Result<u64, StateError> {
        self.global().len(&self.key(name)?).await
    }

    /// [`GlobalTier::lock`] of this app's key `name`.
    pub async fn lock(
        &self,
        name: &[u8],
        lease: Duration,
        timeout: Duration,
    ) -> Result<LockToken, StateError> {
        self.global().lock(&self.key(name)?, lease, timeout).await
    }

    /// [`GlobalTier::unlock`] of this app's key `name`.
    pub async fn unlock(&self, name: &[u8], token: LockToken) -> Result<(), StateError> {
        self.global().unlock(&self.key(name)?, token).await
    }
}

/// One host's state: the global tier and a local tier per app, created on first use.
pub struct HostState {
    global: Arc<dyn GlobalTier>,
    local_capacity: u64,
    apps: Mutex<HashMap<AppName, AppState>>,
}

impl HostState {
    /// A host on `global` whose apps' local tiers hold `local_capacity` bytes each.
    pub fn new(global: Arc<dyn GlobalTier>, local_capacity: u64) -> HostState {
        HostState {
            global,
            local_capacity,
            apps: Mutex::default(),
        }
    }

    /// The global tier.
    pub fn global(&self) -> &Arc<dyn GlobalTier> {
        &self.global
    }

    /// The handle of `app` on this host, the same (sharing one local tier) for every
    /// caller.
    pub fn app(&self, app: &AppName) -> AppState {
        let mut apps = self.apps.lock().unwrap_or_else(PoisonError::into_inner);
        apps.entry(app.clone())
            .or_insert_with(|| AppState::new(app.clone(), self.global.clone(), self.local_capacity))
            .clone()
    }

    /// The bytes each app keeps in its local tier here, for the apps that keep any.
    pub fn local_usage(&self) -> Vec<(AppName, u64)> {
        let apps = self.apps.lock().unwrap_or_else(PoisonError::into_inner);
        apps.iter()
            .map(|(app, state)| (app.clone(), state.local().used()))
            .filter(|&(_, used)| used > 0)
            .collect()
    }

    /// Drops `app`'s local tier on this host (when the app is removed), returning
    /// whether it had one. Handles still held keep the old tier until they are dropped.
    pub fn forget(&self, app: &AppName) -> bool {
        let mut apps = self.apps.lock().unwrap_or_else(PoisonError::into_inner);
        apps.remove(app).is_some()
    }
}

impl fmt::Debug for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostState")
            .field("global", &self.global.location())
            .field("local_capacity", &self.local_capacity)
            .finish_non_exhaustive()
    }
}
