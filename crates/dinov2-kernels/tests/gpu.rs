//! Every kernel against its CPU twin from `dinov2-cpu`, on random inputs of awkward sizes, with
//! the outputs poisoned (NaN) first so that an element a kernel forgot to write shows. Inputs are
//! rounded to the storage type on the host, so both sides compute on the same values.
//!
//! These need a CUDA device: `cargo test -p dinov2-kernels -- --include-ignored` on a GPU machine.

use std::sync::Arc;

use dinov2_cpu as cpu;
use dinov2_kernels::{
    Act, Buffer, DType, Device, GemmPath, Graph, OwnGemm, OwnTile, RecordingMemory, RowStats,
    STATS_COLUMNS,
};
use half::{bf16, f16};

const GPU: &str = "needs a CUDA device";

fn device() -> Device {
    Device::new(0).unwrap_or_else(|e| panic!("cannot open cuda:0: {e}"))
}

/// Whether the device has our sm_90a kernels: compute capability 9.0 only. There a driver
/// that refused them fails the test, with its reason, instead of skipping it.
fn has_hopper_kernels(dev: &Device) -> bool {
    if dev.info().compute_capability != (9, 0) {
        return false;
    }
    assert_eq!(
        dev.info().hopper_error,
        None,
        "the sm_90a kernels did not load on a compute capability 9.0 device"
    );
    true
}

/// Deterministic values in [-scale, scale).
fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x1234_5678;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            let u = ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32;
            (2.0 * u - 1.0) * scale
        })
        .collect()
}

/// The values as the device stores them in `dtype`.
fn round(values: &[f32], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F16 => values.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
        DType::BF16 => values.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
        _ => values.to_vec(),
    }
}

fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 2e-5,
        DType::F16 => 4e-3,
        DType::BF16 => 3e-2,
        DType::U8 => 0.0,
    }
}

fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    let den: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

fn check(what: &str, got: &[f32], want: &[f32], tol: f64) {
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{what}: non-finite output (unwritten?)"
    );
    let err = rel_l2(got, want);
    eprintln!("{what}: rel L2 {err:.2e}");
    assert!(
        err <= tol,
        "{what}: relative L2 error {err:.3e} > {tol:.0e}"
    );
}

fn upload(dev: &Device, values: &[f32], shape: &[usize], dtype: DType) -> Buffer {
    dev.upload(values, shape, dtype).unwrap()
}

fn poisoned(dev: &Device, dtype: DType, shape: &[usize]) -> Buffer {
    let mut b = dev.alloc(dtype, shape).unwrap();
    dev.poison(&mut b).unwrap();
    b
}

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

#[test]
#[ignore = "needs a CUDA device"]
fn linear_matches_cpu() {
    let _ = GPU;
    let dev = device();
    for &(m, k, n) in &[
        (13, 32, 24),
        (257, 384, 1152),
        (1031, 48, 40),
        (7, 588, 64),
        (5, 13, 3),
    ] {
        for dtype in DTYPES {
            let x = round(&random(m * k, 1, 1.0), dtype);
            let w = round(&random(n * k, 2, (1.0 / k as f32).sqrt()), dtype);
            let b = round(&random(n, 3, 0.5), dtype);
            let want = cpu::linear(&x, m, k, &w, n, Some(&b));
            let (xd, wd) = (
                upload(&dev, &x, &[m, k], dtype),
                upload(&dev, &w, &[n, k], dtype),
            );
            for bias_dtype in [dtype, DType::F32] {
                let bd = upload(&dev, &b, &[n], bias_dtype);
                let mut y = poisoned(&dev, dtype, &[m, n]);
                let path = dev.linear(&xd, &wd, Some(&bd), &mut y, (m, n, k)).unwrap();
                let got = dev.download(&y).unwrap();
                check(
                    &format!("linear {dtype} m={m} k={k} n={n} bias {bias_dtype} via {path:?}"),
                    &got,
                    &round(&want, dtype),
                    tolerance(dtype),
                );
            }
            let mut y = poisoned(&dev, dtype, &[m, n]);
            dev.linear(&xd, &wd, None, &mut y, (m, n, k)).unwrap();
            let want = cpu::linear(&x, m, k, &w, n, None);
            check(
                &format!("linear {dtype} no bias"),
                &dev.download(&y).unwrap(),
                &want,
                tolerance(dtype),
            );
        }
    }
}

/// `linear_act` with the tanh GELU in f16 and bf16 (where the model uses it): in cuBLASLt's
/// epilogue where the bias has the compute dtype, and after `cublasGemmEx` with an f32 bias;
/// both against the CPU's linear layer and tanh GELU. (f32 is not held to its 1e-5 here: the
/// epilogue's own tanh need not be as exact as the kernels' tanhf, and the model keeps f32 on
/// the kernels.)
#[test]
#[ignore = "needs a CUDA device"]
fn linear_gelu_tanh_matches_cpu() {
    let dev = device();
    for &(m, k, n) in &[(13, 32, 24), (257, 384, 1536), (5, 13, 3)] {
        for dtype in [DType::F16, DType::BF16] {
            let x = round(&random(m * k, 31, 1.0), dtype);
            let w = round(&random(n * k, 32, (4.0 / k as f32).sqrt()), dtype);
            let b = round(&random(n, 33, 0.5), dtype);
            let mut want = cpu::linear(&x, m, k, &w, n, Some(&b));
            cpu::apply_activation(&mut want, cpu::Activation::GeluTanh);
            let (xd, wd) = (
                upload(&dev, &x, &[m, k], dtype),
                upload(&dev, &w, &[n, k], dtype),
            );
            for bias_dtype in [dtype, DType::F32] {
                let bd = upload(&dev, &b, &[n], bias_dtype);
                let mut y = poisoned(&dev, dtype, &[m, n]);
                let path = dev
                    .linear_act(&xd, &wd, Some(&bd), &mut y, (m, n, k), Act::GeluTanh)
                    .unwrap();
                check(
                    &format!("linear + gelu_tanh {dtype} m={m} k={k} n={n} bias {bias_dtype} via {path:?}"),
                    &dev.download(&y).unwrap(),
                    &round(&want, dtype),
                    tolerance(dtype),
                );
            }
        }
    }
}

