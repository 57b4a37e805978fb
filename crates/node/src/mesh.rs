//! A node's side of the mesh ([`Mesh`]): its address, its links to peers, the
//! planner that places processes, the modules it can hand out, and the output and
//! stdin of trees homed elsewhere. What nodes ask each other is
//! `nimbus_wire::peer`; `nimbus-mesh` carries it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use nimbus_control::{ControlError, Planner};
use nimbus_core::{ExitStatus, Failure, HostId, Pid};
use nimbus_mesh::{Frame, Link, Links, MeshError, Replies, Ticket};
use nimbus_runtime::{AbiError, BoxFuture, ModuleBytes, Output, OutputSink, WeakModule};
use nimbus_trust::Tls;
use nimbus_wire::peer::{Home, LineageWire, ProcessInfo, Reply, Request};
use std::net::TcpStream;

use tokio::io::AsyncWrite;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::PollSender;

use crate::lineage::{Lineage, World};

/// How a node joins the mesh.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// The address other nodes reach this one at.
    pub address: String,
    /// The planner that places processes.
    pub planner: String,
    /// The host directories trees started by peers may preopen or spawn modules
    /// from: these and what is under them, nothing else (`nimbus worker
    /// --allow-dir`).
    pub allowed_dirs: Vec<PathBuf>,
    /// This node's credentials, with which it reaches the planner and its peers.
    pub tls: Arc<Tls>,
}

/// The reply saying a request failed with `error`.
pub(crate) fn error_reply(error: AbiError) -> Reply {
    Reply::Error { code: error.code() }
}

/// A reply as a frame without a body.
pub(crate) trait ReplyFrame {
    fn frame(&self) -> Frame;
}

impl ReplyFrame for Reply {
    fn frame(&self) -> Frame {
        Frame::new(self, Vec::new())
    }
}

/// Reads a reply's head; a malformed one or an error reply is the matching
/// [`AbiError`].
pub(crate) fn reply(frame: &Frame) -> Result<Reply, AbiError> {
    match frame.head::<Reply>() {
        Ok(Reply::Error { code }) => Err(AbiError::from_code(code)),
        Ok(reply) => Ok(reply),
        Err(_) => Err(AbiError::Internal),
    }
}

/// How often a spawn asks the planner again while every host is full.
const PLACE_RETRY: Duration = Duration::from_millis(20);

/// A node's side of the mesh.
pub(crate) struct Mesh {
    address: String,
    planner: Planner,
    /// `MeshConfig::allowed_dirs`, resolved.
    allowed_dirs: Arc<Vec<PathBuf>>,
    links: Links,
    /// Host addresses, learnt from placements and the planner's host list.
    hosts: Mutex<HashMap<HostId, String>>,
    /// Modules this node can hand to others, by hash: those of processes it
    /// started or spawned, for as long as something here holds them (a process's
    /// table entry, a lineage, a run), which is as long as a peer may ask.
    modules: Mutex<HashMap<String, WeakModule>>,
    /// The lineages of trees homed elsewhere with processes here.
    guests: Mutex<HashMap<Home, Weak<Lineage>>>,
}

impl Mesh {
    /// A node's side of the mesh; fails only if the planner's address is not one.
    pub(crate) fn new(config: &MeshConfig) -> Result<Mesh, ControlError> {
        Ok(Mesh {
            address: config.address.clone(),
            planner: Planner::new(&config.planner, &config.tls)?,
            // A directory that does not exist allows nothing.
            allowed_dirs: Arc::new(
                config
                    .allowed_dirs
                    .iter()
                    .filter_map(|dir| std::fs::canonicalize(dir).ok())
                    .collect(),
            ),
            links: Links::new(config.tls.clone()),
            hosts: Mutex::default(),
            modules: Mutex::default(),
            guests: Mutex::default(),
        })
    }

    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// The link to `addr`, connecting (again) if there is none standing.
    pub(crate) async fn link(&self, addr: &str) -> Result<Arc<Link>, MeshError> {
        self.links.get(addr).await
    }

    /// Calls `addr` with `request` and `body`.
    pub(crate) async fn call(
        &self,
        addr: &str,
        request: &Request,
        body: Vec<u8>,
    ) -> Result<Replies, MeshError> {
        self.link(addr).await?.call(Frame::new(request, body)).await
    }

    /// Calls `addr` and reads its one reply.
    pub(crate) async fn call_one(
        &self,
        addr: &str,
        request: &Request,
        body: Vec<u8>,
    ) -> Result<Frame, AbiError> {
        let mut replies = self
            .call(addr, request, body)
            .await
            .map_err(|_| AbiError::NoSuchProcess)?;
        replies.next().await.map_err(|_| AbiError::NoSuchProcess)
    }

