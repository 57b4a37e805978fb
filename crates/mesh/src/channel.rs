//! Message channels: plain TCP connections that the guests' threads write and read
//! straight from guest memory (no TLS in between), each admitted only with a
//! one-time ticket that its opener obtained through an authenticated call.
//!
//! The opener asks the receiving node for a channel over their TLS link; the node
//! issues a [`Ticket`] from its [`Tickets`] and answers with it. The opener then
//! connects to the node's mesh listener, sends [`MAGIC`] and the ticket, and waits
//! for one byte of acceptance. [`serve`](crate::serve) hands the connection to
//! [`Handler::redeem`](crate::Handler::redeem), which redeems the ticket (once: a
//! second use, an unknown or an expired ticket finds nothing) and accepts with
//! [`accept_channel`]. Nothing else is ever read from a connection that is not TLS.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Handler, KEEPALIVE_TIMEOUT, MeshError};

/// The first bytes of a channel connection; a TLS connection starts otherwise
/// (a handshake record, 0x16).
pub(crate) const MAGIC: [u8; 4] = *b"NMCH";

/// The byte a node answers a redeemed ticket with.
const ACCEPTED: u8 = 1;

/// How long a ticket may wait to be redeemed.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(10);

/// The most tickets a node keeps waiting; past it, issuing fails until some are
/// redeemed or expire.
pub const MAX_TICKETS: usize = 4096;

/// A one-time permission to open a channel: 128 random bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ticket([u8; 16]);

impl Ticket {
    /// The ticket's bytes, to carry in a reply.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }

    /// The ticket of `bytes`, as a reply carried it.
    pub fn from_bytes(bytes: [u8; 16]) -> Ticket {
        Ticket(bytes)
    }
}

/// Tickets issued and not yet redeemed, each with what it grants. Bounded by
/// [`MAX_TICKETS`]; a ticket older than [`TICKET_LIFETIME`] is dropped (and what it
/// granted with it).
pub struct Tickets<T> {
    waiting: Mutex<HashMap<Ticket, (Instant, T)>>,
    lifetime: Duration,
}

impl<T> Default for Tickets<T> {
    fn default() -> Self {
        Tickets::with_lifetime(TICKET_LIFETIME)
    }
}

impl<T> Tickets<T> {
    /// Tickets valid for `lifetime` each ([`TICKET_LIFETIME`] by default).
    pub fn with_lifetime(lifetime: Duration) -> Tickets<T> {
        Tickets {
            waiting: Mutex::new(HashMap::new()),
            lifetime,
        }
    }

    /// A new ticket granting `grant`; `None` when [`MAX_TICKETS`] unexpired ones
    /// are waiting.
    pub fn issue(&self, grant: T) -> Option<Ticket> {
        let mut bytes = [0; 16];
        getrandom::fill(&mut bytes).ok()?;
        let ticket = Ticket(bytes);
        let mut waiting = self.waiting.lock().unwrap();
        self.drop_expired(&mut waiting);
        if waiting.len() >= MAX_TICKETS {
            return None;
        }
        waiting.insert(ticket, (Instant::now(), grant));
        Some(ticket)
    }

    /// What `ticket` grants, if it was issued, is unexpired and was not redeemed
    /// before; it is spent either way.
    pub fn redeem(&self, ticket: &Ticket) -> Option<T> {
        let (issued, grant) = self.waiting.lock().unwrap().remove(ticket)?;
        (issued.elapsed() < self.lifetime).then_some(grant)
    }

    /// Drops the expired tickets, and what they granted; the owner calls it every
    /// lifetime or so, so that what an unredeemed ticket holds is given back.
    pub fn sweep(&self) {
        self.drop_expired(&mut self.waiting.lock().unwrap());
    }

    fn drop_expired(&self, waiting: &mut HashMap<Ticket, (Instant, T)>) {
        waiting.retain(|_, (issued, _)| issued.elapsed() < self.lifetime);
    }