/// The residual update in the persistent GEMM's epilogue (`linear_residual`) leaves the stream
/// and the LayerNorm after it bit for bit as the product and the fused update + LayerNorm do on
/// the same kernel: the MLP's output layers of ViT-S/B/g at a partial row tile, both kernels,
/// both stream types. It declines what it does not run: another policy, k < 2n.
#[test]
#[ignore = "needs a CUDA device"]
fn residual_gemm_matches_the_two_passes() {
    let dev = device();
    if !has_hopper_kernels(&dev) {
        return;
    }
    let ones = |n: usize| upload(&dev, &vec![1.0; n], &[n], DType::F32);
    for tile in [OwnTile::PingPong, OwnTile::PingPong2] {
        // (4100, 768, 1536): 198 tiles (102 units of the cluster kernel), more than the SMs,
        // so that both consumer warpgroups of a block take turns.
        for (m, n, k) in [
            (300, 384, 1536),
            (1031, 768, 3072),
            (130, 1536, 4096),
            (4100, 768, 1536),
        ] {
            for dtype in [DType::F16, DType::BF16] {
                let x = round(&random(m * k, 51, 1.0), dtype);
                let w = round(&random(n * k, 52, (3.0 / k as f32).sqrt()), dtype);
                let (xd, wd) = (
                    upload(&dev, &x, &[m, k], dtype),
                    upload(&dev, &w, &[n, k], dtype),
                );
                let bias = upload(&dev, &random(n, 53, 0.5), &[n], DType::F32);
                let gamma = upload(&dev, &random(n, 54, 0.3), &[n], DType::F32);
                let (norm_w, norm_b) = (ones(n), upload(&dev, &vec![0.0; n], &[n], DType::F32));
                for stream_dtype in [DType::F32, dtype] {
                    let what = format!("{tile:?} {dtype} stream {stream_dtype} m={m} n={n} k={k}");
                    let stream = round(&random(m * n, 55, 2.0), stream_dtype);
                    dev.set_own_gemm(OwnGemm::All, tile).unwrap();
                    // Two passes: the product (on the same kernel), then update + LayerNorm.
                    let mut branch = poisoned(&dev, dtype, &[m, n]);
                    dev.linear_act(&xd, &wd, Some(&bias), &mut branch, (m, n, k), Act::Identity)
                        .unwrap();
                    let mut s1 = upload(&dev, &stream, &[m, n], stream_dtype);
                    let mut y1 = poisoned(&dev, dtype, &[m, n]);
                    dev.add_scaled_layer_norm(
                        &mut s1, &branch, &gamma, &norm_w, &norm_b, &mut y1, m, n, 1e-6,
                    )
                    .unwrap();
                    // One: the update in the epilogue, then the LayerNorm.
                    let mut s2 = upload(&dev, &stream, &[m, n], stream_dtype);
                    let fused = dev
                        .linear_residual(&xd, &wd, Some(&bias), &gamma, &mut s2, None, (m, n, k))
                        .unwrap();
                    assert!(fused, "{what}: not fused");
                    let mut y2 = poisoned(&dev, dtype, &[m, n]);
                    dev.layer_norm(&s2, &norm_w, &norm_b, &mut y2, m, n, 1e-6)
                        .unwrap();
                    let (a, b) = (dev.download(&s1).unwrap(), dev.download(&s2).unwrap());
                    let same = a
                        .iter()
                        .zip(&b)
                        .filter(|(p, q)| p.to_bits() == q.to_bits())
                        .count();
                    assert_eq!(same, a.len(), "{what}: the streams differ");
                    assert_eq!(
                        dev.download(&y1).unwrap(),
                        dev.download(&y2).unwrap(),
                        "{what}: the LayerNorms differ"
                    );
                    // Declined: the attention's projection (k < 2n), another policy.
                    let mut s3 = upload(&dev, &stream, &[m, n], stream_dtype);
                    let short = (m, n, n);
                    let xs = upload(&dev, &x[..m * n], &[m, n], dtype);
                    let ws = upload(&dev, &w[..n * n], &[n, n], dtype);
                    assert!(!dev
                        .linear_residual(&xs, &ws, Some(&bias), &gamma, &mut s3, None, short)
                        .unwrap());
                    dev.set_own_gemm(OwnGemm::Fused, tile).unwrap();
                    assert!(!dev
                        .linear_residual(&xd, &wd, Some(&bias), &gamma, &mut s3, None, (m, n, k))
                        .unwrap());
                }
            }
        }
    }
    dev.set_own_gemm(OwnGemm::Off, OwnTile::N128).unwrap();
}

/// A LayerNorm folded into the persistent GEMM (`linear_folded`, weights from
/// `fold_layer_norm`) against the LayerNorm kernel and then the product on the same kernel, both
/// held to the f64 norm-then-product of the same 16-bit stream: the folded path must be at
/// least as accurate (it rounds w ⊙ γ once where the other rounds the normed rows). The
/// statistics come from `row_stats`, from `add_scaled_stats` (whose stream must equal
/// `add_scaled_layer_norm`'s bit for bit) and from `linear_residual`'s epilogue (a pair each 128
/// columns). ViT-S's qkv, ViT-B's fc1 with the exact GELU, ViT-g's width (12 pairs a row), rows
/// far from zero mean with a large column, partial row tiles.
#[test]
#[ignore = "needs a CUDA device"]
fn folded_layer_norm_matches_the_norm_then_the_product() {
    let dev = device();
    if !has_hopper_kernels(&dev) {
        return;
    }
    let eps = 1e-6f32;
    let cpu_gelu = |v: f64| cpu::fastmath::gelu_f32(v as f32) as f64;
    for (m, n, k, act) in [
        (300, 1152, 384, Act::Identity),
        (259, 3072, 768, Act::Gelu),
        (130, 2048, 1536, Act::Identity),
        // 198 tiles (102 units of the cluster kernel), more than the SMs: both consumer
        // warpgroups of a block take turns, with their own row statistics.
        (4100, 768, 384, Act::Identity),
    ] {
        for dtype in [DType::F16, DType::BF16] {
            let mut x = random(m * k, 61, 2.0);
            for (i, v) in x.iter_mut().enumerate() {
                *v += 1.0 + (i / k % 7) as f32;
                if i % k == 11 {
                    *v = 50.0;
                }
            }
            let x = round(&x, dtype);
            let w = random(n * k, 62, (3.0 / k as f32).sqrt());
            let bias = random(n, 63, 0.5);
            let gamma: Vec<f32> = random(k, 64, 0.5).iter().map(|v| 1.0 + v).collect();
            let beta = random(k, 65, 0.3);
            // The f64 truth of the same stream.
            let want: Vec<f32> = x
                .chunks_exact(k)
                .flat_map(|row| {
                    let mean = row.iter().map(|&v| v as f64).sum::<f64>() / k as f64;
                    let var =
                        row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / k as f64;
                    let inv = 1.0 / (var + eps as f64).sqrt();
                    let normed: Vec<f64> = (0..k)
                        .map(|c| (row[c] as f64 - mean) * inv * gamma[c] as f64 + beta[c] as f64)
                        .collect();
                    let (w, bias) = (&w, &bias);
                    (0..n).map(move |j| {
                        let dot: f64 = (0..k).map(|c| normed[c] * w[j * k + c] as f64).sum();
                        let v = dot + bias[j] as f64;
                        (if act == Act::Gelu { cpu_gelu(v) } else { v }) as f32
                    })
                })
                .collect();
            for tile in [OwnTile::PingPong, OwnTile::PingPong2] {
                let what = format!("{tile:?} {dtype} m={m} n={n} k={k} {act:?}");
                dev.set_own_gemm(OwnGemm::All, tile).unwrap();
                // Two passes: the LayerNorm kernel, then the product on the same kernel.
                let xd = upload(&dev, &x, &[m, k], dtype);
                let (gd, bd) = (
                    upload(&dev, &gamma, &[k], DType::F32),
                    upload(&dev, &beta, &[k], DType::F32),
                );
                let mut normed = poisoned(&dev, dtype, &[m, k]);
                dev.layer_norm(&xd, &gd, &bd, &mut normed, m, k, eps)
                    .unwrap();
                let wd = upload(&dev, &w, &[n, k], dtype);
                let biasd = upload(&dev, &bias, &[n], DType::F32);
                let mut y1 = poisoned(&dev, dtype, &[m, n]);
                dev.linear_act(&normed, &wd, Some(&biasd), &mut y1, (m, n, k), act)
                    .unwrap();
                let two_passes = rel_l2(&dev.download(&y1).unwrap(), &want);
                // Folded, with the statistics of row_stats.
                let f =
                    dinov2_kernels::fold_layer_norm(&w, Some(&bias), &gamma, &beta, (n, k), dtype)
                        .unwrap();
                let (fw, fc, fb) = (
                    upload(&dev, &f.weight, &[n, k], dtype),
                    upload(&dev, &f.colsum, &[n], DType::F32),
                    upload(&dev, &f.bias, &[n], DType::F32),
                );
                let mut stats = poisoned(&dev, DType::F32, &[m, 1, 2]);
                assert!(
                    dev.row_stats(&xd, &mut stats, m, k).unwrap(),
                    "{what}: row_stats"
                );
                let folded = |stats: &Buffer, parts: usize| {
                    let mut y = poisoned(&dev, dtype, &[m, n]);
                    let norm = RowStats { stats, parts, eps };
                    let ran = dev
                        .linear_folded(&xd, &fw, &fc, &fb, norm, &mut y, (m, n, k), act)
                        .unwrap();
                    assert!(ran, "{what}: not folded");
                    dev.download(&y).unwrap()
                };
                let y2 = folded(&stats, 1);
                assert!(
                    y2.iter().all(|v| v.is_finite()),
                    "{what}: an output unwritten"
                );
                let one_pass = rel_l2(&y2, &want);
                eprintln!(
                    "{what}: rel L2 to f64, two passes {two_passes:.2e}, folded {one_pass:.2e}"
                );
                assert!(
                    one_pass <= 1.5 * two_passes + 1e-4,
                    "{what}: folded {one_pass:.2e}"
                );
                // The same statistics in k / 128 pairs, as a _res_rx kernel's epilogue gives
                // them (here from the row's groups on the host, in f64).
                let groups: Vec<f32> = x
                    .chunks_exact(STATS_COLUMNS)
                    .flat_map(|g| {
                        let mean = g.iter().map(|&v| v as f64).sum::<f64>() / g.len() as f64;
                        let m2: f64 = g.iter().map(|&v| (v as f64 - mean).powi(2)).sum();
                        [mean as f32, m2 as f32]
                    })
                    .collect();
                let parts = k / STATS_COLUMNS;
                let grouped = upload(&dev, &groups, &[m, parts, 2], DType::F32);
                let err = rel_l2(&folded(&grouped, parts), &want);
                assert!(
                    err <= 1.5 * two_passes + 1e-4,
                    "{what}: {parts} parts {err:.2e}"
                );
                // Declined under another policy.
                dev.set_own_gemm(OwnGemm::Fused, tile).unwrap();
                let mut y3 = poisoned(&dev, dtype, &[m, n]);
                let norm = RowStats {
                    stats: &stats,
                    parts: 1,
                    eps,
                };
                assert!(!dev
                    .linear_folded(&xd, &fw, &fc, &fb, norm, &mut y3, (m, n, k), act)
                    .unwrap());
            }
        }
    }
    // add_scaled_stats updates the stream as add_scaled_layer_norm does; linear_residual's
    // statistics are the updated stream's, a pair each 128 columns.
    for dtype in [DType::F16, DType::BF16] {
        let (m, n, k) = (1031, 768, 3072);
        let stream = round(&random(m * n, 66, 3.0), dtype);
        let branch = upload(&dev, &round(&random(m * n, 67, 1.0), dtype), &[m, n], dtype);
        let gamma = upload(&dev, &random(n, 68, 0.5), &[n], DType::F32);
        let ones = upload(&dev, &vec![1.0; n], &[n], DType::F32);
        let zeros = upload(&dev, &vec![0.0; n], &[n], DType::F32);
        let mut s1 = upload(&dev, &stream, &[m, n], dtype);
        let mut y1 = poisoned(&dev, dtype, &[m, n]);
        dev.add_scaled_layer_norm(&mut s1, &branch, &gamma, &ones, &zeros, &mut y1, m, n, 1e-6)
            .unwrap();
        let mut s2 = upload(&dev, &stream, &[m, n], dtype);
        let mut stats = poisoned(&dev, DType::F32, &[m, 1, 2]);
        assert!(dev
            .add_scaled_stats(&mut s2, &branch, &gamma, &mut stats, m, n)
            .unwrap());
        let updated = dev.download(&s2).unwrap();
        assert_eq!(
            dev.download(&s1).unwrap(),
            updated,
            "{dtype}: the streams differ"
        );
        let want: Vec<f32> = updated
            .chunks_exact(n)
            .flat_map(|r| {
                let mean = r.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
                [
                    mean as f32,
                    r.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() as f32,
                ]
            })
            .collect();
        check(
            &format!("add_scaled_stats {dtype}"),
            &dev.download(&stats).unwrap(),
            &want,
            1e-5,
        );
        for tile in [OwnTile::PingPong, OwnTile::PingPong2] {
            dev.set_own_gemm(OwnGemm::All, tile).unwrap();
            let h = upload(&dev, &round(&random(m * k, 69, 1.0), dtype), &[m, k], dtype);
            let w2 = upload(
                &dev,
                &round(&random(n * k, 70, 0.03), dtype),
                &[n, k],
                dtype,
            );
            let mut s3 = upload(&dev, &stream, &[m, n], dtype);
            let mut parts = poisoned(&dev, DType::F32, &[m, n / STATS_COLUMNS, 2]);
            assert!(dev
                .linear_residual(&h, &w2, None, &gamma, &mut s3, Some(&mut parts), (m, n, k))
                .unwrap());
            let want: Vec<f32> = dev
                .download(&s3)
                .unwrap()
                .chunks_exact(STATS_COLUMNS)
                .flat_map(|g| {
                    let mean = g.iter().map(|&v| v as f64).sum::<f64>() / g.len() as f64;
                    [
                        mean as f32,
                        g.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() as f32,
                    ]
                })
                .collect();
            let what = format!("linear_residual statistics {tile:?} {dtype}");
            check(&what, &dev.download(&parts).unwrap(), &want, 1e-5);
        }
    }
    dev.set_own_gemm(OwnGemm::Off, OwnTile::N128).unwrap();
}

