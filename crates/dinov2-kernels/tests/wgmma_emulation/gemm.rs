//! The GEMMs of `kernels/gemm_sm90a.cu`: `gemm_body<T, ACT, BN, STAGES, WAIT>` one block at a
//! time, `gemm_ws_body<T, ACT, CLUSTER>` one cluster at a time and `gemm_pp_body<T, ACT>` one
//! persistent block at a time, their warpgroups as threads.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::hopper::{
    load_sw128_tile, sw128_desc, tma_load_2d, Block, MBar, TensorMap, Timing, Wgmma, RAW,
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
    // Each warpgroup's wgmma groups.
    let mut q = [Wgmma::new(timing), Wgmma::new(timing)];
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
            q[wg].k_step(&mut b, d[wg], da, db, bn);
        }
        let next = step + lookahead;
        if next < steps {
            load_step(&mut b, next, next % t.stages);
        }
        b.cp_async_commit();
        for q in &mut q {
            q.wait(&mut b, t.wait);
        }
    }
    for q in &mut q {
        q.wait(&mut b, 0);
    }
    b.cp_async_wait(0);

    for tid in 0..GM_THREADS {
        let wg = tid >> 7;
        let row = wg * 64 + ((tid >> 5) & 3) * 16 + ((tid & 31) >> 2);
        stage_tile(
            &mut b,
            p,
            bn,
            d[wg],
            tid % 128,
            tile,
            row,
            tid & 31,
            n0,
            None,
        );
    }
    for tid in 0..GM_THREADS {
        store_tile(&b, p, bn, GM_THREADS, tile, y, m0, n0, tid);
    }
}

/// A LayerNorm folded into the persistent kernel (`FoldedNorm` of the _ln kernels): each row's
/// `parts` statistics (mean, M2) over groups of k / parts columns, the folded weight's column
/// sums, the norm's epsilon. `Gemm::w` is then the folded weight and `Gemm::bias` the folded
/// bias.
pub struct Folded<'a> {
    pub stats: &'a [[f32; 2]],
    pub parts: usize,
    pub colsum: &'a [f32],
    pub eps: f32,
}

/// `row_norm`: a row's (mean, inv) from its `parts` statistics.
fn row_norm(p: &[[f32; 2]], k: usize, eps: f32) -> [f32; 2] {
    let parts = p.len();
    let mut mean = 0.0f32;
    for t in p {
        mean += t[0];
    }
    mean /= parts as f32;
    let group = (k / parts) as f32;
    let mut m2 = 0.0f32;
    for t in p {
        let dm = t[0] - mean;
        m2 += t[1] + group * dm * dm;
    }
    [mean, 1.0 / (m2 / k as f32 + eps).sqrt()]
}

/// What the persistent kernel's epilogue makes of a tile (RES and NORM).
pub enum Epilogue<'a> {
    /// RES 0: y is the output; with a folded LayerNorm (NORM), the sums normalized first.
    Output(Option<&'a Folded<'a>>),
    /// RES 1, 2: y is the residual stream, y += gamma ⊙ tile; and each row's (mean, M2) over
    /// each 128-column tile into `stats` [m][n / 128] where given.
    Residual {
        gamma: &'a [f32],
        stats: Option<&'a mut [[f32; 2]]>,
    },
}

