//! Message channels between hosts. Two processes on different hosts exchange
//! messages over a TCP connection of their own (opened by the
//! [`Kernel`](crate::Kernel) on the first send between them), written straight from
//! the sender's guest memory ([`Outlet`]) and read straight into the receiver's
//! ([`Inlet`], one of its mailbox's sources): no task, queue or copy stands between
//! the two guests, and per sender order is the connection's order. A channel carries
//! both directions, so that a reply carries the acknowledgement of what it answers
//! (a connection each way costs each message a bare acknowledgement packet).
//!
//! A waiting side retries its socket for a while ([`Spin`]) before it parks: on a virtual
//! machine, waking a parked thread costs more than a whole loopback round trip.
//! Sockets are lent to the runtime's reactor only while their owner is parked on
//! them ([`Lent`]); registered for good, each message would wake an idle runtime
//! thread, on a core the peer may need, for a readiness nobody waits for.
//!
//! On the wire each message is its length (`u32`, little-endian), then its bytes.
//! A channel closing is how a process learns that its peer has ended (or its host
//! is gone). Unread bytes sit in the kernel's socket buffers, which bound what a
//! sender may get ahead of its receiver.

use std::cell::Cell;
use std::io::{self, IoSlice, Read, Write};
use std::marker::PhantomData;
use std::net::TcpStream;
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use nimbus_core::Pid;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// How a waiting side looks again before it parks until the kernel reports its
/// socket ready: at once for [`Spin::HOT`], which is what a reply from a peer that
/// is running takes; then yielding the CPU between looks until [`Spin::ALL`].
///
/// Two signs of sharing a core change that. A yield that came back late shows that
/// others wait for the CPU: for a while, waiting sides skip the hot phase, since the
/// peer they wait for may be one of those others. And a thread whose yields keep
/// handing the core to someone else parks at once: woken again, it is placed on an
/// idle core if there is one (the kernel's balancer leaves two busy threads sharing
/// a core for tens of milliseconds, and a thread that only yields stays where it is).
pub(crate) struct Spin {
    started: Instant,
}

thread_local! {
    /// Yields in a row on this thread that let another thread run.
    static SHARED_YIELDS: Cell<u32> = const { Cell::new(0) };
}

/// Until when (in µs since [`clock_origin`]) waiting sides yield from the start.
static CONTENDED_UNTIL: AtomicU64 = AtomicU64::new(0);

fn clock_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn micros_since_origin(at: Instant) -> u64 {
    u64::try_from(at.duration_since(clock_origin()).as_micros()).unwrap_or(u64::MAX)
}

impl Spin {
    const HOT: Duration = Duration::from_micros(20);
    const ALL: Duration = Duration::from_micros(200);
    /// A yield longer than this let another thread run (one with nothing else to
    /// run takes well under a microsecond).
    const SHARED_YIELD: Duration = Duration::from_micros(2);
    /// After this many shared yields in a row, the thread parks.
    const SHARED_YIELDS_TO_PARK: u32 = 16;
    /// A yield longer than this showed the CPUs contended...
    const LATE_YIELD: Duration = Duration::from_micros(10);
    /// ...and keeps waiting sides from spinning hot for this long.
    const CONTENDED_FOR: Duration = Duration::from_millis(10);

    pub(crate) fn start() -> Spin {
        Spin {
            started: Instant::now(),
        }
    }

    /// Pauses before the next look; `false` once it is time to park instead.
    pub(crate) fn again(&self) -> bool {
        let now = Instant::now();
        let spun = now.duration_since(self.started);
        let contended = micros_since_origin(now) < CONTENDED_UNTIL.load(Ordering::Relaxed);
        if spun < Spin::HOT && !contended {
            std::hint::spin_loop();
            return true;
        }
        if spun >= Spin::ALL || SHARED_YIELDS.get() >= Spin::SHARED_YIELDS_TO_PARK {
            SHARED_YIELDS.set(0);
            return false;
        }
        std::thread::yield_now();
        let took = now.elapsed();
        if took > Spin::LATE_YIELD {
            let until = micros_since_origin(Instant::now() + Spin::CONTENDED_FOR);
            CONTENDED_UNTIL.store(until, Ordering::Relaxed);
        }
        let shared = if took > Spin::SHARED_YIELD {
            SHARED_YIELDS.get() + 1
        } else {
            0
        };
        SHARED_YIELDS.set(shared);
        true
    }
}

/// Bytes of a message's length on the wire.
const HEADER: usize = 4;

/// A connection between two processes, shared by the sending and the receiving
/// side of one of them.
pub(crate) type Channel = Arc<TcpStream>;

/// The send buffer of a channel. Small, so that a big message goes over in slices
/// the receiver copies out while they are still in the CPU's cache (the receive
/// buffer stays large, so the sender need not wait on it): on this kind of machine
/// a 1 MiB message took half as long again with a 4 MiB send buffer.
const SEND_BUFFER: usize = 128 << 10;

