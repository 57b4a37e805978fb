//! Guests' state calls, mapped onto their app's two-tier state on their host.

use std::collections::HashMap;
use std::sync::Mutex;

use nimbus_core::Pid;
use nimbus_runtime::{AbiError, StateCall, StateReply, Tier};
use nimbus_state::{AppState, LockToken, StateError};

/// The global locks processes hold, by holder and key: a guest names only the key,
/// the token stays on the host.
#[derive(Default)]
pub(crate) struct Locks(Mutex<HashMap<(Pid, Vec<u8>), LockToken>>);

/// Performs `call` for `pid` on `app`'s state.
pub(crate) async fn perform(
    app: &AppState,
    locks: &Locks,
    pid: Pid,
    call: StateCall,
) -> Result<StateReply, AbiError> {
    perform_call(app, locks, pid, call)
        .await
        .map_err(|failure| match failure {
            Failed::Abi(error) => error,
            Failed::State(error) => code_of(&error),
        })
}

/// A state call failed, as the guest must hear it or as the store said.
enum Failed {
    Abi(AbiError),
    State(StateError),
}

impl From<AbiError> for Failed {
    fn from(error: AbiError) -> Failed {
        Failed::Abi(error)
    }
}

impl From<StateError> for Failed {
    fn from(error: StateError) -> Failed {
        Failed::State(error)
    }
}

async fn perform_call(
    app: &AppState,
    locks: &Locks,
    pid: Pid,
    call: StateCall,
) -> Result<StateReply, Failed> {
    let local = app.local();
    let found = |value: Option<Vec<u8>>| value.map(StateReply::Value).ok_or(AbiError::NotFound);
    let done = |changed: bool| {
        if changed {
            Ok(StateReply::Done)
        } else {
            Err(Failed::Abi(AbiError::NotFound))
        }
    };
    match call {
        StateCall::Get { tier, key } => Ok(found(match tier {
            Tier::Local => local.get(&key),
            Tier::Global => app.get(&key).await,
        }?)?),
        StateCall::Set { tier, key, value } => {
            match tier {
                Tier::Local => local.set(&key, value),
                Tier::Global => app.set(&key, value).await,
            }?;
            Ok(StateReply::Done)
        }
        StateCall::GetRange {
            tier,
            key,
            offset,
            len,
        } => Ok(StateReply::Value(match tier {
            Tier::Local => local.get_range(&key, offset, len),
            Tier::Global => app.get_range(&key, offset, len).await,
        }?)),
        StateCall::SetRange {
            tier,
            key,
            offset,
            bytes,
        } => {
            match tier {
                Tier::Local => local.set_range(&key, offset, &bytes),
                Tier::Global => app.set_range(&key, offset, &bytes).await,
            }?;
            Ok(StateReply::Done)
        }
        StateCall::Append { tier, key, bytes } => Ok(StateReply::Length(match tier {
            Tier::Local => local.append(&key, &bytes),
            Tier::Global => app.append(&key, &bytes).await,
        }?)),
        StateCall::Delete { tier, key } => done(match tier {
            Tier::Local => local.delete(&key),
            Tier::Global => app.delete(&key).await,
        }?),
        StateCall::Push { key } => done(local.push(&key).await?),
        StateCall::Pull { key } => done(local.pull(&key).await?),
        StateCall::Lock {
            key,
            lease,
            timeout,
        } => {
            let token = app.lock(&key, lease, timeout).await?;
            locks.0.lock().unwrap().insert((pid, key), token);
            Ok(StateReply::Done)
        }
        StateCall::Unlock { key } => {
            let held = locks.0.lock().unwrap().remove(&(pid, key.clone()));
            let token = held.ok_or(AbiError::Invalid)?;
            app.unlock(&key, token).await?;
            Ok(StateReply::Done)
        }
    }
}

/// How a state failure reads to the guest.
fn code_of(error: &StateError) -> AbiError {
    match error {
        StateError::EmptyKey | StateError::InvalidLease { .. } | StateError::NotHolder { .. } => {
            AbiError::Invalid
        }
        StateError::KeyTooLong { .. } | StateError::ValueTooLarge { .. } => AbiError::TooLarge,
        StateError::LocalFull { .. } => AbiError::Quota,
        StateError::LockTimeout { .. } => AbiError::TimedOut,
        StateError::InvalidAppName { .. }
        | StateError::UnsupportedUrl { .. }
        | StateError::Connect { .. }
        | StateError::Served { .. }
        | StateError::Redis { .. } => AbiError::Internal,
    }
}