/// `stage_tile<T, ACT, BN, NORM>` for one thread (`t` its index in its warpgroup, the
/// accumulator's fragment index); with `norm`, the rows' (mean, inv) at `rownorm` in shared
/// memory (8 bytes a row: mean, then inv 4 bytes on).
#[allow(clippy::too_many_arguments)]
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
    norm: Option<(&Folded, u32)>,
) {
    let row_bytes = (bn * 2 + 16) as u32;
    let row_norm_at = |b: &Block, r: usize| {
        norm.map(|(_, at)| {
            let at = at + 8 * r as u32;
            [b.read(at), b.read(at + 4)]
        })
    };
    let (rn0, rn1) = (row_norm_at(b, row), row_norm_at(b, row + 8));
    for j in 0..bn / 8 {
        let col = j * 8 + (lane & 3) * 2;
        let bias_at = |c: usize| p.bias.map_or(0.0, |bias| bias[c]);
        let b0 = bias_at(n0 + col);
        let b1 = bias_at(n0 + col + 1);
        let colsum = |c: usize| norm.map_or(0.0, |(f, _)| f.colsum[c]);
        let (s0, s1) = (colsum(n0 + col), colsum(n0 + col + 1));
        let v = [0, 1, 2, 3].map(|e| *b.frag(d, t, 4 * j + e));
        let pre = |sum: f32, bias: f32, rn: Option<[f32; 2]>, cs: f32| match rn {
            Some([mean, inv]) => inv.mul_add((-mean).mul_add(cs, sum), bias),
            None => sum + bias,
        };
        let at = tile + (row as u32) * row_bytes + (col * 2) as u32;
        let pair = [pre(v[0], b0, rn0, s0), pre(v[1], b1, rn0, s1)];
        b.write(at, &pair.map(p.act));
        let at = tile + (row as u32 + 8) * row_bytes + (col * 2) as u32;
        let pair = [pre(v[2], b0, rn1, s0), pre(v[3], b1, rn1, s1)];
        b.write(at, &pair.map(p.act));
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

/// `store_tile_residual<T, X, BN, THREADS>` for thread `t` of `threads`: the tile (the branch)
/// into the residual stream `y`, y += gamma ⊙ branch, in groups of 4 columns. (The rows'
/// statistics, which a warp sums together, are `tile_stats`.)
#[allow(clippy::too_many_arguments)]
fn store_tile_residual(
    b: &Block,
    p: &Gemm,
    (bn, threads): (usize, usize),
    tile: u32,
    y: &mut [f32],
    gamma: &[f32],
    (m0, n0): (usize, usize),
    t: usize,
) {
    let (m, n) = (p.m, p.n);
    let row_bytes = (bn * 2 + 16) as u32;
    let quads = bn / 4;
    for i in (t..GM_BM * quads).step_by(threads) {
        let r = i / quads;
        let c = 4 * (i % quads);
        if m0 + r < m {
            for e in 0..4 {
                let branch = b.read(tile + r as u32 * row_bytes + ((c + e) * 2) as u32);
                let at = (m0 + r) * n + n0 + c + e;
                y[at] += gamma[n0 + c + e] * branch;
            }
        }
    }
}

/// `store_tile_residual`'s statistics: for each row of the tile below m, the (mean, M2) of its
/// `bn` updated values of `y` into stats [m][n / bn], each a warp's sum in the kernel.
fn tile_stats(p: &Gemm, bn: usize, y: &[f32], stats: &mut [[f32; 2]], (m0, n0): (usize, usize)) {
    for r in m0..(m0 + GM_BM).min(p.m) {
        let v = &y[r * p.n + n0..r * p.n + n0 + bn];
        let mean = v.iter().sum::<f32>() / bn as f32;
        let m2 = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>();
        stats[r * (p.n / bn) + n0 / bn] = [mean, m2];
    }
}

/// GW_BN, GW_STAGES, GW_THREADS: the warp-specialized kernel's tile columns, stages, threads.
pub const GW_BN: usize = 256;
pub const GW_STAGES: usize = 4;
pub const GW_THREADS: usize = 384;

/// What the actors of a cluster of warp-specialized blocks share: per CTA its shared memory, its
/// mbarriers by address and its consumers' barrier 1 (arrivals, generation); the output; the
/// cluster barrier (arrivals, generation).
struct Shared<'a> {
    ctas: Vec<Cta>,
    y: &'a mut [f32],
    /// The persistent kernel's statistics out (`Epilogue::Residual`).
    stats: Option<&'a mut [[f32; 2]]>,
    cluster_barrier: (usize, usize),
}

/// One CTA of the cluster: its shared memory, its mbarriers by address, its named barriers by
/// id (arrivals, generation; two warpgroups are the parties of each).
struct Cta {
    b: Block,
    bars: HashMap<u32, MBar>,
    named: HashMap<u32, (usize, usize)>,
}

impl Cta {
    /// A CTA with `smem` bytes of shared memory and, as `init_stage_barriers<STAGES, CLUSTER>`
    /// sets them, `stages` full barriers at `full` (one arrival and the bytes) and empty ones at
    /// `empty` (`releases` arrivals).
    fn new(smem: usize, stages: usize, full: u32, empty: u32, releases: u32) -> Self {
        let mut b = Block::new(Timing::MmasLate, smem);
        let mut bars = HashMap::new();
        for s in 0..stages as u32 {
            for (bar, count) in [(full + 8 * s, 1), (empty + 8 * s, releases)] {
                assert!(bar % 8 == 0, "mbarrier at {bar:#x} not 8-byte aligned");
                b.reserve(bar, 8);
                bars.insert(bar, MBar::new(count));
            }
        }
        Cta {
            b,
            bars,
            named: HashMap::new(),
        }
    }
}

/// The tensor maps of x and w as the launcher encodes them for a tile of `bn` columns: boxes of
/// one stage's A, and of its B or, in a cluster, half of it.
fn tensor_maps<'a>(p: &Gemm<'a>, bn: usize, cluster: usize) -> (TensorMap<'a>, TensorMap<'a>) {
    let map = |data, rows, box_rows| TensorMap {
        data,
        rows,
        k: p.k,
        box_rows,
    };
    (map(p.x, p.m, GM_BM), map(p.w, p.n, bn / cluster))
}