    /// Opens a channel of messages from `from` to `to` on another worker: asks that
    /// worker for a ticket over the mesh, then connects with it.
    pub(crate) async fn open_channel(&self, from: Pid, to: Pid) -> Result<TcpStream, AbiError> {
        let address = self
            .address_of(to.origin_host())
            .await
            .ok_or(AbiError::NoSuchProcess)?;
        let answer = self
            .call_one(&address, &Request::Stream { from, to }, Vec::new())
            .await?;
        let Reply::Ticket(ticket) = reply(&answer)? else {
            return Err(AbiError::Internal);
        };
        let stream = nimbus_mesh::open_channel(&address, Ticket::from_bytes(ticket))
            .await
            .map_err(|_| AbiError::NoSuchProcess)?;
        stream.into_std().map_err(|_| AbiError::Internal)
    }

    /// Asks the planner for a host for a process of `app`, waiting up to `wait`
    /// while every host is full.
    pub(crate) async fn place(
        &self,
        near: Option<HostId>,
        app: &str,
        wait: Duration,
    ) -> Result<(HostId, String), AbiError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let app = Some(app.to_owned());
            match self.planner.place(near, app).await {
                Ok((host, address)) => {
                    self.hosts.lock().unwrap().insert(host, address.clone());
                    return Ok((host, address));
                }
                Err(ControlError::Refused { .. })
                    if tokio::time::Instant::now() + PLACE_RETRY < deadline =>
                {
                    tokio::time::sleep(PLACE_RETRY).await;
                }
                Err(ControlError::Refused { .. }) => return Err(AbiError::Quota),
                Err(_) => return Err(AbiError::Internal),
            }
        }
    }

    /// Places a process of `app` and starts it with `start` on the host chosen. The
    /// planner's view lags the workers' reports, so a host it picks may turn out
    /// full (`ERR_QUOTA`); then it is asked again, for up to `wait` in all.
    pub(crate) async fn place_and_start<T, Started>(
        &self,
        near: Option<HostId>,
        app: &str,
        wait: Duration,
        mut start: impl FnMut(HostId, String) -> Started,
    ) -> Result<T, AbiError>
    where
        Started: std::future::Future<Output = Result<T, AbiError>>,
    {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let (host, address) = self.place(near, app, left).await?;
            match start(host, address).await {
                Err(AbiError::Quota) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(PLACE_RETRY).await;
                }
                started => return started,
            }
        }
    }

    /// The address of `host`, from what this node learnt or else the planner.
    pub(crate) async fn address_of(&self, host: HostId) -> Option<String> {
        if let Some(address) = self.hosts.lock().unwrap().get(&host) {
            return Some(address.clone());
        }
        let hosts = self.planner.hosts().await.ok()?;
        let mut known = self.hosts.lock().unwrap();
        for status in hosts {
            known.insert(status.host, status.info.address);
        }
        known.get(&host).cloned()
    }

    /// Makes `module` available to nodes that fetch it from here.
    pub(crate) fn offer(&self, module: &ModuleBytes) {
        let mut modules = self.modules.lock().unwrap();
        // Forgetting what nothing holds any more keeps the map to the modules in use.
        modules.retain(|_, offered| offered.is_held());
        // The newest holder's: its caller holds it across the call that makes a
        // peer fetch it, where an older holder may let go meanwhile.
        modules.insert(module.hash().to_string(), module.downgrade());
    }

    pub(crate) fn offered(&self, hash: &str) -> Option<ModuleBytes> {
        self.modules.lock().unwrap().get(hash)?.upgrade()
    }

    /// The module with `hash`: offered here, or fetched from `from` and checked.
    pub(crate) async fn module(&self, hash: &str, from: &str) -> Result<ModuleBytes, AbiError> {
        if let Some(module) = self.offered(hash) {
            return Ok(module);
        }
        let request = Request::Fetch {
            module: hash.to_owned(),
        };
        let frame = self.call_one(from, &request, Vec::new()).await?;
        reply(&frame)?;
        let module = ModuleBytes::hash_off_thread(frame.body)
            .await
            .ok_or(AbiError::Internal)?;
        if module.hash().to_string() != hash {
            return Err(AbiError::Module);
        }
        self.offer(&module);
        Ok(module)
    }

    /// `wire` kept within the directories this node allows ([`LineageWire::confine`]),
    /// resolved off the async threads; a tree that asks for more is refused.
    pub(crate) async fn confine(&self, mut wire: LineageWire) -> Result<LineageWire, AbiError> {
        let allowed = self.allowed_dirs.clone();
        tokio::task::spawn_blocking(move || {
            crate::lineage::confine(&mut wire, &allowed)
                .map(|()| wire)
                .map_err(|why| {
                    tracing::warn!("refused a process tree from a peer: {why}");
                    AbiError::Invalid
                })
        })
        .await
        .map_err(|_| AbiError::Internal)?
    }

    /// The lineage here of a tree homed elsewhere: one per tree on each host, so
    /// its processes here share loaded modules and output streams.
    /// Also says whether it was made just now.
    pub(crate) fn guest_lineage(
        self: &Arc<Self>,
        wire: LineageWire,
    ) -> Result<(Arc<Lineage>, bool), AbiError> {
        let mut guests = self.guests.lock().unwrap();
        if let Some(lineage) = guests.get(&wire.home).and_then(Weak::upgrade) {
            return Ok((lineage, false));
        }
        guests.retain(|_, lineage| lineage.strong_count() > 0);
        let home = wire.home.clone();
        let output = (
            Output::Sink(Forward::start(self.clone(), home.clone(), false)),
            Output::Sink(Forward::start(self.clone(), home.clone(), true)),
        );
        let world = wire.world.then(|| self.world_of(home.clone()));
        let lineage =
            Arc::new(Lineage::from_wire(wire, output, world).map_err(|_| AbiError::Invalid)?);
        guests.insert(home, Arc::downgrade(&lineage));
        Ok((lineage, true))
    }

    /// Resolves when the node at `home` is gone (or cannot be reached).
    pub(crate) async fn home_gone(&self, home: &Home) {
        if let Ok(link) = self.link(&home.address).await {
            link.closed().await;
        }
    }

    /// The world of a tree homed elsewhere, filled in once its home answers.
    fn world_of(self: &Arc<Self>, home: Home) -> World {
        let (members, world) = watch::channel(None);
        let mesh = self.clone();
        tokio::spawn(async move {
            let request = Request::World { tree: home.id };
            if let Ok(frame) = mesh.call_one(&home.address, &request, Vec::new()).await
                && let Ok(Reply::World { pids }) = reply(&frame)
            {
                members.send_replace(Some(pids.into()));
            }
        });
        world
    }

    /// Asks every host the planner knows; returns each one's reply, or why it
    /// gave none.
    pub(crate) async fn ask_all(
        &self,
        request: &Request,
    ) -> Result<Vec<Result<Reply, String>>, String> {
        let hosts = self.planner.hosts().await.map_err(|e| e.to_string())?;
        let mut replies = Vec::new();
        for host in hosts {
            let answer = self
                .call_one(&host.info.address, request, Vec::new())
                .await
                .and_then(|frame| reply(&frame))
                .map_err(|e| format!("host {} at {}: {e}", host.host, host.info.address));
            replies.push(answer);
        }
        Ok(replies)
    }

    /// Every process on every host the planner knows, with the host it runs on,
    /// and why each host that did not answer did not.
    pub(crate) async fn processes(&self) -> Result<(Vec<ProcessInfo>, Vec<String>), String> {
        let (mut all, mut silent) = (Vec::new(), Vec::new());
        for answer in self.ask_all(&Request::Processes).await? {
            match answer {
                Ok(Reply::Processes(processes)) => all.extend(processes),
                Ok(_) => {}
                Err(why) => silent.push(why),
            }
        }
        Ok((all, silent))
    }
}

