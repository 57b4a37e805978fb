//! One process's execution: its store, WASI context, limits and time slicing, and
//! the translation of how it ended into an [`ExitStatus`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nimbus_core::{ExitStatus, Failure, Limits, Pid};
use tokio::io::{AsyncRead, AsyncWrite};
use wasmtime::{Engine, Linker, ResourceLimiter, Store, Trap, UpdateDeadline, WasmBacktrace};
use wasmtime_wasi::cli::{AsyncStdinStream, IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use crate::capture::{Capture, Capturing, Clock};
use crate::engine::{Gauges, Program, SLICE_TICKS};
use crate::stream::Outlet;
use crate::{Kernel, LogBuffer, Mailbox};

/// Where a process's stdin comes from.
#[derive(Clone, Debug)]
pub enum Input {
    /// The host process's stdin.
    Inherit,
    /// Nothing: reads see end of file.
    Null,
    /// These bytes.
    Bytes(Vec<u8>),
    /// What this reader yields (taken by the first process built from it).
    Stream(InputStream),
}

/// A reader a process's stdin comes from, shared until a process takes it.
#[derive(Clone)]
pub struct InputStream(Arc<std::sync::Mutex<Option<Box<dyn AsyncRead + Send + Sync + Unpin>>>>);

impl InputStream {
    /// Stdin read from `reader`.
    pub fn new(reader: impl AsyncRead + Send + Sync + Unpin + 'static) -> InputStream {
        InputStream(Arc::new(std::sync::Mutex::new(Some(Box::new(reader)))))
    }

    fn take(&self) -> Option<Box<dyn AsyncRead + Send + Sync + Unpin>> {
        self.0.lock().unwrap().take()
    }
}

impl std::fmt::Debug for InputStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InputStream")
    }
}

/// Makes the writers a stream goes to, one per process: for a stream the platform
/// carries elsewhere (to the host a process tree was started from).
pub trait OutputSink: Send + Sync + std::fmt::Debug + 'static {
    /// A writer for one process's stream.
    fn writer(&self) -> Box<dyn AsyncWrite + Send + Sync>;
    /// Resolves once everything written so far has reached its destination.
    fn drained(&self) -> crate::BoxFuture<'static, ()>;
}

/// Where a process's stdout or stderr goes.
#[derive(Clone, Debug)]
pub enum Output {
    /// The host process's stream, written as the guest writes.
    Inherit,
    /// Discarded.
    Null,
    /// Kept in this in-memory pipe (writes past its capacity fail).
    Capture(MemoryOutputPipe),
    /// Kept in this ring buffer (the oldest bytes make room).
    Log(LogBuffer),
    /// Written to the writers this sink makes.
    Sink(Arc<dyn OutputSink>),
}

impl Output {
    /// A writer to this output, as a process's stdout or (`stderr`) stderr.
    pub fn writer(&self, stderr: bool) -> Box<dyn AsyncWrite + Send + Sync> {
        match self {
            Output::Inherit if stderr => Box::new(tokio::io::stderr()),
            Output::Inherit => Box::new(tokio::io::stdout()),
            Output::Null => Box::new(tokio::io::sink()),
            Output::Capture(pipe) => Box::new(pipe.clone()),
            Output::Log(log) => Box::new(log.clone()),
            Output::Sink(sink) => sink.writer(),
        }
    }

    /// Resolves once everything written so far has reached its destination (at
    /// once for every output but a sink).
    pub async fn drained(&self) {
        if let Output::Sink(sink) = self {
            sink.drained().await;
        }
    }
}

/// A sink as WASI sees it.
struct SinkStream(Arc<dyn OutputSink>);

impl IsTerminal for SinkStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for SinkStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        self.0.writer()
    }
}

/// A host directory made visible to the guest.
#[derive(Clone, Debug)]
pub struct Preopen {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the guest sees it, e.g. `/data`.
    pub guest: String,
}

