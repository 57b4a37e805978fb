//! A process's log: the last bytes it wrote to a stream, kept in a ring buffer.
//! Writing never fails and never blocks; the oldest bytes make room for new ones,
//! so a chatty guest can neither run out of log nor grow host memory.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// The last `capacity` bytes written; cheap to clone, clones share the buffer.
#[derive(Clone, Debug)]
pub struct LogBuffer {
    capacity: usize,
    bytes: Arc<Mutex<VecDeque<u8>>>,
}

impl LogBuffer {
    /// An empty log keeping at most `capacity` bytes.
    pub fn new(capacity: usize) -> LogBuffer {
        LogBuffer {
            capacity,
            bytes: Arc::default(),
        }
    }

    /// What the log holds now, oldest first.
    pub fn contents(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().iter().copied().collect()
    }

    /// Adds `data` to the log (the process's writes, or a line of the platform's own).
    pub(crate) fn append(&self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(self.capacity)..];
        let mut bytes = self.bytes.lock().unwrap();
        let overflow = (bytes.len() + data.len()).saturating_sub(self.capacity);
        bytes.drain(..overflow);
        bytes.extend(data);
    }
}

impl AsyncWrite for LogBuffer {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for LogBuffer {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogBuffer {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_bytes() {
        let log = LogBuffer::new(8);
        log.append(b"hello ");
        assert_eq!(log.contents(), b"hello ");
        log.append(b"world");
        assert_eq!(log.contents(), b"lo world");
        log.append(b"0123456789abc");
        assert_eq!(log.contents(), b"56789abc");
    }
}