/// A stream of a tree's processes on this host, carried to the tree's home in
/// order by one task. Writers queue chunks; a bounded queue holds back a guest
/// that writes faster than the home takes it.
#[derive(Debug)]
struct Forward {
    chunks: mpsc::Sender<Chunk>,
}

#[derive(Debug)]
enum Chunk {
    Bytes(Vec<u8>),
    /// Answered once every chunk before it reached the home.
    Drained(oneshot::Sender<()>),
}

/// Chunks queued per stream before writers wait.
const FORWARD_QUEUE: usize = 64;

impl Forward {
    fn start(mesh: Arc<Mesh>, home: Home, stderr: bool) -> Arc<Forward> {
        let (chunks, mut queue) = mpsc::channel(FORWARD_QUEUE);
        tokio::spawn(async move {
            let request = Request::Output {
                tree: home.id,
                stderr,
            };
            while let Some(chunk) = queue.recv().await {
                match chunk {
                    // A home that is gone has no one left to show output to.
                    Chunk::Bytes(bytes) => {
                        drop(mesh.call_one(&home.address, &request, bytes).await)
                    }
                    Chunk::Drained(done) => drop(done.send(())),
                }
            }
        });
        Arc::new(Forward { chunks })
    }
}

impl OutputSink for Forward {
    fn writer(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(ForwardWriter {
            chunks: PollSender::new(self.chunks.clone()),
        })
    }

    fn drained(&self) -> BoxFuture<'static, ()> {
        let chunks = self.chunks.clone();
        Box::pin(async move {
            let (done, drained) = oneshot::channel();
            if chunks.send(Chunk::Drained(done)).await.is_ok() {
                let _ = drained.await;
            }
        })
    }
}