/// The fill of `produce_stage<BN, STAGES, CLUSTER>` by the producer of CTA `rank`: the stage's
/// bytes announced on its full barrier `bar`, A's box (x, m0) and B's (x, n0) or, in a cluster,
/// its half of B at n0 + bn/2·rank multicast into both CTAs at the same offset. Copies land at
/// once.
fn fill_stage(
    sh: &mut Shared,
    bn: usize,
    rank: usize,
    (stage, bar): (u32, u32),
    (map_x, map_w): (&TensorMap, &TensorMap),
    (x, m0, n0): (usize, usize, usize),
) {
    let cluster = sh.ctas.len();
    let a_bytes = (GM_BM * GM_BK * 2) as u32;
    let stage_bytes = ((GM_BM + bn) * GM_BK * 2) as u32;
    let me = &mut sh.ctas[rank];
    me.bars.get_mut(&bar).unwrap().arrive_expect_tx(stage_bytes);
    let landed = tma_load_2d(&mut me.b, stage, map_x, x, m0);
    me.bars.get_mut(&bar).unwrap().complete_tx(landed);
    if cluster == 1 {
        let landed = tma_load_2d(&mut me.b, stage + a_bytes, map_w, x, n0);
        me.bars.get_mut(&bar).unwrap().complete_tx(landed);
    } else {
        // Multicast to mask 0x3: both CTAs, the same offsets.
        let half = bn / 2;
        let dst = stage + a_bytes + (rank * half * 128) as u32;
        for cta in &mut sh.ctas {
            let landed = tma_load_2d(&mut cta.b, dst, map_w, x, n0 + rank * half);
            cta.bars.get_mut(&bar).unwrap().complete_tx(landed);
        }
    }
}

/// `release_stage<CLUSTER>` by a consumer warpgroup of CTA `rank`: each of its 128 threads
/// arrives on the empty barrier `bar`, or in a cluster each warp's lane 0 for its warp, here
/// and on the peer.
fn release_stage(sh: &mut Shared, rank: usize, bar: u32) {
    if sh.ctas.len() == 1 {
        for _ in 0..128 {
            sh.ctas[rank].bars.get_mut(&bar).unwrap().arrive();
        }
    } else {
        for _warp in 0..4 {
            for cta in [rank, rank ^ 1] {
                sh.ctas[cta].bars.get_mut(&bar).unwrap().arrive_count(32);
            }
        }
    }
}

