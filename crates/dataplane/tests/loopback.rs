//! A real server on a loopback port, real clients over TCP.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nimbus_dataplane::protocol::{self, REQUEST_KIND};
use nimbus_dataplane::{
    Access, Client, ClientError, Failure, Grant, Invoker, Request, ServerConfig, Status, serve,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// The bound on every wait.
const WAIT: Duration = Duration::from_secs(10);

/// Waits for `future`, failing the test if it takes longer than [`WAIT`].
async fn within<F: Future>(future: F) -> F::Output {
    timeout(WAIT, future).await.expect("timed out")
}

/// What the `wait` handler and the test signal each other with.
#[derive(Default)]
struct Signals {
    /// Notified when a `wait` invocation has started.
    entered: Notify,
    /// Notified to let a `wait` invocation finish.
    release: Notify,
    /// Set to revoke [`DEMO_TOKEN`].
    demo_revoked: Arc<AtomicBool>,
}

/// The token of every app.
const TOKEN: &str = "nmb_every-app";
/// The token of app "demo" only.
const DEMO_TOKEN: &str = "nmb_demo-only";

/// App "demo": `echo`, `upper`, `session` (the session id, or "<none>"), `fail` (the
/// body is a status byte; fails with it), `big` (a body of 1 KiB), `panic`, and `wait`
/// (signals `entered`, waits for `release`, answers "released").
#[derive(Default)]
struct Demo(Arc<Signals>);

impl Invoker for Demo {
    fn invoke(
        &self,
        request: Request,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, Failure>> + Send + 'static>> {
        if request.app != "demo" {
            let message = format!("no app named {:?}", request.app);
            return Box::pin(async move { Err(Failure::new(Status::NotFound, message)) });
        }
        let result = match request.handler.as_str() {
            "echo" => Ok(request.body),
            "upper" => Ok(request.body.to_ascii_uppercase()),
            "session" => Ok(request.session.unwrap_or("<none>".into()).into_bytes()),
            "fail" => {
                let status = Status::from_u8(request.body[0]).unwrap();
                Err(Failure::new(status, format!("failure {}", status.as_u8())))
            }
            "big" => Ok(vec![b'x'; 1024]),
            "panic" => panic!("the demo invoker panics on purpose"),
            "wait" => {
                let signals = self.0.clone();
                return Box::pin(async move {
                    signals.entered.notify_one();
                    signals.release.notified().await;
                    Ok(b"released".to_vec())
                });
            }
            other => Err(Failure::new(
                Status::NotFound,
                format!("no handler named {other:?}"),
            )),
        };
        Box::pin(async move { result })
    }

    fn authorize(&self, token: &str) -> Option<Grant> {
        let (access, revoked) = match token {
            TOKEN => (Access::All, Arc::default()),
            DEMO_TOKEN => (
                Access::Apps(HashSet::from(["demo".to_owned()])),
                self.0.demo_revoked.clone(),
            ),
            _ => return None,
        };
        Some(Grant { access, revoked })
    }
}

struct Server {
    addr: SocketAddr,
    signals: Arc<Signals>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(config: ServerConfig) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let demo = Demo::default();
    let signals = demo.0.clone();
    let task = tokio::spawn(serve(listener, Arc::new(demo), config));
    Server {
        addr,
        signals,
        task,
    }
}

async fn connect(server: &Server) -> Client {
    within(Client::connect(server.addr, TOKEN)).await.unwrap()
}

/// A raw connection whose hello (with [`TOKEN`]) the server accepted.
async fn open(server: &Server) -> TcpStream {
    let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
    let response = exchange(&mut stream, &protocol::encode_hello(TOKEN).unwrap()).await;
    assert_eq!((response.id, response.status), (0, Status::Ok));
    assert_eq!(response.payload, protocol::PROTOCOL_VERSION.to_le_bytes());
    stream
}

/// Sends raw bytes and reads one response frame, decoded.
async fn exchange(stream: &mut TcpStream, bytes: &[u8]) -> protocol::ResponseFrame {
    within(stream.write_all(bytes)).await.unwrap();
    read_response(stream).await
}

async fn read_response(stream: &mut TcpStream) -> protocol::ResponseFrame {
    let mut prefix = [0; 4];
    within(stream.read_exact(&mut prefix)).await.unwrap();
    let mut frame = vec![0; u32::from_le_bytes(prefix) as usize];
    within(stream.read_exact(&mut frame)).await.unwrap();
    protocol::decode_response(frame).unwrap()
}

/// Asserts the server closed `stream`: it reads end of stream, with nothing before.
async fn assert_closed(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    within(stream.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
}

/// Asserts the server still serves new connections.
async fn assert_serving(server: &Server) {
    let mut client = connect(server).await;
    let body = within(client.invoke("demo", "echo", None, b"still here"))
        .await
        .unwrap();
    assert_eq!(body, b"still here");
}

fn server_error(result: Result<Vec<u8>, ClientError>) -> (Status, String) {
    match result {
        Err(ClientError::Server { status, message }) => (status, message),
        other => panic!("expected an error status, got {other:?}"),
    }
}

#[tokio::test]
async fn round_trip() {
    let server = start(ServerConfig::default()).await;
    let mut client = connect(&server).await;
    let body = within(client.invoke("demo", "echo", None, b"hello"))
        .await
        .unwrap();
    assert_eq!(body, b"hello");
    let body = within(client.invoke("demo", "upper", None, b"hello"))
        .await
        .unwrap();
    assert_eq!(body, b"HELLO");
    let body = within(client.invoke("demo", "echo", None, b""))
        .await
        .unwrap();
    assert!(body.is_empty());
    let large = vec![7; 1 << 20];
    let body = within(client.invoke("demo", "echo", None, &large))
        .await
        .unwrap();
    assert_eq!(body, large);
}

#[tokio::test]
async fn session_is_passed_through() {
    let server = start(ServerConfig::default()).await;
    let mut client = connect(&server).await;
    let body = within(client.invoke("demo", "session", Some("s-42"), b""))
        .await
        .unwrap();
    assert_eq!(body, b"s-42");
    let body = within(client.invoke("demo", "session", None, b""))
        .await
        .unwrap();
    assert_eq!(body, b"<none>");
    let body = within(client.invoke("demo", "session", Some(""), b""))
        .await
        .unwrap();
    assert_eq!(body, b"<none>");
}

#[tokio::test]
async fn every_error_status_arrives_with_its_message() {
    let server = start(ServerConfig::default()).await;
    let mut client = connect(&server).await;
    for status in Status::ALL
        .into_iter()
        .filter(|&status| status != Status::Ok)
    {
        let result = within(client.invoke("demo", "fail", None, &[status.as_u8()])).await;
        let expected = (status, format!("failure {}", status.as_u8()));
        assert_eq!(server_error(result), expected);
    }
    // The connection stays usable after error statuses.
    let body = within(client.invoke("demo", "echo", None, b"after"))
        .await
        .unwrap();
    assert_eq!(body, b"after");
    let result = within(client.invoke("nope", "echo", None, b"")).await;
    assert_eq!(
        server_error(result),
        (Status::NotFound, "no app named \"nope\"".into())
    );
    let result = within(client.invoke("demo", "nope", None, b"")).await;
    assert_eq!(
        server_error(result),
        (Status::NotFound, "no handler named \"nope\"".into())
    );
    let error = within(client.invoke("demo", "fail", None, &[4]))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "the server answered handler failed: failure 4"
    );
}

#[tokio::test]
async fn a_panicking_invoker_is_answered_unavailable() {
    let server = start(ServerConfig::default()).await;
    let mut client = connect(&server).await;
    let (status, _) = server_error(within(client.invoke("demo", "panic", None, b"")).await);
    assert_eq!(status, Status::Unavailable);
    let body = within(client.invoke("demo", "echo", None, b"after"))
        .await
        .unwrap();
    assert_eq!(body, b"after");
}

#[tokio::test]
async fn a_body_too_large_for_a_frame_is_answered_too_large() {
    let config = ServerConfig {
        max_frame_len: 1024,
        ..ServerConfig::default()
    };
    let server = start(config).await;
    let mut client = connect(&server).await;
    let (status, message) = server_error(within(client.invoke("demo", "big", None, b"")).await);
    assert_eq!(status, Status::TooLarge);
    assert!(message.contains("exceeds"), "{message}");
    let body = within(client.invoke("demo", "echo", None, b"after"))
        .await
        .unwrap();
    assert_eq!(body, b"after");
}

#[tokio::test]
async fn a_hundred_sequential_requests_are_answered_in_order() {
    let server = start(ServerConfig::default()).await;
    let mut client = connect(&server).await;
    for i in 0..100 {
        let body = format!("request {i}");
        let answer = within(client.invoke("demo", "upper", None, body.as_bytes())).await;
        assert_eq!(answer.unwrap(), body.to_uppercase().as_bytes());
    }
}

#[tokio::test]
async fn pipelined_requests_on_one_connection_are_answered_in_order() {
    let server = start(ServerConfig::default()).await;
    let mut stream = open(&server).await;
    let mut wire = Vec::new();
    for id in 1..=10u64 {
        let body = id.to_string();
        wire.extend(protocol::encode_request(id, "demo", "echo", None, body.as_bytes()).unwrap());
    }
    within(stream.write_all(&wire)).await.unwrap();
    for id in 1..=10u64 {
        let response = read_response(&mut stream).await;
        assert_eq!((response.id, response.status), (id, Status::Ok));
        assert_eq!(response.payload, id.to_string().as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_connections() {
    let server = start(ServerConfig::default()).await;
    let tasks: Vec<_> = (0..2)
        .map(|n| {
            let addr = server.addr;
            tokio::spawn(async move {
                let mut client = within(Client::connect(addr, TOKEN)).await.unwrap();
                for i in 0..50 {
                    let body = format!("connection {n} request {i}");
                    let answer = within(client.invoke("demo", "echo", None, body.as_bytes())).await;
                    assert_eq!(answer.unwrap(), body.as_bytes());
                }
            })
        })
        .collect();
    for task in tasks {
        within(task).await.unwrap();
    }
}

#[tokio::test]
async fn a_slow_request_does_not_block_another_connection() {
    let server = start(ServerConfig::default()).await;
    let mut slow = connect(&server).await;
    let waiting = tokio::spawn(async move { slow.invoke("demo", "wait", None, b"").await });
    within(server.signals.entered.notified()).await;
    // The first connection's handler is blocked; the second connection is served.
    let mut other = connect(&server).await;
    let body = within(other.invoke("demo", "echo", None, b"not blocked"))
        .await
        .unwrap();
    assert_eq!(body, b"not blocked");
    assert!(!waiting.is_finished());
    server.signals.release.notify_one();
    let body = within(waiting).await.unwrap().unwrap();
    assert_eq!(body, b"released");
}

#[tokio::test]
async fn an_oversized_frame_is_refused_and_its_connection_closed() {
    let config = ServerConfig {
        max_frame_len: 1024,
        ..ServerConfig::default()
    };
    let server = start(config).await;
    let mut bystander = connect(&server).await;
    within(bystander.invoke("demo", "echo", None, b"before"))
        .await
        .unwrap();

    let mut client = connect(&server).await;
    let result = within(client.invoke("demo", "echo", None, &[0; 4096])).await;
    let (status, message) = server_error(result);
    assert_eq!(status, Status::BadRequest);
    assert!(
        message.contains("exceeds the maximum of 1024 bytes"),
        "{message}"
    );
    let error = within(client.invoke("demo", "echo", None, b"again"))
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::Broken), "{error}");

    // Over a raw stream: only a length prefix, 1 GiB announced, in place of a
    // request and in place of the hello.
    let mut stream = open(&server).await;
    let response = exchange(&mut stream, &(1u32 << 30).to_le_bytes()).await;
    assert_eq!((response.id, response.status), (0, Status::BadRequest));
    assert_closed(&mut stream).await;
    let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
    let response = exchange(&mut stream, &(1u32 << 30).to_le_bytes()).await;
    assert_eq!((response.id, response.status), (0, Status::BadRequest));
    assert_closed(&mut stream).await;

    let body = within(bystander.invoke("demo", "echo", None, b"after"))
        .await
        .unwrap();
    assert_eq!(body, b"after");
    assert_serving(&server).await;
}

#[tokio::test]
async fn garbage_gets_bad_request_and_does_not_crash_the_server() {
    let server = start(ServerConfig::default()).await;

    // Well framed garbage: answered, and the connection goes on.
    let mut stream = open(&server).await;
    let response = exchange(&mut stream, &[5, 0, 0, 0, 9, 1, 2, 3, 4]).await;
    assert_eq!((response.id, response.status), (0, Status::BadRequest));
    let message = String::from_utf8(response.payload).unwrap();
    assert!(message.contains("unknown frame kind 9"), "{message}");

    // A request whose app name runs past the frame: its id is echoed.
    let mut frame = vec![REQUEST_KIND];
    frame.extend_from_slice(&77u64.to_le_bytes());
    frame.extend_from_slice(&[50, 0, b'a', b'b']);
    let mut wire = (frame.len() as u32).to_le_bytes().to_vec();
    wire.extend(frame);
    let response = exchange(&mut stream, &wire).await;
    assert_eq!((response.id, response.status), (77, Status::BadRequest));

    // An app name that is not UTF-8.
    let mut frame = vec![REQUEST_KIND];
    frame.extend_from_slice(&78u64.to_le_bytes());
    frame.extend_from_slice(&[2, 0, 0xff, 0xfe, 0, 0, 0, 0]);
    let mut wire = (frame.len() as u32).to_le_bytes().to_vec();
    wire.extend(frame);
    let response = exchange(&mut stream, &wire).await;
    assert_eq!((response.id, response.status), (78, Status::BadRequest));

    // Pseudo-random frames.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..50 {
        let mut frame = Vec::new();
        for _ in 0..40 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            frame.push(state as u8);
        }
        let mut wire = (frame.len() as u32).to_le_bytes().to_vec();
        wire.extend(frame);
        let response = exchange(&mut stream, &wire).await;
        assert_eq!(response.status, Status::BadRequest);
    }

    // A valid request on the same connection still works.
    let wire = protocol::encode_request(79, "demo", "echo", None, b"fine").unwrap();
    let response = exchange(&mut stream, &wire).await;
    assert_eq!((response.id, response.status), (79, Status::Ok));
    assert_eq!(response.payload, b"fine");

    // Text where a length prefix belongs: "GET " announces a frame of 542 MB.
    let mut http = within(TcpStream::connect(server.addr)).await.unwrap();
    let response = exchange(&mut http, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!((response.id, response.status), (0, Status::BadRequest));
    assert_closed(&mut http).await;

    assert_serving(&server).await;
}

#[tokio::test]
async fn clients_disconnecting_mid_request_do_not_disturb_others() {
    let server = start(ServerConfig::default()).await;
    let mut bystander = connect(&server).await;

    // Gone inside the length prefix, and inside a frame.
    for bytes in [&[10u8, 0][..], &[100, 0, 0, 0, REQUEST_KIND, 1, 2][..]] {
        let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
        within(stream.write_all(bytes)).await.unwrap();
        drop(stream);
    }

    // Gone while its handler runs: the answer has nowhere to go.
    let mut stream = open(&server).await;
    let wire = protocol::encode_request(1, "demo", "wait", None, b"").unwrap();
    within(stream.write_all(&wire)).await.unwrap();
    within(server.signals.entered.notified()).await;
    drop(stream);
    server.signals.release.notify_one();

    for i in 0..10 {
        let body = format!("bystander {i}");
        let answer = within(bystander.invoke("demo", "echo", None, body.as_bytes())).await;
        assert_eq!(answer.unwrap(), body.as_bytes());
    }
    assert_serving(&server).await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_answered_busy() {
    let config = ServerConfig {
        max_connections: 1,
        ..ServerConfig::default()
    };
    let server = start(config).await;
    let mut first = connect(&server).await;
    // Answered, so its connection holds the only place.
    within(first.invoke("demo", "echo", None, b"first"))
        .await
        .unwrap();

    // The hello is answered Busy, and the connection closed.
    let error = within(Client::connect(server.addr, TOKEN))
        .await
        .unwrap_err();
    let (status, message) = server_error(Err(error));
    assert_eq!(status, Status::Busy);
    assert!(message.contains("limit of 1 connections"), "{message}");

    let mut raw = within(TcpStream::connect(server.addr)).await.unwrap();
    let wire = protocol::encode_request(5, "demo", "echo", None, b"x").unwrap();
    let response = exchange(&mut raw, &wire).await;
    assert_eq!((response.id, response.status), (5, Status::Busy));
    assert_closed(&mut raw).await;

    // The first connection is unaffected, and once it closes its place is free again.
    within(first.invoke("demo", "echo", None, b"still"))
        .await
        .unwrap();
    drop(first);
    within(async {
        loop {
            match Client::connect(server.addr, TOKEN).await {
                Ok(mut client) => {
                    let body = client.invoke("demo", "echo", None, b"in").await.unwrap();
                    break assert_eq!(body, b"in");
                }
                Err(ClientError::Server {
                    status: Status::Busy,
                    ..
                }) => tokio::task::yield_now().await,
                Err(error) => panic!("{error}"),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn client_refuses_requests_it_cannot_send_and_stays_usable() {
    let server = start(ServerConfig::default()).await;
    let mut client = connect(&server).await;
    let long = "x".repeat(70_000);
    let error = within(client.invoke(&long, "echo", None, b""))
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::InvalidRequest(_)), "{error}");
    client.set_max_frame_len(100);
    let error = within(client.invoke("demo", "echo", None, &[0; 200]))
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::InvalidRequest(_)), "{error}");
    let body = within(client.invoke("demo", "echo", None, b"ok"))
        .await
        .unwrap();
    assert_eq!(body, b"ok");
}

#[tokio::test]
async fn errors_read_clearly() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let error = within(Client::connect(addr, TOKEN)).await.unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("data plane connection failed: "),
        "{error}"
    );

    // A server that accepts the hello, then closes without answering.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closer = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        for answer in [true, false] {
            let mut prefix = [0; 4];
            stream.read_exact(&mut prefix).await.unwrap();
            let mut frame = vec![0; u32::from_le_bytes(prefix) as usize];
            stream.read_exact(&mut frame).await.unwrap();
            if answer {
                let version = protocol::PROTOCOL_VERSION.to_le_bytes();
                let wire = protocol::encode_response(0, Status::Ok, &version).unwrap();
                stream.write_all(&wire).await.unwrap();
            }
        }
    });
    let mut client = within(Client::connect(addr, TOKEN)).await.unwrap();
    let error = within(client.invoke("demo", "echo", None, b""))
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::Closed), "{error}");
    assert_eq!(
        error.to_string(),
        "the server closed the connection before answering"
    );
    within(closer).await.unwrap();
}

