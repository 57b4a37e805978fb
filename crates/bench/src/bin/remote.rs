//! Warm invocation through the two network paths of a separate `nimbus up` process
//! on loopback — the binary data plane and the HTTP gateway (keep-alive) — and the
//! invocation throughput of the data plane with concurrent connections, each beside
//! the layers below it measured in the same run: the in-process `ServiceInstance`
//! invocation and the bare export call; the data plane twice, with the client
//! polling for its response (`Client::set_spin`, 50 µs) and parking; and the floor
//! under them all, a raw TCP
//! echo of 64 bytes to a separate process running a tokio echo server. Also the
//! data plane to a `nimbus up --workers 1`, whose app runs on the worker process
//! (one more hop, over the mesh).
//!
//! `cargo build --release && cargo run --release -p nimbus-bench --bin remote [ITERATIONS]`

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nimbus_bench::daemon::Daemon;
use nimbus_bench::{PING, Samples, bare_export_call, print_samples, start_alone, wat};
use nimbus_dataplane::Client;
use nimbus_runtime::{Invocation, ModuleBytes, Runtime, RuntimeConfig};

const WARMUP: usize = 1_000;
const CONNECTIONS: usize = 16;
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(3);

/// A `nimbus up` child process, stopped on drop.
struct Node {
    _daemon: Daemon,
    http: String,
    data_plane: String,
    /// The admin token `nimbus up` wrote to its client config.
    token: String,
}

impl Node {
    /// `nimbus up` with `flags`, serving the `ping` app of `module`.
    fn start(flags: &[&str], module: &ModuleBytes) -> Node {
        let mut args = vec![
            "up",
            "--listen",
            "127.0.0.1:0",
            "--data-listen",
            "127.0.0.1:0",
        ];
        args.extend(flags);
        let (daemon, mut addresses) = Daemon::start(
            &args,
            &[
                "nimbus: gateway listening on ",
                "nimbus: data plane listening on ",
            ],
        );
        let data_plane = addresses.pop().expect("two addresses");
        let http = addresses.pop().expect("two addresses");
        let token = daemon.token();
        ureq::put(format!("{http}/v1/apps/ping?max_instances=4"))
            .header("authorization", format!("Bearer {token}"))
            .send(module.bytes())
            .expect("deploy");
        Node {
            _daemon: daemon,
            http,
            data_plane,
            token,
        }
    }
}

