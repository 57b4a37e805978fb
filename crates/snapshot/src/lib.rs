//! Snapshots of WebAssembly processes: linear memory, mutable globals and metadata
//! (the module, the app and instance the snapshot belongs to, and for a command
//! captured at a blocking host call, where it was [`Suspended`]), and their file
//! format.
//!
//! Owns: the in-memory form of a snapshot and its on-disk encoding — sparse (pages of
//! zeros are not stored), page-aligned (every stored page starts at a multiple of
//! [`PAGE_SIZE`] in the file, so a restore can map the file instead of reading it),
//! checksummed (CRC-32 of everything before the trailer), and written atomically
//! (temporary file, fsync, rename), so a crash never leaves a torn snapshot behind
//! and a damaged file is refused rather than restored.
//!
//! Must not: depend on wasmtime. Capturing a snapshot from a live instance and
//! restoring one into it is the runtime's job; this crate only sees bytes.
//!
//! Layout, all integers little endian:
//!
//! ```text
//! "NIMBUSSN"  u32 version  [u8; 32] module hash
//! u8 app name length  [u8; 64] app name (zero padded)  u32 instance
//! u64 memory length
//! u32 global count   { u32 global index, u8 kind, [u8; 16] bits } * count
//! u32 suspension length (0: none)   the suspension, see below
//! zeros up to the next page boundary
//! the stored pages, run after run, in memory order
//! { u32 first page, u32 page count } * run count   u32 run count
//! u32 crc32 of all the above
//! ```
//!
//! A suspension (strings are a `u32` length and UTF-8 bytes):
//!
//! ```text
//! u64 pid   u32 unwind data address   string import   u64 monotonic clock (ns)
//! u32 arg count { string }   u32 env count { string key, string value }
//! u32 directory count { string guest path }
//! ```

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"NIMBUSSN";
const VERSION: u32 = 5;
/// The longest app name a snapshot holds.
pub const MAX_APP_LEN: usize = 64;
/// Granularity of the sparse encoding, and the alignment of stored pages.
pub const PAGE_SIZE: usize = 4096;
/// Bytes of the header before the globals.
const FIXED_HEADER: usize = 8 + 4 + 32 + 1 + MAX_APP_LEN + 4 + 8 + 4;
/// Bytes of one global in the header.
const GLOBAL_LEN: usize = 4 + 1 + 16;
/// The longest suspension a snapshot holds (its args, env and directory names).
pub const MAX_SUSPENSION_LEN: usize = 1 << 20;

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

/// Whose state a snapshot is: an app's instance. A restore refuses a snapshot of
/// any other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The app's name, at most [`MAX_APP_LEN`] bytes.
    pub app: String,
    /// The instance's number within the app.
    pub instance: u32,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "instance {} of app `{}`", self.instance, self.app)
    }
}

/// Where a command was stopped: the blocking host call it was unwound from, and
/// what its WASI context held that travels with it. Only a snapshot of a command
/// captured while running has one; a service's has none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suspended {
    /// The process id it had.
    pub pid: u64,
    /// The address in its linear memory of the unwind data (the stack it was
    /// unwound from, as the capture transform saved it).
    pub unwind_data: u32,
    /// The host call it was in, `module.name` (`wasi_snapshot_preview1.fd_read`).
    pub import: String,
    /// Its monotonic clock's reading when it stopped, in nanoseconds: the clock
    /// goes on from there.
    pub monotonic_ns: u64,
    /// Its arguments, `argv[0]` included.
    pub args: Vec<String>,
    /// Its environment.
    pub env: Vec<(String, String)>,
    /// Its preopened directories, by the path the guest sees, in order.
    pub dirs: Vec<String>,
}

