//! A process's mailbox: messages from processes on its own host, queued in order
//! and bounded by the bytes they hold, and [`Inlet`]s, streams from senders on
//! other hosts whose messages stay in the socket until the receiver reads them.
//!
//! Senders wait for room instead of growing memory without bound, which is the
//! backpressure a slow receiver exerts on fast senders.

use std::collections::HashSet;
use std::future::poll_fn;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::task::Poll;

use nimbus_core::Pid;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::AbiError;
use crate::stream::{Channel, ChannelSlot, Incoming, Inlet, Spin, channel};

/// The largest message a process may send.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;
/// The most bytes of queued messages a mailbox holds before senders wait, each
/// message counted with [`MESSAGE_OVERHEAD`].
pub const MAILBOX_CAPACITY: usize = 64 << 20;
/// What a queued message costs its mailbox beyond its bytes: about what the host
/// spends on it (the message, its queue slot, its allocation; 82 bytes measured), so
/// that a flood of tiny messages is bounded in host memory by the capacity too.
pub const MESSAGE_OVERHEAD: usize = 128;
/// The most channels with processes on other hosts a process holds at once, opened
/// by either side (each is a socket, and 64 KiB read ahead): a process over the bound
/// is refused a new one (`ERR_QUOTA`), and so is a peer opening one to it.
pub const MAX_CHANNELS: usize = 1024;

/// A message in a mailbox.
#[derive(Debug)]
pub struct Message {
    /// Who sent it.
    pub from: Pid,
    /// Its bytes.
    pub data: Vec<u8>,
    /// The mailbox room this message occupies, released when it is received; none
    /// for a message read from a stream.
    _room: Option<OwnedSemaphorePermit>,
}

/// What the next message is: queued whole, or streamed with only its length read.
#[derive(Debug)]
pub enum Arrival {
    /// A message from the queue (or one held back).
    Queued(Message),
    /// A message from a stream, to be read where the receiver wants it.
    Streamed(Incoming),
}

/// What goes through the queue: messages, and new streams in the order they came.
#[derive(Debug)]
enum Entry {
    Message(Message),
    Inlet(Inlet),
}

/// The sending half of a mailbox; cheap to clone.
#[derive(Clone, Debug)]
pub struct MailboxSender {
    queue: mpsc::UnboundedSender<Entry>,
    room: Arc<Semaphore>,
    /// How many channels the process holds, queued or attached.
    channels: Arc<AtomicUsize>,
}

/// The receiving half of a mailbox, owned by the process.
#[derive(Debug)]
pub struct Mailbox {
    queue: mpsc::UnboundedReceiver<Entry>,
    /// Whether every sender of the queue is gone.
    queue_closed: bool,
    room: Arc<Semaphore>,
    channels: Arc<AtomicUsize>,
    inlets: Vec<Inlet>,
    /// The inlet to look at first next time, so that none starves the others.
    next_inlet: usize,
    /// A message that did not fit the guest's buffer and waits for a retry.
    held_back: Option<Message>,
}

/// Creates an empty mailbox.
pub fn mailbox() -> (MailboxSender, Mailbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let room = Arc::new(Semaphore::new(MAILBOX_CAPACITY));
    let channels = Arc::new(AtomicUsize::new(0));
    (
        MailboxSender {
            queue: tx,
            room: room.clone(),
            channels: channels.clone(),
        },
        Mailbox {
            queue: rx,
            queue_closed: false,
            room,
            channels,
            inlets: Vec::new(),
            next_inlet: 0,
            held_back: None,
        },
    )
}

impl MailboxSender {
    /// Queues `data` from `from`, waiting while the mailbox is full.
    pub async fn send(&self, from: Pid, data: Vec<u8>) -> Result<(), AbiError> {
        if data.len() > MAX_MESSAGE_SIZE {
            return Err(AbiError::TooLarge);
        }
        // At most 16 MiB and 128 bytes: it fits.
        let units = (data.len() + MESSAGE_OVERHEAD) as u32;
        let room = self
            .room
            .clone()
            .acquire_many_owned(units)
            .await
            .map_err(|_| AbiError::NoSuchProcess)?;
        self.queue
            .send(Entry::Message(Message {
                from,
                data,
                _room: Some(room),
            }))
            .map_err(|_| AbiError::NoSuchProcess)
    }

    /// A place for one more channel, taken before a peer's is accepted; `ERR_QUOTA`
    /// if the process holds [`MAX_CHANNELS`] already.
    pub fn reserve_channel(&self) -> Result<ChannelSlot, AbiError> {
        ChannelSlot::take(&self.channels).ok_or(AbiError::Quota)
    }