/// Where each output of our Hopper GEMM comes from, exactly: x picks one column of w per row
/// (`x[r][c] = 1` where `c = (r + shift) % k`), and w's values encode their own (row, column), so
/// each output names the weight it was made of. On a mismatch it prints the first outputs with
/// the (n, k) they should and do encode, which tells a swizzle, descriptor or fragment-layout
/// mistake apart (a device run is short; this says what to fix without another one).
#[test]
#[ignore = "needs a CUDA device"]
fn own_gemm_layout_probe() {
    let dev = device();
    if !has_hopper_kernels(&dev) {
        return;
    }
    let (m, n) = (200, 256);
    for (k, tile) in [
        (64, OwnTile::N128),
        (64, OwnTile::N256),
        (192, OwnTile::N128),
        (64, OwnTile::Tma),
        (640, OwnTile::Tma),
        (64, OwnTile::Tma2),
        (640, OwnTile::Tma2),
        (64, OwnTile::PingPong),
        (640, OwnTile::PingPong),
        (64, OwnTile::PingPong2),
        (640, OwnTile::PingPong2),
    ] {
        dev.set_own_gemm(OwnGemm::All, tile).unwrap();
        for shift in [0, 5] {
            // w[j][c] = (j % 128) + 128·(c % 16): exact in f16 (at most 2047); a second pass
            // with (c % 64) + 64·(j % 32) tells the column apart from j's high bits.
            for encoding in 0..2 {
                let code = |j: usize, c: usize| -> f32 {
                    if encoding == 0 {
                        ((j % 128) + 128 * (c % 16)) as f32
                    } else {
                        ((c % 64) + 64 * (j % 32)) as f32
                    }
                };
                // What an output names: `j % 128, c % 16` or `c % 64, j % 32`.
                let decode = |v: f32| -> String {
                    if !v.is_finite() || v < 0.0 || v.fract() != 0.0 {
                        return format!("{v} (no weight)");
                    }
                    let v = v as usize;
                    if encoding == 0 {
                        format!("{v} (j%128={}, c%16={})", v % 128, v / 128)
                    } else {
                        format!("{v} (c%64={}, j%32={})", v % 64, v / 64)
                    }
                };
                let x: Vec<f32> = (0..m * k)
                    .map(|i| f32::from(i % k == (i / k + shift) % k))
                    .collect();
                let w: Vec<f32> = (0..n * k).map(|i| code(i / k, i % k)).collect();
                let xd = upload(&dev, &x, &[m, k], DType::F16);
                let wd = upload(&dev, &w, &[n, k], DType::F16);
                let mut y = poisoned(&dev, DType::F16, &[m, n]);
                let path = dev.linear(&xd, &wd, None, &mut y, (m, n, k)).unwrap();
                assert_eq!(path, GemmPath::Own);
                let got = dev.download(&y).unwrap();
                let mut bad = Vec::new();
                for r in 0..m {
                    for j in 0..n {
                        let want = code(j, (r + shift) % k);
                        let g = got[r * n + j];
                        if g != want {
                            bad.push(format!(
                                "y[{r}][{j}]: want w[{j}][{}] = {}, got {}",
                                (r + shift) % k,
                                decode(want),
                                decode(g)
                            ));
                        }
                    }
                }
                assert!(
                    bad.is_empty(),
                    "k={k} {tile:?} shift={shift} encoding={encoding}: {} of {} outputs wrong; first:\n{}",
                    bad.len(),
                    m * n,
                    bad[..bad.len().min(24)].join("\n")
                );
            }
        }
    }
    dev.set_own_gemm(OwnGemm::Off, OwnTile::N128).unwrap();
}

