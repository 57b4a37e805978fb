//! nimbus test fixture for capture and restore: fills MIB MiB (the first argument,
//! default 4) with a pseudo-random sequence, prints its checksum and `ready`, then
//! blocks reading a line of stdin (where a capture stops it), prints the line, sleeps
//! a millisecond, checks that its memory and monotonic clock are as they were, and
//! exits with code 3. A run captured at the read and restored prints exactly what an
//! uninterrupted run prints.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

/// The checksum of `values`: each mixed with its position.
fn checksum(values: &[u64]) -> u64 {
    values.iter().enumerate().fold(0, |sum, (i, v)| {
        sum.rotate_left(5) ^ v.wrapping_mul(i as u64 | 1)
    })
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(4);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let values: Vec<u64> = (0..mib << 17)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })
        .collect();
    let before = checksum(&values);
    let started = Instant::now();
    let mut out = std::io::stdout();
    writeln!(out, "{mib} MiB, checksum {before:016x}").unwrap();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();

    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();
    println!("read {:?}", line.trim_end());
    std::thread::sleep(Duration::from_millis(1));

    let after = checksum(&values);
    println!(
        "memory {}",
        if after == before { "kept" } else { "CHANGED" }
    );
    println!(
        "clock {}",
        if started.elapsed() >= Duration::from_millis(1) {
            "monotonic"
        } else {
            "WENT BACK"
        }
    );
    // The allocator still works: a fresh allocation of its own, written and read.
    let fresh: Vec<u64> = values.iter().take(1000).map(|v| v.rotate_left(1)).collect();
    println!("allocation {}", fresh.len());
    std::process::exit(3);
}
