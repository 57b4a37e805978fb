//! App names and keys qualified by them.

use std::fmt;
use std::sync::Arc;

use crate::{MAX_APP_NAME_LEN, MAX_KEY_LEN, StateError};

/// The separator between the app name and the key name in a qualified key. App names
/// cannot contain it, so the first one always ends the app name and key names may hold
/// any bytes, this one included.
const SEPARATOR: u8 = b':';

/// A validated app name: 1 to [`MAX_APP_NAME_LEN`] characters of `[A-Za-z0-9_-]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppName(Arc<str>);

impl AppName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<AppName, StateError> {
        let reason = if name.is_empty() {
            Some("it is empty")
        } else if name.len() > MAX_APP_NAME_LEN {
            Some("it is too long")
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            Some("it has a character outside the allowed set")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(StateError::InvalidAppName {
                name: name.to_owned(),
                reason,
            }),
            None => Ok(AppName(name.into())),
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for AppName {
    type Err = StateError;

    fn from_str(name: &str) -> Result<AppName, StateError> {
        AppName::new(name)
    }
}

/// A key qualified by its app: the only form in which the [`GlobalTier`] sees keys.
///
/// Its bytes are `APP:NAME`. The name is 1 to [`MAX_KEY_LEN`] arbitrary bytes; as app
/// names have no `:`, two different (app, name) pairs never give the same bytes.
///
/// [`GlobalTier`]: crate::GlobalTier
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    bytes: Arc<[u8]>,
    app_len: usize,
}

impl Key {
    /// The key `name` of `app`; the name must be 1 to [`MAX_KEY_LEN`] bytes.
    pub fn new(app: &AppName, name: &[u8]) -> Result<Key, StateError> {
        check_name(name)?;
        let mut bytes = Vec::with_capacity(app.0.len() + 1 + name.len());
        bytes.extend_from_slice(app.0.as_bytes());
        bytes.push(SEPARATOR);
        bytes.extend_from_slice(name);
        Ok(Key {
            bytes: bytes.into(),
            app_len: app.0.len(),
        })
    }

    /// The app's name.
    pub fn app(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.app_len]).expect("app names are ASCII")
    }

    /// The key's name within its app.
    pub fn name(&self) -> &[u8] {
        &self.bytes[self.app_len + 1..]
    }

    /// The qualified bytes, `APP:NAME`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Display for Key {
    /// `APP:NAME`, bytes of the name outside printable ASCII escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.app(), self.name().escape_ascii())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

/// Checks a key name: 1 to [`MAX_KEY_LEN`] bytes.
pub(crate) fn check_name(name: &[u8]) -> Result<(), StateError> {
    if name.is_empty() {
        return Err(StateError::EmptyKey);
    }
    if name.len() > MAX_KEY_LEN {
        return Err(StateError::KeyTooLong { len: name.len() });
    }
    Ok(())
}