/// Which key and which column each output of the warpgroup-MMA attention comes from: query row
/// r attends to the keys k with k % 64 == r % 64 alone (Q = 200·e_(r%64), K = e_(k%64): the other
/// weights are below e^-25), and V[k][c] = k % 64 + 64·(c % 16) names its own (key, column).
/// A wrong S = Q·Kᵀ (K's descriptor or P's registers) shows as the wrong key, a wrong O = P·V
/// (V's transposed descriptor) as the wrong column: what to fix without another device run.
/// Both kernels: one warpgroup a block (`wgmma`) and two (`wgmma2`).
#[test]
#[ignore = "needs a CUDA device"]
fn wgmma_attention_probe() {
    for choice in ["wgmma", "wgmma2"] {
        std::env::set_var("DINOV2_ATTENTION", choice);
        let dev = device();
        std::env::remove_var("DINOV2_ATTENTION");
        if !has_hopper_kernels(&dev) {
            return;
        }
        // Loaded (checked just above): the device must run what was asked for.
        assert!(
            dev.attention_kernels().starts_with("wgmma"),
            "{choice}: the device runs {}",
            dev.attention_kernels()
        );
        probe_wgmma_attention(&dev, choice);
    }
}

fn probe_wgmma_attention(dev: &Device, choice: &str) {
    let d = 64;
    for n in [64, 130, 200] {
        let mut qkv = vec![0.0f32; n * 3 * d];
        for t in 0..n {
            let row = &mut qkv[t * 3 * d..(t + 1) * 3 * d];
            row[t % 64] = 200.0;
            row[d + t % 64] = 1.0;
            for c in 0..d {
                row[2 * d + c] = ((t % 64) + 64 * (c % 16)) as f32;
            }
        }
        let qd = upload(dev, &qkv, &[1, n, 3 * d], DType::F16);
        let mut out = poisoned(dev, DType::F16, &[1, n, d]);
        dev.attention(&qd, &mut out, 1, n, 1, d, 0.125).unwrap();
        let got = dev.download(&out).unwrap();
        let mut bad = Vec::new();
        for r in 0..n {
            for c in 0..d {
                let g = got[r * d + c];
                let want = ((r % 64) + 64 * (c % 16)) as f32;
                if (g - want).abs() > 0.26 {
                    let v = g.round() as i64;
                    bad.push(format!(
                        "out[{r}][{c}] = {g}: from key %64 = {}, column %16 = {} (want key {}, column {})",
                        v.rem_euclid(64),
                        v.div_euclid(64),
                        r % 64,
                        c % 16
                    ));
                }
            }
        }
        assert!(
            bad.is_empty(),
            "{choice} n={n}: {} of {} outputs wrong; first:\n{}",
            bad.len(),
            n * d,
            bad[..bad.len().min(24)].join("\n")
        );
    }
}

/// Our Hopper GEMMs (`kernels/gemm_sm90a.cu`) against the CPU's linear layer and activations:
/// both `cp.async` tile widths and the TMA kernels (alone and in clusters), the three epilogue
/// activations, a bias in f32, in the storage type or
/// none, row counts that leave a partial last tile, and K from one pipeline stage to many. The
/// outputs are poisoned first, so a tile the kernel skipped shows. Where the device is not an
/// H100/H200 (no sm_90a code), it checks that they cannot be turned on.
#[test]
#[ignore = "needs a CUDA device"]
fn own_gemms_match_cpu() {
    let dev = device();
    if !has_hopper_kernels(&dev) {
        assert!(dev.set_own_gemm(OwnGemm::All, OwnTile::N128).is_err());
        eprintln!("no sm_90 device: our GEMMs are not loaded");
        return;
    }
    let shapes = [
        (1, 64, 128),
        (13, 64, 256),
        (130, 128, 384),
        (257, 384, 1152),
        (300, 768, 768),
        (1031, 768, 3072),
        (520, 3072, 768),
    ];
    // PingPong at (1031, 768, 3072): 216 tiles, more than the SMs (blocks take several).
    for tile in OwnTile::ALL {
        dev.set_own_gemm(OwnGemm::All, tile).unwrap();
        for &(m, k, n) in &shapes {
            for dtype in [DType::F16, DType::BF16] {
                let x = round(&random(m * k, 41, 1.0), dtype);
                let w = round(&random(n * k, 42, (3.0 / k as f32).sqrt()), dtype);
                let b = round(&random(n, 43, 0.5), dtype);
                let (xd, wd) = (
                    upload(&dev, &x, &[m, k], dtype),
                    upload(&dev, &w, &[n, k], dtype),
                );
                let cases = [
                    (Act::Identity, Some(DType::F32), cpu::Activation::Identity),
                    (Act::Identity, Some(dtype), cpu::Activation::Identity),
                    (Act::Identity, None, cpu::Activation::Identity),
                    (Act::Gelu, Some(DType::F32), cpu::Activation::Gelu),
                    (Act::Gelu, Some(dtype), cpu::Activation::Gelu),
                    (Act::GeluTanh, Some(DType::F32), cpu::Activation::GeluTanh),
                ];
                for (act, bias_dtype, cpu_act) in cases {
                    let bias = bias_dtype.map(|t| upload(&dev, &b, &[n], t));
                    let mut want = cpu::linear(&x, m, k, &w, n, bias.as_ref().map(|_| &b[..]));
                    cpu::apply_activation(&mut want, cpu_act);
                    let mut y = poisoned(&dev, dtype, &[m, n]);
                    let path = dev
                        .linear_act(&xd, &wd, bias.as_ref(), &mut y, (m, n, k), act)
                        .unwrap();
                    assert_eq!(path, GemmPath::Own, "{dtype} m={m} k={k} n={n}");
                    check(
                        &format!(
                            "own gemm {dtype} m={m} k={k} n={n} {act:?} bias {bias_dtype:?} {tile:?}"
                        ),
                        &dev.download(&y).unwrap(),
                        &round(&want, dtype),
                        tolerance(dtype),
                    );
                }
            }
        }
    }
    // Shapes they do not take go to cuBLAS, under the same call.
    dev.set_own_gemm(OwnGemm::All, OwnTile::N128).unwrap();
    for (m, k, n, dtype) in [
        (64, 48, 128, DType::F16),
        (64, 64, 120, DType::F16),
        (64, 64, 128, DType::F32),
    ] {
        let x = round(&random(m * k, 44, 1.0), dtype);
        let w = round(&random(n * k, 45, 0.2), dtype);
        let want = cpu::linear(&x, m, k, &w, n, None);
        let (xd, wd) = (
            upload(&dev, &x, &[m, k], dtype),
            upload(&dev, &w, &[n, k], dtype),
        );
        let mut y = poisoned(&dev, dtype, &[m, n]);
        let path = dev.linear(&xd, &wd, None, &mut y, (m, n, k)).unwrap();
        assert_ne!(path, GemmPath::Own, "{dtype} m={m} k={k} n={n}");
        check(
            &format!("linear {dtype} m={m} k={k} n={n} beside our GEMMs"),
            &dev.download(&y).unwrap(),
            &round(&want, dtype),
            tolerance(dtype),
        );
    }
    // `fused`: only the exact GELU moves to our kernel.
    dev.set_own_gemm(OwnGemm::Fused, OwnTile::N128).unwrap();
    let (m, k, n) = (64, 64, 128);
    let x = round(&random(m * k, 46, 1.0), DType::F16);
    let w = round(&random(n * k, 47, 0.2), DType::F16);
    let (xd, wd) = (
        upload(&dev, &x, &[m, k], DType::F16),
        upload(&dev, &w, &[n, k], DType::F16),
    );
    let mut y = poisoned(&dev, DType::F16, &[m, n]);
    let plain = dev.linear(&xd, &wd, None, &mut y, (m, n, k)).unwrap();
    let gelu = dev
        .linear_act(&xd, &wd, None, &mut y, (m, n, k), Act::Gelu)
        .unwrap();
    assert_ne!(plain, GemmPath::Own);
    assert_eq!(gelu, GemmPath::Own);
    dev.set_own_gemm(OwnGemm::Off, OwnTile::N128).unwrap();
}