/// Makes a channel of a connection whose other end belongs to the peer.
pub(crate) fn channel(stream: TcpStream) -> io::Result<Channel> {
    stream.set_nonblocking(true)?;
    socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER)?;
    Ok(Arc::new(stream))
}

/// A place for one channel among the at most [`crate::MAX_CHANNELS`] of a process,
/// taken before the channel is opened or accepted, and freed when dropped.
#[derive(Debug)]
pub struct ChannelSlot(Arc<AtomicUsize>);

impl ChannelSlot {
    /// Takes a place counted by `taken`, unless all are taken.
    pub(crate) fn take(taken: &Arc<AtomicUsize>) -> Option<ChannelSlot> {
        taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < crate::MAX_CHANNELS).then_some(n + 1)
            })
            .ok()
            .map(|_| ChannelSlot(taken.clone()))
    }
}

impl Drop for ChannelSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The sending side of a channel, owned by the sending process.
#[derive(Debug)]
pub struct Outlet {
    socket: Channel,
}

impl Outlet {
    pub(crate) fn new(socket: Channel) -> Outlet {
        Outlet { socket }
    }

    /// Whether the peer's end has closed: the peer ended or its host is gone. (Not
    /// seen while messages from the peer wait unread ahead of the close.)
    pub(crate) fn is_closed(&self) -> bool {
        let mut byte = [0];
        match self.socket.peek(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        }
    }

    /// Writes one message whose bytes are the concatenation of `parts` of the bytes
    /// `bytes` gives of `source` (guest memory, looked at again whenever the socket
    /// takes more).
    pub(crate) async fn send<S>(
        &self,
        source: &mut S,
        bytes: impl Fn(&mut S) -> &[u8],
        parts: [Range<usize>; 2],
    ) -> io::Result<()> {
        let len = parts.iter().map(Range::len).sum::<usize>();
        let header = u32::try_from(len)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?
            .to_le_bytes();
        let total = HEADER + len;
        let mut written = 0;
        let mut partial = Partial {
            socket: &self.socket,
            cut: false,
        };
        while written < total {
            partial.cut = written > 0;
            written += retry(&self.socket, Interest::WRITABLE, || {
                let whole = bytes(source);
                let mut slices = [
                    IoSlice::new(&header),
                    IoSlice::new(&whole[parts[0].clone()]),
                    IoSlice::new(&whole[parts[1].clone()]),
                ];
                let mut rest = &mut slices[..];
                IoSlice::advance_slices(&mut rest, written);
                (&*self.socket).write_vectored(rest)
            })
            .await?;
        }
        partial.cut = false;
        Ok(())
    }
}

/// The receiving side of a channel, a source of its process's mailbox.
#[derive(Debug)]
pub(crate) struct Inlet {
    from: Pid,
    socket: Channel,
    /// Its place among its process's channels, freed when it is dropped.
    _slot: ChannelSlot,
    /// Bytes read ahead, so that a small message takes one read, length and all:
    /// those in `start..end` are unconsumed.
    ahead: Box<[u8]>,
    start: usize,
    end: usize,
}

/// How many bytes an inlet reads ahead at most.
const READ_AHEAD: usize = 64 << 10;

/// A message whose length has been read from an inlet, the rest of its bytes still
/// in the socket: the receiver reads them where they belong.
#[derive(Debug)]
pub struct Incoming {
    /// Who sent it.
    pub(crate) from: Pid,
    /// Its length.
    pub(crate) len: usize,
    /// Its first bytes, read ahead with its length.
    prefix: Vec<u8>,
    /// Bytes of it handed out so far.
    done: usize,
    socket: Channel,
}