/// Everything that makes a process out of a program.
pub struct ProcessSpec {
    /// Its id.
    pub pid: Pid,
    /// Its arguments, `argv[0]` included.
    pub args: Vec<String>,
    /// Its environment.
    pub env: Vec<(String, String)>,
    /// Its preopened directories.
    pub dirs: Vec<Preopen>,
    /// Its stdin.
    pub stdin: Input,
    /// Its stdout.
    pub stdout: Output,
    /// Its stderr.
    pub stderr: Output,
    /// Its limits. The timeout is measured from `deadline`'s origin, see below.
    pub limits: Limits,
    /// The instant it must have ended by (from `limits.timeout`, fixed when the
    /// process tree started, so children share their root's deadline).
    pub deadline: Option<Instant>,
    /// Its mailbox.
    pub mailbox: Mailbox,
    /// The platform, for spawn, wait and send.
    pub kernel: Arc<dyn Kernel>,
    /// For a command that may be captured (or is restored): its capture. Only a
    /// program loaded by [`crate::Runtime::load_capturable`] can be.
    pub capture: Option<Capture>,
}

/// The per-process data a store holds.
pub(crate) struct ProcessCtx {
    pub(crate) wasi: WasiP1Ctx,
    limiter: MemoryLimiter,
    limits: Limits,
    pub(crate) pid: Pid,
    pub(crate) kernel: Arc<dyn Kernel>,
    pub(crate) mailbox: Mailbox,
    /// Streams to receivers on other hosts, by receiver.
    pub(crate) outlets: HashMap<Pid, Arc<Outlet>>,
    pub(crate) deadline: Option<Instant>,
    pub(crate) deadline_hit: bool,
    gauges: Arc<Gauges>,
    /// Its capture, if it may be captured.
    pub(crate) capture: Option<Capturing>,
}

impl ProcessCtx {
    /// Awaits `blocking` counted as waiting in the runtime's gauges.
    pub(crate) async fn waiting<T>(gauges: Arc<Gauges>, blocking: impl Future<Output = T>) -> T {
        struct Waiting(Arc<Gauges>);
        impl Drop for Waiting {
            fn drop(&mut self) {
                self.0.waiting.fetch_sub(1, Ordering::Relaxed);
            }
        }
        gauges.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(gauges);
        blocking.await
    }

    pub(crate) fn gauges(&self) -> Arc<Gauges> {
        self.gauges.clone()
    }

    /// Prepares a long-lived instance for one more invocation: fresh streams and a
    /// fresh deadline, limit flags cleared.
    pub(crate) fn begin_invocation(&mut self, wasi: WasiP1Ctx, timeout: Option<Duration>) {
        self.wasi = wasi;
        self.limits.timeout = timeout;
        self.deadline = timeout.map(|t| Instant::now() + t);
        self.deadline_hit = false;
        self.limiter.hit = false;
    }
}

/// Denies memory growth past the process's limit and remembers that it did, so a
/// trap that follows is reported as the memory limit rather than a bare trap.
struct MemoryLimiter {
    limit: usize,
    hit: bool,
}

/// Most table elements a process may have; tables hold function references.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.limit;
        self.hit |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

pub(crate) fn add_to_linker(linker: &mut Linker<ProcessCtx>) -> wasmtime::Result<()> {
    wasmtime_wasi::p1::add_to_linker_async(linker, |ctx: &mut ProcessCtx| &mut ctx.wasi)?;
    crate::abi::add_to_linker(linker)
}

/// The parts of a WASI context that stay the same for the life of a process.
#[derive(Clone)]
pub(crate) struct WasiSetup {
    args: Vec<String>,
    env: Vec<(String, String)>,
    dirs: Vec<Preopen>,
    /// The monotonic clock, if not the host's.
    clock: Option<Clock>,
}

