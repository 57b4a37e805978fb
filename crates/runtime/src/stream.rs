//! Message streams between hosts. A process's messages to a process on another host
//! go over a TCP connection of their own (opened by the [`Kernel`](crate::Kernel)),
//! written straight from the sender's guest memory ([`Outlet`]) and read straight
//! into the receiver's ([`Inlet`], one of its mailbox's sources): no task, queue or
//! copy stands between the two guests, and per sender order is the stream's order.
//!
//! A waiting side retries its socket for [`SPIN`] before it parks: on a virtual
//! machine, waking a parked thread costs more than a whole loopback round trip.
//! Sockets are lent to the runtime's reactor only while their owner is parked on
//! them ([`Lent`]); registered for good, each message would wake an idle runtime
//! thread, on a core the peer may need, for a readiness nobody waits for.
//!
//! On the wire each message is its length (`u32`, little-endian), then its bytes.
//! The receiving end never writes; its closing is how a sender learns that the
//! receiver has ended (or its host is gone). A stream's unread bytes sit in the
//! kernel's socket buffers, which bound what a sender may get ahead of its receiver.

use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use nimbus_core::Pid;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// How long a waiting side retries before it parks until the kernel reports its
/// socket ready.
pub(crate) const SPIN: Duration = Duration::from_micros(200);

/// Bytes of a message's length on the wire.
const HEADER: usize = 4;

/// The sending end of a stream to one receiver, owned by the sending process.
#[derive(Debug)]
pub struct Outlet {
    socket: TcpStream,
}

impl Outlet {
    /// Wraps a connection whose receiving end is attached to the receiver's mailbox.
    pub(crate) fn new(stream: TcpStream) -> io::Result<Outlet> {
        Ok(Outlet {
            socket: nonblocking(stream)?,
        })
    }

    /// Whether the receiving end has closed: the receiver ended or its host is gone.
    pub(crate) fn is_closed(&self) -> bool {
        let mut byte = [0];
        !matches!(self.socket.peek(&mut byte),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock)
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
        while written < total {
            written += retry(&self.socket, Interest::WRITABLE, || {
                let whole = bytes(source);
                let mut slices = [
                    IoSlice::new(&header),
                    IoSlice::new(&whole[parts[0].clone()]),
                    IoSlice::new(&whole[parts[1].clone()]),
                ];
                let mut rest = &mut slices[..];
                IoSlice::advance_slices(&mut rest, written);
                (&self.socket).write_vectored(rest)
            })
            .await?;
        }
        Ok(())
    }
}

/// The receiving end of a stream from one sender, a source of its receiver's mailbox.
#[derive(Debug)]
pub(crate) struct Inlet {
    from: Pid,
    socket: Arc<TcpStream>,
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
    socket: Arc<TcpStream>,
}

impl Inlet {
    /// Wraps the receiving end of a connection from `from`.
    pub(crate) fn new(from: Pid, stream: TcpStream) -> io::Result<Inlet> {
        Ok(Inlet {
            from,
            socket: Arc::new(nonblocking(stream)?),
            ahead: vec![0; READ_AHEAD].into_boxed_slice(),
            start: 0,
            end: 0,
        })
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
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
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

fn nonblocking(stream: TcpStream) -> io::Result<TcpStream> {
    stream.set_nonblocking(true)?;
    Ok(stream)
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

/// Runs `attempt` until it does something other than would-block: at once again
/// (yielding the CPU to whoever needs it) for [`SPIN`], then whenever the kernel
/// reports the socket ready for `interest`.
async fn retry<T>(
    socket: &TcpStream,
    interest: Interest,
    mut attempt: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let spin_until = Instant::now() + SPIN;
    loop {
        match attempt() {
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            result => return result,
        }
        if Instant::now() < spin_until {
            std::hint::spin_loop();
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_stream_in_order_straight_between_buffers() {
        let (sending, receiving) = connection();
        let (sender, mut mailbox) = mailbox();
        sender.attach(pid(7), receiving).unwrap();
        let outlet = Outlet::new(sending).unwrap();
        // Larger than the socket buffers, so that the writer waits for the reader.
        let big: Vec<u8> = (0..12 << 20).map(|i: u32| (i % 251) as u8).collect();
        let mut source = big.clone();
        fn whole(source: &mut Vec<u8>) -> &[u8] {
            source
        }
        let writer = async {
            outlet.send(&mut source, whole, [0..0, 0..3]).await.unwrap();
            outlet
                .send(&mut source, whole, [0..big.len() / 2, big.len() / 2..big.len()])
                .await
                .unwrap();
        };
        let reader = async {
            let mut first = streamed(&mut mailbox).await;
            assert_eq!((first.from, first.len), (pid(7), 3));
            assert_eq!(first.read_all().await.unwrap(), big[..3]);
            let mut second = streamed(&mut mailbox).await;
            let mut into = vec![0; second.len];
            second.read_into(&mut into, |into| &mut into[..]).await.unwrap();
            into
        };
        let ((), received) = tokio::join!(writer, reader);
        assert!(received == big);
        assert!(!outlet.is_closed());
        drop(mailbox);
        // The receiving end closing is how the sender learns the receiver ended.
        let closed = async {
            while !outlet.is_closed() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), closed)
            .await
            .expect("the outlet sees its receiver gone");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sender_gone_midway_loses_only_its_unfinished_message() {
        let (mut sending, receiving) = connection();
        let (sender, mut mailbox) = mailbox();
        sender.attach(pid(3), receiving).unwrap();
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
        assert_eq!(streamed(&mut mailbox).await.read_all().await.unwrap(), b"ok");
        let mut cut = streamed(&mut mailbox).await;
        assert!(cut.read_all().await.is_err());
        // The ended stream is dropped; the mailbox goes on with its other sources.
        sender.send(pid(4), b"after".to_vec()).await.unwrap();
        let Some(Arrival::Queued(after)) = mailbox.next().await else {
            panic!("the mailbox still takes local messages");
        };
        assert_eq!(after.data, b"after");
    }
}
