//! Guests' state calls, mapped onto their app's two-tier state on their host.

use std::collections::HashMap;
use std::sync::Mutex;

use nimbus_core::Pid;
use nimbus_runtime::{AbiError, StateCall, StateReply, Tier};
use nimbus_state::{AppState, LockToken, StateError};

/// The global locks processes hold, by holder and key: a guest names only the key,
/// the token stays on the host. A holder's entry goes when it ends ([`Locks::release_all`]).
#[derive(Default)]
pub(crate) struct Locks(Mutex<HashMap<Pid, HashMap<Vec<u8>, Held>>>);

/// A lock a process holds: its app's state, where to release it, and its token.
struct Held {
    app: AppState,
    token: LockToken,
}

impl Locks {
    fn insert(&self, pid: Pid, key: Vec<u8>, held: Held) {
        self.0
            .lock()
            .unwrap()
            .entry(pid)
            .or_default()
            .insert(key, held);
    }

    fn remove(&self, pid: Pid, key: &[u8]) -> Option<Held> {
        let mut locks = self.0.lock().unwrap();
        let held = locks.get_mut(&pid)?;
        let found = held.remove(key);
        if held.is_empty() {
            locks.remove(&pid);
        }
        found
    }

    /// Forgets every lock `pid` holds and releases them in the global tier (on a task
    /// of their own), for a process that has ended: its entry would otherwise stay
    /// for the node's life, and its locks taken until their leases lapse.
    pub(crate) fn release_all(&self, pid: Pid) {
        let Some(held) = self.0.lock().unwrap().remove(&pid) else {
            return;
        };
        tokio::spawn(async move {
            for (key, Held { app, token }) in held {
                // A lock that lapsed or a tier out of reach: nothing is left to release.
                let _ = app.unlock(&key, token).await;
            }
        });
    }

    /// How many processes hold locks.
    #[cfg(test)]
    fn holders(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

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
            let app = app.clone();
            locks.insert(pid, key, Held { app, token });
            Ok(StateReply::Done)
        }
        StateCall::Unlock { key } => {
            let held = locks.remove(pid, &key).ok_or(AbiError::Invalid)?;
            app.unlock(&key, held.token).await?;
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
        StateError::Full { .. } => AbiError::Quota,
        StateError::LockTimeout { .. } => AbiError::TimedOut,
        StateError::InvalidAppName { .. }
        | StateError::UnsupportedUrl { .. }
        | StateError::Connect { .. }
        | StateError::Served { .. }
        | StateError::Redis { .. } => AbiError::Internal,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use nimbus_core::HostId;
    use nimbus_state::{AppName, Embedded};

    use super::*;

    fn lock(key: &str, timeout: Duration) -> StateCall {
        StateCall::Lock {
            key: key.into(),
            lease: Duration::from_secs(3600),
            timeout,
        }
    }

    #[tokio::test]
    async fn an_ended_holder_leaves_the_table_and_its_locks_are_released() {
        let app = AppState::new(
            AppName::new("locks").unwrap(),
            Arc::new(Embedded::new()),
            1 << 20,
        );
        let locks = Locks::default();
        let (holder, other) = (Pid::new(HostId(1), 1), Pid::new(HostId(1), 2));
        for key in ["a", "b"] {
            let taken = perform(&app, &locks, holder, lock(key, Duration::ZERO)).await;
            assert!(matches!(taken, Ok(StateReply::Done)));
        }
        let unlock = StateCall::Unlock { key: "a".into() };
        assert!(matches!(
            perform(&app, &locks, holder, unlock).await,
            Ok(StateReply::Done)
        ));
        assert_eq!(locks.holders(), 1);

        locks.release_all(holder);
        assert_eq!(locks.holders(), 0);
        // "b" was still held, for an hour; released, another process takes it.
        let taken = perform(&app, &locks, other, lock("b", Duration::from_secs(30))).await;
        assert!(matches!(taken, Ok(StateReply::Done)), "{taken:?}");
        locks.release_all(other);
        assert_eq!(locks.holders(), 0);
    }
}