#[tokio::test]
async fn a_connection_without_a_known_token_is_refused_and_closed() {
    let server = start(ServerConfig::default()).await;
    for token in ["", "nmb_wrong"] {
        let error = within(Client::connect(server.addr, token))
            .await
            .unwrap_err();
        let (status, message) = server_error(Err(error));
        assert_eq!(status, Status::Unauthorized, "{token:?}: {message}");
        let expected = if token.is_empty() {
            "no token"
        } else {
            "unknown token"
        };
        assert!(message.contains(expected), "{message}");

        let mut raw = within(TcpStream::connect(server.addr)).await.unwrap();
        let response = exchange(&mut raw, &protocol::encode_hello(token).unwrap()).await;
        assert_eq!((response.id, response.status), (0, Status::Unauthorized));
        assert_closed(&mut raw).await;
    }
    assert_serving(&server).await;
}

#[tokio::test]
async fn a_token_of_one_app_is_refused_others_per_request() {
    let server = start(ServerConfig::default()).await;
    let mut client = within(Client::connect(server.addr, DEMO_TOKEN))
        .await
        .unwrap();
    let body = within(client.invoke("demo", "echo", None, b"mine"))
        .await
        .unwrap();
    assert_eq!(body, b"mine");
    let (status, message) = server_error(within(client.invoke("other", "echo", None, b"")).await);
    assert_eq!(status, Status::Forbidden);
    assert!(message.contains("may not invoke app `other`"), "{message}");
    // The connection goes on.
    let body = within(client.invoke("demo", "echo", None, b"still"))
        .await
        .unwrap();
    assert_eq!(body, b"still");
}

