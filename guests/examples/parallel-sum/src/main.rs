//! `parallel-sum N [COUNT]` (defaults 4 and 1000000): sums `0..COUNT` over `N` child
//! processes of this same module and checks the total against `COUNT*(COUNT-1)/2`.
//!
//! Each child is spawned as `worker <parent-pid> <lo> <hi>`, sums `lo..hi` and sends the
//! sum back as 8 little-endian bytes. Sums wrap modulo 2^64, like the check.

use std::collections::HashSet;
use std::process::exit;

use nimbus_sdk::{Pid, pid, recv, send, spawn_self, wait};

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("parallel-sum: {msg}");
    exit(1);
}

fn parse<T: std::str::FromStr>(text: &str, what: &str) -> T {
    text.parse()
        .unwrap_or_else(|_| fail(format_args!("bad {what}: {text:?}")))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("worker") {
        worker(&args[2..]);
    } else {
        parent(&args[1..]);
    }
}

/// `worker <parent-pid> <lo> <hi>`: sums `lo..hi` and sends it to the parent.
fn worker(args: &[String]) {
    let [parent, lo, hi] = args else {
        fail("usage: worker <parent-pid> <lo> <hi>");
    };
    let parent: Pid = parse(parent, "parent pid");
    let lo: u64 = parse(lo, "lo");
    let hi: u64 = parse(hi, "hi");
    let mut sum: u64 = 0;
    for k in lo..hi {
        sum = sum.wrapping_add(k);
    }
    if let Err(err) = send(parent, &sum.to_le_bytes()) {
        fail(format_args!("worker: send to {parent} failed: {err}"));
    }
}

fn parent(args: &[String]) {
    if args.len() > 2 {
        fail("usage: parallel-sum N [COUNT]");
    }
    let n: u64 = args.first().map_or(4, |s| parse(s, "N"));
    let count: u64 = args.get(1).map_or(1_000_000, |s| parse(s, "COUNT"));
    if n == 0 {
        fail("N must be at least 1");
    }

    let me = pid().to_string();
    let mut children = HashSet::new();
    for i in 0..n {
        // In u128 so that i * count cannot overflow.
        let bound = |i: u64| (u128::from(i) * u128::from(count) / u128::from(n)) as u64;
        let (lo, hi) = (bound(i).to_string(), bound(i + 1).to_string());
        match spawn_self(&["worker", &me, &lo, &hi]) {
            Ok(child) => {
                children.insert(child);
            }
            Err(err) => fail(format_args!("spawn of worker {i} failed: {err}")),
        }
    }

    let mut total: u64 = 0;
    let mut heard = HashSet::new();
    for _ in 0..n {
        let msg = recv().unwrap_or_else(|err| fail(format_args!("recv failed: {err}")));
        if !children.contains(&msg.from) || !heard.insert(msg.from) {
            fail(format_args!("unexpected message from {}", msg.from));
        }
        let bytes: [u8; 8] = msg.data.as_slice().try_into().unwrap_or_else(|_| {
            fail(format_args!(
                "message from {} has {} bytes, expected 8",
                msg.from,
                msg.data.len()
            ))
        });
        total = total.wrapping_add(u64::from_le_bytes(bytes));
    }

    for &child in &children {
        match wait(child) {
            Ok(0) => {}
            Ok(code) => fail(format_args!("worker {child} exited with {code}")),
            Err(err) => fail(format_args!("wait for worker {child} failed: {err}")),
        }
    }

    let c = u128::from(count);
    let expected = (c * c.saturating_sub(1) / 2) as u64;
    if total != expected {
        fail(format_args!(
            "sum of 0..{count} over {n} processes = {total}, expected {expected}"
        ));
    }
    println!("sum of 0..{count} over {n} processes = {total}");
}
