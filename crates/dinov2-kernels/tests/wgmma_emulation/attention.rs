//! `attention_wg<T>` of `kernels/attention_sm90a.cu`, one block at a time.

use crate::flash::{flash_block, Problem};
use crate::hopper::{
    frag_pos, load_sw128_tile, sw128_desc, Block, Mma, OperandA, Timing, Wgmma, RAW,
};

/// The kernel's ATTN_WG_* geometry: query rows and keys a tile, head dim, threads, bytes.
pub const ATTN_WG_ROWS: usize = 64;
pub const ATTN_WG_KEYS: usize = 64;
pub const ATTN_WG_D: usize = 64;
pub const ATTN_WG_THREADS: usize = 128;
pub const ATTN_WG_TILE_BYTES: u32 = 64 * 64 * 2;
pub const ATTN_WG_SMEM: usize = (ATTN_WG_ROWS + 4 * ATTN_WG_KEYS) * (ATTN_WG_D + 8) * 2;
pub const ATTN_WG2_SMEM: usize = 6 * ATTN_WG_TILE_BYTES as usize + 1024;

/// `__shfl_xor_sync(full, v, mask)` over the warpgroup's 128 threads, combined with `op`.
pub fn shfl_xor(v: &mut [f32; 128], mask: usize, op: fn(f32, f32) -> f32) {
    let prev = *v;
    for t in 0..128 {
        let partner = (t & !31) | ((t & 31) ^ mask);
        v[t] = op(prev[t], prev[partner]);
    }
}

pub fn ex2_approx(x: f32) -> f32 {
    x.exp2()
}

/// The running state of the rows each thread holds: maxima and sums of rows g and g + 8.
pub struct Rows {
    m0: [f32; 128],
    m1: [f32; 128],
    l0: [f32; 128],
    l1: [f32; 128],
}

/// Each thread's P fragments, `p[kk][r]` (register r of the 16 keys from 16·kk: two values).
pub type Frags = Vec<[[[f32; 2]; 4]; 4]>;

/// `O += P·V` over `steps` steps of 16 keys (V at `dv`), issued as one group: the values the
/// registers hold at issue.
fn issue_pv(q: &mut Wgmma, b: &mut Block, o: usize, p: &Frags, dv: u64, steps: usize) {
    for kk in 0..steps {
        // The A operand the registers hold: register r of thread t is elements 2r, 2r + 1.
        let mut a = vec![f32::NAN; 64 * 16];
        for t in 0..128 {
            for r in 0..4 {
                for e in 0..2 {
                    let (row, col) = frag_pos(t, 2 * r + e);
                    a[row * 16 + col] = p[t][kk][r][e];
                }
            }
        }
        q.issue(
            b,
            Mma {
                acc: o,
                a: OperandA::Regs(a),
                b: dv + 128 * kk as u64,
                n: 64,
                trans_b: true,
            },
        );
    }
    q.commit();
}