    /// Adds a channel with `from` on another host, which opened it, in `slot`.
    pub fn attach(&self, from: Pid, stream: TcpStream, slot: ChannelSlot) -> Result<(), AbiError> {
        if self.room.is_closed() {
            return Err(AbiError::NoSuchProcess);
        }
        let channel = channel(stream).map_err(|_| AbiError::Internal)?;
        let inlet = Inlet::new(from, channel, slot);
        self.queue
            .send(Entry::Inlet(inlet))
            .map_err(|_| AbiError::NoSuchProcess)
    }
}

impl Mailbox {
    /// Waits for the next message. `None` once no sender can ever send again.
    ///
    /// Looks again while it [`Spin`]s, then parks until a source is ready: a reply
    /// that comes back within microseconds is taken without a wake-up.
    pub async fn next(&mut self) -> Option<Arrival> {
        if let Some(message) = self.held_back.take() {
            return Some(Arrival::Queued(message));
        }
        let spin = Spin::start();
        let many_threads = runtime_threads() > 1;
        loop {
            if let Some(arrival) = self.try_next() {
                return Some(arrival);
            }
            if self.queue_closed && self.inlets.is_empty() {
                return None;
            }
            // A sender on this host may need this very thread: on a runtime of one,
            // only messages from other hosts are worth waiting for hot.
            if (many_threads || !self.inlets.is_empty()) && spin.again() {
                continue;
            }
            self.park().await;
            if let Some(message) = self.held_back.take() {
                return Some(Arrival::Queued(message));
            }
        }
    }

    /// Waits until a source may have something: the queue, or an inlet (each lent
    /// to the reactor meanwhile).
    async fn park(&mut self) {
        let Ok(lent) = self
            .inlets
            .iter()
            .map(Inlet::lend)
            .collect::<Result<Vec<_>, _>>()
        else {
            // The reactor cannot take them (out of memory, or of descriptors): poll.
            return tokio::task::yield_now().await;
        };
        let (queue, queue_closed) = (&mut self.queue, self.queue_closed);
        let arrived = poll_fn(|cx| {
            if !queue_closed && let Poll::Ready(entry) = queue.poll_recv(cx) {
                return Poll::Ready(Some(entry));
            }
            match lent.iter().any(|inlet| inlet.poll_ready(cx).is_ready()) {
                true => Poll::Ready(None),
                false => Poll::Pending,
            }
        })
        .await;
        drop(lent);
        match arrived {
            Some(Some(Entry::Message(message))) => self.held_back = Some(message),
            Some(Some(Entry::Inlet(inlet))) => self.inlets.push(inlet),
            Some(None) => self.queue_closed = true,
            None => {}
        }
    }

    /// The next message if one is there, without waiting.
    fn try_next(&mut self) -> Option<Arrival> {
        while !self.queue_closed {
            match self.queue.try_recv() {
                Ok(Entry::Message(message)) => return Some(Arrival::Queued(message)),
                Ok(Entry::Inlet(inlet)) => self.inlets.push(inlet),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.queue_closed = true,
            }
        }
        let count = self.inlets.len();
        let mut ended = Vec::new();
        let mut found = None;
        for k in 0..count {
            let index = (self.next_inlet + k) % count;
            match self.inlets[index].try_next() {
                Ok(Some(incoming)) => {
                    self.next_inlet = index + 1;
                    found = Some(Arrival::Streamed(incoming));
                    break;
                }
                Ok(None) => {}
                // Its sender ended; whatever it sent before has been read.
                Err(_) => ended.push(index),
            }
        }
        ended.sort_unstable();
        for index in ended.into_iter().rev() {
            self.inlets.swap_remove(index);
        }
        found
    }

    /// Adds the receiving side of a channel this process opened to `from`, in `slot`.
    pub(crate) fn add_channel(&mut self, from: Pid, channel: Channel, slot: ChannelSlot) {
        self.inlets.push(Inlet::new(from, channel, slot));
    }

    /// A place for one more channel, for one this process opens; `None` if it holds
    /// [`MAX_CHANNELS`] already.
    pub(crate) fn reserve_channel(&self) -> Option<ChannelSlot> {
        ChannelSlot::take(&self.channels)
    }

    /// The peers this process still has channels with (their inlets not yet found
    /// ended).
    pub(crate) fn peers(&self) -> HashSet<Pid> {
        self.inlets.iter().map(|inlet| inlet.channel().0).collect()
    }