impl WasiSetup {
    /// A context with these args, env and dirs, and the given streams.
    pub(crate) fn build(
        &self,
        stdin: &Input,
        stdout: &Output,
        stderr: &Output,
    ) -> Result<WasiP1Ctx, Failure> {
        let mut wasi = WasiCtxBuilder::new();
        match stdin {
            Input::Inherit => wasi.inherit_stdin(),
            Input::Null => &mut wasi,
            Input::Bytes(bytes) => wasi.stdin(MemoryInputPipe::new(bytes.clone())),
            Input::Stream(stream) => match stream.take() {
                Some(reader) => wasi.stdin(AsyncStdinStream::new(reader)),
                None => &mut wasi,
            },
        };
        self.finish(wasi, stdout, stderr)
    }

    /// A context whose stdin is `body` (a service invocation's request, the caller
    /// keeping a clone to see what the handler left unread).
    pub(crate) fn build_for_body(
        &self,
        body: &MemoryInputPipe,
        stdout: &Output,
        stderr: &Output,
    ) -> Result<WasiP1Ctx, Failure> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdin(body.clone());
        self.finish(wasi, stdout, stderr)
    }

    /// `wasi`, its stdin set, with these args, env and dirs and the given streams.
    fn finish(
        &self,
        mut wasi: WasiCtxBuilder,
        stdout: &Output,
        stderr: &Output,
    ) -> Result<WasiP1Ctx, Failure> {
        wasi.args(&self.args).envs(&self.env);
        if let Some(clock) = self.clock {
            wasi.monotonic_clock(clock);
        }
        match stdout {
            Output::Inherit => wasi.inherit_stdout(),
            Output::Null => &mut wasi,
            Output::Capture(pipe) => wasi.stdout(pipe.clone()),
            Output::Log(log) => wasi.stdout(log.clone()),
            Output::Sink(sink) => wasi.stdout(SinkStream(sink.clone())),
        };
        match stderr {
            Output::Inherit => wasi.inherit_stderr(),
            Output::Null => &mut wasi,
            Output::Capture(pipe) => wasi.stderr(pipe.clone()),
            Output::Log(log) => wasi.stderr(log.clone()),
            Output::Sink(sink) => wasi.stderr(SinkStream(sink.clone())),
        };
        // Calls on files and directories run on the guest's own thread, as under a
        // local runtime, instead of a hop to tokio's blocking pool and back for
        // each (a walk of small files took 15× longer for it). They hold the
        // thread as long as the kernel takes (ARCHITECTURE.md, "Blocking work").
        // stdin, pipes and sockets are streams the flag does not reach, and a
        // sleep waits on a tokio timer: the vendored wasmtime-wasi never sleeps
        // the thread (vendor/README.md). Set before the directories are
        // preopened: each takes it.
        wasi.allow_blocking_current_thread(true);
        for dir in &self.dirs {
            wasi.preopened_dir(&dir.host, &dir.guest, FsPerms::ReadWrite)
                .map_err(|e| {
                    Failure::Load(format!(
                        "cannot open directory {}: {e:#}",
                        dir.host.display()
                    ))
                })?;
        }
        Ok(wasi.build_p1())
    }
}

/// A store for the process `spec` describes, with its memory limiter, time slicing
/// and deadline installed, and its capture if it may be captured; also what
/// rebuilding its WASI context needs.
pub(crate) fn new_store(
    engine: &Engine,
    spec: ProcessSpec,
    gauges: Arc<Gauges>,
    capture: Option<Capturing>,
) -> Result<(Store<ProcessCtx>, WasiSetup), Failure> {
    let setup = WasiSetup {
        args: spec.args,
        env: spec.env,
        dirs: spec.dirs,
        clock: capture.as_ref().map(Capturing::clock),
    };
    let wasi = setup.build(&spec.stdin, &spec.stdout, &spec.stderr)?;
    let ctx = ProcessCtx {
        wasi,
        limiter: MemoryLimiter {
            limit: usize::try_from(spec.limits.memory).unwrap_or(usize::MAX),
            hit: false,
        },
        limits: spec.limits,
        pid: spec.pid,
        kernel: spec.kernel,
        mailbox: spec.mailbox,
        outlets: HashMap::new(),
        deadline: spec.deadline,
        deadline_hit: false,
        gauges,
        capture,
    };
    let mut store = Store::new(engine, ctx);
    store.limiter(|ctx| &mut ctx.limiter);
    store.set_epoch_deadline(SLICE_TICKS);
    store.epoch_deadline_callback(|mut ctx| {
        let ctx = ctx.data_mut();
        if ctx.deadline.is_some_and(|d| Instant::now() >= d) {
            ctx.deadline_hit = true;
            return Ok(UpdateDeadline::Interrupt);
        }
        Ok(UpdateDeadline::YieldCustom(
            SLICE_TICKS,
            Box::pin(tokio::task::yield_now()),
        ))
    });
    Ok((store, setup))
}

