//! Warm invocation cost inside one live service instance: the first row of the
//! "cost of each layer" table (the gateway and the data plane add theirs on top).
//!
//! Measured: `ServiceInstance::invoke` of a handler `ping` that writes 4 bytes to
//! stdout, with an empty body, straight on a `Runtime` (no cluster, no network). That
//! includes finding the handler, building the per-invocation WASI context (stdin from
//! the body, stdout captured), the async call, collecting the response, and committing
//! the previous invocation's writes (what a roll back after a trap returns to; in the
//! server that commit runs after the response is sent). Beside it,
//! the bare export call: the same module's `noop` called in-process through plain
//! wasmtime (default engine, `TypedFunc<(), i32>::call`).
//!
//! Also printed, to split the layer: `invoke` of `noop` (no WASI call) and of `ping`
//! with a timeout (a tokio timer around the call).
//!
//! `cargo run --release -p nimbus-bench --bin invoke [ITERATIONS]`

use std::time::{Duration, Instant};

use nimbus_bench::{PING, Samples, bare_export_call, print_samples, report, start_alone};
use nimbus_runtime::{Invocation, ModuleBytes, Runtime, RuntimeConfig, ServiceInstance};

const WARMUP: usize = 1_000;

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

async fn measure() {
    let iterations = nimbus_bench::arg_or(20_000);
    let data = tempfile::tempdir().expect("temporary directory");
    let runtime = Runtime::new(&RuntimeConfig::new(data.path())).expect("runtime starts");
    let bytes = wat::parse_str(PING).expect("valid wat");
    let program = runtime
        .load_service(&ModuleBytes::new(bytes.clone()))
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
