//! `gemm_body<T, ACT, BN, STAGES, WAIT>` of `kernels/gemm_sm90a.cu`, one block at a time.

use crate::hopper::{load_sw128_tile, sw128_desc, Block, Mma, OperandA, Timing, RAW};

/// GM_BM, GM_BK, GM_THREADS: the block's rows, its K step, its threads.
pub const GM_BM: usize = 128;
pub const GM_BK: usize = 64;
pub const GM_THREADS: usize = 256;

/// A tile shape as GEMM_SHAPES instantiates it.
#[derive(Clone, Copy, Debug)]
pub struct GemmTile {
    pub bn: usize,
    pub stages: usize,
    pub wait: usize,
}
pub const GEMM_TILES: [GemmTile; 2] = [
    GemmTile {
        bn: 128,
        stages: 3,
        wait: 0,
    },
    GemmTile {
        bn: 256,
        stages: 4,
        wait: 1,
    },
];

/// One GEMM's operands: `y = act(x·wᵀ + bias)`, x [m, k], w [n, k].
pub struct Gemm<'a> {
    pub x: &'a [f32],
    pub w: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub act: fn(f32) -> f32,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// One block (blockIdx = (bx, by)) of `gemm_body`.
pub fn gemm_block(p: &Gemm, t: GemmTile, timing: Timing, y: &mut [f32], (bx, by): (usize, usize)) {
    let (m, n, k) = (p.m, p.n, p.k);
    let bn = t.bn;
    let a_bytes = (GM_BM * GM_BK * 2) as u32;
    let stage_bytes = ((GM_BM + bn) * GM_BK * 2) as u32;
    let lookahead = t.stages - 1 - t.wait;
    assert!(lookahead >= 1, "the copies must run ahead of the MMAs");
    let mut b = Block::new(timing, t.stages * stage_bytes as usize + 1024);
    let raw = RAW;
    let base = (raw + 1023) & !1023;
    let tile = base;

    let m0 = by * GM_BM;
    let n0 = bx * bn;
    let steps = k / GM_BK;

    let load_step = |b: &mut Block, step: usize, stage: usize| {
        let sa = base + stage as u32 * stage_bytes;
        let k0 = step * GM_BK;
        load_sw128_tile(
            b,
            GM_BM,
            GM_THREADS,
            sa,
            p.x,
            m0 * k + k0,
            k,
            m as isize - m0 as isize,
        );
        load_sw128_tile(
            b,
            bn,
            GM_THREADS,
            sa + a_bytes,
            p.w,
            n0 * k + k0,
            k,
            bn as isize,
        );
    };

    // One accumulator per warpgroup.
    let d = [b.new_acc(bn), b.new_acc(bn)];
    for s in 0..lookahead {
        if s < steps {
            load_step(&mut b, s, s);
        }
        b.cp_async_commit();
    }
    for step in 0..steps {
        b.cp_async_wait(lookahead - 1);
        let stage = base + (step % t.stages) as u32 * stage_bytes;
        for wg in 0..2 {
            let da = sw128_desc(stage + wg as u32 * (64 * 128));
            let db = sw128_desc(stage + a_bytes);
            for kk in 0..GM_BK as u64 / 16 {
                b.wgmma(Mma {
                    acc: d[wg],
                    a: OperandA::Desc(da + 2 * kk),
                    b: db + 2 * kk,
                    n: bn,
                    trans_b: false,
                });
            }
        }
        b.wgmma_commit();
        let next = step + lookahead;
        if next < steps {
            load_step(&mut b, next, next % t.stages);
        }
        b.cp_async_commit();
        b.wgmma_wait(t.wait);
    }
    b.wgmma_wait(0);
    b.cp_async_wait(0);

    let row_bytes = (bn * 2 + 16) as u32;
    for tid in 0..GM_THREADS {
        let wg = tid >> 7;
        let warp = (tid >> 5) & 3;
        let lane = tid & 31;
        let row = wg * 64 + warp * 16 + (lane >> 2);
        for j in 0..bn / 8 {
            let col = j * 8 + (lane & 3) * 2;
            let bias_at = |c: usize| p.bias.map_or(0.0, |bias| bias[c]);
            let b0 = bias_at(n0 + col);
            let b1 = bias_at(n0 + col + 1);
            let t = tid % 128;
            let v = [0, 1, 2, 3].map(|e| *b.frag(d[wg], t, 4 * j + e));
            let at = tile + (row as u32) * row_bytes + (col * 2) as u32;
            b.write(at, &[(p.act)(v[0] + b0), (p.act)(v[1] + b1)]);
            let at = tile + (row as u32 + 8) * row_bytes + (col * 2) as u32;
            b.write(at, &[(p.act)(v[2] + b0), (p.act)(v[3] + b1)]);
        }
    }
    let chunks = bn / 8;
    for tid in 0..GM_THREADS {
        for i in (tid..GM_BM * chunks).step_by(GM_THREADS) {
            let r = i / chunks;
            let ch = i % chunks;
            if m0 + r < m {
                let at = tile + r as u32 * row_bytes + (ch * 16) as u32;
                for e in 0..8 {
                    y[(m0 + r) * n + n0 + ch * 8 + e] = b.read(at + 2 * e as u32);
                }
            }
        }
    }
}