/// `DINOV2_GEMM_TUNE`: a shape above the tuning threshold timed over cuBLASLt's candidates gives
/// the heuristic algorithm's result up to rounding. (The variable is read when a device opens;
/// each run opens its own. The GPU tests run one at a time.)
#[test]
#[ignore = "needs a CUDA device"]
fn tuned_gemms_match_the_heuristic_ones() {
    let (m, n, k) = (8192, 768, 768);
    assert!(m * n * k >= dinov2_kernels::TUNE_MIN_MACS);
    let x = random(m * k, 21, 1.0);
    let w = random(n * k, 22, 0.05);
    let b = random(n, 23, 1.0);
    let run = || {
        let dev = device();
        let xd = upload(&dev, &x, &[m, k], DType::F16);
        let wd = upload(&dev, &w, &[n, k], DType::F16);
        let bd = upload(&dev, &b, &[n], DType::F16);
        let mut y = poisoned(&dev, DType::F16, &[m, n]);
        dev.linear(&xd, &wd, Some(&bd), &mut y, (m, n, k)).unwrap();
        dev.download(&y).unwrap()
    };
    let plain = run();
    std::env::set_var("DINOV2_GEMM_TUNE", "log");
    let tuned = run();
    std::env::remove_var("DINOV2_GEMM_TUNE");
    check(
        "linear f16 8192x768x768, tuned",
        &tuned,
        &plain,
        tolerance(DType::F16),
    );
}

#[test]
#[ignore = "needs a CUDA device"]
fn gemm_path_is_reported() {
    let dev = device();
    let x = upload(&dev, &random(64 * 64, 1, 1.0), &[64, 64], DType::F16);
    let mut y = dev.alloc(DType::F16, &[64, 64]).unwrap();
    let path = dev.linear(&x, &x, None, &mut y, (64, 64, 64)).unwrap();
    eprintln!("device {:?}", dev.info());
    eprintln!("f16 64^3 went through {path:?}");
    assert_eq!(dev.info().cublas_version / 10000, 13, "expected cuBLAS 13");
    assert!(matches!(path, GemmPath::Lt | GemmPath::GemmEx));
}

