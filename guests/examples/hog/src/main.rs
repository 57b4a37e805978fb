//! Allocates memory without bound (1 MiB at a time, every byte touched) and prints
//! nothing: used to test the per-process memory limit.

use std::hint::black_box;

const CHUNK: usize = 1 << 20;

fn main() {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Non-zero bytes, so every page is really written.
        hoard.push(vec![0xa5; CHUNK]);
        black_box(&mut hoard);
    }
}
