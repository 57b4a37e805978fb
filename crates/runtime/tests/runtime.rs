//! The runtime on hand-written modules: loading, caching, limits and outcomes, and
//! service instances with their snapshots.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nimbus_core::{ExitStatus, Failure, Limits};
use nimbus_runtime::{
    Committed, Invocation, InvokeError, LoadError, ModuleBytes, Output, Preopen, Runtime,
    RuntimeConfig, ServiceInstance,
};

fn runtime(dir: &tempfile::TempDir) -> Runtime {
    let mut config = RuntimeConfig::new(dir.path());
    config.max_live_processes = 8;
    config.max_memory = 64 << 20;
    Runtime::new(&config).unwrap()
}

fn owner() -> nimbus_snapshot::Owner {
    nimbus_snapshot::Owner {
        app: "test".into(),
        instance: 0,
    }
}

fn module(wat: &str) -> ModuleBytes {
    ModuleBytes::new(wat::parse_str(wat).unwrap())
}

async fn run(runtime: &Runtime, wat: &str, limits: Limits) -> (ExitStatus, String) {
    run_with_dirs(runtime, wat, limits, vec![]).await
}

/// [`run`] with `dirs` preopened.
async fn run_with_dirs(
    runtime: &Runtime,
    wat: &str,
    limits: Limits,
    dirs: Vec<Preopen>,
) -> (ExitStatus, String) {
    let program = runtime.load_command(&module(wat)).unwrap();
    let stdout = wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(1 << 20);
    let (mut spec, _mailbox) = common::spec(limits, Output::Capture(stdout.clone()));
    spec.dirs = dirs;
    let slot = runtime.admit().await;
    let status = runtime.run(&program, spec, slot).await;
    (
        status,
        String::from_utf8_lossy(&stdout.contents()).into_owned(),
    )
}

const HELLO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\08\00\00\00\06\00\00\00")
  (data (i32.const 8) "hello\n")
  (func (export "_start") (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))"#;

#[tokio::test]
async fn runs_a_wasi_command() {
    let dir = tempfile::tempdir().unwrap();
    let (status, out) = run(&runtime(&dir), HELLO, Limits::default()).await;
    assert_eq!(status, ExitStatus::Exited(0));
    assert_eq!(out, "hello\n");
}

#[tokio::test]
async fn proc_exit_code_is_the_status() {
    let dir = tempfile::tempdir().unwrap();
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (func (export "_start") (call $exit (i32.const 42))))"#;
    let (status, _) = run(&runtime(&dir), wat, Limits::default()).await;
    assert_eq!(status, ExitStatus::Exited(42));
}

#[tokio::test]
async fn second_runtime_loads_from_disk_instead_of_compiling() {
    let dir = tempfile::tempdir().unwrap();
    let first = runtime(&dir);
    first.load_command(&module(HELLO)).unwrap();
    first.load_command(&module(HELLO)).unwrap();
    assert_eq!(first.cache_stats().compiled, 1);

    let second = runtime(&dir);
    second.load_command(&module(HELLO)).unwrap();
    assert_eq!(
        (
            second.cache_stats().compiled,
            second.cache_stats().from_disk
        ),
        (0, 1)
    );
}

#[tokio::test]
async fn corrupt_artifact_is_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    runtime(&dir).load_command(&module(HELLO)).unwrap();
    // Artifacts live at modules/<engine compatibility hash>/<sha256>.cwasm.
    let artifacts = std::fs::read_dir(dir.path().join("modules"))
        .unwrap()
        .flat_map(|engine_dir| std::fs::read_dir(engine_dir.unwrap().path()).unwrap())
        .map(|artifact| artifact.unwrap().path());
    for artifact in artifacts {
        std::fs::write(artifact, b"garbage").unwrap();
    }
    let fresh = runtime(&dir);
    let (status, out) = run(&fresh, HELLO, Limits::default()).await;
    assert_eq!((status, out.as_str()), (ExitStatus::Exited(0), "hello\n"));
    assert_eq!(fresh.cache_stats().compiled, 1);
}

/// The artifact of `module` in the commands' engine directory under `dir`.
fn artifact_of(dir: &tempfile::TempDir, module: &ModuleBytes) -> std::path::PathBuf {
    let name = format!("{}.cwasm", module.hash());
    std::fs::read_dir(dir.path().join("modules"))
        .unwrap()
        .map(|engine_dir| engine_dir.unwrap().path().join(&name))
        .find(|artifact| artifact.exists())
        .expect("the module has an artifact")
}

