//! The state functions of the `nimbus` import module: a guest's access to its app's
//! two-tier state. Each reads its arguments from guest memory, asks the [`Kernel`]
//! (which owns the state) and writes the answer back; see `docs/abi.md`.
//!
//! [`Kernel`]: crate::Kernel

use std::future::Future;
use std::time::Duration;

use nimbus_core::Pid;
use wasmtime::{Caller, Linker};

use crate::abi::{AbiError, GuestMemory, MODULE, code_of};
use crate::process::ProcessCtx;

/// The longest key name a guest may pass.
const MAX_KEY_BYTES: usize = 1024;
/// The largest value a guest may pass.
const MAX_VALUE_BYTES: usize = 512 << 20;

/// Which tier of an app's state an operation is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// This host's copy, shared by the app's processes here.
    Local,
    /// The copy shared by every host.
    Global,
}

/// A state operation a guest asks for. Keys are names within the caller's app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateCall {
    /// The whole value.
    Get {
        /// The tier.
        tier: Tier,
        /// The key.
        key: Vec<u8>,
    },
    /// Replaces the value.
    Set {
        /// The tier.
        tier: Tier,
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Up to `len` bytes at `offset` (fewer past the end).
    GetRange {
        /// The tier.
        tier: Tier,
        /// The key.
        key: Vec<u8>,
        /// Where the range starts.
        offset: u64,
        /// Its most bytes.
        len: u64,
    },
    /// Overwrites bytes at `offset`, extending the value with zeros if needed.
    SetRange {
        /// The tier.
        tier: Tier,
        /// The key.
        key: Vec<u8>,
        /// Where the bytes go.
        offset: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Appends bytes; the reply is the new length.
    Append {
        /// The tier.
        tier: Tier,
        /// The key.
        key: Vec<u8>,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Removes the key.
    Delete {
        /// The tier.
        tier: Tier,
        /// The key.
        key: Vec<u8>,
    },
    /// Copies the local value to the global tier.
    Push {
        /// The key.
        key: Vec<u8>,
    },
    /// Copies the global value to the local tier.
    Pull {
        /// The key.
        key: Vec<u8>,
    },
    /// Takes the key's global lock, waiting up to `timeout`; it expires after `lease`.
    Lock {
        /// The key.
        key: Vec<u8>,
        /// How long the lock lasts unless released.
        lease: Duration,
        /// How long to wait for it.
        timeout: Duration,
    },
    /// Releases the key's global lock held by the caller.
    Unlock {
        /// The key.
        key: Vec<u8>,
    },
}

/// What a state operation answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateReply {
    /// Done; nothing to return.
    Done,
    /// A value or a range of one.
    Value(Vec<u8>),
    /// A length.
    Length(u64),
}

fn tier(code: i32) -> Result<Tier, AbiError> {
    match code {
        0 => Ok(Tier::Local),
        1 => Ok(Tier::Global),
        _ => Err(AbiError::Invalid),
    }
}

/// Asks the kernel, holding nothing of the caller across the wait.
fn perform(
    caller: &Caller<'_, ProcessCtx>,
    call: StateCall,
) -> impl Future<Output = Result<StateReply, AbiError>> + Send + 'static {
    let (kernel, pid): (_, Pid) = (caller.data().kernel.clone(), caller.data().pid);
    async move { kernel.state(pid, call).await }
}

/// The guest's answer to an operation that only succeeds or fails: 0 or an error
/// code, once the operation `prepared` (or the error preparing it) is done.
fn acknowledged(
    prepared: Result<impl Future<Output = Result<StateReply, AbiError>> + Send + 'static, AbiError>,
) -> Box<dyn Future<Output = i32> + Send> {
    Box::new(async move { code_of(async { prepared?.await.map(drop) }.await) })
}

fn value(reply: StateReply) -> Result<Vec<u8>, AbiError> {
    match reply {
        StateReply::Value(value) => Ok(value),
        _ => Err(AbiError::Internal),
    }
}

