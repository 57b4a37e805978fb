//! nimbus-mesh vs tonic (gRPC over HTTP/2), both over mutual TLS (rustls, ring) with
//! the same nimbus-trust certificates, on loopback.
//!
//! rpcbench certs DIR                     creates the cluster directory DIR if absent
//!                                         (the other commands do too)
//! rpcbench server DIR BASEPORT            mesh on BASE, tonic-default BASE+1,
//!                                         tonic-win BASE+2, tonic-adaptive BASE+3
//! rpcbench client DIR BASEPORT STACK TEST
//! rpcbench inproc DIR STACK TEST          server on its own runtime, same process,
//!                                         on free ports
//!
//! STACK: mesh | tonic-default | tonic-win | tonic-adaptive | tonic-lean
//!        (tonic-lean: the generated client on hyper's HTTP/2 SendRequest, no
//!        Channel; talks to the tonic-win server)
//! TEST:  unary | c4 | c16 | stream | big4m | fetch16m
//! Threads: SERVER_THREADS / CLIENT_THREADS (tokio workers, default 2 each).

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_mesh::{Frame, Handler, HandlerFuture, Link, Replier};
use nimbus_trust::Tls;
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

pub mod pb {
    tonic::include_proto!("bench");
}
use pb::Bytes as Msg;
use pb::bench_client::BenchClient;
use pb::bench_server::{Bench, BenchServer};

const MAX_MSG: usize = 64 << 20;
const SOCKET_BUFFER: usize = 4 << 20;
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
const SMALL: usize = 64;

// ---------------------------------------------------------------- mesh server

struct MeshSvc;

fn head(h: &[u8]) -> Vec<u8> {
    h.to_vec()
}

impl Handler for MeshSvc {
    fn handle(self: Arc<Self>, req: Frame, replier: Replier) -> HandlerFuture {
        Box::pin(async move {
            match req.head.as_slice() {
                b"\"s\"" => {
                    for _ in 0..2 {
                        replier
                            .send(Frame {
                                head: head(b"\"m\""),
                                body: req.body.clone(),
                            })
                            .await;
                    }
                    replier
                        .finish(Frame {
                            head: head(b"\"l\""),
                            body: req.body,
                        })
                        .await;
                }
                b"\"f\"" => {
                    let n = u64::from_le_bytes(req.body[..8].try_into().unwrap()) as usize;
                    replier
                        .finish(Frame {
                            head: head(b"\"l\""),
                            body: vec![7; n],
                        })
                        .await;
                }
                _ => {
                    replier
                        .finish(Frame {
                            head: head(b"\"l\""),
                            body: req.body,
                        })
                        .await
                }
            }
        })
    }
}

// ---------------------------------------------------------------- tonic server

struct TonicSvc;

type MsgStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Msg, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Bench for TonicSvc {
    async fn echo(
        &self,
        r: tonic::Request<Msg>,
    ) -> Result<tonic::Response<Msg>, tonic::Status> {
        Ok(tonic::Response::new(r.into_inner()))
    }

    type StreamStream = MsgStream;

    async fn stream(
        &self,
        r: tonic::Request<Msg>,
    ) -> Result<tonic::Response<MsgStream>, tonic::Status> {
        let m = r.into_inner();
        Ok(tonic::Response::new(Box::pin(tokio_stream::iter([
            Ok(m.clone()),
            Ok(m.clone()),
            Ok(m),
        ]))))
    }

    async fn fetch(
        &self,
        r: tonic::Request<Msg>,
    ) -> Result<tonic::Response<Msg>, tonic::Status> {
        let m = r.into_inner();
        let n = u64::from_le_bytes(m.data[..8].try_into().unwrap()) as usize;
        Ok(tonic::Response::new(Msg { data: vec![7; n] }))
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Tune {
    /// tonic's defaults (nodelay on both sides is tonic's default), plus the
    /// project's HTTP/2 keepalive settings.
    Default,
    /// Big fixed HTTP/2 windows, 1 MiB frames, 4 MiB socket buffers.
    Win,
    /// Adaptive (BDP) window, 1 MiB frames, 4 MiB socket buffers.
    Adaptive,
}

fn tune_socket(s: &TcpStream) {
    let _ = s.set_nodelay(true);
    let sock = socket2::SockRef::from(s);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
}

/// TLS connections accepted on `listener`, as the planner once did.
fn accepting(
    listener: TcpListener,
    tls: Arc<Tls>,
    tune: Tune,
) -> tokio_stream::wrappers::ReceiverStream<
    std::io::Result<tokio_rustls::server::TlsStream<TcpStream>>,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            if tune == Tune::Default {
                let _ = stream.set_nodelay(true);
            } else {
                tune_socket(&stream);
            }
            let (tls, tx) = (tls.clone(), tx.clone());
            tokio::spawn(async move {
                if let Ok(s) = tls.accept(stream, "h2").await {
                    let _ = tx.send(Ok(s)).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn serve_tonic(listener: TcpListener, tls: Arc<Tls>, tune: Tune) {
    let mut b = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    match tune {
        Tune::Default => {}
        Tune::Win => {
            b = b
                .initial_stream_window_size(8 << 20)
                .initial_connection_window_size(16 << 20)
                .max_frame_size(1 << 20)
        }
        Tune::Adaptive => b = b.http2_adaptive_window(Some(true)).max_frame_size(1 << 20),
    }
    b.add_service(
        BenchServer::new(TonicSvc)
            .max_decoding_message_size(MAX_MSG)
            .max_encoding_message_size(MAX_MSG),
    )
    .serve_with_incoming(accepting(listener, tls, tune))
    .await
    .unwrap();
}

/// The PEM texts of the cluster directory `dir`, for tonic's own TLS config.
fn pem(dir: &Path) -> nimbus_trust::Pem {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.join(name).display()))
    };
    nimbus_trust::Pem {
        ca: read(nimbus_trust::CA_FILE),
        cert: read(nimbus_trust::CERT_FILE),
        key: read(nimbus_trust::KEY_FILE),
    }
}

async fn tonic_channel(addr: &str, pem: &nimbus_trust::Pem, tune: Tune) -> Channel {
    // tonic's client offers ALPN "h2", which the server's `Tls::accept(_, "h2")` asks for.
    let tls_config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pem.ca))
        .identity(Identity::from_pem(&pem.cert, &pem.key))
        .domain_name(nimbus_trust::NODE_NAME);
    let ep = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls_config)
        .unwrap()
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let ep = match tune {
        Tune::Default => return ep.connect().await.unwrap(),
        Tune::Win => ep
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(16 << 20)
            .max_frame_size(1 << 20),
        Tune::Adaptive => ep.http2_adaptive_window(true).max_frame_size(1 << 20),
    };
    // A connector that also sets the socket buffers (as the mesh does).
    ep.connect_with_connector(tower::service_fn(|uri: Uri| async move {
        let host = uri.host().unwrap().to_owned();
        let port = uri.port_u16().unwrap();
        let s = TcpStream::connect((host.as_str(), port)).await?;
        tune_socket(&s);
        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
    }))
    .await
    .unwrap()
}

// ---------------------------------------------------------------- callers

