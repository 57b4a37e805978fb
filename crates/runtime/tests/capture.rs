//! Capture of a running command at a blocking call and its restore, on hand-written
//! modules (the real guests, across OS processes, are in `cli/tests/capture.rs`).

mod common;

use std::sync::Arc;

use nimbus_core::{ExitStatus, Failure, Limits};
use nimbus_runtime::{
    Capture, CaptureError, Input, InputStream, ModuleBytes, Output, Preopen, ProcessSpec, Program,
    Runtime, RuntimeConfig,
};
use tokio::io::AsyncWriteExt;

/// `waited`, which must end within a minute (a capture or a process that never
/// ends fails the test instead of hanging it).
async fn within<T>(waited: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(60), waited)
        .await
        .expect("it ended within a minute")
}
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

/// Sets a global to 41, opens a file first if `OPEN` is replaced by the call, reads
/// up to 16 bytes of stdin, adds 1 to the global, and writes what it read followed
/// by the global as a byte: `*` if the global came through the capture.
const READER: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\64\00\00\00\10\00\00\00")
  (data (i32.const 400) "f")
  (global $count (mut i32) (i32.const 0))
  (func (export "_start")
    (global.set $count (i32.const 41))
    OPEN
    (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (i32.store (i32.const 16) (i32.const 100))
    (i32.store (i32.const 20) (i32.load (i32.const 8)))
    (drop (call $write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))
    (i32.store8 (i32.const 300) (global.get $count))
    (i32.store (i32.const 16) (i32.const 300))
    (i32.store (i32.const 20) (i32.const 1))
    (drop (call $write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))))"#;

/// Opens (creating) `f` in the directory preopened as descriptor 3.
const OPEN: &str = "(drop (call $open (i32.const 3) (i32.const 0) (i32.const 400) (i32.const 1) \
    (i32.const 1) (i64.const 66) (i64.const 66) (i32.const 0) (i32.const 500)))";

fn runtime(dir: &tempfile::TempDir) -> Arc<Runtime> {
    let mut config = RuntimeConfig::new(dir.path());
    config.max_live_processes = 8;
    config.max_memory = 64 << 20;
    Arc::new(Runtime::new(&config).unwrap())
}

fn reader(open: bool) -> ModuleBytes {
    let text = READER.replace("OPEN", if open { OPEN } else { "" });
    ModuleBytes::new(wat::parse_str(text).unwrap())
}

/// A process of `program` reading `stdin`, capturable through `capture`.
fn spec(stdin: Input, stdout: &MemoryOutputPipe, capture: &Capture) -> ProcessSpec {
    let (mut spec, _sender) = common::spec(Limits::default(), Output::Capture(stdout.clone()));
    spec.stdin = stdin;
    spec.capture = Some(capture.clone());
    spec
}

fn start(
    runtime: &Arc<Runtime>,
    program: &Program,
    spec: ProcessSpec,
) -> tokio::task::JoinHandle<ExitStatus> {
    let (runtime, program) = (runtime.clone(), program.clone());
    tokio::spawn(async move {
        let slot = runtime.admit().await;
        runtime.run(&program, spec, slot).await
    })
}

