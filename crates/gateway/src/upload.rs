//! A deployment's upload: the module streamed to disk as it arrives, then read
//! back into memory once, so that a module costs the gateway its size once rather
//! than a copy at each step (a 250 MiB one had raised its peak memory by 740 MiB).
//!
//! The body is read chunk by chunk on the request's task and written to an unnamed
//! temporary file in the node's data directory (each write on a blocking thread,
//! through `tokio::fs`, so an upload that stalls holds no thread while it waits for
//! the network); once the body has ended whole, the file is read back into one
//! allocation of its size, hashing it as it goes ([`ModuleBytes::read`]). The file
//! has no name to remove: it is gone once closed, however the upload ends (an
//! error, a client that goes away and so drops the request's future, or a crash).

use std::io::Seek;
use std::path::{Path, PathBuf};

use axum::body::Body;
use http_body_util::BodyExt;
use nimbus_runtime::ModuleBytes;
use tokio::io::AsyncWriteExt;

/// Why an upload was not taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UploadError {
    /// The body is longer than the limit.
    #[error("request body over the limit of {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The body could not be read to its end.
    #[error("the upload broke off: {0}")]
    Body(axum::Error),
    /// The upload could not be written to disk or read back.
    #[error("cannot keep the upload in {}: {source}", dir.display())]
    Disk {
        /// Where it was to be kept.
        dir: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// The module in `body`, of at most `limit` bytes, by way of an unnamed file in
/// `dir` (created if missing). On an error the rest of the body is left unread.
pub(crate) async fn receive(
    body: &mut Body,
    dir: &Path,
    limit: usize,
) -> Result<ModuleBytes, UploadError> {
    let disk = |source| UploadError::Disk {
        dir: dir.to_owned(),
        source,
    };
    let unnamed = {
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            // O_TMPFILE where the file system has it, else named and unlinked at once.
            tempfile::tempfile_in(&dir)
        })
    };
    let file = unnamed
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .map_err(disk)?;
    let mut file = tokio::fs::File::from_std(file);
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(chunk) = frame.map_err(UploadError::Body)?.into_data() else {
            continue; // trailers
        };
        len += chunk.len();
        if len > limit {
            return Err(UploadError::TooLarge { limit });
        }
        file.write_all(&chunk).await.map_err(disk)?;
    }
    file.flush().await.map_err(disk)?;
    let mut file = file.into_std().await;
    tokio::task::spawn_blocking(move || {
        file.rewind()?;
        ModuleBytes::read(&mut file, len)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    .map_err(disk)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use axum::body::Bytes;
    use tokio::sync::mpsc::{self, Sender};

    use super::*;

    /// A body whose chunks the test sends, and its sender.
    fn streamed() -> (Sender<Result<Bytes, std::io::Error>>, Body) {
        let (sender, chunks) = mpsc::channel(4);
        let stream = tokio_stream::wrappers::ReceiverStream::new(chunks);
        (sender, Body::from_stream(stream))
    }

    /// How many of this process's descriptors are open on files in `dir`.
    fn open_in(dir: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| target.starts_with(dir))
            .count()
    }

    /// Waits, polling within a bound, until `check` holds.
    async fn until(what: &str, check: impl Fn() -> bool) {
        let bound = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < bound, "never: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_streamed_module_arrives_whole_and_hashed_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let uploads = dir.path().join("uploads");
        let module: Vec<u8> = (0..3 << 20).map(|i| (i % 253) as u8).collect();
        let (sender, mut body) = streamed();
        let chunks: Vec<Bytes> = module.chunks(100_000).map(Bytes::copy_from_slice).collect();
        let feeding = tokio::spawn(async move {
            for chunk in chunks {
                sender.send(Ok(chunk)).await.unwrap();
            }
        });
        let received = receive(&mut body, &uploads, 4 << 20).await.unwrap();
        feeding.await.unwrap();
        assert_eq!(received.bytes(), &module[..]);
        assert_eq!(received.hash(), ModuleBytes::new(module).hash());
        assert_eq!(open_in(&uploads), 0);
        assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_and_its_file_closed() {
        let dir = tempfile::tempdir().unwrap();
        let mut body = Body::from(vec![7u8; 1001]);
        let refused = receive(&mut body, dir.path(), 1000).await.unwrap_err();
        assert!(
            matches!(refused, UploadError::TooLarge { limit: 1000 }),
            "{refused}"
        );
        until("the writer closes its file", || open_in(dir.path()) == 0).await;
    }

    #[tokio::test]
    async fn a_body_that_breaks_off_is_an_error_and_its_file_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (sender, mut body) = streamed();
        sender.send(Ok(Bytes::from_static(b"\0asm"))).await.unwrap();
        sender
            .send(Err(std::io::Error::other("connection reset")))
            .await
            .unwrap();
        let refused = receive(&mut body, dir.path(), 1000).await.unwrap_err();
        assert!(matches!(refused, UploadError::Body(_)), "{refused}");
        until("the writer closes its file", || open_in(dir.path()) == 0).await;
    }

    #[tokio::test]
    async fn an_upload_dropped_midway_closes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let (sender, mut body) = streamed();
        let path = dir.path().to_owned();
        // A client that sends part of the module and goes quiet; then its request
        // is dropped, as a server drops the handler of a connection that closed.
        let upload = tokio::spawn(async move {
            let _ = receive(&mut body, &path, 1 << 20).await;
        });
        sender.send(Ok(Bytes::from(vec![1u8; 4096]))).await.unwrap();
        until("the writer opens its file", || open_in(dir.path()) == 1).await;
        upload.abort();
        assert!(upload.await.unwrap_err().is_cancelled());
        until("the writer closes its file", || open_in(dir.path()) == 0).await;
        drop(sender);
    }
}