/// A tonic client without `Channel` (and its tower `Buffer` task): the generated
/// client over hyper's HTTP/2 `SendRequest` directly, on TLS from nimbus-trust.
#[derive(Clone)]
struct Lean(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower::Service<http::Request<tonic::body::Body>> for Lean {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

async fn lean_client(addr: &str, tls: &Tls) -> BenchClient<Lean> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tune_socket(&tcp);
    // ALPN "h2", as the tonic server's `Tls::accept(_, "h2")` asks for.
    let io = tls.connect(tcp, "h2").await.unwrap();
    let (send, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20)
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    BenchClient::with_origin(Lean(send), Uri::from_static("https://node.nimbus.internal"))
        .max_decoding_message_size(MAX_MSG)
        .max_encoding_message_size(MAX_MSG)
}

#[derive(Clone)]
enum Caller {
    Mesh(Arc<Link>),
    Tonic(BenchClient<Channel>),
    Lean(BenchClient<Lean>),
}

impl Caller {
    /// A caller of `stack` on the servers at `ports` (mesh, tonic-default,
    /// tonic-win, tonic-adaptive).
    async fn new(stack: &str, dir: &Path, tls: &Tls, ports: [u16; 4]) -> Caller {
        let (port, tune) = match stack {
            "mesh" => {
                let addr = format!("127.0.0.1:{}", ports[0]);
                return Caller::Mesh(Link::connect(tls, &addr).await.unwrap());
            }
            "tonic-lean" => {
                let addr = format!("127.0.0.1:{}", ports[2]);
                return Caller::Lean(lean_client(&addr, tls).await);
            }
            "tonic-default" => (ports[1], Tune::Default),
            "tonic-win" => (ports[2], Tune::Win),
            "tonic-adaptive" => (ports[3], Tune::Adaptive),
            other => panic!("unknown stack {other}"),
        };
        let ch = tonic_channel(&format!("127.0.0.1:{port}"), &pem(dir), tune).await;
        Caller::Tonic(
            BenchClient::new(ch)
                .max_decoding_message_size(MAX_MSG)
                .max_encoding_message_size(MAX_MSG),
        )
    }

    async fn echo(&mut self, body: Vec<u8>) -> usize {
        match self {
            Caller::Mesh(link) => {
                link.call_one(Frame {
                    head: head(b"\"e\""),
                    body,
                })
                .await
                .unwrap()
                .body
                .len()
            }
            Caller::Tonic(c) => c.echo(Msg { data: body }).await.unwrap().into_inner().data.len(),
            Caller::Lean(c) => c.echo(Msg { data: body }).await.unwrap().into_inner().data.len(),
        }
    }

    /// The whole exchange: request, three replies, end.
    async fn stream(&mut self, body: Vec<u8>) -> usize {
        let mut n = 0;
        match self {
            Caller::Mesh(link) => {
                let mut replies = link
                    .call(Frame {
                        head: head(b"\"s\""),
                        body,
                    })
                    .await
                    .unwrap();
                while let Ok(_reply) = replies.next().await {
                    n += 1;
                }
            }
            Caller::Tonic(c) => {
                let mut s = c.stream(Msg { data: body }).await.unwrap().into_inner();
                while let Some(_m) = s.message().await.unwrap() {
                    n += 1;
                }
            }
            Caller::Lean(c) => {
                let mut s = c.stream(Msg { data: body }).await.unwrap().into_inner();
                while let Some(_m) = s.message().await.unwrap() {
                    n += 1;
                }
            }
        }
        assert_eq!(n, 3);
        n
    }

    async fn fetch(&mut self, len: usize) -> usize {
        let mut body = (len as u64).to_le_bytes().to_vec();
        body.resize(SMALL, 0);
        match self {
            Caller::Mesh(link) => {
                link.call_one(Frame {
                    head: head(b"\"f\""),
                    body,
                })
                .await
                .unwrap()
                .body
                .len()
            }
            Caller::Tonic(c) => c.fetch(Msg { data: body }).await.unwrap().into_inner().data.len(),
            Caller::Lean(c) => c.fetch(Msg { data: body }).await.unwrap().into_inner().data.len(),
        }
    }
}

fn percentiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |q: f64| {
        let i = ((v.len() as f64 * q) as usize).min(v.len() - 1);
        v[i].as_secs_f64() * 1e6
    };
    (at(0.50), at(0.99))
}

/// One caller, one call after another.
async fn sequential<F, Fut>(warmup: usize, n: usize, mut f: F) -> (f64, f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..warmup {
        f().await;
    }
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        f().await;
        lat.push(t.elapsed());
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let (p50, p99) = percentiles(lat);
    (p50, p99, rate)
}

/// `callers` tasks calling on one link/channel for `window` after a warm-up.
async fn concurrent(caller: Caller, callers: usize, window: Duration) -> (f64, f64, f64) {
    let warm = Duration::from_millis(500);
    let begin = Instant::now() + warm;
    let end = begin + window;
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let mut c = caller.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let t = Instant::now();
                    if t >= end {
                        break;
                    }
                    c.echo(vec![1; SMALL]).await;
                    if t >= begin {
                        lat.push(t.elapsed());
                    }
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    // Calls started within the window, over the window.
    let rate = all.len() as f64 / window.as_secs_f64();
    let (p50, p99) = percentiles(all);
    (p50, p99, rate)
}

