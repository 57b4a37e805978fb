//! `fs-walk DIR`: walks the tree under `DIR`, entries in name order, stats every
//! entry and reads every file whole, then prints how many directories and files it
//! saw, their bytes, and an FNV-1a hash of the paths and contents in walk order.
//!
//! Many small filesystem calls and little compute: the I/O benchmark runs it under
//! nimbus and under plain wasmtime and compares the times and the lines printed.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::exit;

/// What the walk has seen so far.
#[derive(Default)]
struct Walk {
    dirs: u64,
    files: u64,
    bytes: u64,
    hash: u64,
    buffer: Vec<u8>,
}

impl Walk {
    fn absorb(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.hash = (self.hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn dir(&mut self, dir: &Path) -> std::io::Result<()> {
        self.dirs += 1;
        let mut entries = fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<std::io::Result<Vec<_>>>()?;
        entries.sort();
        for path in entries {
            self.absorb(path.as_os_str().as_encoded_bytes());
            let meta = fs::metadata(&path)?;
            if meta.is_dir() {
                self.dir(&path)?;
            } else {
                self.file(&path, meta.len())?;
            }
        }
        Ok(())
    }

    fn file(&mut self, path: &Path, len: u64) -> std::io::Result<()> {
        self.files += 1;
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        fs::File::open(path)?.read_to_end(&mut buffer)?;
        if buffer.len() as u64 != len {
            eprintln!("fs-walk: {} changed while it was read", path.display());
            exit(1);
        }
        self.bytes += len;
        self.absorb(&buffer);
        self.buffer = buffer;
        Ok(())
    }
}

fn main() {
    let Some(root) = std::env::args().nth(1) else {
        eprintln!("usage: fs-walk DIR");
        exit(2);
    };
    let mut walk = Walk {
        hash: 0xcbf2_9ce4_8422_2325,
        ..Walk::default()
    };
    if let Err(e) = walk.dir(Path::new(&root)) {
        eprintln!("fs-walk: {root}: {e}");
        exit(1);
    }
    println!(
        "fs-walk dirs={} files={} bytes={} hash={:016x}",
        walk.dirs, walk.files, walk.bytes, walk.hash
    );
}
