//! Capture and restore of a running command, straight on a `Runtime` (no cluster),
//! and the cost of the capture transform.
//!
//! The guest is `capture-check MIB` (`guests/tests/capture-check`): it fills MIB MiB
//! (default 64) with pseudo-random values and blocks reading stdin, which never
//! comes.
//!
//! - capture: from `Capture::request` until the process has unwound out of
//!   `_start` and its checkpoint (memory copied, globals) is handed over; then
//!   `Checkpoint::write` (sparse encoding, fsync of the file and its directory,
//!   rename). Baseline: the same number of bytes from a `Vec` written with
//!   `write_all` + `sync_all`.
//! - restore: `nimbus_snapshot::read` (verifies the whole file's checksum), admit,
//!   instantiate, load memory and globals, rewind into `fd_read`, until the guest's
//!   first write after the read (the time to running again). Baseline: `fs::read`
//!   of the baseline's file.
//! - transform: whole runs (instantiate to exit) of `matmul 128 2` and of `hello`,
//!   loaded capturable (asyncify) beside loaded plain, and the first load of each
//!   (transform and compile, or compile).
//!
//! `cargo run --release -p nimbus-bench --bin capture [MIB] [ROUNDS]`

use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use nimbus_bench::{Samples, alone_spec, guest, print_samples, report};
use nimbus_core::ExitStatus;
use nimbus_runtime::{
    BoxFuture, Capture, Input, InputStream, ModuleBytes, Output, OutputSink, Program, Runtime,
    RuntimeConfig,
};
use tokio::io::AsyncWrite;
use tokio::sync::oneshot;

fn main() {
    nimbus_bench::on_worker(measure());
}

async fn measure() {
    let mib = nimbus_bench::arg_or(64);
    let rounds: usize = std::env::args()
        .nth(2)
        .map(|a| a.parse().expect("ROUNDS is a count"))
        .unwrap_or(20);
    let dir = tempfile::tempdir().expect("temporary directory");
    let runtime = Arc::new(Runtime::new(&RuntimeConfig::new(dir.path())).expect("runtime"));
    let module = guest("capture-check");
    let program = load(&runtime, &module, true).await;
    let path = dir.path().join("capture.ckpt");
    let args = ["capture-check".to_owned(), mib.to_string()];

    let (mut unwind, mut write, mut restore) =
        (Samples::default(), Samples::default(), Samples::default());
    let mut memory_len = 0;
    for _ in 0..rounds {
        // A reader that never yields: the guest blocks in `fd_read`.
        let (_keep_open, reader) = tokio::io::duplex(64);
        let capture = Capture::new("bench");
        let mut spec = alone_spec();
        spec.args = args.to_vec();
        spec.stdin = Input::Stream(InputStream::new(reader));
        let (ready, is_ready) = oneshot::channel();
        spec.stdout = Output::Sink(Arc::new(FirstWrite::new(ready)));
        spec.capture = Some(capture.clone());
        let running = {
            let (runtime, program) = (runtime.clone(), program.clone());
            tokio::spawn(async move {
                let slot = runtime.admit().await;
                runtime.run(&program, spec, slot).await
            })
        };
        is_ready.await.expect("the guest prints before it blocks");
        let start = Instant::now();
        capture.request().await.expect("captured");
        let checkpoint = capture.checkpoint().expect("a checkpoint");
        unwind.push(start.elapsed());
        running.await.expect("the process ends");
        memory_len = checkpoint.memory_len();
        let start = Instant::now();
        let written = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || checkpoint.write(&path))
        };
        written.await.unwrap().expect("written");
        write.push(start.elapsed());

        let start = Instant::now();
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || nimbus_snapshot::read(&path))
        };
        let snapshot = read.await.unwrap().expect("a verified checkpoint");
        let (running_again, is_running) = oneshot::channel();
        let mut spec = alone_spec();
        spec.stdin = Input::Bytes(b"go on\n".to_vec());
        spec.stdout = Output::Sink(Arc::new(FirstWrite::new(running_again)));
        spec.capture = Some(Capture::restoring(snapshot));
        let slot = runtime.admit().await;
        let restored = {
            let (runtime, program) = (runtime.clone(), program.clone());
            tokio::spawn(async move { runtime.run(&program, spec, slot).await })
        };
        is_running.await.expect("the restored guest prints");
        restore.push(start.elapsed());
        assert_eq!(restored.await.unwrap(), ExitStatus::Exited(3));
    }

    let bytes = vec![0x5au8; memory_len];
    let base_path = dir.path().join("baseline.bin");
    let base_write = Samples::measure(rounds, || {
        let mut file = std::fs::File::create(&base_path).unwrap();
        file.write_all(&bytes).unwrap();
        file.sync_all().unwrap();
    });
    let base_read = Samples::measure(rounds, || {
        std::hint::black_box(std::fs::read(&base_path).unwrap());
    });
    println!(
        "capture of capture-check {mib} (linear memory {} MiB, every page written), {rounds} rounds",
        memory_len >> 20
    );
    print_samples("unwind + copy out", &unwind);
    report(
        "capture: write the checkpoint",
        &write,
        "write + fsync",
        &base_write,
    );
    report(
        "restore: read + instantiate + rewind, to running",
        &restore,
        "fs::read",
        &base_read,
    );

    transform_cost(&runtime, "matmul", &["128", "2"]).await;
    transform_cost(&runtime, "hello", &[]).await;
}