impl Suspended {
    fn encode(&self) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        let mut out = Vec::new();
        out.extend_from_slice(&self.pid.to_le_bytes());
        out.extend_from_slice(&self.unwind_data.to_le_bytes());
        string(&mut out, &self.import);
        out.extend_from_slice(&self.monotonic_ns.to_le_bytes());
        out.extend_from_slice(&(self.args.len() as u32).to_le_bytes());
        self.args.iter().for_each(|arg| string(&mut out, arg));
        out.extend_from_slice(&(self.env.len() as u32).to_le_bytes());
        for (key, value) in &self.env {
            string(&mut out, key);
            string(&mut out, value);
        }
        out.extend_from_slice(&(self.dirs.len() as u32).to_le_bytes());
        self.dirs.iter().for_each(|dir| string(&mut out, dir));
        out
    }

    fn decode(bytes: &[u8]) -> Result<Suspended, &'static str> {
        let mut input = Reader(bytes);
        let pid = input.u64()?;
        let unwind_data = input.u32()?;
        let import = input.string()?;
        let monotonic_ns = input.u64()?;
        let args = (0..input.u32()?)
            .map(|_| input.string())
            .collect::<Result<_, _>>()?;
        let env = (0..input.u32()?)
            .map(|_| Ok((input.string()?, input.string()?)))
            .collect::<Result<_, &'static str>>()?;
        let dirs = (0..input.u32()?)
            .map(|_| input.string())
            .collect::<Result<_, _>>()?;
        if !input.0.is_empty() {
            return Err("suspension longer than its contents");
        }
        Ok(Suspended {
            pid,
            unwind_data,
            import,
            monotonic_ns,
            args,
            env,
            dirs,
        })
    }
}

/// A snapshot whose memory is borrowed from a live instance, ready to be written.
#[derive(Debug)]
pub struct SnapshotRef<'a> {
    /// The sha256 of the module the instance runs.
    pub module: [u8; 32],
    /// The app and instance whose state this is.
    pub owner: Owner,
    /// Mutable globals by index in the module's global index space.
    pub globals: Vec<(u32, GlobalValue)>,
    /// The whole linear memory.
    pub memory: &'a [u8],
    /// Where a captured command was stopped.
    pub suspended: Option<Suspended>,
}

/// Consecutive stored pages of a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// The memory page the run starts at.
    pub first_page: u32,
    /// How many pages it holds.
    pub pages: u32,
    /// Where its contents start in the file, a multiple of [`PAGE_SIZE`].
    pub offset: u64,
}

/// A verified snapshot file. Its pages stay in the file, to be mapped or read as
/// the restore needs them; pages in no run are zeros.
#[derive(Debug)]
pub struct Snapshot {
    /// The sha256 of the module the instance ran.
    pub module: [u8; 32],
    /// The app and instance whose state this is.
    pub owner: Owner,
    /// Mutable globals by index.
    pub globals: Vec<(u32, GlobalValue)>,
    /// Length of the linear memory in bytes.
    pub memory_len: u64,
    /// Where a captured command was stopped.
    pub suspended: Option<Suspended>,
    /// Runs of stored (non-zero) pages, in memory order.
    pub runs: Vec<Run>,
    /// The open file. It is never written in place (a new snapshot replaces it by
    /// rename), so mapping its pages is safe for as long as they are mapped.
    pub file: File,
}