const BYE: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\08\00\00\00\04\00\00\00")
  (data (i32.const 8) "bye\n")
  (func (export "_start") (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))"#;

#[tokio::test]
async fn an_artifact_with_flipped_bytes_is_refused_recompiled_and_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    runtime(&dir).load_command(&module(HELLO)).unwrap();
    let artifact = artifact_of(&dir, &module(HELLO));
    let mut bytes = std::fs::read(&artifact).unwrap();
    let flipped = 4096.min(bytes.len() / 2);
    let middle = bytes.len() / 2 - flipped / 2;
    for byte in &mut bytes[middle..middle + flipped] {
        *byte ^= 0xFF;
    }
    std::fs::write(&artifact, &bytes).unwrap();

    let fresh = runtime(&dir);
    let (status, out) = run(&fresh, HELLO, Limits::default()).await;
    assert_eq!((status, out.as_str()), (ExitStatus::Exited(0), "hello\n"));
    let stats = fresh.cache_stats();
    assert_eq!((stats.rejected, stats.compiled, stats.from_disk), (1, 1, 0));
    // The artifact was written again: the next runtime loads it.
    let next = runtime(&dir);
    let (status, out) = run(&next, HELLO, Limits::default()).await;
    assert_eq!((status, out.as_str()), (ExitStatus::Exited(0), "hello\n"));
    let stats = next.cache_stats();
    assert_eq!((stats.rejected, stats.compiled, stats.from_disk), (0, 0, 1));
}

#[tokio::test]
async fn an_artifact_copied_over_another_programs_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = runtime(&dir);
    first.load_command(&module(HELLO)).unwrap();
    first.load_command(&module(BYE)).unwrap();
    // The whole file, digest and all, of one program over the other's.
    std::fs::copy(
        artifact_of(&dir, &module(BYE)),
        artifact_of(&dir, &module(HELLO)),
    )
    .unwrap();

    let fresh = runtime(&dir);
    let (status, out) = run(&fresh, HELLO, Limits::default()).await;
    assert_eq!((status, out.as_str()), (ExitStatus::Exited(0), "hello\n"));
    let (status, out) = run(&fresh, BYE, Limits::default()).await;
    assert_eq!((status, out.as_str()), (ExitStatus::Exited(0), "bye\n"));
    let stats = fresh.cache_stats();
    assert_eq!((stats.rejected, stats.compiled, stats.from_disk), (1, 1, 1));
}

#[tokio::test]
async fn the_program_cache_is_bounded_and_an_evicted_program_still_runs() {
    use nimbus_runtime::MAX_PROGRAMS;
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir);
    let hello = module(HELLO);
    let held = runtime.load_command(&hello).unwrap();
    // As many other programs as the cache holds: each a distinct module.
    for n in 0..MAX_PROGRAMS {
        let other = format!(
            r#"(module (memory (export "memory") 1) (global i32 (i32.const {n})) (func (export "_start")))"#
        );
        runtime.load_command(&module(&other)).unwrap();
    }
    assert!(
        runtime.loaded_command(&hello).is_none(),
        "the cache kept every program"
    );
    assert_eq!(runtime.cache_stats().compiled, MAX_PROGRAMS as u64 + 1);

    // A process holding the evicted program runs it as before.
    let stdout = wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(1 << 20);
    let (spec, _mailbox) = common::spec(Limits::default(), Output::Capture(stdout.clone()));
    let status = runtime.run(&held, spec, runtime.admit().await).await;
    assert_eq!(
        (status, &stdout.contents()[..]),
        (ExitStatus::Exited(0), &b"hello\n"[..])
    );
    // Loading it again reads its artifact, compiling nothing.
    runtime.load_command(&hello).unwrap();
    assert!(runtime.loaded_command(&hello).is_some());
    let stats = runtime.cache_stats();
    assert_eq!(
        (stats.compiled, stats.from_disk),
        (MAX_PROGRAMS as u64 + 1, 1)
    );
}

