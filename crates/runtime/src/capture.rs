//! Capture of a running command at a blocking host call, and its restore in
//! another OS process.
//!
//! A capturable program is compiled from its module transformed by asyncify
//! ([`crate::asyncify`]), which makes every function that can reach a blocking
//! import ([`crate::asyncify::BLOCKING_IMPORTS`]) able to unwind its stack into a
//! buffer in linear memory, and to rewind from it.
//!
//! Capture: [`Capture::request`] sets a flag the blocking host calls look at. A call
//! that finds it set on entry, or while it waits (the wait is cancelled: nothing it
//! does has happened yet), checks that what the process holds can travel, grows
//! linear memory by [`UNWIND_BUFFER`] for the unwind data (memory the guest's
//! allocator never handed out, so its bookkeeping stays true), calls
//! `asyncify_start_unwind` and returns; the stack unwinds out of `_start`, which
//! returns. The runtime then calls `asyncify_stop_unwind` and keeps memory, mutable
//! globals and a [`Suspended`] record as a [`Checkpoint`], and the process ends
//! (as killed, to the platform).
//!
//! Restore: a new instance of the same program gets the memory and globals back,
//! `asyncify_start_rewind` is called and `_start` entered again; the functions on
//! the saved stack rewind into the host call that was interrupted, which calls
//! `asyncify_stop_rewind` and performs its call now. No interrupted call had
//! completed (a capture only ever cancels a wait), so performing it is exact: the
//! guest goes on as if nothing had happened.
//!
//! What travels: memory, globals, args, env, preopened directories by guest path
//! (the restorer gives host directories for the same guest paths, in order), the
//! monotonic clock (it goes on from its reading at the capture). What does not, so
//! a capture is refused while the process holds it: open files (their offsets),
//! children, a world, state locks, message channels and queued messages. A
//! restored process gets a new pid, its stdio is the restorer's, and an
//! interrupted `poll_oneoff` starts its relative timeouts over.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use nimbus_snapshot::{GlobalValue, Owner, Snapshot, SnapshotError, SnapshotRef, Suspended};
use tokio::sync::{Notify, oneshot};
use wasmtime::{AsContextMut, Caller, Extern, Instance, Linker, Memory, Store};
use wasmtime_wasi::HostMonotonicClock;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p1::wasi_snapshot_preview1::{self as wasi, WasiSnapshotPreview1};
use wiggle::GuestMemory;

use crate::asyncify::WASI;
use crate::cache::ModuleHash;
use crate::engine::Program;
use crate::process::{ProcessCtx, ProcessSpec};

/// Bytes of linear memory a capture adds for the unwind data: the locals of every
/// frame between `_start` and the blocking call.
pub const UNWIND_BUFFER: u64 = 1 << 20;
/// Descriptors past stdio and the preopened directories that a capture looks at
/// for open files. Descriptors are numbered from the lowest free one, so a process
/// holding a file at a higher one has held this many at once.
const PROBED_DESCRIPTORS: u32 = 1024;
/// The size of a wasm page.
const WASM_PAGE: u64 = 65536;

/// Why a capture or a restore did not happen. A refused capture leaves the process
/// running as it was.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CaptureError {
    /// The module could not be made capturable; it runs, uncapturable.
    #[error("the program cannot be captured: {0}")]
    Uncapturable(String),
    /// The process holds something a capture cannot carry yet.
    #[error("the process cannot be captured now: {0}")]
    CannotTravel(String),
    /// The process ended before it reached a blocking call.
    #[error("the process ended before it could be captured")]
    Ended,
    /// The unwind failed.
    #[error("the capture failed: {0}")]
    Failed(String),
    /// The checkpoint does not fit this program or run.
    #[error("cannot restore: {0}")]
    Restore(String),
    /// The process reached no blocking call within the wait the requester gave;
    /// it runs on, no longer asked.
    #[error("the process reached no blocking call within {0:?} (it computes); try again")]
    NotReached(std::time::Duration),
}

