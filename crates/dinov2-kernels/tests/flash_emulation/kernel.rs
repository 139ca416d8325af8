//! `flash_attention<T, DP, MT>` of `kernels/flash.cuh`, one block at a time, lane by lane (the
//! fragment layouts and the transcription rules are in main.rs). Also the last query tile of the
//! warpgroup-MMA attention, which runs this kernel's key-split path (`wgmma_emulation`).

pub const BM: usize = 64; // FA_BM
pub const BN: usize = 64; // FA_BN
pub const THREADS: usize = 128; // FA_THREADS
pub const WARPS: usize = THREADS / 32;

/// One 32-bit register per lane as its two 16-bit halves (x = low half, as `Mma::pack`).
pub type Reg = [f32; 2];
/// An ldmatrix.x4 result or an A fragment: 4 registers per lane.
pub type Frag4 = [[Reg; 4]; 32];
/// A C/D fragment: 4 f32 per lane.
pub type Acc = [[f32; 4]; 32];

/// `ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16` with `addr[lane]` the element offset lane
/// supplies.
pub fn ldmatrix_x4(smem: &[f32], addr: &[usize; 32], trans: bool) -> Frag4 {
    let mut out = [[[0.0; 2]; 4]; 32];
    for (lane, regs) in out.iter_mut().enumerate() {
        for (mat, reg) in regs.iter_mut().enumerate() {
            for (e, v) in reg.iter_mut().enumerate() {
                let (row, col) = if trans {
                    ((lane % 4) * 2 + e, lane / 4)
                } else {
                    (lane / 4, (lane % 4) * 2 + e)
                };
                // Row `row` of matrix `mat` starts at the address of lane 8·mat + row.
                *v = smem[addr[8 * mat + row] + col];
            }
        }
    }
    out
}

/// `mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32`: c += a·b.
pub fn mma(c: &mut Acc, a: &Frag4, b0: &[Reg; 32], b1: &[Reg; 32]) {
    let mut am = [[0.0f32; 16]; 16];
    let mut bm = [[0.0f32; 8]; 16];
    let mut cm = [[0.0f32; 8]; 16];
    let (mut a_seen, mut b_seen, mut c_seen) = ([[0; 16]; 16], [[0; 8]; 16], [[0; 8]; 16]);
    for lane in 0..32 {
        let (g, t) = (lane / 4, lane % 4);
        for e in 0..2 {
            for (r, (row, col)) in [
                (g, 2 * t),
                (g + 8, 2 * t),
                (g, 2 * t + 8),
                (g + 8, 2 * t + 8),
            ]
            .into_iter()
            .enumerate()
            {
                am[row][col + e] = a[lane][r][e];
                a_seen[row][col + e] += 1;
            }
            bm[2 * t + e][g] = b0[lane][e];
            bm[2 * t + 8 + e][g] = b1[lane][e];
            b_seen[2 * t + e][g] += 1;
            b_seen[2 * t + 8 + e][g] += 1;
            cm[g][2 * t + e] = c[lane][e];
            cm[g + 8][2 * t + e] = c[lane][2 + e];
            c_seen[g][2 * t + e] += 1;
            c_seen[g + 8][2 * t + e] += 1;
        }
    }
    // The layouts are bijections: every element held by exactly one lane.
    assert!(a_seen.iter().flatten().all(|&n| n == 1));
    assert!(b_seen.iter().flatten().all(|&n| n == 1));
    assert!(c_seen.iter().flatten().all(|&n| n == 1));
    for (i, row) in cm.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v += (0..16).map(|l| am[i][l] * bm[l][j]).sum::<f32>();
        }
    }
    for lane in 0..32 {
        let (g, t) = (lane / 4, lane % 4);
        for e in 0..2 {
            c[lane][e] = cm[g][2 * t + e];
            c[lane][2 + e] = cm[g + 8][2 * t + e];
        }
    }
}

pub fn column(f: &Frag4, reg: usize) -> [Reg; 32] {
    std::array::from_fn(|lane| f[lane][reg])
}

/// `__shfl_xor_sync(full, v, 1)` then `2`, with `op`: the reduction over a lane quad.
pub fn quad_reduce(v: &mut [f32; 32], op: fn(f32, f32) -> f32) {
    for mask in [1, 2] {
        let prev = *v;
        for lane in 0..32 {
            v[lane] = op(prev[lane], prev[lane ^ mask]);
        }
    }
}

pub struct Problem {
    pub n: usize,
    pub heads: usize,
    pub d: usize,
    pub dp: usize,
    pub scale_log2: f32,
}

