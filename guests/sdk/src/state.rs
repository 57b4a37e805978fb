//! Two-tier state: named byte values shared by the processes of one app.
//!
//! The [`Tier::Local`] tier is this host's copy, shared by the app's processes here
//! at memory speed; the [`Tier::Global`] tier is shared by every host. A value moves
//! between them only by [`push`] (local → global) and [`pull`] (global → local).
//! Keys are 1 to 1024 bytes, values at most 512 MiB; `docs/abi.md` has the details.
//!
//! ```no_run
//! use nimbus_sdk::state::{self, Tier};
//!
//! # fn main() -> Result<(), nimbus_sdk::Error> {
//! state::set(Tier::Local, b"model", b"weights")?;
//! state::push(b"model")?;
//! state::lock(b"counter", 10_000, 1_000)?;
//! let count = state::get(Tier::Global, b"counter")?.unwrap_or_default();
//! state::unlock(b"counter")?;
//! # let _ = count;
//! # Ok(())
//! # }
//! ```

use crate::{Error, abi_len};

/// Which copy of the app's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// This host's copy.
    Local = 0,
    /// The copy every host shares.
    Global = 1,
}

/// What a host call returns when there is no host (the crate built for another
/// target than wasm32).
const NO_HOST: i64 = i64::MIN;

#[cfg(target_arch = "wasm32")]
mod sys {
    #[link(wasm_import_module = "nimbus")]
    unsafe extern "C" {
        pub fn state_get(
            tier: i32,
            key: *const u8,
            key_len: i32,
            buf: *mut u8,
            cap: i32,
            len: *mut i32,
        ) -> i32;
        pub fn state_get_range(
            tier: i32,
            key: *const u8,
            key_len: i32,
            offset: i64,
            buf: *mut u8,
            len: i32,
            read: *mut i32,
        ) -> i32;
        pub fn state_set(
            tier: i32,
            key: *const u8,
            key_len: i32,
            value: *const u8,
            len: i32,
        ) -> i32;
        pub fn state_set_range(
            tier: i32,
            key: *const u8,
            key_len: i32,
            offset: i64,
            bytes: *const u8,
            len: i32,
        ) -> i32;
        pub fn state_append(
            tier: i32,
            key: *const u8,
            key_len: i32,
            bytes: *const u8,
            len: i32,
        ) -> i64;
        pub fn state_delete(tier: i32, key: *const u8, key_len: i32) -> i32;
        pub fn state_push(key: *const u8, key_len: i32) -> i32;
        pub fn state_pull(key: *const u8, key_len: i32) -> i32;
        pub fn state_lock(key: *const u8, key_len: i32, lease_ms: i64, timeout_ms: i64) -> i32;
        pub fn state_unlock(key: *const u8, key_len: i32) -> i32;
    }
}

/// Off nimbus there is no host: every call answers [`NO_HOST`].
#[cfg(not(target_arch = "wasm32"))]
mod sys {
    use super::NO_HOST;

    macro_rules! no_host {
        ($($name:ident($($arg:ty),*);)*) => {
            $(pub unsafe fn $name($(_: $arg),*) -> i64 { NO_HOST })*
        };
    }

    no_host! {
        state_get(i32, *const u8, i32, *mut u8, i32, *mut i32);
        state_get_range(i32, *const u8, i32, i64, *mut u8, i32, *mut i32);
        state_set(i32, *const u8, i32, *const u8, i32);
        state_set_range(i32, *const u8, i32, i64, *const u8, i32);
        state_append(i32, *const u8, i32, *const u8, i32);
        state_delete(i32, *const u8, i32);
        state_push(*const u8, i32);
        state_pull(*const u8, i32);
        state_lock(*const u8, i32, i64, i64);
        state_unlock(*const u8, i32);
    }
}

/// Makes a host call and turns its return value into a result.
macro_rules! host {
    ($call:expr) => {{
        // SAFETY: every pointer passed comes from a live borrow valid for its length
        // for the duration of the call; the host writes only within the mutable ones.
        let ret = i64::from(unsafe { $call });
        if ret == NO_HOST {
            Err(Error::Unsupported)
        } else {
            crate::check(ret, 0)
        }
    }};
}

/// The value of `key`, or `None` if it has none.
pub fn get(tier: Tier, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    let key_len = abi_len(key.len(), Error::TooLarge)?;
    let mut value: Vec<u8> = Vec::with_capacity(256);
    loop {
        let cap = abi_len(value.capacity(), Error::TooLarge)?;
        let mut len: i32 = 0;
        let got = host!(sys::state_get(
            tier as i32,
            key.as_ptr(),
            key_len,
            value.spare_capacity_mut().as_mut_ptr().cast(),
            cap,
            &mut len
        ));
        let len = usize::try_from(len).map_err(|_| Error::Internal)?;
        match got {
            Ok(_) if len <= value.capacity() => {
                // SAFETY: the host wrote `len` bytes into the spare capacity.
                unsafe { value.set_len(len) };
                return Ok(Some(value));
            }
            Err(Error::BufferTooSmall) => value.reserve_exact(len),
            Err(Error::NotFound) => return Ok(None),
            Err(e) => return Err(e),
            Ok(_) => return Err(Error::Internal),
        }
    }
}