/// A process's capture: requests from outside, the checkpoint it ended in, and,
/// for a restored process, the checkpoint it starts from. Cheap to clone.
#[derive(Clone)]
pub struct Capture(Arc<Shared>);

struct Shared {
    /// The app the process belongs to, recorded in its checkpoint.
    app: String,
    requested: AtomicBool,
    wake: Notify,
    outcome: Mutex<Outcome>,
    resume: Mutex<Option<Snapshot>>,
}

#[derive(Default)]
struct Outcome {
    waiters: Vec<oneshot::Sender<Result<(), CaptureError>>>,
    /// Set once the process runs a program that cannot be captured.
    uncapturable: Option<String>,
    ended: bool,
    /// Set once the process began to unwind for the requests: they can no
    /// longer be withdrawn.
    unwinding: bool,
    captured: Option<Checkpoint>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture").field("app", &self.0.app).finish()
    }
}

impl Capture {
    /// The capture of a new process of `app`.
    pub fn new(app: &str) -> Capture {
        Capture::with(app, None)
    }

    /// The capture of a process restored from `checkpoint` (read and verified by
    /// [`nimbus_snapshot::read`]): it starts from there, and can be captured again.
    /// Its app is the checkpoint's.
    pub fn restoring(checkpoint: Snapshot) -> Capture {
        let app = checkpoint.owner.app.clone();
        Capture::with(&app, Some(checkpoint))
    }

    fn with(app: &str, resume: Option<Snapshot>) -> Capture {
        Capture(Arc::new(Shared {
            app: app.to_owned(),
            requested: AtomicBool::new(false),
            wake: Notify::new(),
            outcome: Mutex::default(),
            resume: Mutex::new(resume),
        }))
    }

    /// The app the process belongs to.
    pub fn app(&self) -> &str {
        &self.0.app
    }

    /// Asks the process to stop at the blocking call it is in, or at its next one,
    /// and waits until it has ([`Capture::checkpoint`] then holds its state) or the
    /// capture was refused (the process keeps running).
    pub async fn request(&self) -> Result<(), CaptureError> {
        let (answer, answered) = oneshot::channel();
        {
            let mut outcome = self.0.outcome.lock().unwrap();
            if let Some(why) = &outcome.uncapturable {
                return Err(CaptureError::Uncapturable(why.clone()));
            }
            if outcome.ended {
                return Err(CaptureError::Ended);
            }
            outcome.waiters.push(answer);
            // Under the lock, as `answer` clears it: a request is never left armed
            // with nobody waiting for it.
            self.0.requested.store(true, Ordering::SeqCst);
        }
        self.0.wake.notify_one();
        answered.await.unwrap_or(Err(CaptureError::Ended))
    }

    /// [`Capture::request`], withdrawn if the process reaches no blocking call
    /// within `wait`: it then runs on and will not stop for this request.
    pub async fn request_within(&self, wait: std::time::Duration) -> Result<(), CaptureError> {
        let request = self.request();
        tokio::pin!(request);
        if let Ok(result) = tokio::time::timeout(wait, &mut request).await {
            return result;
        }
        // Withdrawn, unless the process is unwinding for it already: then the
        // outcome is moments away.
        let withdrawn = {
            let mut outcome = self.0.outcome.lock().unwrap();
            (!outcome.unwinding).then(|| self.take_waiters(&mut outcome))
        };
        if let Some(waiters) = withdrawn {
            send_all(waiters, &Err(CaptureError::NotReached(wait)));
        }
        request.await
    }

    /// Whether the requests made so far still stand, and if so marks the process
    /// as unwinding for them (they can no longer be withdrawn).
    fn claim(&self) -> bool {
        let mut outcome = self.0.outcome.lock().unwrap();
        if outcome.waiters.is_empty() {
            self.0.requested.store(false, Ordering::SeqCst);
            return false;
        }
        outcome.unwinding = true;
        true
    }