/// The shared state behind a lock, and a condition to wait on for changes of it.
struct Ws<'a> {
    state: Mutex<Shared<'a>>,
    changed: Condvar,
}

/// A barrier's arrival: `parties` arrivals complete a generation; returns the generation this
/// one belongs to.
fn arrive(barrier: &mut (usize, usize), parties: usize) -> usize {
    let generation = barrier.1;
    barrier.0 += 1;
    if barrier.0 == parties {
        *barrier = (0, generation + 1);
    }
    generation
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
    /// `mbar_wait(bar, parity)` in CTA `cta`.
    fn mbar_wait(&self, who: &str, cta: usize, bar: u32, parity: u32) {
        self.wait_until(
            &format!("{who} waits for the mbarrier at {bar:#x}, parity {parity}"),
            |s| s.ctas[cta].bars[&bar].passed(parity),
        );
    }
    /// `produce_stage<BN, STAGES, CLUSTER>` by the producer of CTA `rank` (`who`): pipeline
    /// iteration `it` on stage it % stages of a ring at `base` (tiles of `bn` columns) with its
    /// barriers at `full` and `empty`; it waits for the stage's release (from the second round of
    /// the ring on), then fills it with the boxes at `at` (x, m0, n0).
    #[allow(clippy::too_many_arguments)]
    fn produce_stage(
        &self,
        who: &str,
        rank: usize,
        (bn, stages): (usize, usize),
        it: usize,
        (base, full, empty): (u32, u32, u32),
        maps: (&TensorMap, &TensorMap),
        at: (usize, usize, usize),
    ) {
        let s = it % stages;
        let s8 = 8 * s as u32;
        if it >= stages {
            let parity = (((it / stages) - 1) & 1) as u32;
            self.mbar_wait(who, rank, empty + s8, parity);
        }
        let stage = base + (s * (GM_BM + bn) * GM_BK * 2) as u32;
        self.with(|sh| fill_stage(sh, bn, rank, (stage, full + s8), maps, at));
    }
    /// `named_barrier(id, 2 * 128)` for one warpgroup of CTA `cta` (two warpgroups are the
    /// parties).
    fn named_barrier(&self, who: &str, cta: usize, id: u32) {
        let generation = self.named_barrier_arrive(cta, id);
        self.wait_until(&format!("{who} at barrier {id}"), |s| {
            s.ctas[cta].named[&id].1 > generation
        });
    }
    /// `named_barrier_arrive(id, 2 * 128)` for one warpgroup: its arrival, without waiting;
    /// returns the generation it belongs to.
    fn named_barrier_arrive(&self, cta: usize, id: u32) -> usize {
        self.with(|s| arrive(s.ctas[cta].named.entry(id).or_default(), 2))
    }
    /// `cluster_sync()` for one actor (a warpgroup: three a CTA).
    fn cluster_sync(&self, who: &str) {
        let parties = 3 * self.with(|s| s.ctas.len());
        let generation = self.with(|s| arrive(&mut s.cluster_barrier, parties));
        self.wait_until(&format!("{who} at the cluster barrier"), |s| {
            s.cluster_barrier.1 > generation
        });
    }
}