#[tokio::test]
async fn a_token_revoked_ends_the_connections_it_opened_at_their_next_request() {
    let server = start(ServerConfig::default()).await;
    let mut demo = within(Client::connect(server.addr, DEMO_TOKEN))
        .await
        .unwrap();
    let mut every = within(Client::connect(server.addr, TOKEN)).await.unwrap();
    within(demo.invoke("demo", "echo", None, b"before"))
        .await
        .unwrap();
    server.signals.demo_revoked.store(true, Ordering::Relaxed);
    let (status, message) = server_error(within(demo.invoke("demo", "echo", None, b"")).await);
    assert_eq!(status, Status::Unauthorized);
    assert!(message.contains("token was revoked"), "{message}");
    assert!(
        within(demo.invoke("demo", "echo", None, b""))
            .await
            .is_err()
    );
    // Another token's connection goes on.
    let body = within(every.invoke("demo", "echo", None, b"still"))
        .await
        .unwrap();
    assert_eq!(body, b"still");
}

#[tokio::test]
async fn peers_of_another_version_are_refused_with_a_clear_message() {
    let server = start(ServerConfig::default()).await;
    // A later version's hello.
    let mut raw = within(TcpStream::connect(server.addr)).await.unwrap();
    let hello = protocol::encode_hello_of_version(3, TOKEN).unwrap();
    let response = exchange(&mut raw, &hello).await;
    assert_eq!((response.id, response.status), (0, Status::WrongVersion));
    let message = String::from_utf8(response.payload).unwrap();
    assert!(
        message.contains("version 2, the client version 3"),
        "{message}"
    );
    assert_closed(&mut raw).await;

    // A version 1 client, which sends a request first: answered with its id, in a
    // status it knows.
    let mut raw = within(TcpStream::connect(server.addr)).await.unwrap();
    let wire = protocol::encode_request(4, "demo", "echo", None, b"x").unwrap();
    let response = exchange(&mut raw, &wire).await;
    assert_eq!((response.id, response.status), (4, Status::BadRequest));
    let message = String::from_utf8(response.payload).unwrap();
    assert!(message.contains("the client speaks version 1"), "{message}");
    assert_closed(&mut raw).await;

    // A server of version 1, which does not know the hello frame's kind.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let old = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut prefix = [0; 4];
        stream.read_exact(&mut prefix).await.unwrap();
        let mut frame = vec![0; u32::from_le_bytes(prefix) as usize];
        stream.read_exact(&mut frame).await.unwrap();
        let message = format!("malformed request frame: unknown frame kind {}", frame[0]);
        let wire = protocol::encode_response(0, Status::BadRequest, message.as_bytes()).unwrap();
        stream.write_all(&wire).await.unwrap();
    });
    let error = within(Client::connect(addr, TOKEN)).await.unwrap_err();
    let (status, message) = server_error(Err(error));
    assert_eq!(status, Status::WrongVersion);
    assert!(message.contains("an older version"), "{message}");
    within(old).await.unwrap();
    assert_serving(&server).await;
}