    /// The state the process was captured in, once it was.
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        self.0.outcome.lock().unwrap().captured.take()
    }

    fn is_requested(&self) -> bool {
        self.0.requested.load(Ordering::SeqCst)
    }

    /// Resolves once a capture is requested.
    async fn requested(&self) {
        while !self.is_requested() {
            self.0.wake.notified().await;
        }
    }

    /// Answers the requests made so far.
    fn answer(&self, result: Result<(), CaptureError>) {
        let waiters = self.take_waiters(&mut self.0.outcome.lock().unwrap());
        send_all(waiters, &result);
    }

    /// The requests made so far, taken to be answered: under the lock that
    /// [`Capture::request`] sets the flag under, it is cleared, and an unwind
    /// that did not happen no longer holds them.
    fn take_waiters(
        &self,
        outcome: &mut Outcome,
    ) -> Vec<oneshot::Sender<Result<(), CaptureError>>> {
        self.0.requested.store(false, Ordering::SeqCst);
        outcome.unwinding = false;
        std::mem::take(&mut outcome.waiters)
    }

    fn set_uncapturable(&self, why: String) {
        self.0.outcome.lock().unwrap().uncapturable = Some(why.clone());
        self.answer(Err(CaptureError::Uncapturable(why)));
    }

    fn captured(&self, checkpoint: Checkpoint) {
        self.0.outcome.lock().unwrap().captured = Some(checkpoint);
        self.answer(Ok(()));
    }

    fn end(&self) {
        self.0.outcome.lock().unwrap().ended = true;
        self.answer(Err(CaptureError::Ended));
    }
}

/// Sends `result` to each of `waiters` (those gone are not waiting any more).
fn send_all(
    waiters: Vec<oneshot::Sender<Result<(), CaptureError>>>,
    result: &Result<(), CaptureError>,
) {
    for waiter in waiters {
        let _ = waiter.send(result.clone());
    }
}

/// The state of a captured command, ready to be written.
pub struct Checkpoint {
    module: ModuleHash,
    app: String,
    globals: Vec<(u32, GlobalValue)>,
    memory: Vec<u8>,
    suspended: Suspended,
}

impl Checkpoint {
    /// Writes it to `path` atomically, as a snapshot file (checksummed, sparse,
    /// page-aligned, fsynced). Blocking: call it off the async threads.
    pub fn write(&self, path: &std::path::Path) -> Result<(), SnapshotError> {
        SnapshotRef {
            module: self.module.to_bytes(),
            owner: owner(&self.app),
            globals: self.globals.clone(),
            memory: &self.memory,
            suspended: Some(self.suspended.clone()),
        }
        .write(path)
    }

    /// The length of its linear memory.
    pub fn memory_len(&self) -> usize {
        self.memory.len()
    }

    /// The host call it was captured in.
    pub fn import(&self) -> &str {
        &self.suspended.import
    }
}

/// A command's checkpoints belong to its app; commands have no instance numbers.
fn owner(app: &str) -> Owner {
    Owner {
        app: app.to_owned(),
        instance: 0,
    }
}

/// The monotonic clock of a capturable process: its reading goes on across a
/// capture and restore.
#[derive(Clone, Copy)]
pub(crate) struct Clock {
    origin: Instant,
    from_ns: u64,
}

impl Clock {
    fn starting_at(from_ns: u64) -> Clock {
        Clock {
            origin: Instant::now(),
            from_ns,
        }
    }
}

impl HostMonotonicClock for Clock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        let elapsed = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.from_ns.saturating_add(elapsed)
    }
}

