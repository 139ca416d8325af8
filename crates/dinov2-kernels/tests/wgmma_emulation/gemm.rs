//! `gemm_body<T, ACT, BN, STAGES, WAIT>` of `kernels/gemm_sm90a.cu`, one block at a time.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::hopper::{
    load_sw128_tile, sw128_desc, tma_load_2d, Block, MBar, Mma, OperandA, TensorMap, Timing, Wgmma,
    RAW,
};

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
    let (m, k) = (p.m, p.k);
    let bn = t.bn;
    let a_bytes = (GM_BM * GM_BK * 2) as u32;
    let stage_bytes = ((GM_BM + bn) * GM_BK * 2) as u32;
    let lookahead = t.stages - 1 - t.wait;
    assert!(lookahead >= 1, "the copies must run ahead of the MMAs");
    let mut b = Block::new(timing, t.stages * stage_bytes as usize + 1024);
    let mut q = Wgmma::new(timing);
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
                q.issue(
                    &mut b,
                    Mma {
                        acc: d[wg],
                        a: OperandA::Desc(da + 2 * kk),
                        b: db + 2 * kk,
                        n: bn,
                        trans_b: false,
                    },
                );
            }
        }
        q.commit();
        let next = step + lookahead;
        if next < steps {
            load_step(&mut b, next, next % t.stages);
        }
        b.cp_async_commit();
        q.wait(&mut b, t.wait);
    }
    q.wait(&mut b, 0);
    b.cp_async_wait(0);

    for tid in 0..GM_THREADS {
        let wg = tid >> 7;
        let row = wg * 64 + ((tid >> 5) & 3) * 16 + ((tid & 31) >> 2);
        stage_tile(&mut b, p, bn, d[wg], tid % 128, tile, row, tid & 31, n0);
    }
    for tid in 0..GM_THREADS {
        store_tile(&b, p, bn, GM_THREADS, tile, y, m0, n0, tid);
    }
}

/// `stage_tile<T, ACT, BN>` for one thread (`t` its index in its warpgroup, the accumulator's
/// fragment index).
fn stage_tile(
    b: &mut Block,
    p: &Gemm,
    bn: usize,
    d: usize,
    t: usize,
    tile: u32,
    row: usize,
    lane: usize,
    n0: usize,
) {
    let row_bytes = (bn * 2 + 16) as u32;
    for j in 0..bn / 8 {
        let col = j * 8 + (lane & 3) * 2;
        let bias_at = |c: usize| p.bias.map_or(0.0, |bias| bias[c]);
        let b0 = bias_at(n0 + col);
        let b1 = bias_at(n0 + col + 1);
        let v = [0, 1, 2, 3].map(|e| *b.frag(d, t, 4 * j + e));
        let at = tile + (row as u32) * row_bytes + (col * 2) as u32;
        b.write(at, &[(p.act)(v[0] + b0), (p.act)(v[1] + b1)]);
        let at = tile + (row as u32 + 8) * row_bytes + (col * 2) as u32;
        b.write(at, &[(p.act)(v[2] + b0), (p.act)(v[3] + b1)]);
    }
}

/// `store_tile<T, BN, THREADS>` for thread `t` of `threads`.
fn store_tile(
    b: &Block,
    p: &Gemm,
    bn: usize,
    threads: usize,
    tile: u32,
    y: &mut [f32],
    m0: usize,
    n0: usize,
    t: usize,
) {
    let (m, n) = (p.m, p.n);
    let row_bytes = (bn * 2 + 16) as u32;
    let chunks = bn / 8;
    for i in (t..GM_BM * chunks).step_by(threads) {
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

/// GW_BN, GW_STAGES, GW_THREADS: the warp-specialized kernel's tile columns, stages, threads.
pub const GW_BN: usize = 256;
pub const GW_STAGES: usize = 4;
pub const GW_THREADS: usize = 384;

/// What the warp-specialized block's actors share: shared memory, the mbarriers by address, the
/// output, and the consumers' barrier 1 (arrivals, generation).
struct Shared<'a> {
    b: Block,
    bars: HashMap<u32, MBar>,
    y: &'a mut [f32],
    named: (usize, usize),
}

/// The shared state behind a lock, and a condition to wait on for changes of it.
struct Ws<'a> {
    state: Mutex<Shared<'a>>,
    changed: Condvar,
}

