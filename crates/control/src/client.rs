//! The planner's clients: [`Planner`] (placements, the host list, the gateways'
//! deployments and where each app runs) and [`PlannerLink`] (a worker's
//! membership).

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use nimbus_core::HostId;
use nimbus_mesh::{Frame, Links};
use nimbus_planner::{HostInfo, HostReport, HostStatus};
use nimbus_trust::Tls;
use nimbus_wire::apps::Placement;
use nimbus_wire::control::{Reply, Request};

use crate::{CALL_DEADLINE, ControlError};

/// A client of the planner: asks where to place processes and who the hosts are.
///
/// Cheap to clone; clones share one connection, opened on the first call and again
/// whenever it broke. Calls may run concurrently, and each may be dropped midway
/// without disturbing the others.
#[derive(Clone)]
pub struct Planner {
    addr: String,
    links: Arc<Links>,
}

impl Planner {
    /// A client of the planner at `addr` (`HOST:PORT`), over TLS with this
    /// node's credentials `tls` (the planner must be of the same cluster, and
    /// takes us for a node of it only with them). Nothing is sent yet: an
    /// unreachable planner shows at the first call.
    pub fn new(addr: &str, tls: &Arc<Tls>) -> Result<Planner, ControlError> {
        let port = addr.rsplit_once(':').map(|(_, port)| port.parse::<u16>());
        if !matches!(port, Some(Ok(_))) {
            return Err(ControlError::Protocol {
                addr: addr.to_owned(),
                reason: "not an address: give HOST:PORT".into(),
            });
        }
        Ok(Planner {
            addr: addr.to_owned(),
            links: Arc::new(Links::new(tls.clone())),
        })
    }