/// What a capturable process's store keeps for its capture.
pub(crate) struct Capturing {
    capture: Capture,
    clock: Clock,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dirs: Vec<String>,
    /// Why the process cannot travel now, once something it did says so.
    bound: Option<&'static str>,
    /// The import a restore rewinds into, until it is reached.
    rewinding: Option<String>,
    /// Where the stack was unwound to, and from which import.
    unwound: Option<(u32, &'static str)>,
}

impl Drop for Capturing {
    fn drop(&mut self) {
        self.capture.end();
    }
}

impl Capturing {
    /// The clock the process's WASI context reads.
    pub(crate) fn clock(&self) -> Clock {
        self.clock
    }
}

/// The capture state of the process `spec` describes, with `spec` changed for a
/// restore (the checkpoint's args and env); `None` if it was not asked for.
pub(crate) fn prepare(
    program: &Program,
    spec: &mut ProcessSpec,
) -> Result<Option<Capturing>, CaptureError> {
    let Some(capture) = spec.capture.clone() else {
        return Ok(None);
    };
    if let Some(why) = program.uncapturable() {
        capture.set_uncapturable(why.to_owned());
    }
    let dirs: Vec<String> = spec.dirs.iter().map(|dir| dir.guest.clone()).collect();
    let resume = capture.0.resume.lock().unwrap();
    let (clock, rewinding) = match &*resume {
        None => (Clock::starting_at(0), None),
        Some(checkpoint) => {
            let suspended = check_restorable(program, checkpoint)?;
            if suspended.dirs != dirs {
                return Err(CaptureError::Restore(format!(
                    "the checkpoint's process had the directories {:?}; give the same guest paths, in order (given: {dirs:?})",
                    suspended.dirs
                )));
            }
            spec.args = suspended.args.clone();
            spec.env = suspended.env.clone();
            (
                Clock::starting_at(suspended.monotonic_ns),
                Some(suspended.import.clone()),
            )
        }
    };
    drop(resume);
    Ok(Some(Capturing {
        capture,
        clock,
        args: spec.args.clone(),
        env: spec.env.clone(),
        dirs,
        bound: None,
        rewinding,
        unwound: None,
    }))
}

/// The checkpoint's suspension, if it is one `program` can be restored from.
fn check_restorable<'a>(
    program: &Program,
    checkpoint: &'a Snapshot,
) -> Result<&'a Suspended, CaptureError> {
    if checkpoint.module != program.hash().to_bytes() {
        return Err(CaptureError::Restore(format!(
            "the checkpoint is of another module (sha256 {}), not of this one ({})",
            hex::encode(checkpoint.module),
            program.hash()
        )));
    }
    let suspended = checkpoint.suspended.as_ref().ok_or_else(|| {
        CaptureError::Restore("the snapshot is a service's, not a captured command's".into())
    })?;
    if let Some(why) = program.uncapturable() {
        return Err(CaptureError::Restore(format!(
            "the program cannot be made capturable here: {why}"
        )));
    }
    Ok(suspended)
}

/// Records that the process now holds something a capture cannot carry.
pub(crate) fn bind(ctx: &mut ProcessCtx, why: &'static str) {
    if let Some(capturing) = ctx.capture.as_mut() {
        capturing.bound.get_or_insert(why);
    }
}

