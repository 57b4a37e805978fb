//! The mesh servers: a worker answering its peers, and the home of a process tree
//! submitted from outside the cluster (`nimbus run --planner`), which answers for
//! the tree's output, stdin, world and modules.

use std::sync::Arc;

use nimbus_core::{ExitStatus, Pid};
use nimbus_mesh::{Frame, Handler, HandlerFuture, Replier, Ticket, Tickets};
use nimbus_runtime::{AbiError, BoxFuture, ChannelSlot, Input, MailboxSender};
use nimbus_trust::Tls;
use nimbus_wire::peer::{AppRequest, Home, ProcessInfo, Reply, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::cluster::{Cluster, ClusterError, PeerStart, RootProcess, SPAWN_WAIT, world_outcome};
use crate::lineage::Lineage;
use crate::mesh::{Mesh, MeshConfig, ReplyFrame, answer_common, error_reply};

/// What answers the requests about apps that reach a worker over the mesh: the
/// service manager above the node (`nimbus-services`). The node hands them on unread.
pub trait AppRequests: Send + Sync + 'static {
    /// The reply to `request`, whose frame's body was `body`.
    fn answer(self: Arc<Self>, request: AppRequest, body: Vec<u8>) -> BoxFuture<'static, Frame>;
}

/// Serves the worker `cluster` (built with a mesh) and its `apps` to its peers and
/// gateways on `listener`, forever (accept errors pause it, see
/// [`nimbus_mesh::serve`]).
pub async fn serve_worker(
    listener: TcpListener,
    tls: Arc<Tls>,
    cluster: Arc<Cluster>,
    apps: Arc<dyn AppRequests>,
) -> std::convert::Infallible {
    let worker = Arc::new(Worker {
        cluster,
        apps,
        channels: Tickets::default(),
    });
    // What an unredeemed ticket reserved (a channel's place, a mailbox's sender)
    // is given back once it expires.
    let sweeping = {
        let worker = worker.clone();
        async move {
            let mut ticks = tokio::time::interval(nimbus_mesh::TICKET_LIFETIME);
            loop {
                ticks.tick().await;
                worker.channels.sweep();
            }
        }
    };
    tokio::select! {
        never = nimbus_mesh::serve(listener, tls, worker) => never,
        never = sweeping => never,
    }
}

struct Worker {
    cluster: Arc<Cluster>,
    apps: Arc<dyn AppRequests>,
    /// Channels a peer asked for, each waiting for its opener to connect with the
    /// ticket it was given: the receiver's mailbox, the sender, and the channel's
    /// place, reserved in the mailbox until the ticket is redeemed or expires.
    channels: Tickets<(MailboxSender, Pid, ChannelSlot)>,
}

impl Handler for Worker {
    fn handle(self: Arc<Self>, request: Frame, replier: Replier) -> HandlerFuture {
        Box::pin(async move {
            let Some(mesh) = self.cluster.mesh() else {
                return replier
                    .finish(error_reply(AbiError::Internal).frame())
                    .await;
            };
            let Ok(head) = request.head::<Request>() else {
                return replier.finish(error_reply(AbiError::Invalid).frame()).await;
            };
            if let Some(answer) = answer_common(mesh, &head) {
                return replier.finish(answer).await;
            }
            if let Request::App(head) = head {
                let answer = self.apps.clone().answer(head, request.body).await;
                return replier.finish(answer).await;
            }
            let answer = match head {
                Request::Start {
                    lineage,
                    module,
                    from,
                    args,
                    parent,
                    stdin,
                } => {
                    let start = PeerStart {
                        lineage: *lineage,
                        module,
                        from,
                        args,
                        parent,
                        stdin,
                    };
                    return self.cluster.start_for_peer(start, replier).await;
                }
                Request::Kill { pid } => match self.cluster.kill(pid) {
                    Ok(()) => Reply::Done,
                    Err(error) => error_reply(error),
                },
                Request::Processes => Reply::Processes(self.cluster.processes()),
                Request::EndTree { home } => {
                    self.cluster.end_tree(&home);
                    Reply::Done
                }
                Request::Stream { from, to } => self.grant_channel(from, to),
                _ => error_reply(AbiError::Invalid),
            };
            replier.finish(answer.frame()).await;
        })
    }

