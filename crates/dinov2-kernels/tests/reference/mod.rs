//! What the kernel emulations (`flash_emulation.rs`, `wgmma_emulation.rs`) are checked against:
//! deterministic inputs and softmax attention in f64.

/// `n` deterministic values in [-2, 2) (xorshift from `seed`).
pub fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// Softmax attention in f64, the specification: packed rows `qkv [b, n, 3·heads·d]` ->
/// `[b, n, heads·d]`, scores `q·kᵀ·scale`.
pub fn naive_attention(
    qkv: &[f32],
    b: usize,
    n: usize,
    heads: usize,
    d: usize,
    scale: f64,
) -> Vec<f64> {
    let hd = heads * d;
    let mut out = vec![0.0; b * n * hd];
    for img in 0..b {
        for h in 0..heads {
            let at = |row: usize, part: usize, c: usize| {
                qkv[(img * n + row) * 3 * hd + part * hd + h * d + c] as f64
            };
            for i in 0..n {
                let s: Vec<f64> = (0..n)
                    .map(|j| (0..d).map(|c| at(i, 0, c) * at(j, 1, c)).sum::<f64>() * scale)
                    .collect();
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - mx).exp()).collect();
                let sum: f64 = e.iter().sum();
                for c in 0..d {
                    out[(img * n + i) * hd + h * d + c] =
                        (0..n).map(|j| e[j] * at(j, 2, c)).sum::<f64>() / sum;
                }
            }
        }
    }
    out
}

/// Relative L2 distance of `got` from `want`.
pub fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        num += (g as f64 - w).powi(2);
        den += w * w;
    }
    (num / den.max(1e-300)).sqrt()
}