/// Before `_start` of a restored process: memory, globals and the rewind.
pub(crate) async fn rewind(
    store: &mut Store<ProcessCtx>,
    instance: &Instance,
    program: &Program,
) -> Result<(), CaptureError> {
    let Some(capture) = store.data().capture.as_ref().map(|c| c.capture.clone()) else {
        return Ok(());
    };
    let Some(checkpoint) = capture.0.resume.lock().unwrap().take() else {
        return Ok(());
    };
    let suspended = check_restorable(program, &checkpoint)?;
    let restore = CaptureError::Restore;
    let memory = instance
        .get_memory(&mut *store, "memory")
        .ok_or_else(|| restore("the module exports no memory".into()))?;
    let have = memory.data_size(&*store) as u64;
    if checkpoint.memory_len < have || !(checkpoint.memory_len - have).is_multiple_of(WASM_PAGE) {
        return Err(restore("its memory size does not fit the module".into()));
    }
    memory
        .grow(&mut *store, (checkpoint.memory_len - have) / WASM_PAGE)
        .map_err(|e| restore(format!("growing memory: {e:#}")))?;
    // What instantiation wrote (data segments) is replaced: the pages in no run are zeros.
    let bytes = memory.data_mut(&mut *store);
    let mut next = 0usize;
    for run in &checkpoint.runs {
        let start = run.first_page as usize * nimbus_snapshot::PAGE_SIZE;
        let end = start + run.pages as usize * nimbus_snapshot::PAGE_SIZE;
        bytes[next..start.min(have as usize).max(next)].fill(0);
        std::os::unix::fs::FileExt::read_exact_at(
            &checkpoint.file,
            &mut bytes[start..end],
            run.offset,
        )
        .map_err(|e| restore(format!("reading memory: {e}")))?;
        next = end;
    }
    if next < have as usize {
        bytes[next..have as usize].fill(0);
    }
    for (index, value) in &checkpoint.globals {
        let global = instance
            .get_global(&mut *store, &crate::instrument::global_export_name(*index))
            .ok_or_else(|| restore(format!("the module has no mutable global {index}")))?;
        global
            .set(&mut *store, crate::service::wasm_value(*value))
            .map_err(|e| restore(format!("global {index}: {e:#}")))?;
    }
    let start_rewind = instance
        .get_typed_func::<i32, ()>(&mut *store, "asyncify_start_rewind")
        .map_err(|e| restore(format!("{e:#}")))?;
    start_rewind
        .call_async(&mut *store, suspended.unwind_data as i32)
        .await
        .map_err(|e| restore(format!("rewinding: {e:#}")))?;
    Ok(())
}

/// After `_start` returned: whether it returned because the process was unwound
/// for a capture, and then the checkpoint handed to its [`Capture`].
pub(crate) async fn finish(
    store: &mut Store<ProcessCtx>,
    instance: &Instance,
    program: &Program,
) -> Result<bool, wasmtime::Error> {
    let Some((unwind_data, import)) = store.data_mut().capture.as_mut().and_then(|c| c.unwound)
    else {
        return Ok(false);
    };
    instance
        .get_typed_func::<(), ()>(&mut *store, "asyncify_stop_unwind")?
        .call_async(&mut *store, ())
        .await?;
    let mut globals = Vec::new();
    for &index in program.mutable_globals() {
        let name = crate::instrument::global_export_name(index);
        if let Some(global) = instance.get_global(&mut *store, &name)
            && let Some(value) = crate::service::snapshot_value(global.get(&mut *store))
        {
            globals.push((index, value));
        }
    }
    let memory = instance
        .get_memory(&mut *store, "memory")
        .map(|memory| memory.data(&*store).to_vec())
        .unwrap_or_default();
    let pid = store.data().pid;
    let capturing = store.data().capture.as_ref().expect("it was unwound");
    let checkpoint = Checkpoint {
        module: program.hash(),
        app: capturing.capture.app().to_owned(),
        globals,
        memory,
        suspended: Suspended {
            pid: pid.to_guest() as u64,
            unwind_data,
            import: format!("{WASI}.{import}"),
            monotonic_ns: capturing.clock.now(),
            args: capturing.args.clone(),
            env: capturing.env.clone(),
            dirs: capturing.dirs.clone(),
        },
    };
    tracing::debug!(%pid, import, memory = checkpoint.memory_len(), "captured");
    capturing.capture.captured(checkpoint);
    Ok(true)
}

/// The blocking WASI calls a capture can stop a process in.
#[derive(Clone, Copy)]
enum Call {
    FdRead(i32, i32, i32, i32),
    PollOneoff(i32, i32, i32, i32),
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::FdRead(..) => "fd_read",
            Call::PollOneoff(..) => "poll_oneoff",
        }
    }

    async fn perform(
        self,
        wasi: &mut WasiP1Ctx,
        memory: &mut GuestMemory<'_>,
    ) -> wasmtime::Result<i32> {
        match self {
            Call::FdRead(fd, iovs, len, nread) => {
                wasi::fd_read(wasi, memory, fd, iovs, len, nread).await
            }
            Call::PollOneoff(subs, events, n, nevents) => {
                wasi::poll_oneoff(wasi, memory, subs, events, n, nevents).await
            }
        }
    }
}

