//! Service instances: a reactor module instantiated once and kept alive, serving
//! many handler invocations, its memory and globals persisting between them; and
//! the capture and restore of that state as a snapshot.
//!
//! The handler convention (WAGI-like, usable from any WASI language): a handler is
//! an export taking no parameters and returning nothing or an `i32`; the request
//! body is its stdin, what it writes to stdout is the response; a trap, an exit or
//! a non-zero `i32` is an error.
//!
//! Every invocation that ends without failing is committed, and a failed one is
//! rolled back to the last commit, so an instance never serves from the state a
//! trap left behind. Commits cost work per page written, not per page of memory
//! (see [`crate::memory`]); one that copies more than [`INLINE_COMMIT`] bytes
//! copies them on a blocking thread ([`ServiceInstance::commit`]).

use std::sync::Arc;
use std::time::Duration;

use nimbus_core::{ExitStatus, Failure};
use nimbus_snapshot::{GlobalValue, Owner, Snapshot, SnapshotRef};
use wasmtime::{Extern, Global, Instance, Memory, Store, Val, ValType};
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};

use crate::engine::{Program, Slot};
use crate::instrument::global_export_name;
use crate::memory::{CheckpointedMemories, Region, Written};
use crate::process::{ProcessCtx, WasiSetup, status_of_error};
use crate::{InvokeError, Mailbox, Output};

/// What an invocation asks for.
pub struct Invocation {
    /// The export to call.
    pub handler: String,
    /// The request body, the handler's stdin.
    pub body: Vec<u8>,
    /// The most bytes the response may have.
    pub max_response: usize,
    /// How long the handler may run.
    pub timeout: Option<Duration>,
}

/// The most bytes of written pages [`ServiceInstance::commit`] copies on the thread
/// that awaits it (1 MiB: a few hundred microseconds of copying); a commit of more
/// copies on a blocking thread, so that an invocation that wrote hundreds of MiB
/// holds no async thread while it is committed, and one that wrote a few pages
/// pays no hand-off between threads.
pub const INLINE_COMMIT: usize = 1 << 20;

/// How a commit went: which thread copied the pages the invocation wrote, and how
/// many bytes of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Committed {
    /// At most [`INLINE_COMMIT`] bytes (or nothing), copied on the awaiting thread.
    Inline {
        /// Bytes copied.
        bytes: usize,
    },
    /// More, copied on a blocking thread.
    OffThread {
        /// Bytes copied.
        bytes: usize,
    },
}

/// A live instance of a service module.
pub struct ServiceInstance {
    store: Store<ProcessCtx>,
    instance: Instance,
    program: Program,
    setup: WasiSetup,
    stderr: Output,
    /// The memory exported as `memory`, if there is one.
    memory: Option<(Memory, Arc<Region>)>,
    /// The mutable globals by index, with their values at the last commit.
    globals: Vec<(u32, Global, Val)>,
    /// Whether the state changed since the last commit.
    uncommitted: bool,
    /// Set when a roll back or a commit failed: the state is not one to serve from
    /// or commit.
    broken: bool,
    _slot: Slot,
}

impl ServiceInstance {
    pub(crate) async fn start(
        mut store: Store<ProcessCtx>,
        setup: WasiSetup,
        stderr: Output,
        program: &Program,
        slot: Slot,
        memories: &CheckpointedMemories,
        from: Option<&Snapshot>,
    ) -> Result<ServiceInstance, ExitStatus> {
        let instance = match program.pre().instantiate_async(&mut store).await {
            Ok(instance) => instance,
            Err(e) => return Err(status_of_error(store.data(), &e)),
        };
        let memory = match instance.get_export(&mut store, "memory") {
            Some(Extern::Memory(memory)) => {
                let region = memories
                    .claim(memory.data_ptr(&store))
                    .ok_or_else(|| cannot_start("its memory is not a service memory"))?;
                Some((memory, region))
            }
            _ => None,
        };
        let globals = program
            .mutable_globals()
            .iter()
            .map(|&index| {
                let global = instance
                    .get_global(&mut store, &global_export_name(index))
                    .expect("instrumented modules export their mutable globals");
                let value = global.get(&mut store);
                (index, global, value)
            })
            // Reference-typed globals hold host handles: neither committed nor saved.
            .filter(|(_, _, value)| {
                !matches!(
                    value,
                    Val::ExternRef(_) | Val::AnyRef(_) | Val::ExnRef(_) | Val::ContRef(_)
                )
            })
            .collect();
        let mut service = ServiceInstance {
            store,
            instance,
            program: program.clone(),
            setup,
            stderr,
            memory,
            globals,
            uncommitted: true,
            broken: false,
            _slot: slot,
        };
        match from {
            Some(snapshot) => service.restore(snapshot)?,
            None => service.initialize().await?,
        }
        // Initialising may write much (data segments, tables it builds).
        service
            .commit_sized()
            .await
            .map_err(|e| cannot_start(&e.to_string()))?;
        Ok(service)
    }

