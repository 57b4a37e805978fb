//! A process's mailbox: an ordered queue of messages bounded by the bytes it holds.
//!
//! Senders wait for room instead of growing memory without bound, which is the
//! backpressure a slow receiver exerts on fast senders.

use std::sync::Arc;

use nimbus_core::Pid;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::AbiError;

/// The largest message a process may send.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;
/// The most bytes of messages a mailbox holds before senders wait.
pub const MAILBOX_CAPACITY: usize = 64 << 20;

/// A message in a mailbox.
#[derive(Debug)]
pub struct Message {
    /// Who sent it.
    pub from: Pid,
    /// Its bytes.
    pub data: Vec<u8>,
    /// The mailbox room this message occupies, released when it is received.
    _room: OwnedSemaphorePermit,
}

/// The sending half of a mailbox; cheap to clone.
#[derive(Clone, Debug)]
pub struct MailboxSender {
    queue: mpsc::UnboundedSender<Message>,
    room: Arc<Semaphore>,
}

/// The receiving half of a mailbox, owned by the process.
#[derive(Debug)]
pub struct Mailbox {
    queue: mpsc::UnboundedReceiver<Message>,
    room: Arc<Semaphore>,
    /// A message that did not fit the guest's buffer and waits for a retry.
    held_back: Option<Message>,
}

/// Creates an empty mailbox.
pub fn mailbox() -> (MailboxSender, Mailbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let room = Arc::new(Semaphore::new(MAILBOX_CAPACITY));
    (
        MailboxSender {
            queue: tx,
            room: room.clone(),
        },
        Mailbox {
            queue: rx,
            room,
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
        // Empty messages still take one unit so they count against the queue.
        let units = data.len().max(1) as u32;
        let room = self
            .room
            .clone()
            .acquire_many_owned(units)
            .await
            .map_err(|_| AbiError::NoSuchProcess)?;
        self.queue
            .send(Message {
                from,
                data,
                _room: room,
            })
            .map_err(|_| AbiError::NoSuchProcess)
    }
}

impl Mailbox {
    /// Waits for the next message. `None` once no sender can ever send again.
    pub async fn next(&mut self) -> Option<Message> {
        match self.held_back.take() {
            Some(message) => Some(message),
            None => self.queue.recv().await,
        }
    }

    /// Puts `message` back at the head of the queue, for a receiver whose buffer was
    /// too small.
    pub fn hold_back(&mut self, message: Message) {
        debug_assert!(self.held_back.is_none());
        self.held_back = Some(message);
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        // Wakes senders blocked on a full mailbox of a process that has ended.
        self.room.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_core::HostId;

    fn pid(n: u64) -> Pid {
        Pid::new(HostId(1), n)
    }

    #[tokio::test]
    async fn delivers_in_order_and_holds_back() {
        let (tx, mut rx) = mailbox();
        for i in 0..3u8 {
            tx.send(pid(1), vec![i]).await.unwrap();
        }
        let first = rx.next().await.unwrap();
        assert_eq!(first.data, [0]);
        rx.hold_back(first);
        assert_eq!(rx.next().await.unwrap().data, [0]);
        assert_eq!(rx.next().await.unwrap().data, [1]);
        assert_eq!(rx.next().await.unwrap().from, pid(1));
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
        for _ in 0..MAILBOX_CAPACITY / MAX_MESSAGE_SIZE {
            tx.send(pid(1), vec![0; MAX_MESSAGE_SIZE]).await.unwrap();
        }
        let blocked = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(pid(2), vec![1]).await }
        });
        tokio::task::yield_now().await;
        assert!(!blocked.is_finished());
        drop(rx.next().await.unwrap());
        blocked.await.unwrap().unwrap();

        let also_blocked = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(pid(3), vec![0; MAX_MESSAGE_SIZE]).await }
        });
        drop(rx);
        assert_eq!(also_blocked.await.unwrap(), Err(AbiError::NoSuchProcess));
    }
}
