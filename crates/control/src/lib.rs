//! The control plane between the planner and its workers, over TCP.
//!
//! Owns: the wire protocol (one JSON object per line, at most [`MAX_LINE`] bytes),
//! the planner's server around the pure [`nimbus_planner::Registry`] (joins,
//! heartbeats, dropping workers silent for longer than the timeout, the host list
//! behind `nimbus hosts`), and the worker's end of it ([`PlannerLink`]).
//!
//! Must not: run processes, or decide placement itself (that is the planner
//! crate's policy).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nimbus_core::HostId;
use nimbus_planner::{HostInfo, HostReport, HostStatus, Registry};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// The longest line either side accepts.
pub const MAX_LINE: u64 = 1 << 20;

/// What a worker or a client asks the planner.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Request {
    Register(HostInfo),
    Heartbeat {
        host: HostId,
        report: HostReport,
    },
    Hosts,
    Place {
        near: Option<HostId>,
        app: Option<String>,
    },
}

/// The planner's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    Registered {
        host: HostId,
        heartbeat_ms: u64,
        state: Option<String>,
    },
    Ack,
    Hosts(Vec<HostStatus>),
    Placed {
        host: HostId,
        address: String,
    },
    Error(String),
}

/// A control-plane exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The planner could not be reached or the connection broke.
    #[error("planner {addr}: {source}")]
    Io {
        /// The planner's address.
        addr: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The other side broke the protocol.
    #[error("planner {addr}: {reason}")]
    Protocol {
        /// The planner's address.
        addr: String,
        /// What was wrong.
        reason: String,
    },
    /// The planner refused the request.
    #[error("planner {addr} refused: {message}")]
    Refused {
        /// The planner's address.
        addr: String,
        /// Its reason.
        message: String,
    },
}

/// How the planner paces its workers.
#[derive(Clone, Debug)]
pub struct PlannerConfig {
    /// How often workers report.
    pub heartbeat: Duration,
    /// How long a worker may stay silent before it is dropped.
    pub timeout: Duration,
    /// Where the cluster's shared global state tier is served, told to workers as
    /// they join (`None`: they bring their own).
    pub state: Option<String>,
    /// The most processes an app may run across the cluster, for the apps listed.
    pub budgets: Vec<(String, usize)>,
}

/// Serves the planner on `listener` until the task is dropped.
pub async fn serve_planner(listener: TcpListener, config: PlannerConfig) -> std::io::Result<()> {
    let mut registry = Registry::new(config.timeout);
    for (app, processes) in &config.budgets {
        registry.set_budget(app, *processes);
    }
    let registry = Arc::new(Mutex::new(registry));
    let expiring = registry.clone();
    let expiry = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(config.timeout / 4);
        loop {
            ticks.tick().await;
            for host in expiring.lock().unwrap().expire(Instant::now()) {
                eprintln!(
                    "nimbus: planner: host {host} was silent for over {:?}: dropped",
                    config.timeout
                );
            }
        }
    });
    let served = loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => break Err(e),
        };
        let (registry, config) = (registry.clone(), config.clone());
        tokio::spawn(async move {
            let _ = answer(stream, &registry, &config).await;
        });
    };
    expiry.abort();
    served
}

/// Answers one connection's requests in order until it closes.
async fn answer(
    stream: TcpStream,
    registry: &Mutex<Registry>,
    config: &PlannerConfig,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    loop {
        let request = match read_message::<Request>(&mut read).await {
            Ok(Some(request)) => request,
            Ok(None) => return Ok(()),
            Err(reason) => {
                write_message(&mut write, &Reply::Error(reason)).await?;
                return Ok(());
            }
        };
        let now = Instant::now();
        let reply = {
            let mut registry = registry.lock().unwrap();
            match request {
                Request::Register(info) => match registry.register(info, now) {
                    Ok(host) => {
                        eprintln!("nimbus: planner: host {host} joined");
                        Reply::Registered {
                            host,
                            heartbeat_ms: config.heartbeat.as_millis() as u64,
                            state: config.state.clone(),
                        }
                    }
                    Err(full) => Reply::Error(full.to_string()),
                },
                Request::Heartbeat { host, report } => {
                    match registry.heartbeat(host, report, now) {
                        Ok(()) => Reply::Ack,
                        Err(unknown) => Reply::Error(unknown.to_string()),
                    }
                }
                Request::Hosts => Reply::Hosts(registry.hosts(now)),
                Request::Place { near, app } => match registry.place(near, app.as_deref(), now) {
                    Ok((host, address)) => Reply::Placed { host, address },
                    Err(full) => Reply::Error(full.to_string()),
                },
            }
        };
        write_message(&mut write, &reply).await?;
    }
}

