//! The planner's clients: [`Planner`] (placements, the host list) and
//! [`PlannerLink`] (a worker's membership).

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use nimbus_core::HostId;
use nimbus_planner::{HostInfo, HostReport, HostStatus};
use nimbus_trust::Tls;
use nimbus_wire::control::v1 as wire;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::{
    CALL_DEADLINE, CONNECT_DEADLINE, ControlError, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, convert,
};

type Stamp = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;
type Client = wire::planner_client::PlannerClient<InterceptedService<Channel, Stamp>>;

/// A client of the planner: asks where to place processes and who the hosts are.
///
/// Cheap to clone; clones share one connection, opened on the first call and again
/// whenever it broke. Calls may run concurrently, and each may be dropped midway
/// without disturbing the others.
#[derive(Clone)]
pub struct Planner {
    addr: String,
    client: Client,
}

impl Planner {
    /// A client of the planner at `addr` (`HOST:PORT`), over TLS with this
    /// node's credentials `tls` (the planner must be of the same cluster, and
    /// takes us for a node of it only with them). Nothing is sent yet: an
    /// unreachable planner shows at the first call.
    pub fn new(addr: &str, tls: &Tls) -> Result<Planner, ControlError> {
        let endpoint = endpoint(addr, tls)?;
        let stamp: Stamp = nimbus_wire::stamp_version;
        Ok(Planner {
            addr: addr.to_owned(),
            client: wire::planner_client::PlannerClient::with_interceptor(
                endpoint.connect_lazy(),
                stamp,
            ),
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
        let request = wire::PlaceRequest {
            near: near.map(|host| host.0),
            app,
        };
        let placed = self
            .call(|mut c| async move { c.place(request).await })
            .await?;
        Ok((HostId(placed.host), placed.address))
    }

    /// Every registered host, by id.
    pub async fn hosts(&self) -> Result<Vec<HostStatus>, ControlError> {
        let reply = self
            .call(|mut c| async move { c.hosts(wire::HostsRequest {}).await })
            .await?;
        Ok(reply
            .hosts
            .into_iter()
            .map(convert::status_from_wire)
            .collect())
    }

    async fn call<T, F>(&self, call: impl FnOnce(Client) -> F) -> Result<T, ControlError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        call(self.client.clone())
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| ControlError::from_status(&self.addr, status))
    }
}

/// The connection settings of a client of the planner at `addr`: TLS with this
/// node's credentials, the call deadline, keepalive.
pub(crate) fn endpoint(addr: &str, tls: &Tls) -> Result<Endpoint, ControlError> {
    let invalid = |what: &str, e: &dyn std::fmt::Display| ControlError::Protocol {
        addr: addr.to_owned(),
        reason: format!("{what}: {e}"),
    };
    let pem = tls.pem();
    let tls_config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pem.ca))
        .identity(Identity::from_pem(&pem.cert, &pem.key))
        .domain_name(nimbus_trust::NODE_NAME);
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| invalid("not an address", &e))?
        .tls_config(tls_config)
        .map_err(|e| invalid("TLS", &e))?
        .connect_timeout(CONNECT_DEADLINE)
        .timeout(CALL_DEADLINE)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    Ok(endpoint)
}

/// The hosts registered with the planner at `addr`.
pub async fn hosts(addr: &str, tls: &Tls) -> Result<Vec<HostStatus>, ControlError> {
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
        tls: &Tls,
        info: HostInfo,
        patience: Duration,
    ) -> Result<PlannerLink, ControlError> {
        let planner = Planner::new(addr, tls)?;
        let request = wire::JoinRequest {
            info: Some(convert::info_to_wire(&info)),
        };
        let deadline = tokio::time::Instant::now() + patience;
        let mut backoff = Backoff::new();
        let joined = loop {
            let request = request.clone();
            match planner
                .call(|mut c| async move { c.join(request).await })
                .await
            {
                Err(ControlError::Unreachable { .. })
                    if tokio::time::Instant::now() + Backoff::LONGEST < deadline =>
                {
                    tokio::time::sleep(backoff.pause()).await;
                }
                joined => break joined?,
            }
        };
        Ok(PlannerLink {
            planner,
            host: HostId(joined.host),
            heartbeat: Duration::from_millis(joined.heartbeat_ms.max(1)),
            state: (!joined.state.is_empty()).then_some(joined.state),
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
        let request = wire::HeartbeatRequest {
            host: self.host.0,
            report: Some(convert::report_to_wire(&report)),
        };
        self.planner
            .call(|mut c| async move { c.heartbeat(request).await })
            .await
            .map(drop)
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
