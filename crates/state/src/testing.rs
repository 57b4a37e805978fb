//! A throwaway Redis server for tests and benchmarks (feature `testing`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started server may take to answer `PING`.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// Ports tried: another process may take the chosen free port before the server does.
const ATTEMPTS: usize = 3;

/// A `redis-server` child process on a free loopback port, without persistence,
/// killed when dropped.
pub struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server` from `PATH` and waits (10 s at most) until it answers
    /// `PING`. Fails, saying so, if `redis-server` is not installed
    /// (`scripts/setup.sh` installs it).
    pub fn start() -> io::Result<RedisServer> {
        let mut last = None;
        for _ in 0..ATTEMPTS {
            match RedisServer::start_once() {
                Ok(server) => return Ok(server),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    fn start_once() -> io::Result<RedisServer> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    io::Error::new(
                        e.kind(),
                        "redis-server is not on PATH: install it (scripts/setup.sh does, \
                         or apt-get install redis-server)",
                    )
                } else {
                    io::Error::new(e.kind(), format!("cannot start redis-server: {e}"))
                }
            })?;
        let mut server = RedisServer {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = server.child.try_wait()? {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(io::Error::other(format!(
                    "redis-server on port {port} exited ({status}) before answering: {}",
                    log.trim()
                )));
            }
            if ping(port).is_ok() {
                return Ok(server);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "redis-server on port {port} did not answer PING within {READY_WITHIN:?}"
                    ),
                ));
            }
            // Bounded by the deadline above; each round also waits on a connection.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Its loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its URL, `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// One `PING` over a fresh connection, expecting `+PONG`.
fn ping(port: u16) -> io::Result<()> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"PING\r\n")?;
    let mut line = String::new();
    BufReader::new((&stream).take(64)).read_line(&mut line)?;
    if line.trim_end() == "+PONG" {
        Ok(())
    } else {
        // -LOADING and the like: not ready yet.
        Err(io::Error::other(format!("PING answered {line:?}")))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