/// `remote echo-server`: a tokio TCP echo server, the network floor. Prints its port.
fn echo_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("{}", listener.local_addr().expect("address"));
        loop {
            let (mut stream, _) = listener.accept().await.expect("accept");
            stream.set_nodelay(true).expect("nodelay");
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while stream.read_exact(&mut buf).await.is_ok() {
                    if stream.write_all(&buf).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Round trips of 64 bytes to a separate echo server process.
fn tcp_echo(iterations: usize) -> Samples {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = Command::new(std::env::current_exe().expect("own path"))
        .arg("echo-server")
        .stdout(Stdio::piped())
        .spawn()
        .expect("echo server starts");
    let mut address = String::new();
    BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut address)
        .expect("echo server address");
    let samples = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio")
        .block_on(async {
            let mut stream = tokio::net::TcpStream::connect(address.trim())
                .await
                .expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let mut samples = Samples::default();
            let mut buf = [7u8; 64];
            for i in 0..iterations + WARMUP {
                let start = Instant::now();
                stream.write_all(&buf).await.expect("write");
                stream.read_exact(&mut buf).await.expect("read");
                if i >= WARMUP {
                    samples.push(start.elapsed());
                }
            }
            samples
        });
    let _ = server.kill();
    let _ = server.wait();
    samples
}

/// One connection measured from a single-threaded client, so the figure is the
/// server's and the network's, not the client runtime's thread hand-offs.
fn data_plane_latency(node: &Node, iterations: usize, spin: Duration) -> Samples {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio")
        .block_on(async {
            let mut client = Client::connect(&node.data_plane, &node.token)
                .await
                .expect("connect");
            client.set_spin(spin);
            let mut samples = Samples::default();
            for i in 0..iterations + WARMUP {
                let start = Instant::now();
                let body = client
                    .invoke("ping", "ping", None, b"")
                    .await
                    .expect("invoke");
                if i >= WARMUP {
                    samples.push(start.elapsed());
                }
                assert_eq!(body, b"pong");
            }
            samples
        })
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("echo-server") {
        return echo_server();
    }
    let iterations = nimbus_bench::arg_or(20_000);
    let echo = tcp_echo(iterations);
    let module = wat(PING);
    let node = Node::start(&[], &module);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(true)
        .build()
        .into();

    // HTTP, one keep-alive connection.
    let url = format!("{}/v1/apps/ping/invoke/ping", node.http);
    let mut http = Samples::default();
    for i in 0..iterations + WARMUP {
        let start = Instant::now();
        let body = agent
            .post(&url)
            .header("authorization", format!("Bearer {}", node.token))
            .send(&b""[..])
            .expect("invoke")
            .body_mut()
            .read_to_vec()
            .expect("body");
        if i >= WARMUP {
            http.push(start.elapsed());
        }
        assert_eq!(body, b"pong");
    }

    // The client polls for its response (`Client::set_spin`), and then parks instead.
    let data_plane = data_plane_latency(&node, iterations, Duration::from_micros(50));
    let data_plane_parked = data_plane_latency(&node, iterations, Duration::ZERO);
    let on_worker = {
        let placed = Node::start(&["--workers", "1"], &module);
        data_plane_latency(&placed, iterations, Duration::from_micros(50))
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let (rate, in_process) = runtime.block_on(async {
        let served = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + THROUGHPUT_WINDOW;
        let started = Instant::now();
        let workers: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                let (address, served) = (node.data_plane.clone(), served.clone());
                let token = node.token.clone();
                tokio::spawn(async move {
                    let mut client = Client::connect(&address, &token).await.expect("connect");
                    while Instant::now() < deadline {
                        match client.invoke("ping", "ping", None, b"").await {
                            Ok(_) => served.fetch_add(1, Ordering::Relaxed),
                            Err(e) => panic!("throughput invocation failed: {e}"),
                        };
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.expect("worker");
        }
        let rate = served.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();

        let dir = tempfile::tempdir().expect("temporary directory");
        let local = Runtime::new(&RuntimeConfig::new(dir.path())).expect("runtime");
        let program = local.load_service(&module).expect("module loads");
        let mut service = start_alone(&local, &program, None).await;
        let mut in_process = Samples::default();
        for i in 0..iterations + WARMUP {
            let start = Instant::now();
            let body = service
                .invoke(Invocation {
                    handler: "ping".into(),
                    body: vec![],
                    max_response: 1 << 20,
                    timeout: None,
                })
                .await
                .expect("invoke");
            if i >= WARMUP {
                in_process.push(start.elapsed());
            }
            assert_eq!(body, b"pong");
        }
        (rate, in_process)
    });
    let bare = bare_export_call(module.bytes(), iterations);

    println!(
        "warm invocation of a handler writing 4 bytes, one connection, loopback to a \
         separate `nimbus up`; each layer measured in this run"
    );
    println!("  (targets: data plane p50 <= 50 us, HTTP gateway p50 <= 150 us)");
    print_samples("data plane", &data_plane);
    print_samples("data plane, client parks", &data_plane_parked);
    print_samples("data plane, app on a worker", &on_worker);
    print_samples("HTTP gateway, keep-alive", &http);
    print_samples("in-process invoke", &in_process);
    print_samples("bare export call (baseline)", &bare);
    print_samples("raw TCP echo, 64 B (floor)", &echo);
    println!(
        "throughput: data plane, {CONNECTIONS} connections, {:?}, 2 cores shared with the clients: \
         {rate:.0} invocations/s (target >= 50,000)",
        THROUGHPUT_WINDOW
    );
}