/// One cluster of `gemm_ws_body<T, ACT, CLUSTER>` (`cluster` 1: `_tma`, 2: `_tma2`), its CTAs at
/// blockIdx = (bx, cluster·pair + rank): each CTA's producer (thread 0; its warpgroup's other
/// threads only meet the cluster barriers) and its two consumer warpgroups run as threads of
/// their own on the shared state, the copies landing as soon as they are issued (multicast: in
/// every CTA of the mask) and the MMAs reading shared memory at the wait that retires them.
pub fn gemm_ws_cluster(p: &Gemm, cluster: usize, y: &mut [f32], (bx, pair): (usize, usize)) {
    let k = p.k;
    let a_bytes = (GM_BM * GM_BK * 2) as u32;
    let stage_bytes = ((GM_BM + GW_BN) * GM_BK * 2) as u32;
    let smem = GW_STAGES * stage_bytes as usize + 2 * GW_STAGES * 8 + 1024;
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
    let n0 = bx * GW_BN;
    let steps = k / GM_BK;
    let (map_x, map_w) = tensor_maps(p, GW_BN, cluster);

    let mut ctas = Vec::new();
    let mut d = Vec::new();
    for _ in 0..cluster {
        let releases = cluster as u32 * 2 * 128;
        let mut cta = Cta::new(smem, GW_STAGES, full, empty, releases);
        d.push([cta.b.new_acc(GW_BN), cta.b.new_acc(GW_BN)]);
        ctas.push(cta);
    }
    let ws = Ws {
        state: Mutex::new(Shared {
            ctas,
            y,
            stats: None,
            cluster_barrier: (0, 0),
        }),
        changed: Condvar::new(),
    };

    std::thread::scope(|scope| {
        for rank in 0..cluster {
            let (ws, map_x, map_w) = (&ws, &map_x, &map_w);
            let m0 = (cluster * pair + rank) * GM_BM;
            // CLUSTER 2: barriers initialized before anything reaches them (every actor meets
            // this barrier before it starts; an actor of CLUSTER 1 would meet __syncthreads).
            scope.spawn(move || {
                let who = format!("the producer of CTA {rank}");
                if cluster == 2 {
                    ws.cluster_sync(&who);
                }
                for step in 0..steps {
                    let ring = (base, full, empty);
                    let at = (step * GM_BK, m0, n0);
                    let shape = (GW_BN, GW_STAGES);
                    ws.produce_stage(&who, rank, shape, step, ring, (map_x, map_w), at);
                }
                if cluster == 2 {
                    ws.cluster_sync(&who);
                }
            });
            for c in 0..2 {
                let d = d[rank][c];
                scope.spawn(move || {
                    let who = format!("consumer {c} of CTA {rank}");
                    if cluster == 2 {
                        ws.cluster_sync(&who);
                    }
                    let mut q = Wgmma::new(Timing::MmasLate);
                    for step in 0..steps {
                        let s = step % GW_STAGES;
                        let parity = ((step / GW_STAGES) & 1) as u32;
                        ws.mbar_wait(&who, rank, full + 8 * s as u32, parity);
                        let stage = base + s as u32 * stage_bytes;
                        let da = sw128_desc(stage + c as u32 * (64 * 128));
                        let db = sw128_desc(stage + a_bytes);
                        ws.with(|sh| {
                            let b = &mut sh.ctas[rank].b;
                            q.k_step(b, d, da, db, GW_BN);
                            q.wait(b, 1);
                            if step > 0 {
                                release_stage(
                                    sh,
                                    rank,
                                    empty + 8 * ((step - 1) % GW_STAGES) as u32,
                                );
                            }
                        });
                    }
                    ws.with(|sh| q.wait(&mut sh.ctas[rank].b, 0));
                    ws.named_barrier(&who, rank, 1);
                    ws.with(|sh| {
                        for tid in 128 * (c + 1)..128 * (c + 2) {
                            let row = c * 64 + ((tid >> 5) & 3) * 16 + ((tid & 31) >> 2);
                            let b = &mut sh.ctas[rank].b;
                            stage_tile(b, p, GW_BN, d, tid % 128, tile, row, tid & 31, n0, None);
                        }
                    });
                    ws.named_barrier(&who, rank, 1);
                    ws.with(|sh| {
                        for tid in 128 * (c + 1)..128 * (c + 2) {
                            let b = &sh.ctas[rank].b;
                            store_tile(b, p, GW_BN, 2 * 128, tile, sh.y, m0, n0, tid - 128);
                        }
                    });
                    if cluster == 2 {
                        ws.cluster_sync(&who);
                    }
                });
            }
        }
    });
}

/// GP_BN, GP_STAGES, GP_THREADS: the persistent kernel's tile columns, stages, threads.
pub const GP_BN: usize = 128;
pub const GP_STAGES: usize = 4;
pub const GP_THREADS: usize = 384;