    async fn initialize(&mut self) -> Result<(), ExitStatus> {
        let Ok(init) = self
            .instance
            .get_typed_func::<(), ()>(&mut self.store, "_initialize")
        else {
            return Ok(());
        };
        init.call_async(&mut self.store, ())
            .await
            .map_err(|e| status_of_error(self.store.data(), &e))
    }

    /// Makes the instance's current state the one a failed invocation rolls back
    /// to, and gives the instance back. Each invocation commits the one before it
    /// first, on the invoking thread; calling this after answering takes that work
    /// off the next request's path, and a commit of more than [`INLINE_COMMIT`]
    /// bytes off the async threads. The instance goes with the commit, so a commit
    /// dropped midway drops it (once the copy under way ends, on its thread): no
    /// one ever runs or reads a half-committed instance. After an error the
    /// instance must not serve again.
    pub async fn commit(mut self) -> (ServiceInstance, Result<Committed, InvokeError>) {
        let committed = self.commit_sized().await;
        (self, committed)
    }

    /// [`ServiceInstance::commit`] in place: only for callers that own the instance
    /// for as long as this future lives, so that dropping it drops the instance.
    async fn commit_sized(&mut self) -> Result<Committed, InvokeError> {
        let Some(pending) = self.pending()? else {
            return Ok(Committed::Inline { bytes: 0 });
        };
        let bytes = pending.bytes();
        if bytes <= INLINE_COMMIT {
            self.copied(pending.copy())?;
            return Ok(Committed::Inline { bytes });
        }
        let copy = tokio::task::spawn_blocking(move || pending.copy()).await;
        self.copied(copy.unwrap_or_else(|e| Err(std::io::Error::other(e))))?;
        Ok(Committed::OffThread { bytes })
    }

    /// Commits on this thread, however much was written.
    fn commit_here(&mut self) -> Result<(), InvokeError> {
        match self.pending()? {
            Some(pending) => self.copied(pending.copy()),
            None => Ok(()),
        }
    }

    /// What committing is to copy; `None` if the state has not changed since the
    /// last commit.
    fn pending(&self) -> Result<Option<Pending>, InvokeError> {
        if self.broken {
            return Err(InvokeError::Checkpoint(
                "an earlier roll back or commit failed".into(),
            ));
        }
        if !self.uncommitted {
            return Ok(None);
        }
        let memory = match &self.memory {
            Some((_, region)) => Some((region.clone(), region.written().map_err(checkpoint)?)),
            None => None,
        };
        Ok(Some(Pending(memory)))
    }

    /// Ends a commit whose memory was copied (or not) as `copy` says: the globals
    /// are committed with it, and a failed copy leaves a memory half committed, so
    /// the instance is broken.
    fn copied(&mut self, copy: std::io::Result<()>) -> Result<(), InvokeError> {
        if let Err(e) = copy {
            self.broken = true;
            return Err(checkpoint(e));
        }
        for (_, global, value) in &mut self.globals {
            *value = global.get(&mut self.store);
        }
        self.uncommitted = false;
        Ok(())
    }