#[test]
#[ignore = "needs a CUDA device"]
fn bias_act_matches_cpu() {
    let dev = device();
    let acts = [
        (Act::Identity, cpu::Activation::Identity),
        (Act::Gelu, cpu::Activation::Gelu),
        (Act::GeluTanh, cpu::Activation::GeluTanh),
        (Act::QuickGelu, cpu::Activation::QuickGelu),
        (Act::Relu, cpu::Activation::Relu),
        (Act::Relu6, cpu::Activation::Relu6),
        (Act::Selu, cpu::Activation::Selu),
        (Act::Silu, cpu::Activation::Silu),
        (Act::Tanh, cpu::Activation::Tanh),
        (Act::Sigmoid, cpu::Activation::Sigmoid),
    ];
    // 37 columns: the scalar kernel; 40 and 1032: the 8-wide one (1032: 129 column groups, a
    // second block across holding one; 3000 rows, more than its grid's rows, so blocks step on).
    let cases = |t| [(257, 37, t), (13, 40, t), (3000, 1032, t)];
    for (rows, cols, dtype) in DTYPES.iter().flat_map(|&t| cases(t)) {
        let y0 = round(&random(rows * cols, 4, 8.0), dtype);
        let bias = random(cols, 5, 1.0);
        for (act, cpu_act) in acts {
            let mut want: Vec<f32> = y0
                .iter()
                .enumerate()
                .map(|(i, &v)| v + bias[i % cols])
                .collect();
            cpu::apply_activation(&mut want, cpu_act);
            let mut y = upload(&dev, &y0, &[rows, cols], dtype);
            let b = upload(&dev, &bias, &[cols], DType::F32);
            dev.bias_act(&mut y, Some(&b), rows, cols, act).unwrap();
            check(
                &format!("bias_act {act:?} {dtype} {rows}x{cols}"),
                &dev.download(&y).unwrap(),
                &round(&want, dtype),
                tolerance(dtype),
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn swiglu_matches_cpu() {
    let dev = device();
    for dtype in DTYPES {
        // 8 and 1032: the 8-wide kernel (1032: 129 column groups over two blocks, 3000 rows
        // stepping past its grid); 1031: the scalar one.
        for &(rows, f) in &[(13, 8), (257, 1031), (3000, 1032)] {
            let z = round(&random(rows * 2 * f, 6, 4.0), dtype);
            let want = cpu::swiglu(&z, f);
            let zd = upload(&dev, &z, &[rows, 2 * f], dtype);
            let mut out = poisoned(&dev, dtype, &[rows, f]);
            dev.swiglu(&zd, &mut out, rows, f).unwrap();
            check(
                &format!("swiglu {dtype} {rows}x{f}"),
                &dev.download(&out).unwrap(),
                &round(&want, dtype),
                tolerance(dtype),
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn layer_norm_matches_cpu() {
    let dev = device();
    let pairs = [
        (DType::F32, DType::F32),
        (DType::F16, DType::F16),
        (DType::BF16, DType::BF16),
        (DType::F32, DType::F16),
        (DType::F32, DType::BF16),
    ];
    // Grouped kernels (h % 4 == 0 up to 2048: 2, 4, 8 and 16 groups per lane, whole and partial),
    // and the block kernel (h % 4 != 0, or h > 2048).
    for &(rows, h) in &[
        (13, 32),
        (9, 36),
        (11, 37),
        (257, 384),
        (17, 768),
        (31, 1024),
        (7, 1536),
        (3, 2048),
        (2, 2052),
        (3, 4099),
    ] {
        for (tx, ty) in pairs {
            let x: Vec<f32> = round(&random(rows * h, 7, 3.0), tx)
                .iter()
                .map(|v| v + 5.0)
                .collect();
            let x = round(&x, tx);
            let w = random(h, 8, 1.0);
            let b = random(h, 9, 1.0);
            let want = cpu::layer_norm(&x, &w, &b, 1e-6);
            let xd = upload(&dev, &x, &[rows, h], tx);
            let (wd, bd) = (
                upload(&dev, &w, &[h], DType::F32),
                upload(&dev, &b, &[h], DType::F32),
            );
            let mut y = poisoned(&dev, ty, &[rows, h]);
            dev.layer_norm(&xd, &wd, &bd, &mut y, rows, h, 1e-6)
                .unwrap();
            check(
                &format!("layer_norm {tx}->{ty} {rows}x{h}"),
                &dev.download(&y).unwrap(),
                &round(&want, ty),
                tolerance(ty),
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn residual_updates_match_cpu() {
    let dev = device();
    for &(rows, h) in &[
        (13, 32),
        (9, 36),
        (11, 37),
        (257, 384),
        (17, 768),
        (5, 1536),
        (3, 2048),
        (2, 2052),
    ] {
        for dtype in DTYPES {
            let x = random(rows * h, 10, 2.0);
            let branch = round(&random(rows * h, 11, 2.0), dtype);
            let gamma = random(h, 12, 1.0);
            let (w, b) = (random(h, 13, 1.0), random(h, 14, 1.0));
            let updated: Vec<f32> = x
                .iter()
                .zip(&branch)
                .enumerate()
                .map(|(i, (&xv, &bv))| xv + gamma[i % h] * bv)
                .collect();
            let normed = cpu::layer_norm(&updated, &w, &b, 1e-6);
            let bd = upload(&dev, &branch, &[rows, h], dtype);
            let gd = upload(&dev, &gamma, &[h], DType::F32);

            let mut xd = upload(&dev, &x, &[rows, h], DType::F32);
            dev.add_scaled(&mut xd, &bd, &gd, rows, h).unwrap();
            check(
                &format!("add_scaled {dtype} {rows}x{h}"),
                &dev.download(&xd).unwrap(),
                &updated,
                1e-6,
            );

            let mut xd = upload(&dev, &x, &[rows, h], DType::F32);
            let (wd, bbd) = (
                upload(&dev, &w, &[h], DType::F32),
                upload(&dev, &b, &[h], DType::F32),
            );
            let mut y = poisoned(&dev, dtype, &[rows, h]);
            dev.add_scaled_layer_norm(&mut xd, &bd, &gd, &wd, &bbd, &mut y, rows, h, 1e-6)
                .unwrap();
            check(
                &format!("add_scaled_layer_norm x {dtype} {rows}x{h}"),
                &dev.download(&xd).unwrap(),
                &updated,
                1e-6,
            );
            check(
                &format!("add_scaled_layer_norm y {dtype} {rows}x{h}"),
                &dev.download(&y).unwrap(),
                &round(&normed, dtype),
                tolerance(dtype),
            );

            // The stream in the branch's 16-bit type (`_rx`): each sum rounded to it, and the
            // LayerNorm of the rounded row. (The device may fuse x + γ·b into one FMA where the
            // host rounds the product first: a sum on a rounding boundary may then land one
            // 16-bit step away, hence RX_TOL rather than 1e-6.)
            const RX_TOL: f64 = 1e-4;
            if dtype == DType::F32 {
                continue;
            }
            let x16 = round(&x, dtype);
            let updated16: Vec<f32> = round(
                &x16.iter()
                    .zip(&branch)
                    .enumerate()
                    .map(|(i, (&xv, &bv))| xv + gamma[i % h] * bv)
                    .collect::<Vec<_>>(),
                dtype,
            );
            let normed16 = cpu::layer_norm(&updated16, &w, &b, 1e-6);
            let mut xd = upload(&dev, &x16, &[rows, h], dtype);
            dev.add_scaled(&mut xd, &bd, &gd, rows, h).unwrap();
            check(
                &format!("add_scaled {dtype} {rows}x{h}, x {dtype}"),
                &dev.download(&xd).unwrap(),
                &updated16,
                RX_TOL,
            );
            let mut xd = upload(&dev, &x16, &[rows, h], dtype);
            let mut y = poisoned(&dev, dtype, &[rows, h]);
            dev.add_scaled_layer_norm(&mut xd, &bd, &gd, &wd, &bbd, &mut y, rows, h, 1e-6)
                .unwrap();
            check(
                &format!("add_scaled_layer_norm x {dtype} {rows}x{h}, x {dtype}"),
                &dev.download(&xd).unwrap(),
                &updated16,
                RX_TOL,
            );
            check(
                &format!("add_scaled_layer_norm y {dtype} {rows}x{h}, x {dtype}"),
                &dev.download(&y).unwrap(),
                &round(&normed16, dtype),
                tolerance(dtype),
            );
        }
        // A stream of another type than f32 or the branch's is refused.
        let bd = upload(&dev, &random(rows * h, 11, 2.0), &[rows, h], DType::F16);
        let gd = upload(&dev, &random(h, 12, 1.0), &[h], DType::F32);
        let mut xd = upload(&dev, &random(rows * h, 10, 2.0), &[rows, h], DType::BF16);
        assert!(dev.add_scaled(&mut xd, &bd, &gd, rows, h).is_err());
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn attention_matches_cpu() {
    let dev = device();
    // The 128-row flash kernels (head dims up to 64), which a device takes when asked
    // (DINOV2_ATTENTION is read when a device opens; the GPU tests run one at a time).
    std::env::set_var("DINOV2_ATTENTION", "r128");
    let wide = device();
    // The warpgroup-MMA kernels (head dim 64) where the device has them (H100/H200): one
    // warpgroup a block, and two sharing each K/V tile.
    std::env::set_var("DINOV2_ATTENTION", "wgmma");
    let wg = device();
    std::env::set_var("DINOV2_ATTENTION", "wgmma2");
    let wg2 = device();
    std::env::remove_var("DINOV2_ATTENTION");
    let hopper = has_hopper_kernels(&wg);
    // (batch, n, heads, d): odd lengths, every padded head dim, one tile and many, whole tiles
    // (128: no tail), last key tiles of 1 to 36 keys and last query tiles with idle warps; at
    // d = 64 also last key tiles of exactly 16 and 32 keys (80, 96 tokens: where the
    // warpgroup-MMA kernel switches its last tile's product width) and 26 (1370), and for the
    // 128-row kernel a second warpgroup with 16 rows (144) and 16 rows past two blocks (272).
    let cases = [
        (2, 13, 3, 8),
        (1, 257, 6, 64),
        (2, 261, 2, 64),
        (2, 128, 2, 64),
        (1, 129, 2, 64),
        (1, 1031, 2, 128),
        (3, 65, 2, 16),
        (1, 100, 1, 24),
        (1, 77, 2, 40),
        (1, 50, 2, 96),
        (1, 33, 2, 12),
        (1, 1, 1, 8),
        (1, 1, 1, 64),
        (1, 63, 3, 64),
        (1, 1370, 2, 64),
        (1, 80, 1, 64),
        (1, 96, 1, 64),
        (1, 144, 2, 64),
        (1, 272, 2, 64),
    ];
    for &(b, n, heads, d) in &cases {
        let h = heads * d;
        let scale = (d as f64).powf(-0.5);
        for dtype in DTYPES {
            let qkv = round(&random(b * n * 3 * h, 15 + n as u64, 2.0), dtype);
            let (want, want_probs) = cpu::attention(&qkv, b, n, heads, d, scale, true);
            let want_probs = want_probs.unwrap();
            let qd = upload(&dev, &qkv, &[b, n, 3 * h], dtype);
            let mut out = poisoned(&dev, dtype, &[b, n, h]);
            dev.attention(&qd, &mut out, b, n, heads, d, scale as f32)
                .unwrap();
            let what = format!("attention {dtype} b={b} n={n} heads={heads} d={d}");
            check(
                &what,
                &dev.download(&out).unwrap(),
                &round(&want, dtype),
                tolerance(dtype),
            );
            // The same on a device opened with another kernel choice.
            let on = |other: &Device, kernel: &str| {
                let qo = upload(other, &qkv, &[b, n, 3 * h], dtype);
                let mut out = poisoned(other, dtype, &[b, n, h]);
                other
                    .attention(&qo, &mut out, b, n, heads, d, scale as f32)
                    .unwrap();
                check(
                    &format!("{what} ({kernel})"),
                    &other.download(&out).unwrap(),
                    &round(&want, dtype),
                    tolerance(dtype),
                );
            };
            if dtype != DType::F32 && d == 64 && hopper {
                on(&wg, "warpgroup MMAs");
                on(&wg2, "warpgroup MMAs, 128 rows");
            }
            if dtype != DType::F32 && d <= 64 {
                on(&wide, "128-row flash");
            }

            let mut out = poisoned(&dev, dtype, &[b, n, h]);
            let mut probs = poisoned(&dev, DType::F32, &[b, heads, n, n]);
            dev.attention_probs(&qd, &mut out, &mut probs, b, n, heads, d, scale as f32)
                .unwrap();
            check(
                &format!("{what} (probs path) out"),
                &dev.download(&out).unwrap(),
                &round(&want, dtype),
                tolerance(dtype),
            );
            check(
                &format!("{what} (probs path) probs"),
                &dev.download(&probs).unwrap(),
                &want_probs,
                2e-5,
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn embedding_ops_match_cpu() {
    let dev = device();
    // (b, c, h, w, p, kp): a 7x11 grid with remainders dropped, its rows unpadded and padded
    // by 8 zeros; patch 14 with its rows padded 588 -> 592 (what the CUDA backend's patch
    // embedding uses).
    for (b, c, hh, ww, p, kp) in [
        (2, 3, 30, 44, 4, 48),
        (2, 3, 30, 44, 4, 56),
        (3, 3, 29, 43, 14, 592),
    ] {
        let px = random(b * c * hh * ww, 20, 2.0);
        let k = c * p * p;
        let unpadded = cpu::im2col(&px, b, c, hh, ww, p);
        let rows = unpadded.len() / k;
        let mut want = vec![0.0f32; rows * kp];
        for (dst, src) in want.chunks_exact_mut(kp).zip(unpadded.chunks_exact(k)) {
            dst[..k].copy_from_slice(src);
        }
        for dtype in DTYPES {
            // f32 pixels (im2col_f32_{t}), and pixels uploaded in the dtype of the rows
            // (im2col_{t}, what the CUDA backend does): the same rows, bit for bit.
            for pixels in [DType::F32, dtype] {
                let pd = upload(&dev, &px, &[b, c, hh, ww], pixels);
                let mut cols = poisoned(&dev, dtype, &[rows, kp]);
                dev.im2col(&pd, &mut cols, b, c, hh, ww, p).unwrap();
                let got = dev.download(&cols).unwrap();
                assert_eq!(got, round(&want, dtype), "im2col {pixels} -> {dtype}");
            }
        }
    }
    // Pixels of a half type into rows of another have no kernel: an error, not a launch.
    let pd = upload(&dev, &[0.0; 16], &[1, 1, 4, 4], DType::F16);
    let mut cols = poisoned(&dev, DType::BF16, &[4, 4]);
    let e = dev.im2col(&pd, &mut cols, 1, 1, 4, 4, 2).unwrap_err();
    assert!(e.to_string().contains("im2col from f16 to bf16"), "{e}");
    let (b, p) = (2, 4);
    let n = (30 / p) * (44 / p);

    let (h, r) = (24, 4);
    for dtype in DTYPES {
        let patches = round(&random(b * n * h, 21, 1.0), dtype);
        let cls = random(h, 22, 1.0);
        let pos = round(&random((1 + n) * h, 23, 1.0), dtype);
        let regs = round(&random(r * h, 24, 1.0), dtype);
        let token = random(h, 25, 1.0);
        let mask: Vec<u8> = (0..b * n).map(|i| (i % 3 == 1) as u8).collect();
        let seq = 1 + r + n;
        let mut want = vec![0.0f32; b * seq * h];
        for i in 0..b {
            for ch in 0..h {
                want[(i * seq) * h + ch] = cls[ch] + pos[ch];
            }
            for t in 0..r {
                for ch in 0..h {
                    want[(i * seq + 1 + t) * h + ch] = regs[t * h + ch];
                }
            }
            for t in 0..n {
                for ch in 0..h {
                    let e = if mask[i * n + t] == 1 {
                        token[ch]
                    } else {
                        patches[(i * n + t) * h + ch]
                    };
                    want[(i * seq + 1 + r + t) * h + ch] = e + pos[(1 + t) * h + ch];
                }
            }
        }
        let pd = upload(&dev, &patches, &[b, n, h], dtype);
        let cd = upload(&dev, &cls, &[h], DType::F32);
        let posd = upload(&dev, &pos, &[1 + n, h], dtype);
        let rd = upload(&dev, &regs, &[r, h], dtype);
        let td = upload(&dev, &token, &[h], DType::F32);
        let md = dev.upload_bytes(&mask, &[b * n]).unwrap();
        let mut x = poisoned(&dev, DType::F32, &[b, seq, h]);
        dev.embed_tokens(
            &pd,
            &cd,
            &posd,
            Some(&rd),
            Some((&td, &md)),
            &mut x,
            (b, n, h),
        )
        .unwrap();
        check(
            &format!("embed_tokens {dtype}"),
            &dev.download(&x).unwrap(),
            &want,
            1e-6,
        );

        let mut pooled = poisoned(&dev, DType::F32, &[b, h]);
        let xs = upload(&dev, &round(&want, dtype), &[b, seq, h], dtype);
        dev.mean_pool(&xs, &mut pooled, (b, seq, h), 1 + r).unwrap();
        let wx = round(&want, dtype);
        let mut want_pool = vec![0.0f32; b * h];
        for i in 0..b {
            for ch in 0..h {
                let s: f64 = (1 + r..seq)
                    .map(|t| wx[(i * seq + t) * h + ch] as f64)
                    .sum();
                want_pool[i * h + ch] = (s / n as f64) as f32;
            }
        }
        check(
            &format!("mean_pool {dtype}"),
            &dev.download(&pooled).unwrap(),
            &want_pool,
            1e-5,
        );
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn casts_round_like_the_host() {
    let dev = device();
    let v = random(1031, 30, 100.0);
    for dtype in [DType::F16, DType::BF16] {
        let src = upload(&dev, &v, &[1031], DType::F32);
        let mut dst = poisoned(&dev, dtype, &[1031]);
        dev.cast(&src, &mut dst).unwrap();
        assert_eq!(
            dev.download(&dst).unwrap(),
            round(&v, dtype),
            "f32 -> {dtype}"
        );
        let mut back = poisoned(&dev, DType::F32, &[1031]);
        dev.cast(&dst, &mut back).unwrap();
        assert_eq!(
            dev.download(&back).unwrap(),
            round(&v, dtype),
            "{dtype} -> f32"
        );
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn shape_errors_are_errors() {
    let dev = device();
    let x = dev.alloc(DType::F16, &[4, 8]).unwrap();
    let mut y = dev.alloc(DType::F32, &[4, 8]).unwrap();
    assert!(dev.swiglu(&x, &mut y, 4, 4).is_err());
    let mut out = dev.alloc(DType::F16, &[1, 1, 129]).unwrap();
    let qkv = dev.alloc(DType::F16, &[1, 1, 3 * 129]).unwrap();
    assert!(dev.attention(&qkv, &mut out, 1, 1, 1, 129, 1.0).is_err());
}

#[test]
#[ignore = "needs a CUDA device"]
fn a_recorded_graph_replays_on_new_inputs() {
    let dev = device();
    assert!(
        dev.records(),
        "stream-ordered allocation is needed to record"
    );
    let (rows, n, k) = (37, 24, 40);
    let w = upload(&dev, &random(n * k, 1, 0.5), &[n, k], DType::F16);
    let b = upload(&dev, &random(n, 2, 0.5), &[n], DType::F16);
    let mut input = upload(&dev, &random(rows * k, 3, 1.0), &[rows, k], DType::F32);
    let mut output = poisoned(&dev, DType::F32, &[rows, n]);
    // Warm the kernel and GEMM caches outside the capture, as the model does.
    let run = |x: &Buffer, out: &mut Buffer| {
        let mut x16 = dev.alloc(DType::F16, &[rows, k]).unwrap();
        dev.cast(x, &mut x16).unwrap();
        let mut y = dev.alloc(DType::F16, &[rows, n]).unwrap();
        dev.linear(&x16, &w, Some(&b), &mut y, (rows, n, k))
            .unwrap();
        dev.bias_act(&mut y, None, rows, n, Act::Gelu).unwrap();
        dev.cast(&y, out).unwrap();
    };
    let mut eager = poisoned(&dev, DType::F32, &[rows, n]);
    run(&input, &mut eager);
    for planned in [false, true] {
        let memory = if planned {
            let tracer = dev.begin_recording(RecordingMemory::Traced).unwrap();
            run(&input, &mut output);
            let plan = tracer.plan().unwrap();
            // x16 (2960 bytes) and y (1776), alive together, each aligned to 256 bytes.
            assert_eq!((plan.buffers(), plan.bytes()), (2, 3072 + 1792));
            RecordingMemory::Planned(Arc::new(plan))
        } else {
            RecordingMemory::Graph
        };
        let recorder = dev.begin_recording(memory).unwrap();
        run(&input, &mut output);
        let graph = recorder.finish().unwrap();
        if planned {
            assert_eq!(dev.arena_bytes(), 3072 + 1792);
        }
        assert!(dev.recording_is_current(&graph));
        for seed in 10..13 {
            let values = random(rows * k, seed, 1.0);
            dev.upload_into(&values, &mut input).unwrap();
            dev.poison(&mut output).unwrap();
            dev.replay(&graph).unwrap();
            let got = dev.download(&output).unwrap();
            let fresh = upload(&dev, &values, &[rows, k], DType::F32);
            run(&fresh, &mut eager);
            let want = dev.download(&eager).unwrap();
            assert_eq!(
                got, want,
                "replay {seed} (planned: {planned}) differs from the eager pass"
            );
        }
        drop(graph);
        // The arena goes with the last recording using it.
        assert_eq!(dev.arena_bytes(), 0);
    }
}

/// A planned recording too large for the live arena gets a larger one; the recording on the
/// smaller arena is then no longer current (the model records it again), and the smaller
/// arena's memory goes with it. Both replay correctly meanwhile.
#[test]
#[ignore = "needs a CUDA device"]
fn a_larger_recording_replaces_the_arena() {
    let dev = device();
    let (n, k) = (24, 40);
    let w = upload(&dev, &random(n * k, 1, 0.5), &[n, k], DType::F16);
    let run = |x: &Buffer, out: &mut Buffer, rows: usize| {
        let mut y = dev.alloc(DType::F16, &[rows, n]).unwrap();
        dev.linear(x, &w, None, &mut y, (rows, n, k)).unwrap();
        dev.cast(&y, out).unwrap();
    };
    // The recording, its input (which it reads at every replay, so kept), output and the
    // eager pass's result.
    let record = |rows: usize| {
        let x = upload(&dev, &random(rows * k, 3, 1.0), &[rows, k], DType::F16);
        let mut out = poisoned(&dev, DType::F32, &[rows, n]);
        run(&x, &mut out, rows);
        let want = dev.download(&out).unwrap();
        let tracer = dev.begin_recording(RecordingMemory::Traced).unwrap();
        run(&x, &mut out, rows);
        let plan = tracer.plan().unwrap();
        let recorder = dev
            .begin_recording(RecordingMemory::Planned(Arc::new(plan)))
            .unwrap();
        run(&x, &mut out, rows);
        (recorder.finish().unwrap(), x, out, want)
    };
    let check = |graph: &Graph, out: &mut Buffer, want: &[f32], what: &str| {
        dev.poison(out).unwrap();
        dev.replay(graph).unwrap();
        assert_eq!(dev.download(out).unwrap(), want, "{what}");
    };
    // y: 37 x 24 f16 = 1776 bytes, one range of 1792 (256-byte aligned); then 300 rows:
    // 14400 -> 14592.
    let (small, _small_x, mut small_out, small_want) = record(37);
    assert_eq!(dev.arena_bytes(), 1792);
    assert!(dev.recording_is_current(&small));
    let (large, _large_x, mut large_out, large_want) = record(300);
    assert_eq!(dev.arena_bytes(), 14592);
    assert!(!dev.recording_is_current(&small));
    assert!(dev.recording_is_current(&large));
    check(
        &small,
        &mut small_out,
        &small_want,
        "the small recording on the old arena",
    );
    check(&large, &mut large_out, &large_want, "the large recording");
    // Recorded again, the small one shares the large arena.
    drop(small);
    let (small, _small_x, mut small_out, small_want) = record(37);
    assert!(dev.recording_is_current(&small));
    assert_eq!(dev.arena_bytes(), 14592);
    check(
        &small,
        &mut small_out,
        &small_want,
        "the small recording on the new arena",
    );
    drop((small, large));
    assert_eq!(dev.arena_bytes(), 0);
}

#[test]
#[ignore = "needs a CUDA device"]
fn a_planned_recording_that_leaves_its_trace_is_refused() {
    let dev = device();
    let x = upload(&dev, &random(64, 5, 1.0), &[64], DType::F32);
    let mut out = poisoned(&dev, DType::F32, &[64]);
    let tracer = dev.begin_recording(RecordingMemory::Traced).unwrap();
    {
        let copy = dev.copy(&x).unwrap();
        dev.copy_into(&copy, &mut out).unwrap();
    }
    let plan = Arc::new(tracer.plan().unwrap());
    // The same work with one buffer more: its planned offsets would not be valid.
    let recorder = dev
        .begin_recording(RecordingMemory::Planned(plan.clone()))
        .unwrap();
    {
        let copy = dev.copy(&x).unwrap();
        let again = dev.copy(&copy).unwrap();
        dev.copy_into(&again, &mut out).unwrap();
    }
    assert!(recorder.finish().is_err());
    // The stream runs eager work again, and the same work as traced records.
    assert_eq!(dev.download(&dev.copy(&x).unwrap()).unwrap().len(), 64);
    let recorder = dev.begin_recording(RecordingMemory::Planned(plan)).unwrap();
    {
        let copy = dev.copy(&x).unwrap();
        dev.copy_into(&copy, &mut out).unwrap();
    }
    let graph = recorder.finish().unwrap();
    dev.poison(&mut out).unwrap();
    dev.replay(&graph).unwrap();
    assert_eq!(dev.download(&out).unwrap(), dev.download(&x).unwrap());
}

#[test]
#[ignore = "needs a CUDA device"]
fn uploads_into_a_buffer_round_as_uploads_do() {
    let dev = device();
    let values = random(1031, 30, 70000.0);
    for dtype in DTYPES {
        let mut dst = poisoned(&dev, dtype, &[1031]);
        dev.upload_into(&values, &mut dst).unwrap();
        let fresh = upload(&dev, &values, &[1031], dtype);
        let got = dev.download(&dst).unwrap();
        assert_eq!(got, dev.download(&fresh).unwrap(), "{dtype}");
        // Values past 65520 become f16 infinities, as on the host.
        assert_eq!(got, round(&values, dtype), "{dtype}");
    }
    let mut mask = dev.upload_bytes(&[0; 4], &[4]).unwrap();
    assert!(dev.upload_into(&[0.0; 4], &mut mask).is_err());
    let mut short = poisoned(&dev, DType::F16, &[3]);
    assert!(dev.upload_into(&[0.0; 4], &mut short).is_err());
}

#[test]
#[ignore = "needs a CUDA device"]
fn a_failed_recording_leaves_the_stream_usable() {
    let dev = device();
    let x = upload(&dev, &random(64, 4, 1.0), &[64], DType::F32);
    let recorder = dev.begin_recording(RecordingMemory::Graph).unwrap();
    {
        // A buffer allocated inside, then a synchronization: capture does not allow it.
        let copy = dev.copy(&x).unwrap();
        assert!(dev.download(&copy).is_err());
    }
    let _ = recorder.abandon();
    // Eager work runs again, and no stale error is reported.
    let copy = dev.copy(&x).unwrap();
    assert_eq!(dev.download(&copy).unwrap(), dev.download(&x).unwrap());
    dev.synchronize().unwrap();
    // A recorder dropped unfinished ends its capture too.
    drop(dev.begin_recording(RecordingMemory::Graph).unwrap());
    assert_eq!(dev.download(&x).unwrap().len(), 64);
}
