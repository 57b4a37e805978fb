//! `matmul N REPS`: multiplies two deterministic `N`×`N` matrices `REPS` times with the
//! shared kernel from `nimbus-kernels` and prints the checksum of the product.
//!
//! The host benchmarks run the same kernel natively, so the checksums can be compared.

use std::hint::black_box;
use std::process::exit;

use nimbus_kernels::{checksum, fill, matmul};

fn arg(args: &[String], index: usize, name: &str, default: usize) -> usize {
    match args.get(index) {
        None => default,
        Some(text) => text.parse().unwrap_or_else(|_| {
            eprintln!("matmul: {name} must be a non-negative integer, got {text:?}");
            eprintln!("usage: matmul N REPS");
            exit(1);
        }),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = arg(&args, 1, "N", 128);
    let reps = arg(&args, 2, "REPS", 1);
    let a = fill(n, 1);
    let b = fill(n, 2);
    let mut c = vec![0.0; n * n];
    for _ in 0..reps {
        matmul(n, black_box(&a), black_box(&b), &mut c);
        black_box(&mut c);
    }
    println!("matmul n={n} reps={reps} checksum={}", checksum(&c));
}