impl Snapshot {
    /// How many non-zero pages the snapshot holds.
    pub fn stored_pages(&self) -> usize {
        self.runs.iter().map(|run| run.pages as usize).sum()
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
}

impl SnapshotRef<'_> {
    /// Writes the snapshot to `path` atomically: a reader sees the old file or the
    /// complete new one, even across a crash.
    pub fn write(&self, path: &Path) -> Result<(), SnapshotError> {
        let io_error = |source| SnapshotError::Io {
            path: path.to_owned(),
            source,
        };
        if self.owner.app.len() > MAX_APP_LEN {
            return Err(io_error(io::Error::new(
                io::ErrorKind::InvalidInput,
                "app name longer than a snapshot holds",
            )));
        }
        let suspension = self.suspended.as_ref().map(Suspended::encode);
        if suspension
            .as_ref()
            .is_some_and(|s| s.len() > MAX_SUSPENSION_LEN)
        {
            return Err(io_error(io::Error::new(
                io::ErrorKind::InvalidInput,
                "args, env and directories longer than a snapshot holds",
            )));
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let file = File::create(&tmp).map_err(io_error)?;
        let mut out = ChecksummedWriter::new(io::BufWriter::with_capacity(1 << 20, file));
        self.encode(&mut out, suspension.as_deref().unwrap_or_default())
            .map_err(io_error)?;
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

    fn encode(&self, out: &mut impl Write, suspension: &[u8]) -> io::Result<()> {
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&self.module)?;
        let mut app = [0u8; MAX_APP_LEN];
        app[..self.owner.app.len()].copy_from_slice(self.owner.app.as_bytes());
        out.write_all(&[self.owner.app.len() as u8])?;
        out.write_all(&app)?;
        out.write_all(&self.owner.instance.to_le_bytes())?;
        out.write_all(&(self.memory.len() as u64).to_le_bytes())?;
        out.write_all(&(self.globals.len() as u32).to_le_bytes())?;
        for (index, value) in &self.globals {
            let (kind, bits) = value.encode();
            out.write_all(&index.to_le_bytes())?;
            out.write_all(&[kind])?;
            out.write_all(&bits.to_le_bytes())?;
        }
        out.write_all(&(suspension.len() as u32).to_le_bytes())?;
        out.write_all(suspension)?;
        let padding = [0u8; PAGE_SIZE];
        let header = FIXED_HEADER + GLOBAL_LEN * self.globals.len() + 4 + suspension.len();
        out.write_all(&padding[..header.next_multiple_of(PAGE_SIZE) - header])?;
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for (number, page) in self.memory.chunks(PAGE_SIZE).enumerate() {
            if page.iter().all(|b| *b == 0) {
                continue;
            }
            out.write_all(page)?;
            // A memory is a whole number of wasm pages, but be exact anyway.
            out.write_all(&padding[page.len()..])?;
            match runs.last_mut() {
                Some((first, count)) if (*first + *count) as usize == number => *count += 1,
                _ => runs.push((number as u32, 1)),
            }
        }
        for (first, count) in &runs {
            out.write_all(&first.to_le_bytes())?;
            out.write_all(&count.to_le_bytes())?;
        }
        out.write_all(&(runs.len() as u32).to_le_bytes())
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

/// Opens the snapshot at `path` and verifies it whole: its checksum, header and
/// page index. Reads the file once, without keeping its pages in memory.
pub fn read(path: &Path) -> Result<Snapshot, SnapshotError> {
    let file = File::open(path).map_err(|source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    })?;
    decode(file).map_err(|damage| match damage {
        Damage::Io(source) => SnapshotError::Io {
            path: path.to_owned(),
            source,
        },
        Damage::Format(reason) => SnapshotError::Damaged {
            path: path.to_owned(),
            reason,
        },
    })
}

enum Damage {
    Io(io::Error),
    Format(&'static str),
}

impl From<io::Error> for Damage {
    fn from(error: io::Error) -> Damage {
        match error.kind() {
            io::ErrorKind::UnexpectedEof => Damage::Format("truncated"),
            _ => Damage::Io(error),
        }
    }
}

impl From<&'static str> for Damage {
    fn from(reason: &'static str) -> Damage {
        Damage::Format(reason)
    }
}

fn decode(file: File) -> Result<Snapshot, Damage> {
    let len = file.metadata()?.len();
    let body_len = len.checked_sub(4).ok_or("shorter than a header")?;
    verify_checksum(&file, body_len)?;

    let fixed = read_at(&file, 0, FIXED_HEADER.min(body_len as usize))?;
    let mut input = Reader(&fixed);
    if input.take(8)? != MAGIC {
        return Err("not a nimbus snapshot".into());
    }
    if input.u32()? != VERSION {
        return Err("unsupported snapshot format version (written by another nimbus)".into());
    }
    let module = input.take(32)?.try_into().expect("32 bytes");
    let app_len = usize::from(input.take(1)?[0]);
    let app = input.take(MAX_APP_LEN)?;
    let app = app
        .get(..app_len)
        .and_then(|name| std::str::from_utf8(name).ok())
        .ok_or("app name out of range")?
        .to_owned();
    let owner = Owner {
        app,
        instance: input.u32()?,
    };
    let memory_len = input.u64()?;
    let global_count = input.u32()? as usize;
    let globals_end = global_count
        .checked_mul(GLOBAL_LEN)
        .and_then(|globals| globals.checked_add(FIXED_HEADER + 4))
        .filter(|&end| end as u64 <= body_len)
        .ok_or("truncated")?;
    let global_bytes = read_at(&file, FIXED_HEADER as u64, globals_end - FIXED_HEADER)?;
    let mut input = Reader(&global_bytes);
    let globals = (0..global_count)
        .map(|_| {
            let index = input.u32()?;
            let kind = input.take(1)?[0];
            let bits = u128::from_le_bytes(input.take(16)?.try_into().expect("16 bytes"));
            let value = GlobalValue::decode(kind, bits).ok_or("unknown global kind")?;
            Ok((index, value))
        })
        .collect::<Result<Vec<_>, &'static str>>()?;
    let suspension_len = input.u32()? as usize;
    if suspension_len > MAX_SUSPENSION_LEN {
        return Err("suspension too long".into());
    }
    let header_len = globals_end + suspension_len;
    if header_len as u64 > body_len {
        return Err("truncated".into());
    }
    let suspended = match suspension_len {
        0 => None,
        len => Some(Suspended::decode(&read_at(
            &file,
            globals_end as u64,
            len,
        )?)?),
    };

    let count_at = body_len.checked_sub(4).ok_or("truncated")?;
    let run_count = u64::from(Reader(&read_at(&file, count_at, 4)?).u32()?);
    let index_at = count_at.checked_sub(run_count * 8).ok_or("truncated")?;
    let data_at = header_len.next_multiple_of(PAGE_SIZE) as u64;
    let index = read_at(&file, index_at, (run_count * 8) as usize)?;
    let mut input = Reader(&index);
    let mut runs = Vec::with_capacity(run_count as usize);
    let (mut next_page, mut offset) = (0u64, data_at);
    let pages_in_memory = memory_len.div_ceil(PAGE_SIZE as u64);
    for _ in 0..run_count {
        let (first_page, pages) = (input.u32()?, input.u32()?);
        if pages == 0
            || u64::from(first_page) < next_page
            || u64::from(first_page) + u64::from(pages) > pages_in_memory
        {
            return Err("page run out of order or out of range".into());
        }
        next_page = u64::from(first_page) + u64::from(pages);
        runs.push(Run {
            first_page,
            pages,
            offset,
        });
        offset += u64::from(pages) * PAGE_SIZE as u64;
    }
    if offset != index_at {
        return Err("stored pages do not match the page index".into());
    }
    Ok(Snapshot {
        module,
        owner,
        globals,
        memory_len,
        suspended,
        runs,
        file,
    })
}

fn verify_checksum(file: &File, body_len: u64) -> Result<(), Damage> {
    let mut crc = crc32fast::Hasher::new();
    let mut body = file.take(body_len);
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        match body.read(&mut buffer)? {
            0 => break,
            n => crc.update(&buffer[..n]),
        }
    }
    let trailer = read_at(file, body_len, 4)?;
    if crc.finalize() != u32::from_le_bytes(trailer.try_into().expect("4 bytes")) {
        return Err("checksum mismatch".into());
    }
    Ok(())
}

fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, offset)?;
    Ok(bytes)
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

    fn string(&mut self) -> Result<String, &'static str> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a string is not UTF-8")
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
            owner: Owner {
                app: "counter".into(),
                instance: 3,
            },
            globals: vec![
                (0, GlobalValue::I32(-5)),
                (2, GlobalValue::I64(i64::MIN)),
                (3, GlobalValue::F32(1.5f32.to_bits())),
                (4, GlobalValue::F64(f64::NAN.to_bits())),
                (5, GlobalValue::V128(u128::MAX - 3)),
            ],
            memory,
            suspended: None,
        }
    }

    /// The memory a snapshot describes, read from its runs.
    fn contents(snapshot: &Snapshot) -> Vec<u8> {
        let mut memory = vec![0u8; snapshot.memory_len as usize];
        for run in &snapshot.runs {
            let start = run.first_page as usize * PAGE_SIZE;
            let end = start + run.pages as usize * PAGE_SIZE;
            snapshot
                .file
                .read_exact_at(&mut memory[start..end], run.offset)
                .unwrap();
        }
        memory
    }

    #[test]
    fn round_trip_is_exact_sparse_and_page_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        let memory = memory();
        let original = snapshot(&memory);
        original.write(&path).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.module, original.module);
        assert_eq!(back.owner, original.owner);
        assert_eq!(back.globals, original.globals);
        assert_eq!(back.memory_len, memory.len() as u64);
        assert_eq!((back.stored_pages(), back.runs.len()), (6, 4));
        assert!(
            back.runs
                .iter()
                .all(|run| run.offset % PAGE_SIZE as u64 == 0)
        );
        assert_eq!(contents(&back), memory);
    }

    #[test]
    fn a_suspension_round_trips_and_its_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        let memory = memory();
        let mut captured = snapshot(&memory);
        captured.suspended = Some(Suspended {
            pid: 42,
            unwind_data: 0x1_0000,
            import: "wasi_snapshot_preview1.fd_read".into(),
            monotonic_ns: 123_456_789,
            args: vec!["prog.wasm".into(), "é".into(), String::new()],
            env: vec![("KEY".into(), "value=1".into())],
            dirs: vec!["/data".into()],
        });
        captured.write(&path).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.suspended, captured.suspended);
        assert!(
            back.runs
                .iter()
                .all(|run| run.offset % PAGE_SIZE as u64 == 0)
        );
        assert_eq!(contents(&back), memory);
        let good = std::fs::read(&path).unwrap();
        for at in (0..PAGE_SIZE).step_by(7) {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            std::fs::write(&path, &bad).unwrap();
            assert!(read(&path).is_err(), "bit flip at {at} accepted");
        }
    }

    #[test]
    fn every_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        let memory = memory();
        snapshot(&memory).write(&path).unwrap();
        let good = std::fs::read(&path).unwrap();
        let bad_path = dir.path().join("bad.snap");
        let refused = |bytes: &[u8]| {
            std::fs::write(&bad_path, bytes).unwrap();
            matches!(read(&bad_path), Err(SnapshotError::Damaged { .. }))
        };
        // Flip one bit anywhere, or cut the file anywhere: always refused.
        for at in (0..good.len()).step_by(97) {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            assert!(refused(&bad), "bit flip at {at} accepted");
            assert!(refused(&good[..at]), "truncation at {at} accepted");
        }
        assert!(refused(b"nonsense"));
        assert!(matches!(
            read(&dir.path().join("missing")),
            Err(SnapshotError::Io { .. })
        ));
    }

    #[test]
    fn a_file_of_the_previous_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        let memory = memory();
        snapshot(&memory).write(&path).unwrap();
        // The same file claiming version 4 (which had no suspension), checksum mended.
        let mut old = std::fs::read(&path).unwrap();
        old[8..12].copy_from_slice(&4u32.to_le_bytes());
        let body = old.len() - 4;
        let crc = crc32fast::hash(&old[..body]);
        old[body..].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &old).unwrap();
        match read(&path) {
            Err(SnapshotError::Damaged { reason, .. }) => assert!(reason.contains("version")),
            other => panic!("accepted: {other:?}"),
        }
    }

    #[test]
    fn a_name_longer_than_a_snapshot_holds_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let memory = memory();
        let mut long = snapshot(&memory);
        long.owner.app = "a".repeat(MAX_APP_LEN + 1);
        assert!(long.write(&dir.path().join("s.snap")).is_err());
        let mut longest = snapshot(&memory);
        longest.owner.app = "a".repeat(MAX_APP_LEN);
        longest.write(&dir.path().join("s.snap")).unwrap();
        assert_eq!(
            read(&dir.path().join("s.snap")).unwrap().owner,
            longest.owner
        );
    }

    #[test]
    fn a_rewrite_replaces_the_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        let memory = memory();
        snapshot(&memory).write(&path).unwrap();
        let held = read(&path).unwrap();
        let empty = vec![0u8; PAGE_SIZE];
        snapshot(&empty).write(&path).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(
            (back.memory_len, back.stored_pages()),
            (PAGE_SIZE as u64, 0)
        );
        // An open snapshot keeps its old contents: files are replaced, never rewritten.
        assert_eq!(contents(&held), memory);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary files left behind");
    }
}
