//! Snapshots of WebAssembly processes: linear memory, mutable globals and metadata,
//! and their file format.
//!
//! Owns: the in-memory form of a snapshot and its on-disk encoding — sparse (pages of
//! zeros are not stored; the others are stored as runs of consecutive pages, so large
//! memories are written and restored in few large copies), checksummed (CRC-32 of everything before the trailer),
//! and written atomically (temporary file, fsync, rename), so a crash never leaves a
//! torn snapshot behind and a damaged file is refused rather than restored.
//!
//! Must not: depend on wasmtime. Capturing a snapshot from a live instance and
//! restoring one into it is the runtime's job; this crate only sees bytes.
//!
//! Layout, all integers little endian:
//!
//! ```text
//! "NIMBUSSN"  u32 version  [u8; 32] module hash  u64 memory length
//! u32 global count   { u32 global index, u8 kind, [u8; 16] bits } * count
//! u32 run count      { u32 first page, u32 page count, contents } * count
//! u32 crc32 of all the above
//! ```

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"NIMBUSSN";
const VERSION: u32 = 2;
/// Granularity of the sparse encoding.
pub const PAGE_SIZE: usize = 4096;

/// The value of one global.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobalValue {
    /// An `i32`.
    I32(i32),
    /// An `i64`.
    I64(i64),
    /// An `f32`, as its bits.
    F32(u32),
    /// An `f64`, as its bits.
    F64(u64),
    /// A `v128`.
    V128(u128),
}

impl GlobalValue {
    fn encode(self) -> (u8, u128) {
        match self {
            GlobalValue::I32(v) => (0, v as u32 as u128),
            GlobalValue::I64(v) => (1, v as u64 as u128),
            GlobalValue::F32(v) => (2, v as u128),
            GlobalValue::F64(v) => (3, v as u128),
            GlobalValue::V128(v) => (4, v),
        }
    }

    fn decode(kind: u8, bits: u128) -> Option<GlobalValue> {
        Some(match kind {
            0 => GlobalValue::I32(bits as u32 as i32),
            1 => GlobalValue::I64(bits as u64 as i64),
            2 => GlobalValue::F32(bits as u32),
            3 => GlobalValue::F64(bits as u64),
            4 => GlobalValue::V128(bits),
            _ => return None,
        })
    }
}

/// A snapshot whose memory is borrowed from a live instance, ready to be written.
#[derive(Debug)]
pub struct SnapshotRef<'a> {
    /// The sha256 of the module the instance runs.
    pub module: [u8; 32],
    /// Mutable globals by index in the module's global index space.
    pub globals: Vec<(u32, GlobalValue)>,
    /// The whole linear memory.
    pub memory: &'a [u8],
}

/// A snapshot read back from a file.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The sha256 of the module the instance ran.
    pub module: [u8; 32],
    /// Mutable globals by index.
    pub globals: Vec<(u32, GlobalValue)>,
    /// Length of the linear memory in bytes.
    pub memory_len: u64,
    /// The file's bytes; the stored pages are read from here.
    file: Vec<u8>,
    /// Runs of stored (non-zero) pages: first page, page count, offset in `file`.
    runs: Vec<(u32, u32, usize)>,
}

impl Snapshot {
    /// Writes the memory into `memory`, which must be `memory_len` bytes long and
    /// all zeros (as a freshly grown memory is), or hold the instance's memory to
    /// be overwritten: pages absent from the snapshot are zeroed.
    pub fn restore_memory(&self, memory: &mut [u8]) -> Result<(), SnapshotError> {
        if memory.len() as u64 != self.memory_len {
            return Err(SnapshotError::MemoryLength {
                expected: self.memory_len,
                actual: memory.len() as u64,
            });
        }
        let mut next_page = 0;
        for &(first, count, offset) in &self.runs {
            let start = first as usize * PAGE_SIZE;
            zero_nonzero_pages(&mut memory[next_page * PAGE_SIZE..start]);
            let end = (start + count as usize * PAGE_SIZE).min(memory.len());
            memory[start..end].copy_from_slice(&self.file[offset..offset + (end - start)]);
            next_page = first as usize + count as usize;
        }
        let rest = (next_page * PAGE_SIZE).min(memory.len());
        zero_nonzero_pages(&mut memory[rest..]);
        Ok(())
    }

    /// How many non-zero pages the snapshot holds.
    pub fn stored_pages(&self) -> usize {
        self.runs.iter().map(|&(_, count, _)| count as usize).sum()
    }
}

