//! Test fixture for the WASI surface a nimbus process gets. Prints, in order:
//!
//! - `arg[i]=...` for every argument, `argv[0]` included;
//! - `env GREETING=...`, or `env GREETING unset`;
//! - `stdin=<all of stdin, trimmed>`;
//! - if the directory `/data` exists (a preopen): `file=<contents of /data/input.txt,
//!   trimmed>`, and writes `/data/output.txt` containing `written by rust`.
//!
//! Exits with `N` if the last argument is `exit=N`, else 0; exits 1 if a file operation
//! fails.

use std::io::Read;
use std::path::Path;
use std::process::exit;

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