/// Largest chunk forwarded in one call.
const MAX_CHUNK: usize = 64 << 10;

struct ForwardWriter {
    chunks: PollSender<Chunk>,
}

impl AsyncWrite for ForwardWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let closed = || std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        ready!(self.chunks.poll_reserve(cx)).map_err(|_| closed())?;
        let n = buf.len().min(MAX_CHUNK);
        self.chunks
            .send_item(Chunk::Bytes(buf[..n].to_vec()))
            .map_err(|_| closed())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The status of a process started elsewhere, from the rest of its start call:
/// a broken call means its host was lost.
pub(crate) async fn ended(mut replies: Replies) -> ExitStatus {
    match replies.next().await.map(|frame| reply(&frame)) {
        Ok(Ok(Reply::Ended { status })) => status,
        _ => ExitStatus::Failed(Failure::HostLost),
    }
}

/// Answers a request any node answers; `None` for requests it does not.
pub(crate) fn answer_common(mesh: &Mesh, request: &Request) -> Option<Frame> {
    match request {
        Request::Fetch { module } => Some(match mesh.offered(module) {
            Some(module) => Frame::new(&Reply::Module, module.bytes().to_vec()),
            None => error_reply(AbiError::Module).frame(),
        }),
        _ => None,
    }
}

/// Asks the worker at `address` to start a process; returns its pid and the rest
/// of the call, which ends when the process does (see [`ended`]).
pub(crate) async fn start(
    mesh: &Mesh,
    address: &str,
    request: &Request,
) -> Result<(Pid, Replies), AbiError> {
    let mut replies = mesh
        .call(address, request, Vec::new())
        .await
        .map_err(|_| AbiError::Internal)?;
    let first = replies.next().await.map_err(|_| AbiError::Internal)?;
    match reply(&first)? {
        Reply::Started { pid } => Ok((pid, replies)),
        _ => Err(AbiError::Internal),
    }
}

/// Stdin read from a tree's home, a chunk per call as the process reads it, so a
/// process on a worker reads the terminal or pipe of the `nimbus run` that started it.
pub(crate) struct RemoteStdin {
    mesh: Arc<Mesh>,
    home: Home,
    /// The call under way; in a mutex only because a reader must be `Sync`.
    pending: Mutex<Option<BoxFuture<'static, Result<Frame, AbiError>>>>,
    chunk: Vec<u8>,
    read: usize,
    ended: bool,
}

impl RemoteStdin {
    pub(crate) fn new(mesh: Arc<Mesh>, home: Home) -> RemoteStdin {
        RemoteStdin {
            mesh,
            home,
            pending: Mutex::new(None),
            chunk: Vec::new(),
            read: 0,
            ended: false,
        }
    }
}

impl tokio::io::AsyncRead for RemoteStdin {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.read < this.chunk.len() {
                let n = buf.remaining().min(this.chunk.len() - this.read);
                buf.put_slice(&this.chunk[this.read..this.read + n]);
                this.read += n;
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            let mut pending = this.pending.lock().unwrap();
            let call = pending.get_or_insert_with(|| {
                let (mesh, home) = (this.mesh.clone(), this.home.clone());
                Box::pin(async move {
                    let request = Request::Stdin { tree: home.id };
                    mesh.call_one(&home.address, &request, Vec::new()).await
                })
            });
            let answer = ready!(call.as_mut().poll(cx));
            *pending = None;
            drop(pending);
            match answer.as_ref().map(reply) {
                Ok(Ok(Reply::Input)) if !answer.as_ref().is_ok_and(|f| f.body.is_empty()) => {
                    this.chunk = answer.map(|f| f.body).unwrap_or_default();
                    this.read = 0;
                }
                // The end of stdin, or a home that is gone: either way, end of file.
                _ => this.ended = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_is_offered_while_something_holds_it_and_forgotten_after() {
        let mesh = Mesh::new(&MeshConfig {
            address: "127.0.0.1:1".into(),
            planner: "127.0.0.1:2".into(),
            allowed_dirs: Vec::new(),
            tls: nimbus_trust::Tls::ephemeral().unwrap(),
        })
        .unwrap();
        let held = ModuleBytes::new(b"\0asm held".to_vec());
        let hash = held.hash().to_string();
        mesh.offer(&held);
        assert_eq!(mesh.offered(&hash).unwrap().bytes(), held.bytes());
        drop(held);
        assert!(mesh.offered(&hash).is_none());
        // Many modules offered and let go leave nothing behind.
        for n in 0..1_000u32 {
            mesh.offer(&ModuleBytes::new(n.to_le_bytes().to_vec()));
        }
        assert!(mesh.modules.lock().unwrap().len() <= 1);
    }
}