    fn roll_back(&mut self) -> Result<(), String> {
        self.broken = true;
        if let Some((_, region)) = &self.memory {
            region.roll_back().map_err(|e| e.to_string())?;
        }
        for (index, global, value) in &self.globals {
            global
                .set(&mut self.store, *value)
                .map_err(|e| format!("global {index}: {e:#}"))?;
        }
        (self.uncommitted, self.broken) = (false, false);
        Ok(())
    }

    /// Runs one handler to completion and returns its response. Commits the
    /// invocation before it first, on this thread, unless the caller has
    /// ([`ServiceInstance::commit`]).
    pub async fn invoke(&mut self, invocation: Invocation) -> Result<Vec<u8>, InvokeError> {
        self.commit_here()?;
        let handler = self
            .instance
            .get_func(&mut self.store, &invocation.handler)
            .filter(|f| {
                let ty = f.ty(&self.store);
                ty.params().len() == 0
                    && (ty.results().len() == 0
                        || (ty.results().len() == 1
                            && matches!(ty.results().next(), Some(ValType::I32))))
            })
            .ok_or_else(|| InvokeError::NoSuchHandler(invocation.handler.clone()))?;
        let stdout = MemoryOutputPipe::new(invocation.max_response);
        let body_len = invocation.body.len();
        let body = MemoryInputPipe::new(invocation.body);
        let wasi = self
            .setup
            .build_for_body(&body, &Output::Capture(stdout.clone()), &self.stderr)
            .map_err(|f| InvokeError::Failed(ExitStatus::Failed(f)))?;
        self.store
            .data_mut()
            .begin_invocation(wasi, invocation.timeout);

        let mut results = vec![Val::I32(0); handler.ty(&self.store).results().len()];
        self.uncommitted = true;
        let call = handler.call_async(&mut self.store, &[], &mut results);
        let outcome = match invocation.timeout {
            // The epoch callback stops a computing handler; this stops a blocked one.
            Some(timeout) => tokio::time::timeout(timeout, call)
                .await
                .map_err(|_elapsed| timeout),
            None => Ok(call.await),
        };
        if body_len > 0 && !body.is_empty() {
            self.note_unread_body(&invocation.handler, body_len);
        }
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(status_of_error(self.store.data(), &e)),
            Err(timeout) => Some(ExitStatus::Failed(Failure::Deadline(timeout))),
        };
        if let Some(status) = failure {
            return Err(match self.roll_back() {
                Ok(()) => InvokeError::Failed(status),
                Err(e) => InvokeError::Checkpoint(format!(
                    "{}, and rolling back failed: {e}",
                    InvokeError::Failed(status)
                )),
            });
        }
        match results.first() {
            Some(Val::I32(status)) if *status != 0 => Err(InvokeError::Status(*status)),
            _ => Ok(stdout.contents().to_vec()),
        }
    }

    /// Tells the app's log (and the node's) that `handler` left its request body
    /// unread: most often a C handler reading with stdio, whose end-of-file flag
    /// outlives the request it was set by, so that every later body reads as empty.
    fn note_unread_body(&self, handler: &str, bytes: usize) {
        let note = format!(
            "nimbus: handler `{handler}` did not read all of its {bytes}-byte request body. \
             If it reads stdin with stdio (C), call clearerr(stdin) before reading, or read \
             it with nimbus_read_body() from nimbus.h: the end-of-file flag of the last \
             request's body stays set, and every later body reads as empty.\n"
        );
        tracing::info!(handler, bytes, "a handler left its request body unread");
        if let Output::Log(log) = &self.stderr {
            log.append(note.as_bytes());
        }
    }

    /// Ends the instance, releasing its memory and slot, and hands back its mailbox
    /// so messages keep queueing while it is swapped out.
    pub fn retire(self) -> Mailbox {
        self.store.into_data().mailbox
    }

    /// The instance's state, borrowing its memory, ready to be written as `owner`'s.
    pub fn snapshot(&mut self, owner: Owner) -> SnapshotRef<'_> {
        let globals = self
            .globals
            .iter()
            .filter_map(|(index, global, _)| {
                // Function references are restored to their initial value.
                Some((*index, snapshot_value(global.get(&mut self.store))?))
            })
            .collect();
        SnapshotRef {
            module: self.program.hash().to_bytes(),
            owner,
            globals,
            memory: self
                .memory
                .as_ref()
                .map_or(&[][..], |(memory, _)| memory.data(&self.store)),
            suspended: None,
        }
    }

    /// Brings back the state in `snapshot`, mapping its pages rather than reading
    /// them: each is read when the guest first touches it.
    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), ExitStatus> {
        if snapshot.module != self.program.hash().to_bytes() {
            return Err(cannot_restore("the snapshot is of another module".into()));
        }
        if snapshot.suspended.is_some() {
            return Err(cannot_restore(
                "the snapshot is of a captured command, not of a service".into(),
            ));
        }
        match &self.memory {
            Some((memory, region)) => {
                let have = memory.data_size(&self.store) as u64;
                let page = memory.page_size(&self.store);
                if snapshot.memory_len < have || !(snapshot.memory_len - have).is_multiple_of(page)
                {
                    return Err(cannot_restore("memory size does not fit the module".into()));
                }
                memory
                    .grow(&mut self.store, (snapshot.memory_len - have) / page)
                    .map_err(|e| cannot_restore(format!("growing memory: {e:#}")))?;
                // Drops what instantiation wrote (data segments): all zeros again.
                region
                    .roll_back()
                    .map_err(|e| cannot_restore(e.to_string()))?;
                for run in &snapshot.runs {
                    region
                        .map_file(
                            run.first_page as usize,
                            run.pages as usize,
                            &snapshot.file,
                            run.offset,
                        )
                        .map_err(|e| cannot_restore(format!("mapping memory: {e}")))?;
                }
            }
            None if snapshot.memory_len > 0 => {
                return Err(cannot_restore("the module has no memory".into()));
            }
            None => {}
        }
        for (index, value) in &snapshot.globals {
            let (_, global, _) = self
                .globals
                .iter()
                .find(|(i, _, _)| i == index)
                .ok_or_else(|| cannot_restore(format!("no global {index}")))?;
            global
                .set(&mut self.store, wasm_value(*value))
                .map_err(|e| cannot_restore(format!("global {index}: {e:#}")))?;
        }
        Ok(())
    }
}