    fn redeem(self: Arc<Self>, ticket: Ticket, mut stream: TcpStream) -> HandlerFuture {
        Box::pin(async move {
            let Some((mailbox, from, slot)) = self.channels.redeem(&ticket) else {
                return;
            };
            if nimbus_mesh::accept_channel(&mut stream).await.is_err() {
                return;
            }
            if let Ok(stream) = stream.into_std() {
                // A receiver that ended since drops the stream, and its sender's next
                // send finds it closed.
                let _ = mailbox.attach(from, stream, slot);
            }
        })
    }
}

impl Worker {
    /// Grants a peer a channel of messages from `from` to `to`, a process here: a
    /// ticket to open it with. A receiver holding as many channels as it may
    /// refuses more: its opener's send is `ERR_QUOTA`.
    fn grant_channel(&self, from: Pid, to: Pid) -> Reply {
        let granted = self
            .cluster
            .mailbox(to)
            .ok_or(AbiError::NoSuchProcess)
            .and_then(|mailbox| {
                let slot = mailbox.reserve_channel()?;
                self.channels
                    .issue((mailbox, from, slot))
                    .ok_or(AbiError::Quota)
            });
        match granted {
            Ok(ticket) => Reply::Ticket(ticket.to_bytes()),
            Err(error) => error_reply(error),
        }
    }
}

/// The id of the one tree a submission's home serves.
const TREE: u64 = 1;

/// The home of a submitted tree.
struct TreeHome {
    mesh: Arc<Mesh>,
    tree: Arc<Lineage>,
    world: watch::Receiver<Option<Arc<[Pid]>>>,
    /// The root's stdin, read as the root asks for it.
    stdin: tokio::sync::Mutex<Box<dyn AsyncRead + Send + Unpin>>,
}

/// The most stdin one call carries.
const STDIN_CHUNK: usize = 64 << 10;

impl Handler for TreeHome {
    fn handle(self: Arc<Self>, request: Frame, replier: Replier) -> HandlerFuture {
        Box::pin(async move {
            let answer = match request.head::<Request>() {
                Err(_) => error_reply(AbiError::Invalid).frame(),
                Ok(head) => match answer_common(&self.mesh, &head) {
                    Some(answer) => answer,
                    None => self.answer(head, request.body).await,
                },
            };
            replier.finish(answer).await;
        })
    }
}

impl TreeHome {
    async fn answer(&self, request: Request, body: Vec<u8>) -> Frame {
        match request {
            Request::Stdin { tree: TREE } => {
                let mut chunk = vec![0; STDIN_CHUNK];
                let n = self.stdin.lock().await.read(&mut chunk).await.unwrap_or(0);
                chunk.truncate(n);
                Frame::new(&Reply::Input, chunk)
            }
            request => self.answer_plain(request, body).await.frame(),
        }
    }

    async fn answer_plain(&self, request: Request, body: Vec<u8>) -> Reply {
        match request {
            Request::Output { tree: TREE, stderr } => {
                let output = if stderr {
                    &self.tree.stderr
                } else {
                    &self.tree.stdout
                };
                let mut writer = Box::into_pin(output.writer(stderr));
                let _ = writer.write_all(&body).await;
                let _ = writer.flush().await;
                Reply::Done
            }
            Request::World { tree: TREE } => {
                let mut world = self.world.clone();
                match world.wait_for(Option::is_some).await {
                    Ok(members) => Reply::World {
                        pids: members.as_deref().unwrap_or_default().to_vec(),
                    },
                    Err(_) => error_reply(AbiError::Internal),
                }
            }
            _ => error_reply(AbiError::Invalid),
        }
    }
}

