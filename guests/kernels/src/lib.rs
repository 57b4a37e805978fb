//! Compute kernels shared by the nimbus guest examples (compiled to `wasm32-wasip1`) and
//! the host benchmarks (compiled natively), so both run exactly the same code.
//!
//! Everything here is plain, portable Rust with no dependencies. The floating-point
//! operations are evaluated in a fixed order (Rust never reassociates or fuses them), so
//! a native and a wasm run with the same inputs produce bit-identical results.

/// Multiplies two `n`×`n` row-major matrices: `c = a * b`.
///
/// `c` is overwritten, not accumulated into. A plain triple loop in i-k-j order, so the
/// innermost loop walks rows of `b` and `c` contiguously.
///
/// # Panics
///
/// If any slice is not exactly `n * n` long.
pub fn matmul(n: usize, a: &[f64], b: &[f64], c: &mut [f64]) {
    let len = n.checked_mul(n).expect("matrix size overflows usize");
    assert_eq!(a.len(), len, "a must be n*n");
    assert_eq!(b.len(), len, "b must be n*n");
    assert_eq!(c.len(), len, "c must be n*n");
    c.fill(0.0);
    if n == 0 {
        return;
    }
    for (a_row, c_row) in a.chunks_exact(n).zip(c.chunks_exact_mut(n)) {
        for (&a_ik, b_row) in a_row.iter().zip(b.chunks_exact(n)) {
            for (c_ij, &b_kj) in c_row.iter_mut().zip(b_row) {
                *c_ij += a_ik * b_kj;
            }
        }
    }
}

/// Deterministic pseudo-random data for an `n`×`n` matrix: `n * n` values in
/// `[-1, 1)`, the same for the same `seed` on every platform (SplitMix64).
pub fn fill(n: usize, seed: u64) -> Vec<f64> {
    let len = n.checked_mul(n).expect("matrix size overflows usize");
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            // The top 53 bits as a fraction in [0, 1), mapped to [-1, 1).
            (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect()
}

/// A position-weighted sum of `values`, so that both wrong values and values in the wrong
/// place change it. Summed sequentially, hence reproducible across platforms.
pub fn checksum(values: &[f64]) -> f64 {
    values
        .iter()
        .enumerate()
        .fold(0.0, |acc, (i, &v)| acc + v * ((i % 7) + 1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiplies_small_matrices() {
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [5.0, 6.0, 7.0, 8.0];
        let mut c = [f64::NAN; 4];
        matmul(2, &a, &b, &mut c);
        assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
    }

    #[test]
    fn identity_leaves_matrix_unchanged() {
        let n = 5;
        let a = fill(n, 7);
        let mut id = vec![0.0; n * n];
        for i in 0..n {
            id[i * n + i] = 1.0;
        }
        let mut c = vec![0.0; n * n];
        matmul(n, &a, &id, &mut c);
        assert_eq!(c, a);
    }

    #[test]
    fn empty_matrix_is_fine() {
        matmul(0, &[], &[], &mut []);
        assert_eq!(checksum(&[]), 0.0);
    }

    #[test]
    fn fill_is_deterministic_and_in_range() {
        let a = fill(16, 1);
        assert_eq!(a, fill(16, 1));
        assert_ne!(a, fill(16, 2));
        assert_eq!(a.len(), 256);
        assert!(a.iter().all(|v| (-1.0..1.0).contains(v)));
    }

    #[test]
    fn checksum_weights_positions() {
        assert_eq!(checksum(&[1.0, 1.0]), 3.0);
        assert_ne!(checksum(&[1.0, 2.0]), checksum(&[2.0, 1.0]));
    }
}