/// Runs `program` on a stdin that never yields, so that it blocks in `fd_read`,
/// captures it there, and returns the capture and how the process ended.
async fn captured_in_read(
    runtime: &Arc<Runtime>,
    program: &Program,
    stdout: &MemoryOutputPipe,
) -> (Capture, ExitStatus) {
    let (_open, never) = tokio::io::duplex(16);
    let capture = Capture::new("test");
    let running = start(
        runtime,
        program,
        spec(Input::Stream(InputStream::new(never)), stdout, &capture),
    );
    within(capture.request()).await.unwrap();
    let ended = within(running).await.unwrap();
    (capture, ended)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_captured_in_a_read_goes_on_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir);
    let program = runtime.load_capturable(&reader(false)).unwrap();
    assert_eq!(program.uncapturable(), None);

    let stdout = MemoryOutputPipe::new(1024);
    let (capture, ended) = captured_in_read(&runtime, &program, &stdout).await;
    assert_eq!(ended, ExitStatus::Failed(Failure::Killed));
    assert!(stdout.contents().is_empty());
    let checkpoint = capture.checkpoint().expect("a checkpoint");
    assert_eq!(checkpoint.import(), "wasi_snapshot_preview1.fd_read");
    let path = dir.path().join("reader.ckpt");
    checkpoint.write(&path).unwrap();

    let snapshot = nimbus_snapshot::read(&path).unwrap();
    let restored = Capture::restoring(snapshot);
    let stdout = MemoryOutputPipe::new(1024);
    let status = start(
        &runtime,
        &program,
        spec(Input::Bytes(b"hi".to_vec()), &stdout, &restored),
    )
    .await
    .unwrap();
    assert_eq!(status, ExitStatus::Exited(0));
    assert_eq!(&stdout.contents()[..], b"hi*");
    // Ended: no capture to ask for any more.
    assert!(matches!(
        within(restored.request()).await,
        Err(CaptureError::Ended)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_holding_an_open_file_is_not_captured_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir);
    let program = runtime.load_capturable(&reader(true)).unwrap();
    let (mut input, stdin) = tokio::io::duplex(16);
    let capture = Capture::new("test");
    let stdout = MemoryOutputPipe::new(1024);
    let mut spec = spec(Input::Stream(InputStream::new(stdin)), &stdout, &capture);
    spec.dirs = vec![Preopen {
        host: files.path().to_owned(),
        guest: "/files".into(),
    }];
    let running = start(&runtime, &program, spec);
    match within(capture.request()).await {
        Err(CaptureError::CannotTravel(why)) => assert!(why.contains("file open"), "{why}"),
        other => panic!(
            "captured with a file open: {:?}, the process {:?}",
            other.map(drop),
            within(running).await
        ),
    }
    input.write_all(b"ok").await.unwrap();
    drop(input);
    assert_eq!(within(running).await.unwrap(), ExitStatus::Exited(0));
    assert_eq!(&stdout.contents()[..], b"ok*");
    assert!(files.path().join("f").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_is_restored_only_into_its_own_module() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir);
    let program = runtime.load_capturable(&reader(false)).unwrap();
    let stdout = MemoryOutputPipe::new(1024);
    let (capture, _) = captured_in_read(&runtime, &program, &stdout).await;
    let path = dir.path().join("reader.ckpt");
    capture.checkpoint().unwrap().write(&path).unwrap();

    let other = runtime.load_capturable(&reader(true)).unwrap();
    let restored = Capture::restoring(nimbus_snapshot::read(&path).unwrap());
    let status = start(&runtime, &other, spec(Input::Null, &stdout, &restored))
        .await
        .unwrap();
    match status {
        ExitStatus::Failed(Failure::Load(why)) => assert!(why.contains("another module"), "{why}"),
        other => panic!("restored into another module: {other:?}"),
    }
}

#[tokio::test]
async fn a_program_loaded_plain_refuses_a_capture() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir);
    let program = runtime.load_command(&reader(false)).unwrap();
    assert!(program.uncapturable().is_some());
    let capture = Capture::new("test");
    let stdout = MemoryOutputPipe::new(1024);
    let (mut input, stdin) = tokio::io::duplex(16);
    let running = start(
        &runtime,
        &program,
        spec(Input::Stream(InputStream::new(stdin)), &stdout, &capture),
    );
    // Answered once the process has started.
    let refused = match within(capture.request()).await {
        Err(CaptureError::Uncapturable(why)) => why,
        other => panic!("not refused as uncapturable: {:?}", other.map(drop)),
    };
    assert!(refused.contains("not loaded for capture"), "{refused}");
    input.write_all(b"go").await.unwrap();
    drop(input);
    assert_eq!(within(running).await.unwrap(), ExitStatus::Exited(0));
    assert_eq!(&stdout.contents()[..], b"go*");
}

/// Spins forever before it would read stdin: it never reaches a blocking call.
const SPINNER: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $spin (br $spin))
    (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_process_does_not_reach_in_time_is_withdrawn_and_it_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir);
    let program = runtime
        .load_capturable(&ModuleBytes::new(wat::parse_str(SPINNER).unwrap()))
        .unwrap();
    let capture = Capture::new("test");
    let stdout = MemoryOutputPipe::new(1024);
    let limits = Limits {
        timeout: Some(std::time::Duration::from_secs(1)),
        ..Limits::default()
    };
    let (mut spec, _sender) = common::spec(limits, Output::Capture(stdout.clone()));
    spec.capture = Some(capture.clone());
    let running = start(&runtime, &program, spec);
    let wait = std::time::Duration::from_millis(20);
    match within(capture.request_within(wait)).await {
        Err(CaptureError::NotReached(waited)) => assert_eq!(waited, wait),
        other => panic!("a spinning process answered {:?}", other.map(drop)),
    }
    // Not captured after all: it spins on until its deadline stops it.
    assert!(!running.is_finished());
    match within(running).await.unwrap() {
        ExitStatus::Failed(Failure::Deadline(_)) => {}
        other => panic!("the spinner ended {other:?}"),
    }
    assert!(capture.checkpoint().is_none());
}