#[test]
fn load_errors_are_classified() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir);
    let load = |bytes: Vec<u8>| runtime.load_command(&ModuleBytes::new(bytes)).map(|_| ());
    type Expected = fn(&LoadError) -> bool;
    let cases: Vec<(Vec<u8>, Expected)> = vec![
        (b"hello".to_vec(), |e| matches!(e, LoadError::NotWasm)),
        (b"\0asm\x01\0\0\0\xff\xff".to_vec(), |e| {
            matches!(e, LoadError::Invalid(_))
        }),
        (
            wat::parse_str("(module (func (result i32)))").unwrap(),
            |e| matches!(e, LoadError::Invalid(_)),
        ),
        (wat::parse_str("(module (memory 1))").unwrap(), |e| {
            matches!(e, LoadError::NoStart)
        }),
        (
            wat::parse_str(r#"(module (import "env" "mystery" (func)) (func (export "_start")))"#)
                .unwrap(),
            |e| matches!(e, LoadError::UnknownImport(m) if m.contains("env::mystery")),
        ),
    ];
    for (bytes, expected) in cases {
        let err = load(bytes).unwrap_err();
        assert!(expected(&err), "unexpected {err:?}");
    }
}

#[tokio::test]
async fn trap_reports_backtrace_with_function_names() {
    let dir = tempfile::tempdir().unwrap();
    let wat = r#"(module (memory (export "memory") 1)
      (func $deep_down unreachable)
      (func (export "_start") (call $deep_down)))"#;
    let (status, _) = run(&runtime(&dir), wat, Limits::default()).await;
    let ExitStatus::Failed(Failure::Trap(message)) = status else {
        panic!("expected a trap, got {status:?}")
    };
    assert!(message.contains("unreachable"), "{message}");
    assert!(message.contains("deep_down"), "{message}");
}

#[tokio::test]
async fn memory_limit_stops_growth() {
    let dir = tempfile::tempdir().unwrap();
    // Grows one page at a time and traps when growth fails, like an allocator.
    let wat = r#"(module (memory (export "memory") 1)
      (func (export "_start")
        (loop $more
          (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
          (br $more))))"#;
    let limits = Limits {
        memory: 4 << 20,
        timeout: None,
    };
    let (status, _) = run(&runtime(&dir), wat, limits).await;
    assert_eq!(
        status,
        ExitStatus::Failed(Failure::MemoryLimit { limit: 4 << 20 })
    );
}

#[tokio::test]
async fn deadline_stops_an_infinite_loop_and_a_blocked_receive() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir);
    let timeout = Duration::from_millis(200);
    let limits = Limits {
        memory: 1 << 20,
        timeout: Some(timeout),
    };
    let spin =
        r#"(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))"#;
    let blocked = r#"(module
      (import "nimbus" "recv" (func $recv (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start") (drop (call $recv (i32.const 0) (i32.const 16) (i32.const 16) (i32.const 24)))))"#;
    for wat in [spin, blocked] {
        let (status, _) = run(&runtime, wat, limits.clone()).await;
        assert_eq!(status, ExitStatus::Failed(Failure::Deadline(timeout)));
    }
}

#[tokio::test]
async fn looping_process_does_not_starve_others() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Arc::new(runtime(&dir));
    let spin =
        r#"(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))"#;
    let looping = {
        let runtime = runtime.clone();
        tokio::spawn(async move {
            let limits = Limits {
                memory: 1 << 20,
                timeout: Some(Duration::from_secs(30)),
            };
            run(&runtime, spin, limits).await
        })
    };
    // On a current-thread runtime the hello can only finish if the loop yields.
    let (status, out) = run(&runtime, HELLO, Limits::default()).await;
    assert_eq!((status, out.as_str()), (ExitStatus::Exited(0), "hello\n"));
    looping.abort();
}

/// Opens `note.txt` in the directory preopened as fd 3, reads it and writes what
/// it read to stdout; a call that fails exits with 100 + its errno.
const CAT_NOTE: &str = r#"(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "note.txt")
  (func $check (param i32)
    (if (local.get 0) (then (call $exit (i32.add (i32.const 100) (local.get 0))))))
  (func (export "_start")
    ;; rights: fd_read; the new fd at 16
    (call $check (call $open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 8)
      (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 16)))
    ;; one iovec at 32: 64 bytes at 256; bytes read at 40
    (i32.store (i32.const 32) (i32.const 256))
    (i32.store (i32.const 36) (i32.const 64))
    (call $check (call $read (i32.load (i32.const 16)) (i32.const 32) (i32.const 1) (i32.const 40)))
    (i32.store (i32.const 36) (i32.load (i32.const 40)))
    (call $check (call $write (i32.const 1) (i32.const 32) (i32.const 1) (i32.const 44)))))"#;

