//! The planner's gRPC server: the registry behind the `Planner` service, kept in
//! its store across restarts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nimbus_core::HostId;
use nimbus_planner::Registry;
use nimbus_trust::Tls;
use nimbus_wire::control::v1 as wire;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tonic::{Request, Response, Status};

use crate::store::Store;
use crate::{CALL_DEADLINE, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, convert};

/// How the planner paces its workers.
#[derive(Clone, Debug)]
pub struct PlannerConfig {
    /// How often workers report.
    pub heartbeat: Duration,
    /// How long a worker may stay silent before it is dropped (and, after a
    /// restart, how long a worker known from before has to report again).
    pub timeout: Duration,
    /// Where the cluster's shared global state tier is served, told to workers as
    /// they join (`None`: they bring their own).
    pub state: Option<String>,
    /// The most processes an app may run across the cluster, for the apps listed
    /// (kept in the store with those set before).
    pub budgets: Vec<(String, usize)>,
}

/// Serves the planner on `listener` until the task is dropped. The registry starts
/// from what `store` holds: hosts that joined before a restart are listed, and
/// placed on again once they report. Accepting never ends the server: a failed
/// accept (out of descriptors, say) is logged and retried after a pause.
pub async fn serve_planner(
    listener: TcpListener,
    tls: Arc<Tls>,
    config: PlannerConfig,
    store: Arc<Store>,
) -> std::io::Result<()> {
    let loaded = {
        let (store, budgets) = (store.clone(), config.budgets.clone());
        tokio::task::spawn_blocking(move || {
            store.set_budgets(&budgets)?;
            store.load()
        })
        .await
        .expect("the store does not panic")
        .map_err(std::io::Error::other)?
    };
    if !loaded.hosts.is_empty() {
        tracing::info!(
            hosts = loaded.hosts.len(),
            "planner: waiting for the hosts known from before to report again"
        );
    }
    let mut registry = Registry::restore(
        config.timeout,
        loaded.next_host,
        loaded.hosts,
        Instant::now(),
    );
    for (app, processes) in &loaded.budgets {
        registry.set_budget(app, *processes);
    }
    let registry = Arc::new(Mutex::new(registry));
    let expiry = tokio::spawn(expire(registry.clone(), store.clone(), config.timeout));
    let service = PlannerService {
        registry,
        store,
        heartbeat: config.heartbeat,
        state: config.state,
    };
    let served = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .timeout(CALL_DEADLINE)
        .add_service(wire::planner_server::PlannerServer::with_interceptor(
            service,
            nimbus_wire::require_version,
        ))
        .serve_with_incoming(accepting(listener, tls))
        .await
        .map_err(std::io::Error::other);
    expiry.abort();
    served
}

/// Drops the hosts silent for longer than `timeout`, every quarter of it, from
/// the registry and the store.
async fn expire(registry: Arc<Mutex<Registry>>, store: Arc<Store>, timeout: Duration) {
    let mut ticks = tokio::time::interval(timeout / 4);
    loop {
        ticks.tick().await;
        let dropped = registry.lock().unwrap().expire(Instant::now());
        if dropped.is_empty() {
            continue;
        }
        for host in &dropped {
            tracing::warn!(%host, ?timeout, "planner: host silent for too long: dropped");
        }
        let store = store.clone();
        let forgotten = tokio::task::spawn_blocking(move || store.remove_hosts(&dropped)).await;
        if let Ok(Err(e)) = forgotten {
            tracing::error!("planner: {e}");
        }
    }
}