impl Inlet {
    /// The receiving side of a channel with `from`.
    pub(crate) fn new(from: Pid, socket: Channel, slot: ChannelSlot) -> Inlet {
        Inlet {
            from,
            socket,
            _slot: slot,
            ahead: vec![0; READ_AHEAD].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// The peer, and the channel with it.
    pub(crate) fn channel(&self) -> (Pid, &Channel) {
        (self.from, &self.socket)
    }

    /// The next message if its length has arrived, without waiting; an error once
    /// the stream has ended (its sender did, or its host).
    pub(crate) fn try_next(&mut self) -> io::Result<Option<Incoming>> {
        if self.end - self.start < HEADER {
            self.ahead.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            match (&*self.socket).read(&mut self.ahead[self.end..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.end += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
            if self.end < HEADER {
                return Ok(None);
            }
        }
        let header = &self.ahead[self.start..self.start + HEADER];
        let len = u32::from_le_bytes(header.try_into().expect("a header's bytes")) as usize;
        if len > crate::MAX_MESSAGE_SIZE {
            return Err(io::ErrorKind::InvalidData.into());
        }
        let body = self.start + HEADER;
        let end = body + len.min(self.end - body);
        let prefix = self.ahead[body..end].to_vec();
        self.start = end;
        Ok(Some(Incoming {
            from: self.from,
            len,
            prefix,
            done: 0,
            socket: self.socket.clone(),
        }))
    }

    /// Lends the socket to the reactor, to park on until it may have more to read.
    pub(crate) fn lend(&self) -> io::Result<Lent<'_>> {
        Lent::new(&self.socket, Interest::READABLE)
    }
}

/// Closes a channel whose sending side is dropped (a deadline, say) with part of a
/// message written: the peer would read what follows as the rest of it.
struct Partial<'a> {
    socket: &'a TcpStream,
    cut: bool,
}

impl Drop for Partial<'_> {
    fn drop(&mut self) {
        if self.cut {
            let _ = self.socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Incoming {
    /// With part of the message unread, the channel's next bytes are not the start
    /// of a message: it is closed rather than read out of step.
    fn drop(&mut self) {
        if self.done < self.len {
            let _ = self.socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Incoming {
    /// Reads the message's next bytes into the buffer `into` gives for `target`
    /// (guest memory), filling it.
    pub(crate) async fn read_into<T>(
        &mut self,
        target: &mut T,
        into: impl Fn(&mut T) -> &mut [u8],
    ) -> io::Result<()> {
        let n = into(target).len();
        let buffered = self.prefix.len().saturating_sub(self.done).min(n);
        into(target)[..buffered].copy_from_slice(&self.prefix[self.done..self.done + buffered]);
        self.done += buffered;
        let mut filled = buffered;
        while filled < n {
            let read = retry(&self.socket, Interest::READABLE, || {
                match (&*self.socket).read(&mut into(target)[filled..]) {
                    Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
                    result => result,
                }
            })
            .await?;
            filled += read;
            self.done += read;
        }
        Ok(())
    }

    /// Reads the whole message.
    pub(crate) async fn read_all(&mut self) -> io::Result<Vec<u8>> {
        let mut data = vec![0; self.len - self.done];
        self.read_into(&mut data, |data| &mut data[..]).await?;
        Ok(data)
    }
}

/// A socket lent to the runtime's reactor while its owner parks on it; returned
/// (deregistered) when dropped.
pub(crate) struct Lent<'a> {
    registration: AsyncFd<Descriptor>,
    interest: Interest,
    _socket: PhantomData<&'a TcpStream>,
}

/// The descriptor of a socket someone else owns.
struct Descriptor(RawFd);

impl AsRawFd for Descriptor {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl<'a> Lent<'a> {
    fn new(socket: &'a TcpStream, interest: Interest) -> io::Result<Lent<'a>> {
        let descriptor = Descriptor(socket.as_raw_fd());
        // SAFETY: the descriptor stays open and the same for the registration's whole
        // life: `Lent` borrows the socket that owns it and drops the registration
        // (deregistering it) before that borrow ends.
        let registration = unsafe { AsyncFd::register_with_interest(descriptor, interest) }?;
        Ok(Lent {
            registration,
            interest,
            _socket: PhantomData,
        })
    }

    /// Resolves once the kernel reports the socket ready (or broken), registering
    /// `cx` until it does. Registering reports a readiness already there, so none
    /// is missed between the owner's last attempt and its parking.
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.interest.is_readable() {
            self.registration.poll_read_ready(cx).map(drop)
        } else {
            self.registration.poll_write_ready(cx).map(drop)
        }
    }
}

/// Runs `attempt` until it does something other than would-block: again while it
/// [`Spin`]s, then whenever the kernel reports the socket ready for `interest`.
async fn retry<T>(
    socket: &TcpStream,
    interest: Interest,
    mut attempt: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let spin = Spin::start();
    loop {
        match attempt() {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            result => return result,
        }
        if spin.again() {
            continue;
        }
        let lent = Lent::new(socket, interest)?;
        std::future::poll_fn(|cx| lent.poll_ready(cx)).await;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::TcpListener;

    use nimbus_core::HostId;

    use std::io::Write as _;

    use super::*;
    use crate::mailbox::{Arrival, Mailbox, mailbox};

    fn pid(n: u64) -> Pid {
        Pid::new(HostId(2), n)
    }

    /// A connected pair: the sending end and the receiving end.
    pub(crate) fn connection() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let sending = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (sending, listener.accept().unwrap().0)
    }

    async fn streamed(mailbox: &mut Mailbox) -> Incoming {
        match mailbox.next().await {
            Some(Arrival::Streamed(incoming)) => incoming,
            other => panic!("expected a streamed message, got {other:?}"),
        }
    }

    /// Waits (bounded) until `outlet` sees its peer's end closed.
    async fn until_closed(outlet: &Outlet) {
        let closed = async {
            while !outlet.is_closed() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), closed)
            .await
            .expect("the outlet sees its peer gone");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_stream_in_order_straight_between_buffers() {
        let (sending, receiving) = connection();
        let (sender, mut mailbox) = mailbox();
        sender
            .attach(pid(7), receiving, sender.reserve_channel().unwrap())
            .unwrap();
        let outlet = Outlet::new(channel(sending).unwrap());
        // Larger than the socket buffers, so that the writer waits for the reader.
        let big: Vec<u8> = (0..12 << 20).map(|i: u32| (i % 251) as u8).collect();
        let mut source = big.clone();
        fn whole(source: &mut Vec<u8>) -> &[u8] {
            source
        }
        let writer = async {
            outlet.send(&mut source, whole, [0..0, 0..3]).await.unwrap();
            outlet
                .send(
                    &mut source,
                    whole,
                    [0..big.len() / 2, big.len() / 2..big.len()],
                )
                .await
                .unwrap();
        };
        let reader = async {
            let mut first = streamed(&mut mailbox).await;
            assert_eq!((first.from, first.len), (pid(7), 3));
            assert_eq!(first.read_all().await.unwrap(), big[..3]);
            let mut second = streamed(&mut mailbox).await;
            let mut into = vec![0; second.len];
            second
                .read_into(&mut into, |into| &mut into[..])
                .await
                .unwrap();
            into
        };
        let ((), received) = tokio::join!(writer, reader);
        assert!(received == big);
        assert!(!outlet.is_closed());
        drop(mailbox);
        // The receiving end closing is how the sender learns the receiver ended.
        until_closed(&outlet).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sender_gone_midway_loses_only_its_unfinished_message() {
        let (mut sending, receiving) = connection();
        let (sender, mut mailbox) = mailbox();
        sender
            .attach(pid(3), receiving, sender.reserve_channel().unwrap())
            .unwrap();
        sender.send(pid(4), b"local".to_vec()).await.unwrap();
        sending.write_all(&2u32.to_le_bytes()).unwrap();
        sending.write_all(b"ok").unwrap();
        sending.write_all(&10u32.to_le_bytes()).unwrap();
        sending.write_all(b"cut").unwrap();
        drop(sending);

        let Some(Arrival::Queued(local)) = mailbox.next().await else {
            panic!("the local message comes first");
        };
        assert_eq!(local.data, b"local");
        assert_eq!(
            streamed(&mut mailbox).await.read_all().await.unwrap(),
            b"ok"
        );
        let mut cut = streamed(&mut mailbox).await;
        assert!(cut.read_all().await.is_err());
        // The ended stream is dropped; the mailbox goes on with its other sources.
        sender.send(pid(4), b"after".to_vec()).await.unwrap();
        let Some(Arrival::Queued(after)) = mailbox.next().await else {
            panic!("the mailbox still takes local messages");
        };
        assert_eq!(after.data, b"after");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_channel_carries_the_replies_too() {
        let (opened, accepted) = connection();
        let (a, b) = (pid(1), pid(2));
        // `a` opened the channel: it sends and receives on it.
        let (_, mut a_mailbox) = mailbox();
        let a_channel = channel(opened).unwrap();
        a_mailbox.add_channel(b, a_channel.clone(), a_mailbox.reserve_channel().unwrap());
        let a_outlet = Outlet::new(a_channel);
        // `b`'s host attached the other end to `b`'s mailbox.
        let (b_sender, mut b_mailbox) = mailbox();
        b_sender
            .attach(a, accepted, b_sender.reserve_channel().unwrap())
            .unwrap();
        assert!(b_mailbox.channel_with(a).is_none(), "not taken in yet");

        let mut source = b"ping".to_vec();
        fn whole(source: &mut Vec<u8>) -> &[u8] {
            source
        }
        a_outlet
            .send(&mut source, whole, [0..4, 4..4])
            .await
            .unwrap();
        let mut ping = streamed(&mut b_mailbox).await;
        assert_eq!(
            (ping.from, ping.read_all().await.unwrap()),
            (a, b"ping".to_vec())
        );

        let b_outlet = Outlet::new(b_mailbox.channel_with(a).expect("the channel from a"));
        let mut source = b"pong".to_vec();
        b_outlet
            .send(&mut source, whole, [0..4, 4..4])
            .await
            .unwrap();
        let mut pong = streamed(&mut a_mailbox).await;
        assert_eq!(
            (pong.from, pong.read_all().await.unwrap()),
            (b, b"pong".to_vec())
        );
        assert!(!a_outlet.is_closed() && !b_outlet.is_closed());

        // Gone with `b`: its mailbox, its outlet, and the message it was reading.
        drop((b_mailbox, b_outlet, ping));
        until_closed(&a_outlet).await;
    }
}