/// Reads one message; `None` at a clean end of the stream.
async fn read_message<T: for<'de> Deserialize<'de>>(
    read: &mut BufReader<OwnedReadHalf>,
) -> Result<Option<T>, String> {
    let mut line = String::new();
    let n = read
        .take(MAX_LINE + 1)
        .read_line(&mut line)
        .await
        .map_err(|e| e.to_string())?;
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with('\n') {
        return Err(format!("a line longer than {MAX_LINE} bytes, or cut short"));
    }
    serde_json::from_str(&line)
        .map(Some)
        .map_err(|e| format!("malformed message: {e}"))
}

async fn write_message<T: Serialize>(
    write: &mut OwnedWriteHalf,
    message: &T,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).expect("control messages serialise");
    line.push(b'\n');
    write.write_all(&line).await
}

/// A connection to the planner.
struct Connection {
    addr: String,
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl Connection {
    async fn open(addr: &str) -> Result<Connection, ControlError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ControlError::Io {
                addr: addr.to_owned(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        Ok(Connection {
            addr: addr.to_owned(),
            read: BufReader::new(read),
            write,
        })
    }

    async fn request(&mut self, request: &Request) -> Result<Reply, ControlError> {
        let io = |source| ControlError::Io {
            addr: self.addr.clone(),
            source,
        };
        write_message(&mut self.write, request).await.map_err(io)?;
        let protocol = |reason: String| ControlError::Protocol {
            addr: self.addr.clone(),
            reason,
        };
        match read_message::<Reply>(&mut self.read)
            .await
            .map_err(protocol)?
        {
            None => Err(protocol("the planner closed the connection".into())),
            Some(Reply::Error(message)) => Err(ControlError::Refused {
                addr: self.addr.clone(),
                message,
            }),
            Some(reply) => Ok(reply),
        }
    }

    fn unexpected(&self, reply: Reply) -> ControlError {
        ControlError::Protocol {
            addr: self.addr.clone(),
            reason: format!("unexpected reply {reply:?}"),
        }
    }
}

/// A worker's membership with the planner: joined once, then heartbeating.
pub struct PlannerLink {
    connection: Connection,
    host: HostId,
    heartbeat: Duration,
    state: Option<String>,
}

impl PlannerLink {
    /// Joins the planner at `addr`, which assigns this host its id.
    pub async fn join(addr: &str, info: HostInfo) -> Result<PlannerLink, ControlError> {
        let mut connection = Connection::open(addr).await?;
        match connection.request(&Request::Register(info)).await? {
            Reply::Registered {
                host,
                heartbeat_ms,
                state,
            } => Ok(PlannerLink {
                connection,
                host,
                heartbeat: Duration::from_millis(heartbeat_ms.max(1)),
                state,
            }),
            other => Err(connection.unexpected(other)),
        }
    }

    /// The id the planner assigned.
    pub fn host(&self) -> HostId {
        self.host
    }

    /// Where the cluster's global state tier is served, if the planner serves one.
    pub fn state_address(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// How often the planner wants a heartbeat.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat
    }

    /// Reports the host's load. An error means the planner is gone or has dropped
    /// this host; either way the host is no longer part of the cluster.
    pub async fn heartbeat(&mut self, report: HostReport) -> Result<(), ControlError> {
        let host = self.host;
        match self
            .connection
            .request(&Request::Heartbeat { host, report })
            .await?
        {
            Reply::Ack => Ok(()),
            other => Err(self.connection.unexpected(other)),
        }
    }
}

/// A client of the planner: asks where to place processes and who the hosts are.
pub struct Planner {
    connection: Connection,
}

impl Planner {
    /// Connects to the planner at `addr`.
    pub async fn connect(addr: &str) -> Result<Planner, ControlError> {
        Ok(Planner {
            connection: Connection::open(addr).await?,
        })
    }

    /// Picks the host for a new process of `app` (hosts running the app, then
    /// `near`, the parent's host, are preferred on ties); returns it and its
    /// address. Refused when every host is full.
    pub async fn place(
        &mut self,
        near: Option<HostId>,
        app: Option<String>,
    ) -> Result<(HostId, String), ControlError> {
        match self
            .connection
            .request(&Request::Place { near, app })
            .await?
        {
            Reply::Placed { host, address } => Ok((host, address)),
            other => Err(self.connection.unexpected(other)),
        }
    }

    /// Every registered host, by id.
    pub async fn hosts(&mut self) -> Result<Vec<HostStatus>, ControlError> {
        match self.connection.request(&Request::Hosts).await? {
            Reply::Hosts(hosts) => Ok(hosts),
            other => Err(self.connection.unexpected(other)),
        }
    }
}

/// The hosts registered with the planner at `addr`.
pub async fn hosts(addr: &str) -> Result<Vec<HostStatus>, ControlError> {
    Planner::connect(addr).await?.hosts().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn planner(timeout: Duration) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let config = PlannerConfig {
            heartbeat: timeout / 4,
            timeout,
            state: Some("127.0.0.1:2".into()),
            budgets: vec![("small".into(), 1)],
        };
        tokio::spawn(serve_planner(listener, config));
        addr
    }

    fn info() -> HostInfo {
        HostInfo {
            cpus: 2,
            memory: 1 << 30,
            capacity: 10,
            address: "127.0.0.1:1".into(),
        }
    }

    #[tokio::test]
    async fn workers_join_report_and_are_listed() {
        let addr = planner(Duration::from_secs(60)).await;
        let mut first = PlannerLink::join(&addr, info()).await.unwrap();
        let second = PlannerLink::join(&addr, info()).await.unwrap();
        assert_eq!((first.host(), second.host()), (HostId(1), HostId(2)));
        assert_eq!(first.state_address(), Some("127.0.0.1:2"));
        let report = HostReport {
            processes: 3,
            instantiated: 2,
            waiting: 1,
            memory_used: 5 << 20,
            cpu_percent: 40,
            network: (100, 200),
            apps: [("app".to_owned(), 3)].into(),
            local_state: [("app".to_owned(), 64)].into(),
        };
        first.heartbeat(report.clone()).await.unwrap();
        let listed = hosts(&addr).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!((listed[0].host, &listed[0].report), (HostId(1), &report));
    }

    #[tokio::test]
    async fn placement_spreads_over_hosts_and_refuses_when_none() {
        let addr = planner(Duration::from_secs(60)).await;
        let mut planner = Planner::connect(&addr).await.unwrap();
        assert!(matches!(
            planner.place(None, None).await,
            Err(ControlError::Refused { .. })
        ));
        let first = PlannerLink::join(&addr, info()).await.unwrap();
        let second = PlannerLink::join(&addr, info()).await.unwrap();
        let near = Some(first.host());
        let (a, address) = planner.place(near, Some("app".into())).await.unwrap();
        let (b, _) = planner.place(near, Some("app".into())).await.unwrap();
        assert_eq!((a, b), (first.host(), second.host()));
        assert_eq!(address, "127.0.0.1:1");
        // An app at its budget is refused, with the reason.
        planner.place(None, Some("small".into())).await.unwrap();
        let refused = planner.place(None, Some("small".into())).await;
        assert!(
            matches!(&refused, Err(ControlError::Refused { message, .. }) if message.contains("budget of 1")),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_silent_worker_is_dropped_and_told_so() {
        let addr = planner(Duration::from_millis(200)).await;
        let mut silent = PlannerLink::join(&addr, info()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !hosts(&addr).await.unwrap().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the silent host was never dropped"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let refused = silent.heartbeat(HostReport::default()).await;
        assert!(
            matches!(refused, Err(ControlError::Refused { .. })),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn garbage_gets_an_error_not_a_crash() {
        let addr = planner(Duration::from_secs(60)).await;
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(b"{\"nonsense\": 1}\n").await.unwrap();
        let mut answer = String::new();
        BufReader::new(&mut stream)
            .read_line(&mut answer)
            .await
            .unwrap();
        assert!(answer.contains("malformed"), "{answer}");
        assert!(hosts(&addr).await.unwrap().is_empty());
    }
}