/// `wg_step<T, KEYS, TAIL, PV>`.
pub fn wg_step(
    b: &mut Block,
    (keys, tail, pv): (usize, bool, bool),
    o: usize,
    rows: &mut Rows,
    p: &mut Frags,
    (dq, dk, dv): (u64, u64, u64),
    key_base: usize,
    n: usize,
    scale_log2: f32,
) {
    let mut q = Wgmma::new(b.timing());
    let s_count = keys / 2;
    let s_acc = b.new_acc(keys);
    q.k_step(b, s_acc, dq, dk, keys);
    if pv {
        issue_pv(&mut q, b, o, p, dv, ATTN_WG_KEYS / 16);
        q.wait(b, 1);
    } else {
        q.wait(b, 0);
    }
    let mut s: Vec<Vec<f32>> = (0..128)
        .map(|t| (0..s_count).map(|i| *b.frag(s_acc, t, i)).collect())
        .collect();

    let (mut mx0, mut mx1) = (rows.m0, rows.m1);
    for t in 0..128 {
        let q = t & 3;
        let s = &mut s[t];
        if tail {
            let key0 = key_base + 2 * q;
            for i in 0..s_count {
                if key0 + 8 * (i >> 2) + (i & 1) >= n {
                    s[i] = f32::NEG_INFINITY;
                }
            }
        }
        for jj in 0..s_count / 4 {
            mx0[t] = mx0[t].max(s[4 * jj].max(s[4 * jj + 1]));
            mx1[t] = mx1[t].max(s[4 * jj + 2].max(s[4 * jj + 3]));
        }
    }
    for mask in [1, 2] {
        shfl_xor(&mut mx0, mask, f32::max);
        shfl_xor(&mut mx1, mask, f32::max);
    }
    let mut alphas = [(0.0f32, 0.0f32); 128];
    for t in 0..128 {
        let ms0 = mx0[t] * scale_log2;
        let ms1 = mx1[t] * scale_log2;
        let alpha0 = ex2_approx(rows.m0[t].mul_add(scale_log2, -ms0));
        let alpha1 = ex2_approx(rows.m1[t].mul_add(scale_log2, -ms1));
        alphas[t] = (alpha0, alpha1);
        rows.m0[t] = mx0[t];
        rows.m1[t] = mx1[t];
        let (mut sum0, mut sum1) = (0.0f32, 0.0f32);
        let s = &mut s[t];
        for jj in 0..s_count / 4 {
            s[4 * jj] = ex2_approx(s[4 * jj].mul_add(scale_log2, -ms0));
            s[4 * jj + 1] = ex2_approx(s[4 * jj + 1].mul_add(scale_log2, -ms0));
            s[4 * jj + 2] = ex2_approx(s[4 * jj + 2].mul_add(scale_log2, -ms1));
            s[4 * jj + 3] = ex2_approx(s[4 * jj + 3].mul_add(scale_log2, -ms1));
            sum0 += s[4 * jj] + s[4 * jj + 1];
            sum1 += s[4 * jj + 2] + s[4 * jj + 3];
        }
        rows.l0[t] = rows.l0[t] * alpha0 + sum0;
        rows.l1[t] = rows.l1[t] * alpha1 + sum1;
    }

    // The previous tile's P·V has retired: O and p are the threads' again.
    if pv {
        q.wait(b, 0);
    }
    for t in 0..128 {
        let (alpha0, alpha1) = alphas[t];
        for jj in 0..8 {
            *b.frag(o, t, 4 * jj) *= alpha0;
            *b.frag(o, t, 4 * jj + 1) *= alpha0;
            *b.frag(o, t, 4 * jj + 2) *= alpha1;
            *b.frag(o, t, 4 * jj + 3) *= alpha1;
        }
        let s = &s[t];
        for kk in 0..keys / 16 {
            p[t][kk][0] = [s[8 * kk], s[8 * kk + 1]];
            p[t][kk][1] = [s[8 * kk + 2], s[8 * kk + 3]];
            p[t][kk][2] = [s[8 * kk + 4], s[8 * kk + 5]];
            p[t][kk][3] = [s[8 * kk + 6], s[8 * kk + 7]];
        }
    }
}

/// `wg_last_pv<T, KEYS>`: the last tile's P·V over its `keys` keys, awaited.
pub fn wg_last_pv(b: &mut Block, keys: usize, o: usize, p: &Frags, dv: u64) {
    let mut q = Wgmma::new(b.timing());
    issue_pv(&mut q, b, o, p, dv, keys / 16);
    q.wait(b, 0);
}