/// Reads a key and builds the call of an operation that needs nothing more.
fn keyed(
    caller: &mut Caller<'_, ProcessCtx>,
    (key_ptr, key_len): (i32, i32),
    call: impl FnOnce(Vec<u8>) -> StateCall,
) -> Result<(GuestMemory, StateCall), AbiError> {
    let memory = GuestMemory::of(caller)?;
    let key = memory.read(caller, key_ptr, key_len, MAX_KEY_BYTES)?;
    Ok((memory, call(key)))
}

/// Reads a key and a value and builds the call of an operation that writes.
fn keyed_value(
    caller: &mut Caller<'_, ProcessCtx>,
    key: (i32, i32),
    (value_ptr, value_len): (i32, i32),
    call: impl FnOnce(Vec<u8>, Vec<u8>) -> StateCall,
) -> Result<StateCall, AbiError> {
    let memory = GuestMemory::of(caller)?;
    let value = memory.read(caller, value_ptr, value_len, MAX_VALUE_BYTES)?;
    keyed(caller, key, |key| call(key, value)).map(|(_, call)| call)
}

pub(crate) fn add_to_linker(linker: &mut Linker<ProcessCtx>) -> wasmtime::Result<()> {
    linker.func_wrap_async(
        MODULE,
        "state_get",
        |mut caller: Caller<'_, ProcessCtx>,
         (tier_code, key_ptr, key_len, buf_ptr, buf_cap, len_ptr): (
            i32,
            i32,
            i32,
            i32,
            i32,
            i32,
        )| {
            let prepared = tier(tier_code).and_then(|tier| {
                let (memory, call) = keyed(&mut caller, (key_ptr, key_len), |key| {
                    StateCall::Get { tier, key }
                })?;
                memory.check(&caller, buf_ptr, buf_cap)?;
                memory.check(&caller, len_ptr, 4)?;
                Ok((memory, perform(&caller, call)))
            });
            Box::new(async move {
                let result = async {
                    let (memory, reply) = prepared?;
                    let value = value(reply.await?)?;
                    memory.write(&mut caller, len_ptr, &(value.len() as i32).to_le_bytes())?;
                    if value.len() > buf_cap as usize {
                        return Err(AbiError::BufferTooSmall);
                    }
                    memory.write(&mut caller, buf_ptr, &value)
                };
                code_of(result.await)
            })
        },
    )?;

    linker.func_wrap_async(
        MODULE,
        "state_get_range",
        |mut caller: Caller<'_, ProcessCtx>,
         (tier_code, key_ptr, key_len, offset, buf_ptr, buf_len, len_ptr): (
            i32,
            i32,
            i32,
            i64,
            i32,
            i32,
            i32,
        )| {
            let prepared = tier(tier_code).and_then(|tier| {
                let (offset, len) = (
                    u64::try_from(offset).map_err(|_| AbiError::Invalid)?,
                    u64::try_from(buf_len).map_err(|_| AbiError::Invalid)?,
                );
                let (memory, call) =
                    keyed(&mut caller, (key_ptr, key_len), |key| StateCall::GetRange {
                        tier,
                        key,
                        offset,
                        len,
                    })?;
                memory.check(&caller, buf_ptr, buf_len)?;
                memory.check(&caller, len_ptr, 4)?;
                Ok((memory, perform(&caller, call)))
            });
            Box::new(async move {
                let result = async {
                    let (memory, reply) = prepared?;
                    let bytes = value(reply.await?)?;
                    if bytes.len() > buf_len as usize {
                        return Err(AbiError::Internal);
                    }
                    memory.write(&mut caller, buf_ptr, &bytes)?;
                    memory.write(&mut caller, len_ptr, &(bytes.len() as i32).to_le_bytes())
                };
                code_of(result.await)
            })
        },
    )?;

    linker.func_wrap_async(
        MODULE,
        "state_set",
        |mut caller: Caller<'_, ProcessCtx>,
         (tier_code, key_ptr, key_len, val_ptr, val_len): (i32, i32, i32, i32, i32)| {
            let prepared = tier(tier_code)
                .and_then(|tier| {
                    let (key, value) = ((key_ptr, key_len), (val_ptr, val_len));
                    keyed_value(&mut caller, key, value, |key, value| StateCall::Set {
                        tier,
                        key,
                        value,
                    })
                })
                .map(|call| perform(&caller, call));
            acknowledged(prepared)
        },
    )?;

    linker.func_wrap_async(
        MODULE,
        "state_set_range",
        |mut caller: Caller<'_, ProcessCtx>,
         (tier_code, key_ptr, key_len, offset, val_ptr, val_len): (
            i32,
            i32,
            i32,
            i64,
            i32,
            i32,
        )| {
            let prepared = tier(tier_code)
                .and_then(|tier| {
                    let offset = u64::try_from(offset).map_err(|_| AbiError::Invalid)?;
                    let (key, value) = ((key_ptr, key_len), (val_ptr, val_len));
                    keyed_value(&mut caller, key, value, |key, bytes| StateCall::SetRange {
                        tier,
                        key,
                        offset,
                        bytes,
                    })
                })
                .map(|call| perform(&caller, call));
            acknowledged(prepared)
        },
    )?;

    linker.func_wrap_async(
        MODULE,
        "state_append",
        |mut caller: Caller<'_, ProcessCtx>,
         (tier_code, key_ptr, key_len, val_ptr, val_len): (i32, i32, i32, i32, i32)| {
            let prepared = tier(tier_code)
                .and_then(|tier| {
                    let (key, value) = ((key_ptr, key_len), (val_ptr, val_len));
                    keyed_value(&mut caller, key, value, |key, bytes| StateCall::Append {
                        tier,
                        key,
                        bytes,
                    })
                })
                .map(|call| perform(&caller, call));
            Box::new(async move {
                match async { prepared?.await }.await {
                    Ok(StateReply::Length(len)) => len as i64,
                    Ok(_) => i64::from(AbiError::Internal.code()),
                    Err(e) => i64::from(e.code()),
                }
            })
        },
    )?;

    // The operations that take only a key.
    type KeyOnly = fn(Vec<u8>) -> StateCall;
    let key_only: [(&str, KeyOnly); 3] = [
        ("state_push", |key| StateCall::Push { key }),
        ("state_pull", |key| StateCall::Pull { key }),
        ("state_unlock", |key| StateCall::Unlock { key }),
    ];
    for (name, call) in key_only {
        linker.func_wrap_async(
            MODULE,
            name,
            move |mut caller: Caller<'_, ProcessCtx>, (key_ptr, key_len): (i32, i32)| {
                let prepared = keyed(&mut caller, (key_ptr, key_len), call)
                    .map(|(_, call)| perform(&caller, call));
                acknowledged(prepared)
            },
        )?;
    }

    linker.func_wrap_async(
        MODULE,
        "state_delete",
        |mut caller: Caller<'_, ProcessCtx>, (tier_code, key_ptr, key_len): (i32, i32, i32)| {
            let prepared = tier(tier_code).and_then(|tier| {
                let (_, call) = keyed(&mut caller, (key_ptr, key_len), |key| StateCall::Delete {
                    tier,
                    key,
                })?;
                Ok(perform(&caller, call))
            });
            acknowledged(prepared)
        },
    )?;

    linker.func_wrap_async(
        MODULE,
        "state_lock",
        |mut caller: Caller<'_, ProcessCtx>,
         (key_ptr, key_len, lease_ms, timeout_ms): (i32, i32, i64, i64)| {
            // Locks are held host-side, by pid: they do not travel in a capture.
            crate::capture::bind(caller.data_mut(), "it has taken a state lock");
            let millis = |ms: i64| u64::try_from(ms).map(Duration::from_millis);
            let prepared = match (millis(lease_ms), millis(timeout_ms)) {
                (Ok(lease), Ok(timeout)) => {
                    keyed(&mut caller, (key_ptr, key_len), |key| StateCall::Lock {
                        key,
                        lease,
                        timeout,
                    })
                    .map(|(_, call)| perform(&caller, call))
                }
                _ => Err(AbiError::Invalid),
            };
            Box::new(async move {
                let gauges = caller.data().gauges();
                let locked = async { prepared?.await.map(drop) };
                code_of(ProcessCtx::waiting(gauges, locked).await)
            })
        },
    )?;
    Ok(())
}