/// A global's value as a snapshot holds it; `None` for a reference, which no
/// snapshot holds.
pub(crate) fn snapshot_value(value: Val) -> Option<GlobalValue> {
    Some(match value {
        Val::I32(v) => GlobalValue::I32(v),
        Val::I64(v) => GlobalValue::I64(v),
        Val::F32(v) => GlobalValue::F32(v),
        Val::F64(v) => GlobalValue::F64(v),
        Val::V128(v) => GlobalValue::V128(v.as_u128()),
        _ => return None,
    })
}

/// The value a snapshot's global stands for.
pub(crate) fn wasm_value(value: GlobalValue) -> Val {
    match value {
        GlobalValue::I32(v) => Val::I32(v),
        GlobalValue::I64(v) => Val::I64(v),
        GlobalValue::F32(v) => Val::F32(v),
        GlobalValue::F64(v) => Val::F64(v),
        GlobalValue::V128(v) => Val::V128(v.into()),
    }
}

/// The written pages of an instance's memory (if it has one) that its commit is to
/// copy: owned, so the copy may run on another thread.
struct Pending(Option<(Arc<Region>, Written)>);

impl Pending {
    fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |(_, written)| written.bytes())
    }

    /// Copies the pages into the memory's committed contents. No guest code runs on
    /// the memory meanwhile: its instance is the committer's, or dropped.
    fn copy(self) -> std::io::Result<()> {
        match self.0 {
            Some((region, written)) => region.commit(written),
            None => Ok(()),
        }
    }
}

fn checkpoint(e: std::io::Error) -> InvokeError {
    InvokeError::Checkpoint(format!("committing memory: {e}"))
}

fn cannot_start(why: &str) -> ExitStatus {
    ExitStatus::Failed(Failure::Load(format!("cannot start the instance: {why}")))
}

fn cannot_restore(why: String) -> ExitStatus {
    ExitStatus::Failed(Failure::Load(format!("cannot restore: {why}")))
}