/// `fa_load_tile<T, DP, ROWS>`: rows row0..row0+ROWS of one head's columns into a
/// [ROWS][DP + 8] tile; zero fill for rows >= n and columns >= d; the 8 pad columns are never
/// written (stay NaN). Thread `tid` copies the chunks `tid + i·THREADS`: where THREADS is a
/// multiple of the chunks per row, as row `tid / cpr + i·(THREADS / cpr)`, column
/// `(tid % cpr)·8`; else from the chunk index. Every chunk is copied exactly once.
pub fn load_tile(p: &Problem, qkv: &[f32], dst: &mut [f32], src: usize, row0: usize, rows: usize) {
    let (lds, cpr) = (p.dp + 8, p.dp / 8);
    let ld = 3 * p.heads * p.d;
    let chunks = rows * cpr;
    assert_eq!(chunks % THREADS, 0, "a tile is whole passes of the block");
    let mut copied = vec![0u8; chunks];
    for tid in 0..THREADS {
        for i in 0..chunks / THREADS {
            let (r, col) = if THREADS.is_multiple_of(cpr) {
                (tid / cpr + i * (THREADS / cpr), (tid % cpr) * 8)
            } else {
                let c = tid + i * THREADS;
                (c / cpr, (c % cpr) * 8)
            };
            copied[r * cpr + col / 8] += 1;
            let ok = row0 + r < p.n && col < p.d;
            for e in 0..8 {
                dst[r * lds + col + e] = if ok {
                    qkv[src + (row0 + r) * ld + col + e]
                } else {
                    0.0
                };
            }
        }
    }
    assert!(
        copied.iter().all(|&c| c == 1),
        "a chunk copied other than once"
    );
}

/// One warp's registers for its m-tiles: Q fragments, O accumulators, running maxima (of the raw
/// scores) and sums of rows g and g + 8.
pub struct Warp {
    qf: Vec<Vec<Frag4>>,
    o: Vec<Vec<Acc>>,
    m: Vec<([f32; 32], [f32; 32])>,
    l: Vec<([f32; 32], [f32; 32])>,
}

/// `fa_tile<T, DP, MT, TAIL, KEYS>`: `keys` keys (`k`, `v` start at the first, key `key_base`)
/// through the online softmax of one warp. TAIL when they end past n; chunks of 16 keys wholly
/// past n are skipped (their S stays 0, then is masked; their P·V terms are 0).
pub fn fa_tile(p: &Problem, w: &mut Warp, k: &[f32], v: &[f32], key_base: usize, keys: usize) {
    let (n, dp) = (p.n, p.dp);
    let lds = dp + 8;
    let (ksteps, stiles) = (dp / 16, keys / 8);
    let mt_count = w.qf.len();
    assert!(key_base < n, "fa_tile is called only with a key below n");
    let tail = key_base + keys > n;
    let valid = n - key_base;
    // S = Q·Kᵀ, each K fragment feeding every m-tile.
    let mut s = vec![vec![[[0.0f32; 4]; 32]; stiles]; mt_count];
    for kk in 0..ksteps {
        for np in 0..stiles / 2 {
            if tail && np * 16 >= valid {
                continue;
            }
            let addr = std::array::from_fn(|lane| {
                let mat = lane >> 3;
                let key = np * 16 + (lane & 7) + (mat >> 1) * 8;
                let dim = kk * 16 + (mat & 1) * 8;
                key * lds + dim
            });
            let b = ldmatrix_x4(k, &addr, false);
            for mt in 0..mt_count {
                let a = &w.qf[mt][kk];
                mma(&mut s[mt][2 * np], a, &column(&b, 0), &column(&b, 1));
                mma(&mut s[mt][2 * np + 1], a, &column(&b, 2), &column(&b, 3));
            }
        }
    }
    // Online softmax in the log2 domain, per m-tile: maxima of the raw scores, each exponent one
    // fused multiply-add (ex2.approx is emulated by f32 exp2).
    for mt in 0..mt_count {
        let s = &mut s[mt];
        let (mut mx0, mut mx1) = w.m[mt];
        for lane in 0..32 {
            let key0 = key_base + (lane & 3) * 2;
            for (t, st) in s.iter_mut().enumerate() {
                if tail {
                    for e in 0..4 {
                        if key0 + t * 8 + (e & 1) >= n {
                            st[lane][e] = f32::NEG_INFINITY;
                        }
                    }
                }
                mx0[lane] = mx0[lane].max(st[lane][0].max(st[lane][1]));
                mx1[lane] = mx1[lane].max(st[lane][2].max(st[lane][3]));
            }
        }
        quad_reduce(&mut mx0, f32::max);
        quad_reduce(&mut mx1, f32::max);
        let sc = p.scale_log2;
        for lane in 0..32 {
            let (ms0, ms1) = (mx0[lane] * sc, mx1[lane] * sc);
            let alpha0 = w.m[mt].0[lane].mul_add(sc, -ms0).exp2();
            let alpha1 = w.m[mt].1[lane].mul_add(sc, -ms1).exp2();
            assert!(alpha0.is_finite() && alpha1.is_finite(), "NaN rescale");
            let (mut sum0, mut sum1) = (0.0f32, 0.0f32);
            for st in s.iter_mut() {
                let v = &mut st[lane];
                v[0] = v[0].mul_add(sc, -ms0).exp2();
                v[1] = v[1].mul_add(sc, -ms0).exp2();
                v[2] = v[2].mul_add(sc, -ms1).exp2();
                v[3] = v[3].mul_add(sc, -ms1).exp2();
                sum0 += v[0] + v[1];
                sum1 += v[2] + v[3];
            }
            w.l[mt].0[lane] = w.l[mt].0[lane] * alpha0 + sum0;
            w.l[mt].1[lane] = w.l[mt].1[lane] * alpha1 + sum1;
            for ot in w.o[mt].iter_mut() {
                ot[lane][0] *= alpha0;
                ot[lane][1] *= alpha0;
                ot[lane][2] *= alpha1;
                ot[lane][3] *= alpha1;
            }
        }
        w.m[mt] = (mx0, mx1);
    }
    // O += P·V with P taken from the S accumulators, each V fragment feeding every m-tile.
    for kk in 0..keys / 16 {
        if tail && kk * 16 >= valid {
            continue;
        }
        let a: Vec<Frag4> = (0..mt_count)
            .map(|mt| {
                std::array::from_fn(|lane| {
                    [
                        [s[mt][2 * kk][lane][0], s[mt][2 * kk][lane][1]],
                        [s[mt][2 * kk][lane][2], s[mt][2 * kk][lane][3]],
                        [s[mt][2 * kk + 1][lane][0], s[mt][2 * kk + 1][lane][1]],
                        [s[mt][2 * kk + 1][lane][2], s[mt][2 * kk + 1][lane][3]],
                    ]
                })
            })
            .collect();
        for dpi in 0..dp / 16 {
            let addr = std::array::from_fn(|lane| {
                let mat = lane >> 3;
                let key = kk * 16 + (lane & 7) + (mat & 1) * 8;
                let dim = dpi * 16 + (mat >> 1) * 8;
                key * lds + dim
            });
            let b = ldmatrix_x4(v, &addr, true);
            for mt in 0..mt_count {
                let o = &mut w.o[mt];
                mma(&mut o[2 * dpi], &a[mt], &column(&b, 0), &column(&b, 1));
                mma(&mut o[2 * dpi + 1], &a[mt], &column(&b, 2), &column(&b, 3));
            }
        }
    }
}