/// Cluster `first` of `stride` clusters of `gemm_pp_body<T, ACT, CLUSTER>` (`cluster` 1: `_pp`,
/// 2: `_pp2`), its CTAs at blockIdx.x = cluster·first + rank: each CTA's producer (thread 0; its
/// warpgroup's other threads only meet the cluster barriers) and its two consumer warpgroups run
/// as threads of their own, the copies landing as soon as they are issued (multicast: in every
/// CTA of the mask) and the MMAs reading shared memory at the wait that retires them. The named
/// barriers of one warpgroup alone (4 + c) are no-ops here: a warpgroup's threads are one actor.
/// `epilogue` says what the tiles become (RES, NORM; with RES 1, 2 `p.act` is the identity).
pub fn gemm_pp_cluster(
    p: &Gemm,
    cluster: usize,
    y: &mut [f32],
    epilogue: Epilogue,
    (first, stride): (usize, usize),
) {
    let (m, n, k) = (p.m, p.n, p.k);
    let a_bytes = (GM_BM * GM_BK * 2) as u32;
    let stage_bytes = ((GM_BM + GP_BN) * GM_BK * 2) as u32;
    let gp_tile_bytes = (GM_BM * (GP_BN * 2 + 16)) as u32;
    let gp_norm_bytes = (GM_BM * 8) as u32;
    let smem = GP_STAGES * stage_bytes as usize
        + 2 * gp_tile_bytes as usize
        + 2 * GP_STAGES * 8
        + 2 * gp_norm_bytes as usize
        + 1024;
    let raw = RAW;
    let base = (raw + 1023) & !1023;
    let out_tiles = base + GP_STAGES as u32 * stage_bytes;
    let full = base + GP_STAGES as u32 * stage_bytes + 2 * gp_tile_bytes;
    let empty = full + GP_STAGES as u32 * 8;
    let row_norms = out_tiles + 2 * gp_tile_bytes + 2 * GP_STAGES as u32 * 8;
    let (norm, gamma, stats_out) = match epilogue {
        Epilogue::Output(norm) => (norm, None, None),
        Epilogue::Residual { gamma, stats } => (None, Some(gamma), stats),
    };
    assert_eq!(
        GP_THREADS,
        3 * 128,
        "a producer warpgroup and two consumers"
    );
    let col_tiles = n / GP_BN;
    let units = m.div_ceil(GM_BM).div_ceil(cluster) * col_tiles;
    let steps = k / GM_BK;
    let (map_x, map_w) = tensor_maps(p, GP_BN, cluster);

    let ctas = (0..cluster)
        .map(|_| Cta::new(smem, GP_STAGES, full, empty, cluster as u32 * 128))
        .collect();
    let ws = Ws {
        state: Mutex::new(Shared {
            ctas,
            y,
            stats: stats_out,
            cluster_barrier: (0, 0),
        }),
        changed: Condvar::new(),
    };
    // The unit's row and column offsets for CTA `rank`.
    let origin = |u: usize, rank: usize| {
        (
            (u / col_tiles * cluster + rank) * GM_BM,
            u % col_tiles * GP_BN,
        )
    };

    std::thread::scope(|scope| {
        for rank in 0..cluster {
            let (ws, map_x, map_w) = (&ws, &map_x, &map_w);
            scope.spawn(move || {
                let who = format!("the producer of CTA {rank}");
                if cluster == 2 {
                    ws.cluster_sync(&who);
                }
                let mut it = 0;
                for u in (first..units).step_by(stride) {
                    let (m0, n0) = origin(u, rank);
                    for step in 0..steps {
                        let ring = (base, full, empty);
                        let at = (step * GM_BK, m0, n0);
                        let shape = (GP_BN, GP_STAGES);
                        ws.produce_stage(&who, rank, shape, it, ring, (map_x, map_w), at);
                        it += 1;
                    }
                }
                if cluster == 2 {
                    ws.cluster_sync(&who);
                }
            });
            for c in 0..2 {
                scope.spawn(move || {
                    let who = format!("consumer {c} of CTA {rank}");
                    if cluster == 2 {
                        ws.cluster_sync(&who);
                    }
                    let out = out_tiles + c as u32 * gp_tile_bytes;
                    let mut q = Wgmma::new(Timing::MmasLate);
                    let mut i = c;
                    while first + i * stride < units {
                        let (m0, n0) = origin(first + i * stride, rank);
                        if i > 0 {
                            ws.named_barrier(&who, rank, 2 + c as u32);
                        }
                        let (d0, d1) = ws.with(|sh| {
                            let b = &mut sh.ctas[rank].b;
                            (b.new_acc(GP_BN), b.new_acc(GP_BN))
                        });
                        for step in 0..steps {
                            let it = i * steps + step;
                            let s = it % GP_STAGES;
                            let parity = ((it / GP_STAGES) & 1) as u32;
                            ws.mbar_wait(&who, rank, full + 8 * s as u32, parity);
                            let stage = base + s as u32 * stage_bytes;
                            let (da0, da1) = (sw128_desc(stage), sw128_desc(stage + 64 * 128));
                            let db = sw128_desc(stage + a_bytes);
                            ws.with(|sh| {
                                let b = &mut sh.ctas[rank].b;
                                q.k_step_128rows(b, (d0, d1), (da0, da1), db, GP_BN);
                                q.wait(b, 1);
                                if step > 0 {
                                    release_stage(
                                        sh,
                                        rank,
                                        empty + 8 * ((it - 1) % GP_STAGES) as u32,
                                    );
                                }
                            });
                        }
                        if first + (i + 1) * stride < units {
                            ws.named_barrier_arrive(rank, 2 + (c ^ 1) as u32);
                        }
                        let rn = row_norms + c as u32 * gp_norm_bytes;
                        ws.with(|sh| {
                            if let Some(f) = norm {
                                let b = &mut sh.ctas[rank].b;
                                for tid in 128 * (c + 1)..128 * (c + 2) {
                                    let r = m0 + (tid & 127);
                                    let [mean, inv] = if r < m {
                                        row_norm(&f.stats[r * f.parts..(r + 1) * f.parts], k, f.eps)
                                    } else {
                                        [0.0, 0.0]
                                    };
                                    let at = rn + 8 * (tid & 127) as u32;
                                    b.write(at, &[mean]);
                                    b.write(at + 4, &[inv]);
                                }
                            }
                            q.wait(&mut sh.ctas[rank].b, 0);
                            let last = (i * steps + steps - 1) % GP_STAGES;
                            release_stage(sh, rank, empty + 8 * last as u32);
                            let norm = norm.map(|f| (f, rn));
                            for tid in 128 * (c + 1)..128 * (c + 2) {
                                let row = ((tid >> 5) & 3) * 16 + ((tid & 31) >> 2);
                                let (b, t, lane) = (&mut sh.ctas[rank].b, tid % 128, tid & 31);
                                stage_tile(b, p, GP_BN, d0, t, out, row, lane, n0, norm);
                                stage_tile(b, p, GP_BN, d1, t, out, 64 + row, lane, n0, norm);
                            }
                            for tid in 128 * (c + 1)..128 * (c + 2) {
                                let (b, t) = (&sh.ctas[rank].b, tid & 127);
                                match gamma {
                                    None => store_tile(b, p, GP_BN, 128, out, sh.y, m0, n0, t),
                                    Some(g) => {
                                        let at = (m0, n0);
                                        store_tile_residual(b, p, (GP_BN, 128), out, sh.y, g, at, t)
                                    }
                                }
                            }
                            if let Some(stats) = sh.stats.as_deref_mut() {
                                tile_stats(p, GP_BN, sh.y, stats, (m0, n0));
                            }
                        });
                        i += 2;
                    }
                    if cluster == 2 {
                        ws.cluster_sync(&who);
                    }
                });
            }
        }
    });
}
