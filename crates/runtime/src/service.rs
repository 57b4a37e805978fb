//! Service instances: a reactor module instantiated once and kept alive, serving
//! many handler invocations, its memory and globals persisting between them; and
//! the capture and restore of that state as a snapshot.
//!
//! The handler convention (WAGI-like, usable from any WASI language): a handler is
//! an export taking no parameters and returning nothing or an `i32`; the request
//! body is its stdin, what it writes to stdout is the response; a trap, an exit or
//! a non-zero `i32` is an error.

use std::time::Duration;

use nimbus_core::{ExitStatus, Failure};
use nimbus_snapshot::{GlobalValue, Snapshot, SnapshotRef};
use wasmtime::{Extern, Instance, Memory, Store, Val, ValType};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::engine::{Program, Slot};
use crate::instrument::global_export_name;
use crate::process::{ProcessCtx, WasiSetup, status_of_error};
use crate::{Input, Mailbox, Output};

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

/// Why an invocation did not produce a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    /// The module exports no function of that name with a handler's signature.
    #[error(
        "no handler `{0}` (a handler is an exported function with no parameters returning nothing or an i32)"
    )]
    NoSuchHandler(String),
    /// The handler returned a non-zero status.
    #[error("handler returned status {0}")]
    Status(i32),
    /// The handler exited the instance or failed (trap, memory limit, deadline).
    /// The instance's state may be inconsistent and must not serve again as is.
    #[error("{}", describe(.0))]
    Failed(ExitStatus),
}

fn describe(status: &ExitStatus) -> String {
    match status {
        ExitStatus::Exited(code) => format!("handler exited the instance with code {code}"),
        ExitStatus::Failed(failure) => failure.to_string(),
    }
}

/// A live instance of a service module.
pub struct ServiceInstance {
    store: Store<ProcessCtx>,
    instance: Instance,
    program: Program,
    setup: WasiSetup,
    stderr: Output,
    _slot: Slot,
}

impl ServiceInstance {
    pub(crate) async fn start(
        mut store: Store<ProcessCtx>,
        setup: WasiSetup,
        stderr: Output,
        program: &Program,
        slot: Slot,
        from: Option<&Snapshot>,
    ) -> Result<ServiceInstance, ExitStatus> {
        let instance = match program.pre().instantiate_async(&mut store).await {
            Ok(instance) => instance,
            Err(e) => return Err(status_of_error(store.data(), &e)),
        };
        let mut service = ServiceInstance {
            store,
            instance,
            program: program.clone(),
            setup,
            stderr,
            _slot: slot,
        };
        match from {
            Some(snapshot) => service.restore(snapshot)?,
            None => service.initialize().await?,
        }
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

    /// Runs one handler to completion and returns its response.
    pub async fn invoke(&mut self, invocation: Invocation) -> Result<Vec<u8>, InvokeError> {
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
        let wasi = self
            .setup
            .build(
                &Input::Bytes(invocation.body),
                &Output::Capture(stdout.clone()),
                &self.stderr,
            )
            .map_err(|f| InvokeError::Failed(ExitStatus::Failed(f)))?;
        self.store
            .data_mut()
            .begin_invocation(wasi, invocation.timeout);

        let mut results = vec![Val::I32(0); handler.ty(&self.store).results().len()];
        let call = handler.call_async(&mut self.store, &[], &mut results);
        let outcome = match invocation.timeout {
            // The epoch callback stops a computing handler; this stops a blocked one.
            Some(timeout) => match tokio::time::timeout(timeout, call).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    return Err(InvokeError::Failed(ExitStatus::Failed(Failure::Deadline(
                        timeout,
                    ))));
                }
            },
            None => call.await,
        };
        match outcome {
            Err(e) => Err(InvokeError::Failed(status_of_error(self.store.data(), &e))),
            Ok(()) => match results.first() {
                Some(Val::I32(status)) if *status != 0 => Err(InvokeError::Status(*status)),
                _ => Ok(stdout.contents().to_vec()),
            },
        }
    }

    /// Ends the instance, releasing its memory and slot, and hands back its mailbox
    /// so messages keep queueing while it is swapped out.
    pub fn retire(self) -> Mailbox {
        self.store.into_data().mailbox
    }

    fn memory(&mut self) -> Option<Memory> {
        match self.instance.get_export(&mut self.store, "memory") {
            Some(Extern::Memory(memory)) => Some(memory),
            _ => None,
        }
    }

    /// The instance's state, borrowing its memory, ready to be written.
    pub fn snapshot(&mut self) -> SnapshotRef<'_> {
        let mut globals = Vec::new();
        for &index in self.program.mutable_globals() {
            let global = self
                .instance
                .get_global(&mut self.store, &global_export_name(index))
                .expect("instrumented modules export their mutable globals");
            let value = match global.get(&mut self.store) {
                Val::I32(v) => GlobalValue::I32(v),
                Val::I64(v) => GlobalValue::I64(v),
                Val::F32(v) => GlobalValue::F32(v),
                Val::F64(v) => GlobalValue::F64(v),
                Val::V128(v) => GlobalValue::V128(v.as_u128()),
                // Reference-typed globals hold host handles that cannot outlive the
                // instance; they are restored to their initial value.
                _ => continue,
            };
            globals.push((index, value));
        }
        let memory = self.memory();
        SnapshotRef {
            module: self.program.hash().to_bytes(),
            globals,
            memory: memory.map_or(&[][..], |m| m.data(&self.store)),
        }
    }

    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), ExitStatus> {
        let broken =
            |why: String| ExitStatus::Failed(Failure::Load(format!("cannot restore: {why}")));
        if snapshot.module != self.program.hash().to_bytes() {
            return Err(broken("the snapshot is of another module".into()));
        }
        if let Some(memory) = self.memory() {
            let have = memory.data_size(&self.store) as u64;
            let page = memory.page_size(&self.store);
            if snapshot.memory_len < have || !(snapshot.memory_len - have).is_multiple_of(page) {
                return Err(broken("memory size does not fit the module".into()));
            }
            memory
                .grow(&mut self.store, (snapshot.memory_len - have) / page)
                .map_err(|e| broken(format!("growing memory: {e:#}")))?;
            snapshot
                .restore_memory(memory.data_mut(&mut self.store))
                .map_err(|e| broken(e.to_string()))?;
        }
        for (index, value) in &snapshot.globals {
            let global = self
                .instance
                .get_global(&mut self.store, &global_export_name(*index))
                .ok_or_else(|| broken(format!("no global {index}")))?;
            let value = match *value {
                GlobalValue::I32(v) => Val::I32(v),
                GlobalValue::I64(v) => Val::I64(v),
                GlobalValue::F32(v) => Val::F32(v),
                GlobalValue::F64(v) => Val::F64(v),
                GlobalValue::V128(v) => Val::V128(v.into()),
            };
            global
                .set(&mut self.store, value)
                .map_err(|e| broken(format!("global {index}: {e:#}")))?;
        }
        Ok(())
    }
}