/// One block (blockIdx = (bx, head, img)) of `attention_wg<T, WGS>`: `wgs` warpgroups of 64
/// query rows from q_first + 64·wgs·bx.
pub fn attention_block(
    timing: Timing,
    wgs: usize,
    q_first: usize,
    qkv: &[f32],
    out: &mut [f32],
    n: usize,
    heads: usize,
    scale_log2: f32,
    (bx, head, img): (usize, usize, usize),
) {
    let d = ATTN_WG_D;
    let threads = wgs * ATTN_WG_THREADS;
    let smem = if wgs == 1 {
        ATTN_WG_SMEM
    } else {
        ATTN_WG2_SMEM
    };
    let mut b = Block::new(timing, smem);
    let raw = RAW;
    let sq = (raw + 1023) & !1023;
    let sk = sq + wgs as u32 * ATTN_WG_TILE_BYTES;
    let sv = sk + 2 * ATTN_WG_TILE_BYTES;

    let q0 = q_first + bx * wgs * ATTN_WG_ROWS;
    let hd = heads * d;
    let ld = 3 * hd;
    let base = img * n * ld + head * d;
    let kbase = base + hd;
    let vbase = base + 2 * hd;
    let tiles = n.div_ceil(ATTN_WG_KEYS);
    let live = |from: usize| n as isize - from as isize;
    if wgs == 1 && n as isize - q0 as isize <= 16 {
        let p = Problem {
            n,
            heads,
            d: ATTN_WG_D,
            dp: ATTN_WG_D,
            scale_log2,
        };
        flash_block(&p, 1, qkv, out, q0, (head, img));
        return;
    }

    for w in 0..wgs {
        let rows = q0 + ATTN_WG_ROWS * w;
        let src = base + if rows < n { rows } else { 0 } * ld;
        let tile = sq + w as u32 * ATTN_WG_TILE_BYTES;
        load_sw128_tile(&mut b, 64, threads, tile, qkv, src, ld, live(rows));
    }
    load_sw128_tile(&mut b, 64, threads, sk, qkv, kbase, ld, live(0));
    b.cp_async_commit();

    // Each warpgroup's accumulators, row state and P fragments; whether it has rows below n.
    let alive: Vec<bool> = (0..wgs)
        .map(|wg| wgs == 1 || q0 + ATTN_WG_ROWS * wg < n)
        .collect();
    let o: Vec<usize> = (0..wgs).map(|_| b.new_acc(64)).collect();
    let mut rows: Vec<Rows> = (0..wgs)
        .map(|_| Rows {
            m0: [f32::NEG_INFINITY; 128],
            m1: [f32::NEG_INFINITY; 128],
            l0: [0.0; 128],
            l1: [0.0; 128],
        })
        .collect();
    let mut p: Vec<Frags> = (0..wgs)
        .map(|_| vec![[[[f32::NAN; 2]; 4]; 4]; 128])
        .collect();
    let dq: Vec<u64> = (0..wgs)
        .map(|wg| sw128_desc(sq + wg as u32 * ATTN_WG_TILE_BYTES))
        .collect();
    let tile = |j: usize| (j & 1) as u32 * ATTN_WG_TILE_BYTES;
    for j in 0..tiles {
        // K_j and V_{j-1} have landed; every warpgroup is done with step j - 1.
        b.cp_async_wait(0);
        let (key_base, next) = (j * ATTN_WG_KEYS, (j + 1) * ATTN_WG_KEYS);
        if j + 1 < tiles {
            let src = kbase + next * ld;
            load_sw128_tile(
                &mut b,
                64,
                threads,
                sk + tile(j + 1),
                qkv,
                src,
                ld,
                live(next),
            );
        }
        let src = vbase + key_base * ld;
        load_sw128_tile(
            &mut b,
            64,
            threads,
            sv + tile(j),
            qkv,
            src,
            ld,
            live(key_base),
        );
        b.cp_async_commit();

        let dk = sw128_desc(sk + tile(j));
        let dv = sw128_desc(sv + tile(j + 1)); // V_{j-1}
        let left = n - key_base;
        let pv = j > 0;
        let shape = if left <= 16 {
            (16, true, pv)
        } else if left <= 32 {
            (32, true, pv)
        } else if left < ATTN_WG_KEYS {
            (64, true, pv)
        } else {
            (64, false, pv)
        };
        for wg in (0..wgs).filter(|&wg| alive[wg]) {
            let descs = (dq[wg], dk, dv);
            let (rows, p) = (&mut rows[wg], &mut p[wg]);
            wg_step(
                &mut b, shape, o[wg], rows, p, descs, key_base, n, scale_log2,
            );
        }
    }
    // The last tile's V.
    b.cp_async_wait(0);
    let left = n - (tiles - 1) * ATTN_WG_KEYS;
    let keys = if left <= 16 {
        16
    } else if left <= 32 {
        32
    } else {
        64
    };
    let dv = sw128_desc(sv + tile(tiles - 1));
    for wg in (0..wgs).filter(|&wg| alive[wg]) {
        wg_last_pv(&mut b, keys, o[wg], &p[wg], dv);
    }

    for wg in (0..wgs).filter(|&wg| alive[wg]) {
        let (mut t0, mut t1) = (rows[wg].l0, rows[wg].l1);
        for mask in [1, 2] {
            shfl_xor(&mut t0, mask, |a, b| a + b);
            shfl_xor(&mut t1, mask, |a, b| a + b);
        }
        for t in 0..ATTN_WG_THREADS {
            let (warp, lane) = (t >> 5, t & 31);
            let (g, q) = (lane >> 2, lane & 3);
            let inv0 = 1.0 / t0[t];
            let inv1 = 1.0 / t1[t];
            let r0 = q0 + ATTN_WG_ROWS * wg + warp * 16 + g;
            let r1 = r0 + 8;
            let obase = img * n * hd + head * d + 2 * q;
            for jj in 0..8 {
                let v = [0, 1, 2, 3].map(|e| *b.frag(o[wg], t, 4 * jj + e));
                if r0 < n {
                    out[obase + r0 * hd + 8 * jj] = v[0] * inv0;
                    out[obase + r0 * hd + 8 * jj + 1] = v[1] * inv0;
                }
                if r1 < n {
                    out[obase + r1 * hd + 8 * jj] = v[2] * inv1;
                    out[obase + r1 * hd + 8 * jj + 1] = v[3] * inv1;
                }
            }
        }
    }
}