/// Puts the capturable versions of the blocking WASI calls in place of WASI's own.
pub(crate) fn add_to_linker(linker: &mut Linker<ProcessCtx>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap_async(
        WASI,
        "fd_read",
        |mut caller: Caller<'_, ProcessCtx>, (fd, iovs, len, nread): (i32, i32, i32, i32)| {
            Box::new(async move { blocking(&mut caller, Call::FdRead(fd, iovs, len, nread)).await })
        },
    )?;
    linker.func_wrap_async(
        WASI,
        "poll_oneoff",
        |mut caller: Caller<'_, ProcessCtx>, (subs, events, n, nevents): (i32, i32, i32, i32)| {
            Box::new(async move {
                blocking(&mut caller, Call::PollOneoff(subs, events, n, nevents)).await
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// `call`, unless the process is to be captured in it: then its stack is unwound
/// and the call is performed after the restore instead.
async fn blocking(caller: &mut Caller<'_, ProcessCtx>, call: Call) -> wasmtime::Result<i32> {
    let memory = match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => memory,
        _ => wasmtime::bail!("the module exports no memory"),
    };
    let Some(capture) = caller.data().capture.as_ref().map(|c| c.capture.clone()) else {
        return perform(caller, memory, call).await;
    };
    if let Some(expected) = caller
        .data_mut()
        .capture
        .as_mut()
        .and_then(|c| c.rewinding.take())
    {
        let reached = format!("{WASI}.{}", call.name());
        if reached != expected {
            wasmtime::bail!("the restore rewound into `{reached}`, not into `{expected}`");
        }
        stop_rewind(caller).await?;
    }
    loop {
        if capture.is_requested() && try_unwind(caller, memory, call).await? {
            return Ok(0);
        }
        let waited = {
            let (mut guest, ctx) = guest_memory(caller, memory);
            tokio::select! {
                result = call.perform(&mut ctx.wasi, &mut guest) => Some(result),
                () = capture.requested() => None,
            }
        };
        // A wait cancelled for a capture did nothing yet: it is done again if the
        // capture is refused.
        if let Some(result) = waited {
            return result;
        }
    }
}

async fn perform(
    caller: &mut Caller<'_, ProcessCtx>,
    memory: Memory,
    call: Call,
) -> wasmtime::Result<i32> {
    let (mut guest, ctx) = guest_memory(caller, memory);
    call.perform(&mut ctx.wasi, &mut guest).await
}

/// The guest's memory as WASI's functions take it, and the process, its WASI
/// context given the store's host-call fuel as wasmtime-wasi's own linking does.
fn guest_memory<'a>(
    caller: &'a mut Caller<'_, ProcessCtx>,
    memory: Memory,
) -> (GuestMemory<'a>, &'a mut ProcessCtx) {
    let fuel = caller.as_context_mut().hostcall_fuel();
    let (bytes, ctx) = memory.data_and_store_mut(caller);
    ctx.wasi.set_hostcall_fuel(fuel);
    (GuestMemory::Unshared(bytes), ctx)
}

async fn stop_rewind(caller: &mut Caller<'_, ProcessCtx>) -> wasmtime::Result<()> {
    let stop = caller
        .get_export("asyncify_stop_rewind")
        .and_then(Extern::into_func)
        .ok_or_else(|| wasmtime::format_err!("the program is not capturable"))?;
    stop.typed::<(), ()>(&*caller)?
        .call_async(&mut *caller, ())
        .await
}

/// Unwinds the stack for the requested capture, unless the process cannot travel:
/// then the request is refused and the process goes on. Whether it unwound.
async fn try_unwind(
    caller: &mut Caller<'_, ProcessCtx>,
    memory: Memory,
    call: Call,
) -> wasmtime::Result<bool> {
    let capture = caller
        .data()
        .capture
        .as_ref()
        .expect("capturing")
        .capture
        .clone();
    if let Err(refused) = travels(caller.data_mut()).await {
        tracing::info!(pid = %caller.data().pid, "capture refused: {refused}");
        capture.answer(Err(refused));
        return Ok(false);
    }
    // Withdrawn meanwhile: nobody would take the checkpoint.
    if !capture.claim() {
        return Ok(false);
    }
    let start_unwind = match caller
        .get_export("asyncify_start_unwind")
        .and_then(Extern::into_func)
    {
        Some(func) => func.typed::<i32, ()>(&*caller)?,
        // The program was loaded uncapturable: requests are refused before they come here.
        None => {
            capture.answer(Err(CaptureError::Uncapturable("not transformed".into())));
            return Ok(false);
        }
    };
    let old_pages = match memory.grow(&mut *caller, UNWIND_BUFFER / WASM_PAGE) {
        Ok(pages) => pages,
        Err(e) => {
            capture.answer(Err(CaptureError::Failed(format!(
                "no room in memory for the unwind data: {e:#}"
            ))));
            return Ok(false);
        }
    };
    let Some(data) = u32::try_from(old_pages * WASM_PAGE)
        .ok()
        .filter(|at| u64::from(*at) + UNWIND_BUFFER <= u64::from(u32::MAX))
    else {
        capture.answer(Err(CaptureError::Failed(
            "no room in the 4 GiB address space for the unwind data".into(),
        )));
        return Ok(false);
    };
    // The unwind data: where the next saved local goes, where the buffer ends.
    let header = [data + 8, data + UNWIND_BUFFER as u32];
    let bytes = memory.data_mut(&mut *caller);
    for (i, word) in header.iter().enumerate() {
        let at = data as usize + 4 * i;
        bytes[at..at + 4].copy_from_slice(&word.to_le_bytes());
    }
    start_unwind.call_async(&mut *caller, data as i32).await?;
    caller
        .data_mut()
        .capture
        .as_mut()
        .expect("capturing")
        .unwound = Some((data, call.name()));
    Ok(true)
}

/// Whether what the process holds can travel with it; else why not.
async fn travels(ctx: &mut ProcessCtx) -> Result<(), CaptureError> {
    let cannot = |why: String| Err(CaptureError::CannotTravel(why));
    let capturing = ctx.capture.as_ref().expect("capturing");
    if let Some(why) = capturing.bound {
        return cannot(why.to_owned());
    }
    if !ctx.outlets.is_empty() {
        return cannot("it holds message channels to other hosts".into());
    }
    if !ctx.mailbox.is_empty() {
        return cannot("messages wait in its mailbox".into());
    }
    let preopens = 3 + capturing.dirs.len() as u32;
    if let Some(fd) = open_file(&mut ctx.wasi, preopens).await {
        return cannot(format!(
            "it has a file open (descriptor {fd}): open files and their offsets do not travel yet"
        ));
    }
    Ok(())
}

/// A descriptor that is not stdio or a preopened directory, if one is open; or one
/// of those replaced (`fd_renumber` onto it).
async fn open_file(wasi: &mut WasiP1Ctx, preopens: u32) -> Option<u32> {
    /// WASI's `filetype::directory`.
    const DIRECTORY: u8 = 3;
    /// WASI's `filetype::regular_file`.
    const REGULAR_FILE: u8 = 4;
    for fd in 0..preopens + PROBED_DESCRIPTORS {
        // `fdstat` is 24 bytes, its file type first.
        let mut scratch = [0u8; 24];
        let mut memory = GuestMemory::Unshared(&mut scratch);
        let open = matches!(
            wasi::fd_fdstat_get(wasi, &mut memory, fd as i32, 0).await,
            Ok(0)
        );
        let kind = scratch[0];
        let foreign = match fd {
            _ if !open => false,
            0..3 => kind == DIRECTORY || kind == REGULAR_FILE,
            _ if fd < preopens => kind != DIRECTORY,
            _ => true,
        };
        if foreign {
            return Some(fd);
        }
    }
    None
}