impl<'a> Ws<'a> {
    /// Runs `f` on the shared state and wakes the waiters.
    fn with<R>(&self, f: impl FnOnce(&mut Shared<'a>) -> R) -> R {
        let mut s = self.state.lock().expect("an actor panicked");
        let r = f(&mut s);
        self.changed.notify_all();
        r
    }
    /// Blocks until `ready` holds; a deadlock (nothing changes for seconds) is a panic naming it.
    fn wait_until(&self, what: &str, ready: impl Fn(&Shared<'a>) -> bool) {
        let mut s = self.state.lock().expect("an actor panicked");
        while !ready(&s) {
            let (next, timeout) = self
                .changed
                .wait_timeout(s, Duration::from_secs(5))
                .expect("an actor panicked");
            s = next;
            assert!(!timeout.timed_out() || ready(&s), "deadlock: {what}");
        }
    }
    /// `mbar_wait(bar, parity)`.
    fn mbar_wait(&self, who: &str, bar: u32, parity: u32) {
        self.wait_until(
            &format!("{who} waits for the mbarrier at {bar:#x}, parity {parity}"),
            |s| s.bars[&bar].passed(parity),
        );
    }
    /// `named_barrier(1, 2 * 128)` for one consumer warpgroup (128 of the 256 arrivals).
    fn named_barrier(&self, who: &str) {
        let generation = self.with(|s| {
            let generation = s.named.1;
            s.named.0 += 128;
            if s.named.0 == 2 * 128 {
                s.named = (0, generation + 1);
            }
            generation
        });
        self.wait_until(&format!("{who} at barrier 1"), |s| s.named.1 > generation);
    }
}

/// One block (blockIdx = (bx, by)) of `gemm_ws_body`: the producer (thread 0) and the two consumer
/// warpgroups run as threads of their own on the shared block, the copies landing as soon as
/// they are issued and the MMAs reading shared memory at the wait that retires them.
pub fn gemm_ws_block(p: &Gemm, y: &mut [f32], (bx, by): (usize, usize)) {
    let (m, n, k) = (p.m, p.n, p.k);
    let a_bytes = (GM_BM * GM_BK * 2) as u32;
    let stage_bytes = ((GM_BM + GW_BN) * GM_BK * 2) as u32;
    let smem = GW_STAGES * stage_bytes as usize + 2 * GW_STAGES * 8 + 1024;
    let mut b = Block::new(Timing::MmasLate, smem);
    let raw = RAW;
    let base = (raw + 1023) & !1023;
    let tile = base;
    let full = base + GW_STAGES as u32 * stage_bytes;
    let empty = full + GW_STAGES as u32 * 8;

    assert_eq!(
        GW_THREADS,
        3 * 128,
        "a producer warpgroup and two consumers"
    );
    let m0 = by * GM_BM;
    let n0 = bx * GW_BN;
    let steps = k / GM_BK;
    // The tensor maps of x and w, boxes of one stage's A and B.
    let map_x = TensorMap {
        data: p.x,
        rows: m,
        k,
        box_rows: GM_BM,
    };
    let map_w = TensorMap {
        data: p.w,
        rows: n,
        k,
        box_rows: GW_BN,
    };

    let mut bars = HashMap::new();
    for s in 0..GW_STAGES as u32 {
        for (bar, count) in [(full + 8 * s, 1), (empty + 8 * s, 2 * 128)] {
            assert!(bar % 8 == 0, "mbarrier at {bar:#x} not 8-byte aligned");
            b.reserve(bar, 8);
            bars.insert(bar, MBar::new(count));
        }
    }
    let d = [b.new_acc(GW_BN), b.new_acc(GW_BN)];
    let ws = Ws {
        state: Mutex::new(Shared {
            b,
            bars,
            y,
            named: (0, 0),
        }),
        changed: Condvar::new(),
    };

    std::thread::scope(|scope| {
        scope.spawn(|| {
            for step in 0..steps {
                let s = step % GW_STAGES;
                let s8 = 8 * s as u32;
                if step >= GW_STAGES {
                    ws.mbar_wait(
                        "the producer",
                        empty + s8,
                        (((step / GW_STAGES) - 1) & 1) as u32,
                    );
                }
                let stage = base + s as u32 * stage_bytes;
                ws.with(|sh| {
                    sh.bars
                        .get_mut(&(full + s8))
                        .unwrap()
                        .arrive_expect_tx(stage_bytes);
                    let landed = tma_load_2d(&mut sh.b, stage, &map_x, step * GM_BK, m0);
                    sh.bars.get_mut(&(full + s8)).unwrap().complete_tx(landed);
                    let landed = tma_load_2d(&mut sh.b, stage + a_bytes, &map_w, step * GM_BK, n0);
                    sh.bars.get_mut(&(full + s8)).unwrap().complete_tx(landed);
                });
            }
        });
        for c in 0..2 {
            let (ws, d) = (&ws, d[c]);
            scope.spawn(move || {
                let who = format!("consumer {c}");
                let mut q = Wgmma::new(Timing::MmasLate);
                for step in 0..steps {
                    let s = step % GW_STAGES;
                    ws.mbar_wait(&who, full + 8 * s as u32, ((step / GW_STAGES) & 1) as u32);
                    let stage = base + s as u32 * stage_bytes;
                    let da = sw128_desc(stage + c as u32 * (64 * 128));
                    let db = sw128_desc(stage + a_bytes);
                    ws.with(|sh| {
                        for kk in 0..GM_BK as u64 / 16 {
                            q.issue(
                                &mut sh.b,
                                Mma {
                                    acc: d,
                                    a: OperandA::Desc(da + 2 * kk),
                                    b: db + 2 * kk,
                                    n: GW_BN,
                                    trans_b: false,
                                },
                            );
                        }
                        q.commit();
                        q.wait(&mut sh.b, 1);
                        if step > 0 {
                            let bar = empty + 8 * ((step - 1) % GW_STAGES) as u32;
                            for _ in 0..128 {
                                sh.bars.get_mut(&bar).unwrap().arrive();
                            }
                        }
                    });
                }
                ws.with(|sh| q.wait(&mut sh.b, 0));
                ws.named_barrier(&who);
                ws.with(|sh| {
                    for tid in 128 * (c + 1)..128 * (c + 2) {
                        let row = c * 64 + ((tid >> 5) & 3) * 16 + ((tid & 31) >> 2);
                        stage_tile(&mut sh.b, p, GW_BN, d, tid % 128, tile, row, tid & 31, n0);
                    }
                });
                ws.named_barrier(&who);
                ws.with(|sh| {
                    for tid in 128 * (c + 1)..128 * (c + 2) {
                        store_tile(&sh.b, p, GW_BN, 2 * 128, tile, sh.y, m0, n0, tid - 128);
                    }
                });
            });
        }
    });
}
