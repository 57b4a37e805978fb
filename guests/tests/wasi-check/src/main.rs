//! Test fixture for the WASI surface a nimbus process gets. Prints, in order:
//!
//! - `arg[i]=...` for every argument, `argv[0]` included;
//! - `env GREETING=...`, or `env GREETING unset`;
//! - `stdin=<all of stdin, trimmed>`;
//! - `clock ok` if the wall clock is past 2020 and the monotonic clock does not go back;
//! - `random ok` if two 32-byte draws from WASI `random_get` differ;
//! - `stderr works` on stderr;
//! - if the directory `/data` exists (a preopen): `file=<contents of /data/input.txt,
//!   trimmed>`, and writes `/data/output.txt` containing `written by rust`.
//!
//! Exits with `N` if the last argument is `exit=N`, else 0; exits 1 if a file operation
//! fails.

use std::io::Read;
use std::path::Path;
use std::process::exit;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[link(wasm_import_module = "wasi_snapshot_preview1")]
unsafe extern "C" {
    /// WASI preview 1 `random_get(buf, len) -> errno`.
    fn random_get(buf: *mut u8, len: usize) -> u16;
}

fn random_bytes() -> [u8; 32] {
    let mut buf = [0u8; 32];
    // SAFETY: `buf` is a valid, writable buffer of exactly the length passed.
    let errno = unsafe { random_get(buf.as_mut_ptr(), buf.len()) };
    if errno != 0 {
        eprintln!("wasi-check: random_get failed with errno {errno}");
        exit(1);
    }
    buf
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    for (i, arg) in args.iter().enumerate() {
        println!("arg[{i}]={arg}");
    }

    match std::env::var("GREETING") {
        Ok(value) => println!("env GREETING={value}"),
        Err(_) => println!("env GREETING unset"),
    }

    let mut stdin = Vec::new();
    if let Err(err) = std::io::stdin().read_to_end(&mut stdin) {
        eprintln!("wasi-check: reading stdin failed: {err}");
        exit(1);
    }
    println!("stdin={}", String::from_utf8_lossy(&stdin).trim());

    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (earlier, later) = (Instant::now(), Instant::now());
    if wall > 1_600_000_000 && later >= earlier {
        println!("clock ok");
    }
    if random_bytes() != random_bytes() {
        println!("random ok");
    }
    eprintln!("stderr works");

    if Path::new("/data").is_dir() {
        match std::fs::read("/data/input.txt") {
            Ok(bytes) => println!("file={}", String::from_utf8_lossy(&bytes).trim()),
            Err(err) => {
                eprintln!("wasi-check: reading /data/input.txt failed: {err}");
                exit(1);
            }
        }
        if let Err(err) = std::fs::write("/data/output.txt", "written by rust") {
            eprintln!("wasi-check: writing /data/output.txt failed: {err}");
            exit(1);
        }
    }

    let code = args
        .last()
        .filter(|_| args.len() > 1)
        .and_then(|last| last.strip_prefix("exit="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    exit(code);
}
