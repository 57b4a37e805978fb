//! Placement round trips to a real planner (`nimbus planner`, its own OS process,
//! mesh calls over TLS on loopback) beside a bare TCP round trip of the same
//! machine, and how many placements per second four concurrent clients get.
//!
//! Measured:
//! - nimbus: `Planner::place` (a mesh call with its deadline) on one client, one
//!   call at a time, against a planner with three hosts joined (each heartbeating
//!   every 100 ms, as workers do);
//! - baseline: a 64-byte request and a 64-byte answer over a plain TCP connection
//!   on loopback to an echo thread, one at a time: what the loopback and two thread
//!   wake-ups cost with no protocol at all;
//! - throughput: four clients, each with its own connection, placing for two
//!   seconds on a multi-threaded runtime.
//!
//! `cargo build --release && cargo run --release -p nimbus-bench --bin placement [ITERATIONS]`

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nimbus_bench::Samples;
use nimbus_bench::daemon::Daemon;
use nimbus_control::{Planner, PlannerLink};
use nimbus_planner::{HostInfo, HostReport};

const WARMUP: usize = 1_000;
const CLIENTS: usize = 4;
const THROUGHPUT_FOR: Duration = Duration::from_secs(2);

fn main() {
    let iterations = nimbus_bench::arg_or(20_000);
    let (_planner, announced) = Daemon::start(
        &[
            "planner",
            "--listen",
            "127.0.0.1:0",
            "--heartbeat",
            "100ms",
            "--timeout",
            "10s",
        ],
        &["nimbus: planner listening on "],
    );
    let addr = announced[0].clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    let links = runtime.block_on(join_hosts(&addr));
    for link in links {
        runtime.spawn(async move { link.keep_reporting(HostReport::default).await });
    }

    let nimbus = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio")
        .block_on(round_trips(&addr, iterations));
    let baseline = tcp_round_trips(iterations);
    nimbus_bench::report(
        "placement round trip to the planner (mesh over TLS, loopback)",
        &nimbus,
        "bare TCP 64 B round trip",
        &baseline,
    );

    let rate = runtime.block_on(throughput(&addr));
    println!("placements per second, {CLIENTS} concurrent clients: {rate:.0} (target ≥ 20,000)");
}

async fn join_hosts(addr: &str) -> Vec<PlannerLink> {
    let mut links = Vec::new();
    for n in 0..3 {
        let info = HostInfo {
            cpus: 2,
            memory: 1 << 40,
            capacity: 1 << 40,
            address: format!("127.0.0.1:{}", 10_000 + n),
        };
        let link = PlannerLink::join(
            addr,
            &nimbus_bench::cluster_tls(),
            info,
            Duration::from_secs(10),
        )
        .await
        .expect("a host joins");
        links.push(link);
    }
    links
}

async fn round_trips(addr: &str, iterations: usize) -> Samples {
    let planner = Planner::new(addr, &nimbus_bench::cluster_tls()).expect("an address");
    let mut samples = Samples::default();
    for i in 0..WARMUP + iterations {
        let start = Instant::now();
        planner.place(None, None).await.expect("placed");
        if i >= WARMUP {
            samples.push(start.elapsed());
        }
    }
    samples
}

fn tcp_round_trips(iterations: usize) -> Samples {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream.set_nodelay(true).expect("nodelay");
        let mut buf = [0; 64];
        while stream.read_exact(&mut buf).is_ok() {
            if stream.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut buf = [7; 64];
    let mut samples = Samples::default();
    for i in 0..WARMUP + iterations {
        let start = Instant::now();
        stream.write_all(&buf).expect("write");
        stream.read_exact(&mut buf).expect("read");
        if i >= WARMUP {
            samples.push(start.elapsed());
        }
    }
    samples
}

async fn throughput(addr: &str) -> f64 {
    let placed = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + THROUGHPUT_FOR;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let planner = Planner::new(addr, &nimbus_bench::cluster_tls()).expect("an address");
            let placed = placed.clone();
            tokio::spawn(async move {
                while Instant::now() < until {
                    planner.place(None, None).await.expect("placed");
                    placed.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let start = Instant::now();
    for client in clients {
        client.await.expect("a client");
    }
    placed.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}