/// Runs `root` on the cluster of workers whose planner is at `planner`, as
/// `ranks` ranks of one world if `ranks` is given (see `Cluster::run_world`).
/// This node is the tree's home: its output arrives here, and the modules of the
/// tree are fetched from here.
pub async fn run_on_cluster(
    planner: &str,
    tls: Arc<Tls>,
    root: RootProcess,
    ranks: Option<u16>,
) -> Result<ExitStatus, ClusterError> {
    let remote = |e: &dyn std::fmt::Display| ClusterError::Remote(e.to_string());
    // Listen on the interface that reaches the planner, so workers reach us too.
    let probe = tokio::net::TcpStream::connect(planner)
        .await
        .map_err(|e| remote(&format!("planner {planner}: {e}")))?;
    let ip = probe.local_addr().map_err(|e| remote(&e))?.ip();
    drop(probe);
    let listener = TcpListener::bind((ip, 0)).await.map_err(|e| remote(&e))?;
    let address = listener.local_addr().map_err(|e| remote(&e))?.to_string();
    let mesh = Arc::new(
        Mesh::new(&MeshConfig {
            address: address.clone(),
            planner: planner.to_owned(),
            allowed_dirs: Vec::new(),
            tls: tls.clone(),
        })
        .map_err(|e| remote(&e))?,
    );

    let (lineage, module, args, stdin) = root.into_parts();
    let (members, world) = watch::channel(None);
    let mut lineage = lineage.with_home(Home {
        address: address.clone(),
        id: TREE,
    });
    if ranks.is_some() {
        lineage = lineage.with_world(world.clone());
    }
    let tree = Arc::new(lineage);
    mesh.offer(&module);
    let reads_stdin = !matches!(stdin, Input::Null);
    let stdin: Box<dyn AsyncRead + Send + Unpin> = match stdin {
        Input::Inherit => Box::new(tokio::io::stdin()),
        Input::Bytes(bytes) => Box::new(std::io::Cursor::new(bytes)),
        Input::Null => Box::new(tokio::io::empty()),
        Input::Stream(_) => return Err(remote(&"a stream as the stdin of a cluster run")),
    };
    let home = Arc::new(TreeHome {
        mesh: mesh.clone(),
        tree: tree.clone(),
        world,
        stdin: tokio::sync::Mutex::new(stdin),
    });
    let serving = tokio::spawn(nimbus_mesh::serve(listener, tls, home));

    let start_rank = |stdin| Request::Start {
        lineage: Box::new(tree.wire().expect("the tree has a home")),
        module: module.hash().to_string(),
        from: address.clone(),
        args: args.clone(),
        parent: None,
        stdin,
    };
    let (ended, endings) = mpsc::unbounded_channel();
    let mut started: Vec<(Pid, String)> = Vec::new();
    for rank in 0..ranks.unwrap_or(1) {
        // Rank 0 reads the run's stdin.
        let request = start_rank(rank == 0 && reads_stdin);
        let start = mesh
            .place_and_start(None, tree.app.as_str(), SPAWN_WAIT, |_, worker| {
                let (mesh, request) = (&mesh, &request);
                async move {
                    let (pid, replies) = crate::mesh::start(mesh, &worker, request).await?;
                    Ok((pid, replies, worker))
                }
            })
            .await;
        match start {
            Ok((pid, replies, worker)) => {
                started.push((pid, worker));
                let ended = ended.clone();
                tokio::spawn(async move {
                    let _ = ended.send(crate::mesh::ended(replies).await);
                });
            }
            Err(error) => {
                // The started ranks wait for a world that will never be whole.
                kill_all(&mesh, &started);
                serving.abort();
                return Err(match error {
                    AbiError::Quota => ClusterError::Remote(
                        "no worker has room for it, or its app is at its budget".into(),
                    ),
                    AbiError::Module => {
                        ClusterError::Remote("a worker cannot load the module".into())
                    }
                    other => ClusterError::Remote(format!("no worker could start it ({other})")),
                });
            }
        }
    }
    members.send_replace(Some(started.iter().map(|(pid, _)| *pid).collect()));
    drop(ended);
    let outcome = world_outcome(endings, || kill_all(&mesh, &started)).await;
    // As when a local run ends, processes of the tree still running end with it.
    let home = tree.home.clone().expect("the tree has a home");
    let _ = mesh.ask_all(&Request::EndTree { home }).await;
    serving.abort();
    Ok(outcome)
}

fn kill_all(mesh: &Arc<Mesh>, started: &[(Pid, String)]) {
    for (pid, worker) in started {
        let (mesh, pid, worker) = (mesh.clone(), *pid, worker.clone());
        tokio::spawn(async move {
            let _ = mesh
                .call_one(&worker, &Request::Kill { pid }, Vec::new())
                .await;
        });
    }
}

/// Every process on the cluster whose planner is at `planner`, and why each host
/// that did not answer did not (it may have just died).
pub async fn cluster_processes(
    planner: &str,
    tls: Arc<Tls>,
) -> Result<(Vec<ProcessInfo>, Vec<String>), String> {
    let mesh = Mesh::new(&MeshConfig {
        address: String::new(),
        planner: planner.to_owned(),
        allowed_dirs: Vec::new(),
        tls,
    })
    .map_err(|e| e.to_string())?;
    mesh.processes().await
}