#[test]
fn file_calls_run_on_the_guests_own_thread() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("note.txt"), "a note\n").unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(1)
        .build()
        .unwrap();
    let (status, out) = tokio.block_on(async {
        // The runtime's one blocking thread is held until the guest has run: a
        // file call handed to the blocking pool would wait for it.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let holder = tokio::task::spawn_blocking(move || held.recv());
        let dirs = vec![Preopen {
            host: files.path().to_path_buf(),
            guest: "/files".into(),
        }];
        let ran = tokio::time::timeout(
            Duration::from_secs(30),
            run_with_dirs(&runtime(&dir), CAT_NOTE, Limits::default(), dirs),
        )
        .await;
        release.send(()).unwrap();
        holder.await.unwrap().unwrap();
        ran.expect("the guest's file calls waited for a blocking thread")
    });
    assert_eq!((status, out.as_str()), (ExitStatus::Exited(0), "a note\n"));
}

#[test]
fn a_sleeping_guest_waits_on_a_timer_so_its_deadline_stops_it() {
    // `poll_oneoff` on one relative clock: an hour's sleep.
    let sleeper = r#"(module
      (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start")
        ;; the subscription at 0: userdata 0, tag 0 (clock), monotonic, timeout
        (i32.store8 (i32.const 8) (i32.const 0))
        (i32.store (i32.const 16) (i32.const 1))
        (i64.store (i32.const 24) (i64.const 3600000000000))
        (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))"#;
    let timeout = Duration::from_millis(100);
    let (done, outcome) = std::sync::mpsc::channel();
    // On a thread of its own, so that a sleep blocking its thread fails the test
    // (bounded below) rather than hanging it.
    std::thread::spawn(move || {
        let dir = tempfile::tempdir().unwrap();
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let limits = Limits {
            memory: 1 << 20,
            timeout: Some(timeout),
        };
        let ran = tokio.block_on(run(&runtime(&dir), sleeper, limits));
        let _ = done.send(ran.0);
    });
    let status = outcome
        .recv_timeout(Duration::from_secs(60))
        .expect("the sleep held its thread past its deadline");
    assert_eq!(status, ExitStatus::Failed(Failure::Deadline(timeout)));
}

#[tokio::test]
async fn bad_guest_pointers_are_errors_not_traps() {
    let dir = tempfile::tempdir().unwrap();
    // send from a pointer far outside memory: must return ERR_INVALID (-1).
    let wat = r#"(module
      (import "nimbus" "send" (func $send (param i64 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (func (export "_start")
        (call $exit (i32.sub (i32.const 0) (call $send (i64.const 5) (i32.const 65530) (i32.const 100))))))"#;
    let (status, _) = run(&runtime(&dir), wat, Limits::default()).await;
    assert_eq!(status, ExitStatus::Exited(1));
}

/// A reactor: `bump` adds the call count (a global) to a counter in memory and
/// writes the counter; `echo` copies stdin to stdout; the others misbehave.
const COUNTER: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $calls (mut i32) (i32.const 0))
  (func (export "_initialize") (i32.store (i32.const 200) (i32.const 1000)))
  (func (export "bump")
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (i32.store (i32.const 200) (i32.add (i32.load (i32.const 200)) (global.get $calls)))
    (i32.store (i32.const 0) (i32.const 200))
    (i32.store (i32.const 4) (i32.const 4))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "echo") (result i32)
    (i32.store (i32.const 16) (i32.const 300))
    (i32.store (i32.const 20) (i32.const 64))
    (drop (call $read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
    (i32.store (i32.const 20) (i32.load (i32.const 24)))
    (drop (call $write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))
    (i32.const 0))
  (func (export "fail") (result i32) (i32.const 3))
  (func (export "crash") unreachable)
  (func (export "takes_an_argument") (param i32))
  (func (export "grow") (drop (memory.grow (i32.const 3))))
  (func (export "grow_or_trap")
    (if (i32.eq (memory.grow (i32.const 100)) (i32.const -1)) (then unreachable)))
  (func (export "spin") (loop $l (br $l)))
  (func (export "bump_then_crash")
    (global.set $calls (i32.add (global.get $calls) (i32.const 100)))
    (i32.store (i32.const 200) (i32.const -1))
    (i32.store (i32.const 40000) (i32.const 7))
    unreachable)
  (func (export "grow_then_crash")
    (i32.store (i32.mul (memory.grow (i32.const 2)) (i32.const 65536)) (i32.const 9))
    unreachable)
  (func (export "scribble_then_spin")
    (i32.store (i32.const 200) (i32.const -1))
    (loop $l (br $l))))"#;

async fn service(runtime: &Runtime, from: Option<&nimbus_snapshot::Snapshot>) -> ServiceInstance {
    let program = runtime.load_service(&module(COUNTER)).unwrap();
    assert!(!program.is_command());
    let limits = Limits {
        memory: 2 << 20,
        timeout: None,
    };
    let (spec, _mailbox) = common::spec(limits, Output::Null);
    let slot = runtime.admit().await;
    match runtime.start_service(&program, spec, slot, from).await {
        Ok(service) => service,
        Err(status) => panic!("service did not start: {status:?}"),
    }
}

fn call(handler: &str, body: &[u8]) -> Invocation {
    Invocation {
        handler: handler.into(),
        body: body.to_vec(),
        max_response: 1 << 20,
        timeout: Some(Duration::from_secs(5)),
    }
}

async fn bump(service: &mut ServiceInstance) -> i32 {
    let out = service.invoke(call("bump", b"")).await.unwrap();
    i32::from_le_bytes(out.try_into().unwrap())
}

#[tokio::test]
async fn service_memory_and_globals_persist_between_invocations() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir);
    let mut counter = service(&runtime, None).await;
    assert_eq!(bump(&mut counter).await, 1001);
    assert_eq!(bump(&mut counter).await, 1003);
    assert_eq!(bump(&mut counter).await, 1006);
    let echoed = counter.invoke(call("echo", b"request body")).await.unwrap();
    assert_eq!(echoed, b"request body");
}