    /// Tickets waiting (expired ones included until the next sweep).
    pub fn len(&self) -> usize {
        self.waiting.lock().unwrap().len()
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Opens a channel to the node at `addr` with `ticket`, which that node issued;
/// returns the connection once the node has accepted it. A refused ticket, like a
/// node that has not answered within [`KEEPALIVE_TIMEOUT`], is [`MeshError::Lost`].
pub async fn open_channel(addr: &str, ticket: Ticket) -> Result<TcpStream, MeshError> {
    let lost = || MeshError::Lost {
        addr: addr.to_owned(),
    };
    let opened = async {
        let mut stream = crate::link::connect_tcp(addr).await?;
        let mut opening = MAGIC.to_vec();
        opening.extend_from_slice(&ticket.0);
        stream.write_all(&opening).await.map_err(|_| lost())?;
        match stream.read_u8().await {
            Ok(ACCEPTED) => Ok(stream),
            _ => Err(lost()),
        }
    };
    tokio::time::timeout(KEEPALIVE_TIMEOUT, opened)
        .await
        .unwrap_or_else(|_| Err(lost()))
}

/// Accepts a channel whose ticket its handler redeemed: tells the opener.
pub async fn accept_channel(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.write_all(&[ACCEPTED]).await
}

/// Reads a channel's opening (within [`KEEPALIVE_TIMEOUT`]) and hands it to the
/// handler to redeem; a connection that opens otherwise is dropped.
pub(crate) async fn accept<H: Handler>(
    mut stream: TcpStream,
    handler: Arc<H>,
    proving: tokio::sync::OwnedSemaphorePermit,
) {
    let mut opening = [0; 20];
    let read = tokio::time::timeout(KEEPALIVE_TIMEOUT, stream.read_exact(&mut opening)).await;
    drop(proving);
    if !matches!(read, Ok(Ok(_))) || opening[..4] != MAGIC {
        return;
    }
    let ticket = Ticket(opening[4..].try_into().expect("16 bytes"));
    handler.redeem(ticket, stream).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Frame, HandlerFuture, Link, Replier, serve};

    /// Issues a ticket to each call, and echoes the bytes of each channel whose
    /// ticket it redeems.
    #[derive(Default)]
    struct Issuer {
        tickets: Tickets<()>,
    }

    impl Handler for Issuer {
        fn handle(self: Arc<Self>, _: Frame, replier: Replier) -> HandlerFuture {
            Box::pin(async move {
                let ticket = self.tickets.issue(()).unwrap();
                replier.finish(Frame::new(&ticket, Vec::new())).await;
            })
        }

        fn redeem(self: Arc<Self>, ticket: Ticket, mut stream: TcpStream) -> HandlerFuture {
            Box::pin(async move {
                if self.tickets.redeem(&ticket).is_none() {
                    return;
                }
                accept_channel(&mut stream).await.unwrap();
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            })
        }
    }

    #[tokio::test]
    async fn a_channel_opens_once_on_a_ticket_and_never_without() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(serve(
            listener,
            crate::test_tls(),
            Arc::new(Issuer::default()),
        ));
        let link = Link::connect(&crate::test_tls(), &addr).await.unwrap();
        let ticket: Ticket = link
            .call_one(Frame::new(&"ticket", Vec::new()))
            .await
            .unwrap()
            .head()
            .unwrap();

        let mut channel = open_channel(&addr, ticket).await.unwrap();
        channel.write_all(b"plain bytes").await.unwrap();
        let mut echoed = [0; 11];
        channel.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"plain bytes");

        // Spent, or never issued: refused.
        assert!(matches!(
            open_channel(&addr, ticket).await,
            Err(MeshError::Lost { .. })
        ));
        assert!(matches!(
            open_channel(&addr, Ticket([7; 16])).await,
            Err(MeshError::Lost { .. })
        ));
    }

    #[test]
    fn a_ticket_is_redeemed_once() {
        let tickets = Tickets::default();
        let ticket = tickets.issue("grant").unwrap();
        assert_eq!(tickets.redeem(&ticket), Some("grant"));
        assert_eq!(tickets.redeem(&ticket), None);
        assert!(tickets.is_empty());
        assert_eq!(tickets.redeem(&Ticket([0; 16])), None);
    }

    #[test]
    fn an_expired_ticket_grants_nothing_and_is_swept_with_its_grant() {
        let grant = Arc::new(());
        let tickets = Tickets::with_lifetime(Duration::ZERO);
        let ticket = tickets.issue(grant.clone()).unwrap();
        assert_eq!(tickets.redeem(&ticket), None);
        tickets.issue(grant.clone()).unwrap();
        tickets.sweep();
        assert!(tickets.is_empty());
        // What the expired tickets granted was dropped with them.
        assert_eq!(Arc::strong_count(&grant), 1);
    }

    #[test]
    fn tickets_are_bounded() {
        let tickets = Tickets::default();
        for i in 0..MAX_TICKETS {
            assert!(tickets.issue(i).is_some());
        }
        assert_eq!(tickets.issue(MAX_TICKETS), None);
        assert_eq!(tickets.len(), MAX_TICKETS);
    }
}