async fn run_test(mut caller: Caller, test: &str) -> (f64, f64, f64) {
    match test {
        "unary" => {
            sequential(2_000, 20_000, || {
                let mut c = caller.clone();
                async move {
                    assert_eq!(c.echo(vec![1; SMALL]).await, SMALL);
                }
            })
            .await
        }
        "c4" => concurrent(caller, 4, Duration::from_secs(3)).await,
        "c16" => concurrent(caller, 16, Duration::from_secs(3)).await,
        "stream" => {
            sequential(2_000, 20_000, || {
                let mut c = caller.clone();
                async move {
                    c.stream(vec![1; SMALL]).await;
                }
            })
            .await
        }
        "big4m" => {
            let body = vec![3u8; 4 << 20];
            sequential(10, 100, || {
                let mut c = caller.clone();
                let b = body.clone();
                async move {
                    assert_eq!(c.echo(b).await, 4 << 20);
                }
            })
            .await
        }
        "fetch16m" => {
            let _ = &mut caller;
            sequential(5, 50, || {
                let mut c = caller.clone();
                async move {
                    assert_eq!(c.fetch(16 << 20).await, 16 << 20);
                }
            })
            .await
        }
        other => panic!("unknown test {other}"),
    }
}

fn runtime(var: &str) -> tokio::runtime::Runtime {
    let threads = std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap()
}

/// The four servers on `ports` (0: any free port); returns the ports bound.
async fn serve_all(tls: Arc<Tls>, ports: [u16; 4]) -> [u16; 4] {
    let bind = |p: u16| async move {
        TcpListener::bind(("127.0.0.1", p))
            .await
            .unwrap_or_else(|e| panic!("cannot listen on 127.0.0.1:{p}: {e}"))
    };
    let mesh = bind(ports[0]).await;
    let d = bind(ports[1]).await;
    let w = bind(ports[2]).await;
    let a = bind(ports[3]).await;
    let port = |l: &TcpListener| l.local_addr().unwrap().port();
    let bound = [port(&mesh), port(&d), port(&w), port(&a)];
    tokio::spawn(nimbus_mesh::serve(mesh, tls.clone(), Arc::new(MeshSvc)));
    tokio::spawn(serve_tonic(d, tls.clone(), Tune::Default));
    tokio::spawn(serve_tonic(w, tls.clone(), Tune::Win));
    tokio::spawn(serve_tonic(a, tls.clone(), Tune::Adaptive));
    bound
}

fn consecutive(base: u16) -> [u16; 4] {
    [base, base + 1, base + 2, base + 3]
}

fn report(mode: &str, stack: &str, test: &str, (p50, p99, rate): (f64, f64, f64)) {
    println!("{mode}\t{stack}\t{test}\tp50_us={p50:.1}\tp99_us={p99:.1}\tcalls_per_s={rate:.0}");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let dir_arg = arg(2);
    let dir = Path::new(&dir_arg);
    // The cluster directory's credentials, created when absent (never committed).
    let load = || {
        nimbus_trust::ensure(dir).unwrap();
        Tls::load(dir).unwrap()
    };
    match arg(1).as_str() {
        "certs" => {
            nimbus_trust::ensure(dir).unwrap();
        }
        "server" => {
            let tls = load();
            let base: u16 = arg(3).parse().unwrap();
            runtime("SERVER_THREADS").block_on(async move {
                serve_all(tls, consecutive(base)).await;
                eprintln!("serving on {base}..{}", base + 3);
                std::future::pending::<()>().await
            });
        }
        "client" => {
            let tls = load();
            let base: u16 = arg(3).parse().unwrap();
            let (stack, test) = (arg(4), arg(5));
            let out = runtime("CLIENT_THREADS").block_on(async {
                let caller = Caller::new(&stack, dir, &tls, consecutive(base)).await;
                run_test(caller, &test).await
            });
            report("procs", &stack, &test, out);
        }
        "inproc" => {
            let tls = load();
            let (stack, test) = (arg(3), arg(4));
            // The server on a runtime (and threads) of its own, on free ports.
            let server = runtime("SERVER_THREADS");
            let ports = server.block_on(serve_all(tls.clone(), [0; 4]));
            let out = runtime("CLIENT_THREADS").block_on(async {
                let caller = Caller::new(&stack, dir, &tls, ports).await;
                run_test(caller, &test).await
            });
            report("inproc", &stack, &test, out);
            server.shutdown_background();
        }
        _ => {
            eprintln!("usage: see src/main.rs");
            std::process::exit(2);
        }
    }
}
