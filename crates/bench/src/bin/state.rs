//! Round trips of the state tiers beside the bare Redis client, measured in the same run.
//!
//! Measured: sequential `set` and `get` of a 64-byte value, one at a time, on one
//! connection to a `redis-server` this benchmark starts on loopback (no persistence):
//!
//! - baseline: the `redis` crate's multiplexed async connection, `SET` and `GET` sent
//!   as plain commands to the same Redis key nimbus uses, with the tier's response
//!   timeout (60 s: the client's default of 500 ms makes each round trip about 1 µs
//!   slower here, which would flatter nimbus);
//! - nimbus-state's Redis global tier, through an app's handle (`AppState`), so the
//!   figure includes key qualification, the trait object's boxed future and the
//!   reconnecting connection manager;
//! - for reference, the embedded global tier and the local tier (memory speed).
//!
//! The baseline and the Redis tier alternate operation by operation, so both see the
//! same machine load. The client runs on a single-threaded tokio runtime: the figures
//! are the server's, the loopback's and the client library's, not thread hand-offs.
//!
//! `cargo run --release -p nimbus-bench --bin state [ITERATIONS]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_bench::{Samples, print_samples};
use nimbus_state::testing::RedisServer;
use nimbus_state::{AppName, AppState, Embedded};

const WARMUP: usize = 1_000;
const VALUE_LEN: usize = 64;

/// The timings of the four ways of doing one operation.
#[derive(Default)]
struct Row {
    baseline: Samples,
    redis: Samples,
    embedded: Samples,
    local: Samples,
}

/// Runs `$op` (a block, awaiting inside if it needs) and records its time in
/// `$samples` unless round `$i` is a warm-up one.
macro_rules! time_into {
    ($samples:expr, $i:expr, $op:expr) => {{
        let start = Instant::now();
        $op;
        let elapsed = start.elapsed();
        if $i >= WARMUP {
            $samples.push(elapsed);
        }
    }};
}

fn main() {
    let iterations = nimbus_bench::arg_or(20_000);
    let server = RedisServer::start().expect("redis-server starts (scripts/setup.sh installs it)");
    let (version, set, get) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio")
        .block_on(measure(&server.url(), iterations));

    println!(
        "state round trips: sequential set/get of a {VALUE_LEN}-byte value, one connection, \
         loopback redis-server {version}; each measured in this run"
    );
    for (operation, row) in [("set", &set), ("get", &get)] {
        println!("  {operation}:");
        print_samples("redis crate, bare (baseline)", &row.baseline);
        print_samples("nimbus-state Redis tier", &row.redis);
        let ratio =
            |p| row.redis.percentile(p).as_secs_f64() / row.baseline.percentile(p).as_secs_f64();
        println!(
            "  ratio (nimbus / baseline)    p50 {:>9.3}x    p99 {:>9.3}x",
            ratio(50.0),
            ratio(99.0)
        );
        print_samples("embedded global tier", &row.embedded);
        print_samples("local tier", &row.local);
    }
}

async fn measure(url: &str, iterations: usize) -> (String, Row, Row) {
    let value = vec![0xa5u8; VALUE_LEN];
    let name = b"bench-key";
    let app = AppName::new("bench").expect("valid app name");

    let mut bare = redis::Client::open(url)
        .expect("valid URL")
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_secs(60))),
        )
        .await
        .expect("bare client connects");
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut bare)
        .await
        .expect("INFO");
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_owned();

    let remote = AppState::new(
        app.clone(),
        nimbus_state::open(Some(url), nimbus_state::DEFAULT_GLOBAL_CAPACITY, None)
            .await
            .expect("Redis tier connects"),
        1 << 20,
    );
    let embedded = AppState::new(app.clone(), Arc::new(Embedded::new()), 1 << 20);
    // The Redis key nimbus-state stores `bench`'s `bench-key` under, so the server does
    // the same work for both clients.
    let raw_key = [&b"nimbus:v:"[..], remote.key(name).expect("key").as_bytes()].concat();

    let (mut set, mut get) = (Row::default(), Row::default());
    for i in 0..WARMUP + iterations {
        time_into!(set.baseline, i, {
            let () = redis::cmd("SET")
                .arg(&raw_key)
                .arg(&value)
                .query_async(&mut bare)
                .await
                .expect("SET");
        });
        time_into!(set.redis, i, {
            remote.set(name, value.clone()).await.expect("set");
        });
    }
    for i in 0..WARMUP + iterations {
        time_into!(get.baseline, i, {
            let got: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&raw_key)
                .query_async(&mut bare)
                .await
                .expect("GET");
            assert_eq!(got.as_deref(), Some(&value[..]));
        });
        time_into!(get.redis, i, {
            let got = remote.get(name).await.expect("get");
            assert_eq!(got.as_deref(), Some(&value[..]));
        });
    }
    for i in 0..WARMUP + iterations {
        time_into!(set.embedded, i, {
            embedded.set(name, value.clone()).await.expect("set");
        });
        time_into!(get.embedded, i, {
            std::hint::black_box(embedded.get(name).await.expect("get"));
        });
    }
    let local = embedded.local();
    for i in 0..WARMUP + iterations {
        time_into!(set.local, i, {
            local.set(name, value.clone()).expect("set");
        });
        time_into!(get.local, i, {
            std::hint::black_box(local.get(name).expect("get"));
        });
    }
    (version, set, get)
}