    /// The planner's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Picks the host for a new process of `app` (hosts running the app, then
    /// `near`, the parent's host, are preferred on ties); returns it and its
    /// address. Refused when every host is full or the app is at its budget.
    pub async fn place(
        &self,
        near: Option<HostId>,
        app: Option<String>,
    ) -> Result<(HostId, String), ControlError> {
        match self.call(&Request::Place { near, app }).await?.0 {
            Reply::Placed { host, address } => Ok((host, address)),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Every registered host, by id.
    pub async fn hosts(&self) -> Result<Vec<HostStatus>, ControlError> {
        match self.call(&Request::Hosts).await?.0 {
            Reply::Hosts(hosts) => Ok(hosts),
            other => Err(self.unexpected(&other)),
        }
    }

    /// A generation for a new deployment of `app` (above every one drawn before),
    /// and the app as the planner keeps it now, if it does. Refused when `app` is
    /// new and the planner keeps all the deployments it may.
    pub async fn new_deployment(
        &self,
        app: &str,
    ) -> Result<(u64, Option<Placement>), ControlError> {
        let request = Request::NewDeployment {
            app: app.to_owned(),
        };
        match self.call(&request).await?.0 {
            Reply::NewDeployment { generation, placed } => Ok((generation, placed)),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Has the planner keep `placement`, whose module is `module`, in place of
    /// any earlier deployment of its name; returns it as kept. Refused when a
    /// deployment of a higher generation is kept.
    pub async fn record_app(
        &self,
        placement: Placement,
        module: Vec<u8>,
    ) -> Result<Placement, ControlError> {
        let request = Request::RecordApp { placement };
        match self.call_with(&request, module).await?.0 {
            Reply::App(Some(kept)) => Ok(kept),
            other => Err(self.unexpected(&other)),
        }
    }

    /// The deployment of `app`, and where it runs, if the planner keeps one.
    pub async fn app(&self, app: &str) -> Result<Option<Placement>, ControlError> {
        let request = Request::App {
            app: app.to_owned(),
        };
        match self.call(&request).await?.0 {
            Reply::App(placed) => Ok(placed),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Moves `app`, at the deployment of `generation`, from the worker
    /// `expected` (as last seen, none if none was) to `worker`, unless it was
    /// deployed or moved anew meanwhile; returns the app as it is now: on `worker`
    /// if this call won, else where the call that came first put it (`None`: the
    /// planner keeps no deployment of that name).
    pub async fn place_app(
        &self,
        app: &str,
        generation: u64,
        expected: Option<&str>,
        worker: &str,
    ) -> Result<Option<Placement>, ControlError> {
        let request = Request::PlaceApp {
            app: app.to_owned(),
            generation,
            expected: expected.map(str::to_owned),
            worker: worker.to_owned(),
        };
        match self.call(&request).await?.0 {
            Reply::App(placed) => Ok(placed),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Every deployment the planner keeps, and where each runs.
    pub async fn deployments(&self) -> Result<Vec<Placement>, ControlError> {
        match self.call(&Request::Deployments).await?.0 {
            Reply::Deployments(deployments) => Ok(deployments),
            other => Err(self.unexpected(&other)),
        }
    }

    /// The module, kept for a deployment, whose sha256 is `hash` (hex).
    pub async fn module(&self, hash: &str) -> Result<Vec<u8>, ControlError> {
        let hash = hash.to_owned();
        match self.call(&Request::Module { hash }).await? {
            (Reply::Module, module) => Ok(module),
            (other, _) => Err(self.unexpected(&other)),
        }
    }

    /// Calls the planner with `request`, within [`CALL_DEADLINE`]; a refusal is
    /// the matching error. Returns the reply and its body.
    async fn call(&self, request: &Request) -> Result<(Reply, Vec<u8>), ControlError> {
        self.call_with(request, Vec::new()).await
    }

    /// [`Planner::call`] with `body`.
    async fn call_with(
        &self,
        request: &Request,
        body: Vec<u8>,
    ) -> Result<(Reply, Vec<u8>), ControlError> {
        let addr = &self.addr;
        let answered = tokio::time::timeout(CALL_DEADLINE, async {
            let link = self.links.get(addr).await?;
            link.call_one(Frame::new(request, body)).await
        })
        .await
        .map_err(|_| ControlError::Unreachable {
            addr: addr.clone(),
            message: format!("no answer within {CALL_DEADLINE:?}"),
        })?
        .map_err(|error| ControlError::from_mesh(addr, error))?;
        let reply = answered
            .head::<Reply>()
            .map_err(|error| ControlError::from_mesh(addr, error))?;
        let addr = addr.clone();
        match reply {
            Reply::Refused(message) => Err(ControlError::Refused { addr, message }),
            Reply::UnknownHost(message) => Err(ControlError::UnknownHost { addr, message }),
            Reply::Unavailable(message) => Err(ControlError::Unreachable { addr, message }),
            Reply::Invalid(reason) => Err(ControlError::Protocol { addr, reason }),
            reply => Ok((reply, answered.body)),
        }
    }

    fn unexpected(&self, reply: &Reply) -> ControlError {
        ControlError::Protocol {
            addr: self.addr.clone(),
            reason: format!("an answer of another kind: {reply:?}"),
        }
    }
}

/// The hosts registered with the planner at `addr`.
pub async fn hosts(addr: &str, tls: &Arc<Tls>) -> Result<Vec<HostStatus>, ControlError> {
    Planner::new(addr, tls)?.hosts().await
}

/// Pauses between attempts to reach the planner: growing from the first to the
/// longest, each drawn at random from its upper half so that workers that lost the
/// planner together do not come back in step.
struct Backoff {
    next: Duration,
    random: RandomState,
    attempt: u64,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const LONGEST: Duration = Duration::from_secs(1);

    fn new() -> Backoff {
        Backoff {
            next: Backoff::FIRST,
            random: RandomState::new(),
            attempt: 0,
        }
    }

    fn pause(&mut self) -> Duration {
        self.attempt += 1;
        let upper = self.next;
        self.next = (self.next * 2).min(Backoff::LONGEST);
        let fraction = (self.random.hash_one(self.attempt) % 1000) as u32;
        upper / 2 + upper / 2 * fraction / 1000
    }
}

/// A worker's membership with the planner: joined once, then heartbeating,
/// through planner restarts.
pub struct PlannerLink {
    planner: Planner,
    host: HostId,
    heartbeat: Duration,
    state: Option<String>,
}

impl PlannerLink {
    /// Joins the planner at `addr`, which assigns this host its id. An
    /// unreachable planner is tried again (with backoff) for up to `patience`.
    pub async fn join(
        addr: &str,
        tls: &Arc<Tls>,
        info: HostInfo,
        patience: Duration,
    ) -> Result<PlannerLink, ControlError> {
        let planner = Planner::new(addr, tls)?;
        let request = Request::Join { info };
        let deadline = tokio::time::Instant::now() + patience;
        let mut backoff = Backoff::new();
        let joined = loop {
            match planner.call(&request).await.map(|(reply, _)| reply) {
                Err(ControlError::Unreachable { .. })
                    if tokio::time::Instant::now() + Backoff::LONGEST < deadline =>
                {
                    tokio::time::sleep(backoff.pause()).await;
                }
                joined => break joined?,
            }
        };
        let Reply::Joined {
            host,
            heartbeat_ms,
            state,
        } = joined
        else {
            return Err(planner.unexpected(&joined));
        };
        Ok(PlannerLink {
            planner,
            host,
            heartbeat: Duration::from_millis(heartbeat_ms.max(1)),
            state,
        })
    }

    /// The id the planner assigned.
    pub fn host(&self) -> HostId {
        self.host
    }

    /// Where the cluster's global state tier is served, if the planner serves one.
    pub fn state_address(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// Reports the host's load once.
    pub async fn heartbeat(&self, report: HostReport) -> Result<(), ControlError> {
        let request = Request::Heartbeat {
            host: self.host,
            report,
        };
        match self.planner.call(&request).await?.0 {
            Reply::Reported => Ok(()),
            other => Err(self.planner.unexpected(&other)),
        }
    }

    /// Reports `report()` every heartbeat interval for as long as the host is a
    /// member. While the planner cannot be reached (it restarts, say) it is tried
    /// again with backoff and jitter; it knows this host again from its store.
    /// Returns only once the planner answers that it does not know this host (it
    /// was silent past the timeout: its processes were reported lost) or refuses
    /// the protocol.
    pub async fn keep_reporting(&self, mut report: impl FnMut() -> HostReport) -> ControlError {
        let mut backoff: Option<Backoff> = None;
        loop {
            let pause = backoff.as_mut().map_or(self.heartbeat, Backoff::pause);
            tokio::time::sleep(pause).await;
            match self.heartbeat(report()).await {
                Ok(()) => {
                    if backoff.take().is_some() {
                        tracing::info!(host = %self.host, "the planner is back");
                    }
                }
                Err(unreachable @ ControlError::Unreachable { .. }) => {
                    if backoff.is_none() {
                        tracing::warn!(
                            host = %self.host,
                            "{unreachable}; trying again until it is back"
                        );
                        backoff = Some(Backoff::new());
                    }
                }
                Err(ended) => return ended,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_to_a_bound_and_vary() {
        let mut backoff = Backoff::new();
        let pauses: Vec<Duration> = (0..10).map(|_| backoff.pause()).collect();
        assert!(pauses[0] >= Backoff::FIRST / 2 && pauses[0] <= Backoff::FIRST);
        assert!(pauses.iter().all(|&p| p <= Backoff::LONGEST));
        assert!(pauses[9] >= Backoff::LONGEST / 2);
        let mut other = Backoff::new();
        let others: Vec<Duration> = (0..10).map(|_| other.pause()).collect();
        assert_ne!(pauses, others, "two workers back off in step");
    }
}