#[tokio::test]
async fn handler_errors_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir);
    let mut counter = service(&runtime, None).await;
    type Expected = fn(&InvokeError) -> bool;
    let cases: Vec<(Invocation, Expected)> = vec![
        (call("missing", b""), |e| {
            matches!(e, InvokeError::NoSuchHandler(_))
        }),
        (call("takes_an_argument", b""), |e| {
            matches!(e, InvokeError::NoSuchHandler(_))
        }),
        (call("fail", b""), |e| *e == InvokeError::Status(3)),
        (call("crash", b""), |e| {
            matches!(e, InvokeError::Failed(ExitStatus::Failed(Failure::Trap(_))))
        }),
        (call("grow_or_trap", b""), |e| {
            matches!(
                e,
                InvokeError::Failed(ExitStatus::Failed(Failure::MemoryLimit { .. }))
            )
        }),
        (
            Invocation {
                timeout: Some(Duration::from_millis(100)),
                ..call("spin", b"")
            },
            |e| {
                matches!(
                    e,
                    InvokeError::Failed(ExitStatus::Failed(Failure::Deadline(_)))
                )
            },
        ),
    ];
    for (invocation, expected) in cases {
        let handler = invocation.handler.clone();
        let err = counter.invoke(invocation).await.unwrap_err();
        assert!(expected(&err), "{handler}: {err:?}");
    }
}

#[tokio::test]
async fn snapshot_restores_memory_globals_and_size_in_a_new_instance() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir);
    let path = dir.path().join("counter.snap");
    {
        let mut counter = service(&runtime, None).await;
        bump(&mut counter).await;
        bump(&mut counter).await;
        counter.invoke(call("grow", b"")).await.unwrap();
        counter.snapshot(owner()).write(&path).unwrap();
    }
    let snapshot = nimbus_snapshot::read(&path).unwrap();
    assert_eq!(snapshot.memory_len, 4 * 65536);
    let mut restored = service(&runtime, Some(&snapshot)).await;
    // The global (3 calls) and the counter (1003) both came back.
    assert_eq!(bump(&mut restored).await, 1006);
    let again = restored.snapshot(owner());
    assert_eq!(again.memory.len(), 4 * 65536);
}