/// Zeroes the pages of `memory` that are not zero already (reading a page that was
/// never written is cheaper than writing it).
fn zero_nonzero_pages(memory: &mut [u8]) {
    for page in memory.chunks_mut(PAGE_SIZE) {
        if page.iter().any(|b| *b != 0) {
            page.fill(0);
        }
    }
}

/// A snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// An I/O error on the file.
    #[error("snapshot {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The file is not a snapshot of this version, is truncated, or fails its
    /// checksum.
    #[error("snapshot {path} is damaged: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The memory to restore into has the wrong length.
    #[error("snapshot holds {expected} bytes of memory, the instance has {actual}")]
    MemoryLength {
        /// The snapshot's memory length.
        expected: u64,
        /// The instance's memory length.
        actual: u64,
    },
}

impl SnapshotRef<'_> {
    /// Writes the snapshot to `path` atomically: a reader sees the old file or the
    /// complete new one, even across a crash.
    pub fn write(&self, path: &Path) -> Result<(), SnapshotError> {
        let io_error = |source| SnapshotError::Io {
            path: path.to_owned(),
            source,
        };
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let file = File::create(&tmp).map_err(io_error)?;
        let mut out = ChecksummedWriter::new(io::BufWriter::with_capacity(1 << 20, file));
        self.encode(&mut out).map_err(io_error)?;
        let crc = out.crc.clone().finalize();
        let mut file = out
            .inner
            .into_inner()
            .map_err(|e| io_error(e.into_error()))?;
        file.write_all(&crc.to_le_bytes()).map_err(io_error)?;
        file.sync_all().map_err(io_error)?;
        std::fs::rename(&tmp, path).map_err(io_error)?;
        if let Some(dir) = path.parent() {
            // Makes the rename itself durable.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_error)?;
        }
        Ok(())
    }

    fn encode(&self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&self.module)?;
        out.write_all(&(self.memory.len() as u64).to_le_bytes())?;
        out.write_all(&(self.globals.len() as u32).to_le_bytes())?;
        for (index, value) in &self.globals {
            let (kind, bits) = value.encode();
            out.write_all(&index.to_le_bytes())?;
            out.write_all(&[kind])?;
            out.write_all(&bits.to_le_bytes())?;
        }
        let nonzero = |page: &[u8]| page.iter().any(|b| *b != 0);
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for (number, page) in self.memory.chunks(PAGE_SIZE).enumerate() {
            if !nonzero(page) {
                continue;
            }
            match runs.last_mut() {
                Some((first, count)) if (*first + *count) as usize == number => *count += 1,
                _ => runs.push((number as u32, 1)),
            }
        }
        out.write_all(&(runs.len() as u32).to_le_bytes())?;
        let padding = [0u8; PAGE_SIZE];
        for (first, count) in runs {
            out.write_all(&first.to_le_bytes())?;
            out.write_all(&count.to_le_bytes())?;
            let start = first as usize * PAGE_SIZE;
            let end = (start + count as usize * PAGE_SIZE).min(self.memory.len());
            out.write_all(&self.memory[start..end])?;
            // A memory is a whole number of wasm pages, but be exact anyway.
            out.write_all(&padding[..count as usize * PAGE_SIZE - (end - start)])?;
        }
        Ok(())
    }
}

struct ChecksummedWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> ChecksummedWriter<W> {
    fn new(inner: W) -> Self {
        ChecksummedWriter {
            inner,
            crc: crc32fast::Hasher::new(),
        }
    }
}

impl<W: Write> Write for ChecksummedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.crc.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads and verifies the snapshot at `path`.
pub fn read(path: &Path) -> Result<Snapshot, SnapshotError> {
    let bytes = std::fs::read(path).map_err(|source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    })?;
    decode(bytes).map_err(|reason| SnapshotError::Damaged {
        path: path.to_owned(),
        reason,
    })
}

