//! The runtime on hand-written modules: loading, caching, limits and outcomes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_core::{ExitStatus, Failure, HostId, Limits, Pid};
use nimbus_runtime::{
    AbiError, BoxFuture, Input, Kernel, LoadError, ModuleBytes, Output, ProcessSpec, Runtime,
    RuntimeConfig, mailbox,
};

/// A kernel for a process alone in the world: every request fails.
struct Alone;

impl Kernel for Alone {
    fn spawn(&self, _: Pid, _: String, _: Vec<String>) -> BoxFuture<'_, Result<Pid, AbiError>> {
        Box::pin(async { Err(AbiError::Quota) })
    }
    fn wait(&self, _: Pid, _: Pid) -> BoxFuture<'_, Result<ExitStatus, AbiError>> {
        Box::pin(async { Err(AbiError::NotChild) })
    }
    fn send(&self, _: Pid, _: Pid, _: Vec<u8>) -> BoxFuture<'_, Result<(), AbiError>> {
        Box::pin(async { Err(AbiError::NoSuchProcess) })
    }
}

fn runtime(dir: &tempfile::TempDir) -> Runtime {
    let mut config = RuntimeConfig::new(dir.path());
    config.max_live_processes = 8;
    config.max_memory = 64 << 20;
    Runtime::new(&config).unwrap()
}

fn module(wat: &str) -> ModuleBytes {
    ModuleBytes::new(wat::parse_str(wat).unwrap())
}

async fn run(runtime: &Runtime, wat: &str, limits: Limits) -> (ExitStatus, String) {
    let program = runtime.load(&module(wat)).unwrap();
    let stdout = wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(1 << 20);
    let (_sender, mailbox) = mailbox();
    let spec = ProcessSpec {
        pid: Pid::new(HostId(1), 1),
        args: vec!["test".into()],
        env: vec![],
        dirs: vec![],
        stdin: Input::Null,
        stdout: Output::Capture(stdout.clone()),
        stderr: Output::Null,
        deadline: limits.timeout.map(|t| Instant::now() + t),
        limits,
        mailbox,
        kernel: Arc::new(Alone),
    };
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
    first.load(&module(HELLO)).unwrap();
    first.load(&module(HELLO)).unwrap();
    assert_eq!(first.cache_stats().compiled, 1);

    let second = runtime(&dir);
    second.load(&module(HELLO)).unwrap();
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
    runtime(&dir).load(&module(HELLO)).unwrap();
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

#[test]
fn load_errors_are_classified() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(&dir);
    let load = |bytes: Vec<u8>| runtime.load(&ModuleBytes::new(bytes)).map(|_| ());
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