/// Runs of `name` loaded capturable beside loaded plain.
async fn transform_cost(runtime: &Arc<Runtime>, name: &str, args: &[&str]) {
    const RUNS: usize = 15;
    let module = guest(name);
    let mut first = Vec::new();
    let mut programs = Vec::new();
    for capturable in [false, true] {
        let start = Instant::now();
        programs.push(load(runtime, &module, capturable).await);
        first.push(start.elapsed());
    }
    let mut samples = [Samples::default(), Samples::default()];
    for _ in 0..RUNS {
        for (program, samples) in programs.iter().zip(&mut samples) {
            let mut spec = alone_spec();
            spec.args = std::iter::once(name)
                .chain(args.iter().copied())
                .map(str::to_owned)
                .collect();
            let slot = runtime.admit().await;
            let start = Instant::now();
            let status = runtime.run(program, spec, slot).await;
            samples.push(start.elapsed());
            assert_eq!(status, ExitStatus::Exited(0), "{name} failed");
        }
    }
    let [plain, capturable] = samples;
    println!(
        "transform: {name} {} — first load plain {:.1} ms, capturable (wasm-opt + compile) {:.1} ms",
        args.join(" "),
        ms(first[0]),
        ms(first[1])
    );
    report("  whole run, capturable", &capturable, "plain", &plain);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `module` loaded (plain or capturable) off the async threads.
async fn load(runtime: &Arc<Runtime>, module: &ModuleBytes, capturable: bool) -> Program {
    let (runtime, module) = (runtime.clone(), module.clone());
    let program = tokio::task::spawn_blocking(move || match capturable {
        true => runtime.load_capturable(&module),
        false => runtime.load_command(&module),
    })
    .await
    .unwrap()
    .expect("the guest loads");
    assert_eq!(program.uncapturable().is_none(), capturable);
    program
}

/// A stdout that tells once the guest first writes to it, and discards the bytes.
#[derive(Debug)]
struct FirstWrite(Arc<Mutex<Option<oneshot::Sender<()>>>>);

impl FirstWrite {
    fn new(first: oneshot::Sender<()>) -> FirstWrite {
        FirstWrite(Arc::new(Mutex::new(Some(first))))
    }
}

impl OutputSink for FirstWrite {
    fn writer(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(Told(self.0.clone()))
    }

    fn drained(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

struct Told(Arc<Mutex<Option<oneshot::Sender<()>>>>);

impl AsyncWrite for Told {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(first) = self.0.lock().unwrap().take() {
            let _ = first.send(());
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