fn decode(bytes: Vec<u8>) -> Result<Snapshot, &'static str> {
    let (body, trailer) = bytes
        .split_last_chunk::<4>()
        .ok_or("shorter than a header")?;
    if crc32fast::hash(body) != u32::from_le_bytes(*trailer) {
        return Err("checksum mismatch");
    }
    let mut input = Reader(body);
    if input.take(8)? != MAGIC {
        return Err("not a nimbus snapshot");
    }
    if input.u32()? != VERSION {
        return Err("unsupported snapshot version");
    }
    let module = input.take(32)?.try_into().expect("32 bytes");
    let memory_len = input.u64()?;
    let globals = (0..input.u32()?)
        .map(|_| {
            let index = input.u32()?;
            let kind = input.take(1)?[0];
            let bits = u128::from_le_bytes(input.take(16)?.try_into().expect("16 bytes"));
            let value = GlobalValue::decode(kind, bits).ok_or("unknown global kind")?;
            Ok((index, value))
        })
        .collect::<Result<Vec<_>, &'static str>>()?;
    let run_count = input.u32()?;
    let mut runs = Vec::with_capacity(run_count.min(1 << 20) as usize);
    let mut next_page = 0u64;
    let pages_in_memory = memory_len.div_ceil(PAGE_SIZE as u64);
    for _ in 0..run_count {
        let (first, count) = (input.u32()?, input.u32()?);
        if count == 0
            || u64::from(first) < next_page
            || u64::from(first) + u64::from(count) > pages_in_memory
        {
            return Err("page run out of order or out of range");
        }
        next_page = u64::from(first) + u64::from(count);
        let offset = body.len() - input.0.len();
        input.take(count as usize * PAGE_SIZE)?;
        runs.push((first, count, offset));
    }
    if !input.0.is_empty() {
        return Err("trailing bytes");
    }
    Ok(Snapshot {
        module,
        globals,
        memory_len,
        file: bytes,
        runs,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("truncated");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> Vec<u8> {
        let mut memory = vec![0u8; 16 * PAGE_SIZE];
        memory[5] = 1;
        memory[3 * PAGE_SIZE + 17] = 0xAB;
        // A run of three pages.
        for page in 7..10 {
            memory[page * PAGE_SIZE + page] = page as u8;
        }
        memory[16 * PAGE_SIZE - 1] = 0xFF;
        memory
    }

    fn snapshot(memory: &[u8]) -> SnapshotRef<'_> {
        SnapshotRef {
            module: [7; 32],
            globals: vec![
                (0, GlobalValue::I32(-5)),
                (2, GlobalValue::I64(i64::MIN)),
                (3, GlobalValue::F32(1.5f32.to_bits())),
                (4, GlobalValue::F64(f64::NAN.to_bits())),
                (5, GlobalValue::V128(u128::MAX - 3)),
            ],
            memory,
        }
    }

    #[test]
    fn round_trip_is_exact_and_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        let memory = memory();
        let original = snapshot(&memory);
        original.write(&path).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.module, original.module);
        assert_eq!(back.globals, original.globals);
        assert_eq!(back.memory_len, memory.len() as u64);
        assert_eq!((back.stored_pages(), back.runs.len()), (6, 4));
        let mut restored = vec![0u8; memory.len()];
        back.restore_memory(&mut restored).unwrap();
        assert_eq!(restored, memory);
        // Restoring over a dirty memory clears pages the snapshot says are zero.
        let mut dirty = vec![0x55u8; memory.len()];
        back.restore_memory(&mut dirty).unwrap();
        assert_eq!(dirty, memory);
        let mut wrong = vec![0u8; PAGE_SIZE];
        assert!(matches!(
            back.restore_memory(&mut wrong),
            Err(SnapshotError::MemoryLength { .. })
        ));
    }

    #[test]
    fn every_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        let memory = memory();
        snapshot(&memory).write(&path).unwrap();
        let good = std::fs::read(&path).unwrap();
        // Flip one bit anywhere, or cut the file anywhere: always refused.
        for at in (0..good.len()).step_by(97) {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            assert!(decode(bad).is_err(), "bit flip at {at} accepted");
            assert!(
                decode(good[..at].to_vec()).is_err(),
                "truncation at {at} accepted"
            );
        }
        std::fs::write(&path, b"nonsense").unwrap();
        assert!(matches!(read(&path), Err(SnapshotError::Damaged { .. })));
        assert!(matches!(
            read(&dir.path().join("missing")),
            Err(SnapshotError::Io { .. })
        ));
    }

    #[test]
    fn a_rewrite_replaces_the_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        let memory = memory();
        snapshot(&memory).write(&path).unwrap();
        let empty = vec![0u8; PAGE_SIZE];
        snapshot(&empty).write(&path).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(
            (back.memory_len, back.stored_pages()),
            (PAGE_SIZE as u64, 0)
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary files left behind");
    }
}