    /// A channel with `peer` already here, opened by either side.
    pub(crate) fn channel_with(&self, peer: Pid) -> Option<Channel> {
        self.inlets
            .iter()
            .map(Inlet::channel)
            .find(|(from, _)| *from == peer)
            .map(|(_, channel)| channel.clone())
    }

    /// Whether nothing waits in the mailbox: no message queued or held back, and no
    /// channel attached.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.inlets.is_empty() && self.held_back.is_none()
    }

    /// Puts `message` back at the head of the queue, for a receiver whose buffer was
    /// too small.
    pub fn hold_back(&mut self, message: Message) {
        debug_assert!(self.held_back.is_none());
        self.held_back = Some(message);
    }

    /// Holds back a streamed message that did not fit, read whole.
    pub(crate) fn hold_back_streamed(&mut self, from: Pid, data: Vec<u8>) {
        self.hold_back(Message {
            from,
            data,
            _room: None,
        });
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        // Wakes senders blocked on a full mailbox of a process that has ended.
        self.room.close();
    }
}

/// How many threads the current runtime runs tasks on.
fn runtime_threads() -> usize {
    tokio::runtime::Handle::try_current().map_or(1, |runtime| runtime.metrics().num_workers())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_core::HostId;

    fn pid(n: u64) -> Pid {
        Pid::new(HostId(1), n)
    }

    async fn queued(mailbox: &mut Mailbox) -> Message {
        match mailbox.next().await {
            Some(Arrival::Queued(message)) => message,
            other => panic!("expected a queued message, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn delivers_in_order_and_holds_back() {
        let (tx, mut rx) = mailbox();
        for i in 0..3u8 {
            tx.send(pid(1), vec![i]).await.unwrap();
        }
        let first = queued(&mut rx).await;
        assert_eq!(first.data, [0]);
        rx.hold_back(first);
        assert_eq!(queued(&mut rx).await.data, [0]);
        assert_eq!(queued(&mut rx).await.data, [1]);
        assert_eq!(queued(&mut rx).await.from, pid(1));
    }

    #[tokio::test]
    async fn rejects_oversized_messages() {
        let (tx, _rx) = mailbox();
        let err = tx.send(pid(1), vec![0; MAX_MESSAGE_SIZE + 1]).await;
        assert_eq!(err, Err(AbiError::TooLarge));
    }

    #[tokio::test]
    async fn full_mailbox_blocks_until_received_and_fails_once_dropped() {
        let (tx, mut rx) = mailbox();
        // Four messages that with their overhead fill the mailbox exactly.
        for _ in 0..MAILBOX_CAPACITY / MAX_MESSAGE_SIZE {
            let data = vec![0; MAX_MESSAGE_SIZE - MESSAGE_OVERHEAD];
            tx.send(pid(1), data).await.unwrap();
        }
        let blocked = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(pid(2), vec![1]).await }
        });
        tokio::task::yield_now().await;
        assert!(!blocked.is_finished());
        drop(queued(&mut rx).await);
        blocked.await.unwrap().unwrap();

        let also_blocked = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(pid(3), vec![0; MAX_MESSAGE_SIZE]).await }
        });
        drop(rx);
        assert_eq!(also_blocked.await.unwrap(), Err(AbiError::NoSuchProcess));
    }

    #[tokio::test]
    async fn tiny_messages_are_charged_their_overhead() {
        let (tx, mut rx) = mailbox();
        let fit = MAILBOX_CAPACITY / (1 + MESSAGE_OVERHEAD);
        for _ in 0..fit {
            tx.send(pid(1), vec![7]).await.unwrap();
        }
        let blocked = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(pid(2), vec![8]).await }
        });
        tokio::task::yield_now().await;
        assert!(
            !blocked.is_finished(),
            "{fit} messages of 1 byte fill the mailbox"
        );
        drop(queued(&mut rx).await);
        blocked.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_stream_that_breaks_the_format_is_dropped() {
        use std::io::Write;
        let (mut sending, receiving) = crate::stream::tests::connection();
        let (tx, mut rx) = mailbox();
        tx.attach(pid(3), receiving, tx.reserve_channel().unwrap())
            .unwrap();
        let too_long = u32::try_from(MAX_MESSAGE_SIZE + 1).unwrap();
        sending.write_all(&too_long.to_le_bytes()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            assert!(rx.try_next().is_none(), "no message arrives");
            if rx.inlets.is_empty() && rx.queue.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the stream is still attached"
            );
            tokio::task::yield_now().await;
        }
    }
}