/// Up to `len` bytes of `key`'s value from `offset` (fewer past its end).
pub fn get_range(tier: Tier, key: &[u8], offset: u64, len: usize) -> Result<Vec<u8>, Error> {
    let key_len = abi_len(key.len(), Error::TooLarge)?;
    let buf_len = abi_len(len, Error::TooLarge)?;
    let offset = i64::try_from(offset).map_err(|_| Error::Invalid)?;
    let mut bytes: Vec<u8> = Vec::with_capacity(len);
    let mut read: i32 = 0;
    host!(sys::state_get_range(
        tier as i32,
        key.as_ptr(),
        key_len,
        offset,
        bytes.spare_capacity_mut().as_mut_ptr().cast(),
        buf_len,
        &mut read
    ))?;
    let read = usize::try_from(read).map_err(|_| Error::Internal)?.min(len);
    // SAFETY: the host wrote `read` (at most `len`) bytes into the spare capacity.
    unsafe { bytes.set_len(read) };
    Ok(bytes)
}

/// Replaces `key`'s value.
pub fn set(tier: Tier, key: &[u8], value: &[u8]) -> Result<(), Error> {
    let (key_len, len) = (
        abi_len(key.len(), Error::TooLarge)?,
        abi_len(value.len(), Error::TooLarge)?,
    );
    host!(sys::state_set(
        tier as i32,
        key.as_ptr(),
        key_len,
        value.as_ptr(),
        len
    ))?;
    Ok(())
}

/// Writes `bytes` into `key`'s value at `offset`, extending it with zeros if needed.
pub fn set_range(tier: Tier, key: &[u8], offset: u64, bytes: &[u8]) -> Result<(), Error> {
    let (key_len, len) = (
        abi_len(key.len(), Error::TooLarge)?,
        abi_len(bytes.len(), Error::TooLarge)?,
    );
    let offset = i64::try_from(offset).map_err(|_| Error::Invalid)?;
    host!(sys::state_set_range(
        tier as i32,
        key.as_ptr(),
        key_len,
        offset,
        bytes.as_ptr(),
        len
    ))?;
    Ok(())
}

/// Appends `bytes` to `key`'s value and returns its new length.
pub fn append(tier: Tier, key: &[u8], bytes: &[u8]) -> Result<u64, Error> {
    let (key_len, len) = (
        abi_len(key.len(), Error::TooLarge)?,
        abi_len(bytes.len(), Error::TooLarge)?,
    );
    let new_len = host!(sys::state_append(
        tier as i32,
        key.as_ptr(),
        key_len,
        bytes.as_ptr(),
        len
    ))?;
    Ok(new_len as u64)
}

/// Deletes `key`; `false` if it had no value.
pub fn delete(tier: Tier, key: &[u8]) -> Result<bool, Error> {
    let key_len = abi_len(key.len(), Error::TooLarge)?;
    let deleted = host!(sys::state_delete(tier as i32, key.as_ptr(), key_len));
    found(deleted)
}

/// Copies `key`'s local value to the global tier; `false` if it has no local value.
pub fn push(key: &[u8]) -> Result<bool, Error> {
    let key_len = abi_len(key.len(), Error::TooLarge)?;
    let pushed = host!(sys::state_push(key.as_ptr(), key_len));
    found(pushed)
}

/// Copies `key`'s global value into this host's local tier; `false` if it has none.
pub fn pull(key: &[u8]) -> Result<bool, Error> {
    let key_len = abi_len(key.len(), Error::TooLarge)?;
    let pulled = host!(sys::state_pull(key.as_ptr(), key_len));
    found(pulled)
}

/// Takes `key`'s global lock, waiting up to `timeout_ms` ([`Error::TimedOut`]); the
/// lock lapses after `lease_ms` unless [`unlock`] releases it first.
pub fn lock(key: &[u8], lease_ms: u64, timeout_ms: u64) -> Result<(), Error> {
    let key_len = abi_len(key.len(), Error::TooLarge)?;
    let lease = i64::try_from(lease_ms).map_err(|_| Error::Invalid)?;
    let timeout = i64::try_from(timeout_ms).map_err(|_| Error::Invalid)?;
    host!(sys::state_lock(key.as_ptr(), key_len, lease, timeout))?;
    Ok(())
}

/// Releases `key`'s global lock, which this process must hold.
pub fn unlock(key: &[u8]) -> Result<(), Error> {
    let key_len = abi_len(key.len(), Error::TooLarge)?;
    host!(sys::state_unlock(key.as_ptr(), key_len))?;
    Ok(())
}

fn found(result: Result<i64, Error>) -> Result<bool, Error> {
    match result {
        Ok(_) => Ok(true),
        Err(Error::NotFound) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_nimbus_every_call_is_unsupported() {
        assert_eq!(get(Tier::Local, b"k"), Err(Error::Unsupported));
        assert_eq!(set(Tier::Global, b"k", b"v"), Err(Error::Unsupported));
        assert_eq!(push(b"k"), Err(Error::Unsupported));
        assert_eq!(lock(b"k", 1, 1), Err(Error::Unsupported));
    }
}