#[tokio::test]
async fn a_failed_invocation_rolls_back_to_the_last_good_state() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir);
    let path = dir.path().join("counter.snap");
    let mut counter = service(&runtime, None).await;
    assert_eq!(bump(&mut counter).await, 1001);
    assert_eq!(bump(&mut counter).await, 1003);
    let spin = Invocation {
        timeout: Some(Duration::from_millis(50)),
        ..call("scribble_then_spin", b"")
    };
    for failing in [
        call("bump_then_crash", b""),
        spin,
        call("grow_then_crash", b""),
    ] {
        let handler = failing.handler.clone();
        let outcome = counter.invoke(failing).await;
        assert!(
            matches!(outcome, Err(InvokeError::Failed(_))),
            "{handler}: {outcome:?}"
        );
    }
    // No failure left a trace: the global counts 3 calls, the counter is 1003 + 3.
    assert_eq!(bump(&mut counter).await, 1006);
    let state = counter.snapshot(owner());
    assert_eq!(state.memory[40000], 0);
    // Memory a failed invocation grew stays (memories cannot shrink), zeroed.
    assert_eq!(state.memory.len(), 3 * 65536);
    assert!(state.memory[65536..].iter().all(|b| *b == 0));
    state.write(&path).unwrap();
    // Likewise in an instance whose pages are mapped from a snapshot file.
    let snapshot = nimbus_snapshot::read(&path).unwrap();
    let mut restored = service(&runtime, Some(&snapshot)).await;
    assert!(restored.invoke(call("bump_then_crash", b"")).await.is_err());
    assert_eq!(bump(&mut restored).await, 1010);
    assert!(restored.invoke(call("bump_then_crash", b"")).await.is_err());
    assert_eq!(bump(&mut restored).await, 1015);
}

#[tokio::test]
async fn a_snapshot_of_another_module_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir);
    let path = dir.path().join("other.snap");
    nimbus_snapshot::SnapshotRef {
        module: [1; 32],
        owner: owner(),
        globals: vec![],
        memory: &[0; 65536],
        suspended: None,
    }
    .write(&path)
    .unwrap();
    let snapshot = nimbus_snapshot::read(&path).unwrap();
    let program = runtime.load_service(&module(COUNTER)).unwrap();
    let (spec, _mailbox) = common::spec(Limits::default(), Output::Null);
    let slot = runtime.admit().await;
    let result = runtime
        .start_service(&program, spec, slot, Some(&snapshot))
        .await;
    assert!(
        matches!(result, Err(ExitStatus::Failed(Failure::Load(m))) if m.contains("another module"))
    );
}

/// See the fixture's own comment.
const FILLER: &str = include_str!("filler.wat");

/// Commits `service`, saying how, and whether another task of this current-thread
/// runtime ran meanwhile: it can only if the commit gave the thread up.
async fn commit(service: ServiceInstance) -> (ServiceInstance, Committed, bool) {
    let ran = Arc::new(AtomicBool::new(false));
    let other = tokio::spawn({
        let ran = ran.clone();
        async move { ran.store(true, Ordering::SeqCst) }
    });
    let (service, committed) = service.commit().await;
    let ran_meanwhile = ran.load(Ordering::SeqCst);
    other.await.unwrap();
    (service, committed.unwrap(), ran_meanwhile)
}

#[tokio::test]
async fn a_large_commit_copies_off_the_async_thread_and_a_small_one_inline() {
    const FILLED: usize = 64 << 20;
    let dir = tempfile::tempdir().unwrap();
    let mut config = RuntimeConfig::new(dir.path());
    config.max_live_processes = 2;
    config.max_memory = 128 << 20;
    let runtime = Runtime::new(&config).unwrap();
    let program = runtime.load_service(&module(FILLER)).unwrap();
    let limits = Limits {
        memory: 128 << 20,
        timeout: None,
    };
    let (spec, _mailbox) = common::spec(limits, Output::Null);
    let slot = runtime.admit().await;
    let Ok(mut filler) = runtime.start_service(&program, spec, slot, None).await else {
        panic!("the service did not start");
    };
    for _ in 0..2 {
        filler.invoke(call("fill", b"")).await.unwrap();
        let (back, committed, ran_meanwhile) = commit(filler).await;
        filler = back;
        assert_eq!(committed, Committed::OffThread { bytes: FILLED });
        assert!(ran_meanwhile, "the commit held the async thread");
        // What the blocking thread copied is the state: it persists, and a failed
        // invocation rolls back to it.
        filler.invoke(call("check", b"")).await.unwrap();
        let crashed = filler.invoke(call("scribble_then_crash", b"")).await;
        assert!(matches!(crashed, Err(InvokeError::Failed(_))));
        filler.invoke(call("check", b"")).await.unwrap();
    }
    filler.invoke(call("poke", b"")).await.unwrap();
    let (mut filler, committed, ran_meanwhile) = commit(filler).await;
    assert_eq!(committed, Committed::Inline { bytes: 4096 });
    assert!(!ran_meanwhile, "a small commit gave the thread up");
    filler.invoke(call("check", b"")).await.unwrap();
}
