//! Warm invocation cost inside one live service instance: the first row of the
//! "cost of each layer" table (the gateway and the data plane add theirs on top).
//!
//! Measured: `ServiceInstance::invoke` of a handler `ping` that writes 4 bytes to
//! stdout, with an empty body, straight on a `Runtime` (no cluster, no network). That
//! includes finding the handler, building the per-invocation WASI context (stdin from
//! the body, stdout captured), the async call and collecting the response. Beside it,
//! the bare export call: the same module's `noop` called in-process through plain
//! wasmtime (default engine, `TypedFunc<(), i32>::call`).
//!
//! Also printed, to split the layer: `invoke` of `noop` (no WASI call) and of `ping`
//! with a timeout (a tokio timer around the call).
//!
//! `cargo run --release -p nimbus-bench --bin invoke [ITERATIONS]`

use std::hint::black_box;
use std::time::{Duration, Instant};

use nimbus_bench::{Samples, print_samples, report, start_alone};
use nimbus_runtime::{Invocation, ModuleBytes, Runtime, RuntimeConfig, ServiceInstance};

const WARMUP: usize = 1_000;

/// A reactor: `ping` writes "pong" to stdout, `noop` returns 0.
const PING: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\10\00\00\00\04\00\00\00")
  (data (i32.const 16) "pong")
  (func (export "ping") (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "noop") (result i32) (i32.const 0)))"#;

fn main() {
    nimbus_bench::on_worker(measure());
}

fn invocation(handler: &str, timeout: Option<Duration>) -> Invocation {
    Invocation {
        handler: handler.into(),
        body: Vec::new(),
        max_response: 64 << 10,
        timeout,
    }
}

async fn invoke_latency(
    service: &mut ServiceInstance,
    iterations: usize,
    handler: &str,
    timeout: Option<Duration>,
    expected: &[u8],
) -> Samples {
    let mut samples = Samples::default();
    for i in 0..iterations + WARMUP {
        let start = Instant::now();
        let response = service.invoke(invocation(handler, timeout)).await;
        if i >= WARMUP {
            samples.push(start.elapsed());
        }
        assert_eq!(response.as_deref(), Ok(expected), "{handler} failed");
    }
    samples
}

/// `noop` called through plain wasmtime: no pool, no epochs, no async, no WASI.
fn bare_export_call(bytes: &[u8], iterations: usize) -> Samples {
    let engine = wasmtime::Engine::default();
    let module = wasmtime::Module::new(&engine, bytes).expect("module compiles");
    let mut linker = wasmtime::Linker::new(&engine);
    linker
        .func_wrap(
            "wasi_snapshot_preview1",
            "fd_write",
            |_: i32, _: i32, _: i32, _: i32| 0i32,
        )
        .expect("stub import");
    let mut store = wasmtime::Store::new(&engine, ());
    let instance = linker
        .instantiate(&mut store, &module)
        .expect("module instantiates");
    let noop = instance
        .get_typed_func::<(), i32>(&mut store, "noop")
        .expect("noop export");
    for _ in 0..WARMUP {
        assert_eq!(noop.call(&mut store, ()).unwrap(), 0);
    }
    Samples::measure(iterations, || {
        black_box(noop.call(&mut store, ()).expect("noop returns"));
    })
}

async fn measure() {
    let iterations = nimbus_bench::arg_or(20_000);
    let data = tempfile::tempdir().expect("temporary directory");
    let runtime = Runtime::new(&RuntimeConfig::new(data.path())).expect("runtime starts");
    let bytes = wat::parse_str(PING).expect("valid wat");
    let program = runtime
        .load(&ModuleBytes::new(bytes.clone()))
        .expect("module loads");
    let mut service = start_alone(&runtime, &program, None).await;

    let ping = invoke_latency(&mut service, iterations, "ping", None, b"pong").await;
    let noop = invoke_latency(&mut service, iterations, "noop", None, b"").await;
    let timed = invoke_latency(
        &mut service,
        iterations,
        "ping",
        Some(Duration::from_secs(10)),
        b"pong",
    )
    .await;
    let bare = bare_export_call(&bytes, iterations);

    report(
        "invoke layer: ServiceInstance::invoke(\"ping\") on a warm instance, empty body, \
         4-byte response (per-invocation WASI context + stdout capture + async call)",
        &ping,
        "bare export call (wasmtime)",
        &bare,
    );
    let overhead = |p| ping.percentile(p).saturating_sub(bare.percentile(p));
    println!(
        "  the layer adds p50 {:.2} µs, p99 {:.2} µs over the bare call \
         (a ratio below 1 means the layer is slower)",
        overhead(50.0).as_secs_f64() * 1e6,
        overhead(99.0).as_secs_f64() * 1e6
    );
    println!("  split of the layer:");
    print_samples("invoke(\"noop\"), no WASI call", &noop);
    print_samples("invoke(\"ping\"), 10 s timeout", &timed);
    // Every sample includes one clock read, which bounds the bare call from below.
    print_samples("clock read alone", &Samples::measure(iterations, || {}));
}