/// Runs `program` to completion as `spec` says.
pub(crate) async fn run(
    engine: &Engine,
    program: &Program,
    spec: ProcessSpec,
    gauges: Arc<Gauges>,
) -> ExitStatus {
    let timeout = spec.limits.timeout;
    let deadline = spec.deadline;
    let execution = execute(engine, program, spec, gauges);
    // Epoch checks stop a guest that computes past its deadline; this timer stops
    // one that is blocked in a host call.
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline.into(), execution)
            .await
            .unwrap_or_else(|_| deadline_failure(timeout)),
        None => execution.await,
    }
}

pub(crate) fn deadline_failure(timeout: Option<Duration>) -> ExitStatus {
    ExitStatus::Failed(Failure::Deadline(timeout.unwrap_or_default()))
}

async fn execute(
    engine: &Engine,
    program: &Program,
    mut spec: ProcessSpec,
    gauges: Arc<Gauges>,
) -> ExitStatus {
    let cannot_restore = |e: crate::CaptureError| ExitStatus::Failed(Failure::Load(e.to_string()));
    let capture = match crate::capture::prepare(program, &mut spec) {
        Ok(capture) => capture,
        Err(e) => return cannot_restore(e),
    };
    let mut store = match new_store(engine, spec, gauges, capture) {
        Ok((store, _)) => store,
        Err(failure) => return ExitStatus::Failed(failure),
    };
    let instance = match program.pre().instantiate_async(&mut store).await {
        Ok(instance) => instance,
        Err(e) => return status_of_error(store.data(), &e),
    };
    if let Err(e) = crate::capture::rewind(&mut store, &instance, program).await {
        return cannot_restore(e);
    }
    let outcome = async {
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        start.call_async(&mut store, ()).await?;
        crate::capture::finish(&mut store, &instance, program).await
    }
    .await;
    match outcome {
        // Captured: the process ends here, its state in its capture's checkpoint.
        Ok(true) => ExitStatus::Failed(Failure::Killed),
        Ok(false) => ExitStatus::Exited(0),
        Err(e) => status_of_error(store.data(), &e),
    }
}

/// How an error out of guest code ends the process: an exit, the deadline, the
/// memory limit, or a trap.
pub(crate) fn status_of_error(ctx: &ProcessCtx, error: &wasmtime::Error) -> ExitStatus {
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        ExitStatus::Exited(exit.0)
    } else if ctx.deadline_hit {
        deadline_failure(ctx.limits.timeout)
    } else if ctx.limiter.hit {
        ExitStatus::Failed(Failure::MemoryLimit {
            limit: ctx.limits.memory,
        })
    } else {
        ExitStatus::Failed(Failure::Trap(describe_trap(error)))
    }
}

/// The trap's message followed by the wasm backtrace, one frame a line.
fn describe_trap(error: &wasmtime::Error) -> String {
    let mut text = match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{error}"),
    };
    if let Some(backtrace) = error.downcast_ref::<WasmBacktrace>() {
        for (i, frame) in backtrace.frames().iter().enumerate() {
            let name = match frame.func_name() {
                Some(raw) => format!("{:#}", rustc_demangle::demangle(raw)),
                None => "<unnamed>".to_owned(),
            };
            match frame.module_offset() {
                Some(offset) => text.push_str(&format!("\n  {i:>2}: {name} @ {offset:#x}")),
                None => text.push_str(&format!("\n  {i:>2}: {name}")),
            }
        }
    }
    text
}