/// One block of `flash_attention<T, DP, MT>` (blockIdx = (·, head, img)), its first query row
/// `q0`: 4 warps of `mt` m-tiles of 16 query rows each, or, in a key-split block (one m-tile a
/// warp, at most 16 rows below n), 4 warps on the same 16 rows with 16 keys of each tile apiece,
/// merged by warp 0.
pub fn flash_block(
    p: &Problem,
    mt_count: usize,
    qkv: &[f32],
    out: &mut [f32],
    q0: usize,
    (head, img): (usize, usize),
) {
    let (n, d, dp) = (p.n, p.d, p.dp);
    let lds = dp + 8;
    let (ksteps, otiles) = (dp / 16, dp / 8);
    let bq = BM * mt_count;
    let mut s_q = vec![f32::NAN; bq * lds];
    let mut s_k = vec![f32::NAN; 2 * BN * lds];
    let mut s_v = vec![f32::NAN; 2 * BN * lds];
    let hd = p.heads * d;
    let ld = 3 * hd;
    let base = img * n * ld + head * d;
    let (kbase, vbase) = (base + hd, base + 2 * hd);
    let ntiles = n.div_ceil(BN);
    let split = mt_count == 1 && n - q0 <= 16;

    load_tile(p, qkv, &mut s_q, base, q0, bq);
    load_tile(p, qkv, &mut s_k[..BN * lds], kbase, 0, BN);
    load_tile(p, qkv, &mut s_v[..BN * lds], vbase, 0, BN);

    let mut warps: Vec<Warp> = (0..WARPS)
        .map(|_| Warp {
            qf: vec![vec![[[[0.0; 2]; 4]; 32]; ksteps]; mt_count],
            o: vec![vec![[[0.0f32; 4]; 32]; otiles]; mt_count],
            m: vec![([f32::NEG_INFINITY; 32], [f32::NEG_INFINITY; 32]); mt_count],
            l: vec![([0.0f32; 32], [0.0f32; 32]); mt_count],
        })
        .collect();
    // This warp's first query row, and whether it computes (a warp whose query rows all lie
    // past n only helps load).
    let qrow = |warp: usize| if split { 0 } else { warp * 16 * mt_count };
    let live = |warp: usize| split || q0 + warp * 16 * mt_count < n;

    for j in 0..ntiles {
        let buf = j & 1;
        if j + 1 < ntiles {
            let nb = (buf ^ 1) * BN * lds;
            load_tile(p, qkv, &mut s_k[nb..nb + BN * lds], kbase, (j + 1) * BN, BN);
            load_tile(p, qkv, &mut s_v[nb..nb + BN * lds], vbase, (j + 1) * BN, BN);
        }
        for (warp, w) in warps.iter_mut().enumerate() {
            if !live(warp) {
                continue;
            }
            if j == 0 {
                for mt in 0..mt_count {
                    for kk in 0..ksteps {
                        let addr = std::array::from_fn(|lane| {
                            (qrow(warp) + mt * 16 + (lane & 15)) * lds + kk * 16 + (lane >> 4) * 8
                        });
                        w.qf[mt][kk] = ldmatrix_x4(&s_q, &addr, false);
                    }
                }
            }
            let (k, v) = (&s_k[buf * BN * lds..], &s_v[buf * BN * lds..]);
            if split {
                let c0 = warp * 16;
                let key_base = j * BN + c0;
                if key_base < n {
                    fa_tile(p, w, &k[c0 * lds..], &v[c0 * lds..], key_base, 16);
                }
            } else {
                fa_tile(p, w, k, v, j * BN, BN);
            }
        }
    }

    if split {
        // Warp 0 takes in warps 1-3, lane for lane, rescaled to the common maxima.
        let (first, rest) = warps.split_at_mut(1);
        let w0 = &mut first[0];
        for w in rest.iter() {
            let sc = p.scale_log2;
            for lane in 0..32 {
                let (mw0, mw1) = (w.m[0].0[lane], w.m[0].1[lane]);
                let mx0 = w0.m[0].0[lane].max(mw0);
                let mx1 = w0.m[0].1[lane].max(mw1);
                let (ms0, ms1) = (mx0 * sc, mx1 * sc);
                let a0 = w0.m[0].0[lane].mul_add(sc, -ms0).exp2();
                let a1 = w0.m[0].1[lane].mul_add(sc, -ms1).exp2();
                let b0 = mw0.mul_add(sc, -ms0).exp2();
                let b1 = mw1.mul_add(sc, -ms1).exp2();
                assert!([a0, a1, b0, b1].iter().all(|x| x.is_finite()), "NaN merge");
                w0.m[0].0[lane] = mx0;
                w0.m[0].1[lane] = mx1;
                w0.l[0].0[lane] = w0.l[0].0[lane] * a0 + w.l[0].0[lane] * b0;
                w0.l[0].1[lane] = w0.l[0].1[lane] * a1 + w.l[0].1[lane] * b1;
                for t in 0..otiles {
                    let (o0, ow) = (&mut w0.o[0][t][lane], &w.o[0][t][lane]);
                    o0[0] = o0[0] * a0 + ow[0] * b0;
                    o0[1] = o0[1] * a0 + ow[1] * b0;
                    o0[2] = o0[2] * a1 + ow[2] * b1;
                    o0[3] = o0[3] * a1 + ow[3] * b1;
                }
            }
        }
    }

    let writers = if split { 1 } else { WARPS };
    for (warp, w) in warps.iter().enumerate().take(writers) {
        if !live(warp) {
            continue; // writes nothing
        }
        for mt in 0..mt_count {
            let (mut l0, mut l1) = w.l[mt];
            quad_reduce(&mut l0, |a, b| a + b);
            quad_reduce(&mut l1, |a, b| a + b);
            for lane in 0..32 {
                let (g, tig) = (lane >> 2, lane & 3);
                let (inv0, inv1) = (1.0 / l0[lane], 1.0 / l1[lane]);
                let r0 = q0 + qrow(warp) + mt * 16 + g;
                let r1 = r0 + 8;
                let obase = img * n * hd + head * d + tig * 2;
                for (t, ot) in w.o[mt].iter().enumerate() {
                    if t * 8 < d {
                        if r0 < n {
                            let at = obase + r0 * hd + t * 8;
                            out[at] = ot[lane][0] * inv0;
                            out[at + 1] = ot[lane][1] * inv0;
                        }
                        if r1 < n {
                            let at = obase + r1 * hd + t * 8;
                            out[at] = ot[lane][2] * inv1;
                            out[at + 1] = ot[lane][3] * inv1;
                        }
                    }
                }
            }
        }
    }
}
