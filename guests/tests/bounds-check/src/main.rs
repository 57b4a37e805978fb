//! Test fixture for nimbus's bounds on messages and channels.
//!
//! - `flood N DIR`: spawns a child (`sink N DIR`) that receives nothing until the file
//!   `DIR/go` exists, sends it N messages of one byte, printing `sent K` after every
//!   10,000, then `sent all`, waits for it and prints `sink exited CODE`.
//! - `sink N DIR`: waits for `DIR/go`, receives N one-byte messages, exits 0.
//! - `channels N`: spawns N children (`hold`), sends each one message and prints
//!   `channels ok=A quota=B other=C`: how many sends went through, how many were
//!   refused with `ERR_QUOTA`, and how many failed otherwise. Then exits 0 without
//!   waiting; the children it could not reach end with the run.
//! - `hold`: receives one message, exits 0.
//! - `spawns N`: spawns and waits for N children (`exit`) one after another, printing
//!   `spawned K` after every 10,000. `exit` exits 0 at once.
//!
//! Exits 1 with a line on stderr if something unexpected fails.

use std::path::Path;
use std::process::exit;
use std::time::Duration;

use nimbus_sdk::{Error, recv, send, spawn_self, wait};

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("bounds-check: {msg}");
    exit(1);
}

fn count(arg: Option<&String>) -> usize {
    arg.and_then(|n| n.parse().ok())
        .unwrap_or_else(|| fail("usage: flood|sink|channels|spawns N [DIR] | hold | exit"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("flood") => flood(count(args.get(2)), dir(args.get(3))),
        Some("sink") => sink(count(args.get(2)), dir(args.get(3))),
        Some("channels") => channels(count(args.get(2))),
        Some("spawns") => spawns(count(args.get(2))),
        Some("exit") => {}
        Some("hold") => {
            recv().unwrap_or_else(|e| fail(format_args!("hold: recv: {e}")));
        }
        _ => fail("usage: flood|sink|channels|spawns N [DIR] | hold | exit"),
    }
}

fn dir(arg: Option<&String>) -> &str {
    arg.map_or_else(|| fail("flood and sink need a directory"), String::as_str)
}

fn flood(n: usize, dir: &str) {
    let sink = spawn_self(&["sink", &n.to_string(), dir])
        .unwrap_or_else(|e| fail(format_args!("spawn: {e}")));
    for k in 1..=n {
        if let Err(e) = send(sink, b"x") {
            fail(format_args!("send {k}: {e}"));
        }
        if k % 10_000 == 0 {
            println!("sent {k}");
        }
    }
    println!("sent all");
    match wait(sink) {
        Ok(code) => println!("sink exited {code}"),
        Err(e) => fail(format_args!("wait: {e}")),
    }
}

fn sink(n: usize, dir: &str) {
    let go = Path::new(dir).join("go");
    while !go.exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    for k in 1..=n {
        match recv() {
            Ok(message) if message.data == b"x" => {}
            Ok(message) => fail(format_args!("message {k}: {:?}", message.data)),
            Err(e) => fail(format_args!("recv {k}: {e}")),
        }
    }
}

fn channels(n: usize) {
    let children: Vec<_> = (0..n)
        .map(|i| spawn_self(&["hold"]).unwrap_or_else(|e| fail(format_args!("spawn {i}: {e}"))))
        .collect();
    let (mut ok, mut quota, mut other) = (0, 0, 0);
    for child in children {
        match send(child, b"x") {
            Ok(()) => ok += 1,
            Err(Error::Quota) => quota += 1,
            Err(e) => {
                eprintln!("bounds-check: send to {child}: {e}");
                other += 1;
            }
        }
    }
    println!("channels ok={ok} quota={quota} other={other}");
}

fn spawns(n: usize) {
    for k in 1..=n {
        let child = spawn_self(&["exit"]).unwrap_or_else(|e| fail(format_args!("spawn {k}: {e}")));
        match wait(child) {
            Ok(0) => {}
            Ok(code) => fail(format_args!("child {k} exited {code}")),
            Err(e) => fail(format_args!("wait {k}: {e}")),
        }
        if k % 10_000 == 0 {
            println!("spawned {k}");
        }
    }
}