/// The connections `listener` accepts from nodes of this cluster (TLS, the peer's
/// certificate signed by the cluster's CA; any other is dropped after its failed
/// handshake, before a request is read), as a stream that never fails: an error
/// (EMFILE, ECONNABORTED…) is logged and accepting goes on after a pause that grows
/// while the errors last.
fn accepting(
    listener: TcpListener,
    tls: Arc<Tls>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    const FIRST_PAUSE: Duration = Duration::from_millis(10);
    const LONGEST_PAUSE: Duration = Duration::from_secs(1);
    let (accepted, incoming) = tokio::sync::mpsc::channel(64);
    let unproven = Arc::new(tokio::sync::Semaphore::new(
        nimbus_trust::MAX_UNPROVEN_CONNECTIONS,
    ));
    tokio::spawn(async move {
        let mut pause = FIRST_PAUSE;
        loop {
            let outcome = tokio::select! {
                outcome = listener.accept() => outcome,
                // The server is gone: so is the listener.
                () = accepted.closed() => return,
            };
            match outcome {
                Ok((stream, peer)) => {
                    pause = FIRST_PAUSE;
                    let _ = stream.set_nodelay(true);
                    // Handshakes under way are bounded, so idle sockets cannot use
                    // up the descriptors.
                    let Ok(proving) = unproven.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, "planner: too many connections in their handshake: dropped");
                        continue;
                    };
                    // Each handshake on a task of its own (bounded by its deadline),
                    // so a peer that stalls in it holds up no other.
                    let (tls, accepted) = (tls.clone(), accepted.clone());
                    tokio::spawn(async move {
                        let handshake = tls.accept(stream, "h2").await;
                        drop(proving);
                        match handshake {
                            Ok(stream) => {
                                let _ = accepted.send(Ok(stream)).await;
                            }
                            Err(error) => tracing::info!(
                                %peer, %error,
                                "planner: refused a connection that is not from a node of this cluster"
                            ),
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("planner: accepting a connection: {e}; retrying in {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(LONGEST_PAUSE);
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(incoming)
}

struct PlannerService {
    registry: Arc<Mutex<Registry>>,
    store: Arc<Store>,
    heartbeat: Duration,
    state: Option<String>,
}

#[tonic::async_trait]
impl wire::planner_server::Planner for PlannerService {
    async fn join(
        &self,
        request: Request<wire::JoinRequest>,
    ) -> Result<Response<wire::JoinReply>, Status> {
        let info = request
            .into_inner()
            .info
            .map(convert::info_from_wire)
            .ok_or_else(|| Status::invalid_argument("a join without the host's info"))?;
        let (host, next_host) = {
            let mut registry = self.registry.lock().unwrap();
            let host = registry
                .register(info.clone(), Instant::now())
                .map_err(|full| Status::resource_exhausted(full.to_string()))?;
            (host, registry.next_id())
        };
        // Recorded before the host hears its id, so a restart never hands it out
        // again. A host whose join is not recorded never reports and expires.
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.add_host(host, &info, next_host))
            .await
            .expect("the store does not panic")
            .map_err(|e| Status::unavailable(format!("cannot record the join: {e}")))?;
        tracing::info!(%host, "planner: host joined");
        Ok(Response::new(wire::JoinReply {
            host: host.0,
            heartbeat_ms: self.heartbeat.as_millis() as u64,
            state: self.state.clone().unwrap_or_default(),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<wire::HeartbeatRequest>,
    ) -> Result<Response<wire::HeartbeatReply>, Status> {
        let request = request.into_inner();
        let report = convert::report_from_wire(request.report.unwrap_or_default());
        let host = HostId(request.host);
        let rejoined = self
            .registry
            .lock()
            .unwrap()
            .heartbeat(host, report, Instant::now())
            .map_err(|unknown| Status::not_found(unknown.to_string()))?;
        if rejoined {
            tracing::info!(%host, "planner: host rejoined");
        }
        Ok(Response::new(wire::HeartbeatReply {}))
    }

    async fn place(
        &self,
        request: Request<wire::PlaceRequest>,
    ) -> Result<Response<wire::PlaceReply>, Status> {
        let request = request.into_inner();
        let (host, address) = self
            .registry
            .lock()
            .unwrap()
            .place(
                request.near.map(HostId),
                request.app.as_deref(),
                Instant::now(),
            )
            .map_err(|full| Status::resource_exhausted(full.to_string()))?;
        Ok(Response::new(wire::PlaceReply {
            host: host.0,
            address,
        }))
    }

    async fn hosts(
        &self,
        _: Request<wire::HostsRequest>,
    ) -> Result<Response<wire::HostsReply>, Status> {
        let hosts = self.registry.lock().unwrap().hosts(Instant::now());
        Ok(Response::new(wire::HostsReply {
            hosts: hosts.iter().map(convert::status_to_wire).collect(),
        }))
    }
}
