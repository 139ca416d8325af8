// GEMMs with fused epilogues on Hopper's warpgroup MMAs (wgmma: sm_90a only, so this file builds
// into an sm_90a cubin, with no embedded PTX; other GPUs use cuBLAS):
//   gemm_{f16,bf16}_{id,gelu,gelu_tanh}_n{128,256}(x, w, bias, bias_f32, y, m, n, k)
//     y[m, n] = act(x[m, k] · w[n, k]ᵀ + bias[n])
// and variants fed by TMA (_tma, _tma2, _pp, _pp2, _res{,_rx}_{pp,pp2} updating a residual
// stream, and _ln_{pp,pp2} with a LayerNorm folded in: below).
// x, w, y in one 16-bit type, f32 accumulation; the bias (f32 when bias_f32, else the storage type,
// or null) and the activation are applied to the f32 sums, then y is rounded once. So the exact
// erf GELU after fc1 costs no pass over the activations (cuBLASLt's GELU epilogue is the tanh
// approximation).
//
// The launcher checks: n % BN == 0, k % 64 == 0, k > 0, x, w, y 16-byte aligned; m is free (rows
// past m read zeros and are not written). Grid (n / BN, ceil(m / 128)), 256 threads, dynamic smem
// GM_SMEM_BYTES(BN, STAGES) (below).
//
// A block computes a 128 x BN tile of y: warpgroup g (threads 128g..128g+127) rows 64g..64g+63,
// all BN columns, with m64nBNk16 wgmmas whose operands are read from shared memory:
// - Each K step of 64 is one pipeline stage: A [128][64] and B [BN][64], K-major tiles in the
//   128-byte swizzle (wgmma.cuh), copied with cp.async (zero-filled past row m).
// - STAGES stages in a ring; the copies run LOOKAHEAD = STAGES - 1 - WAIT K steps ahead of the
//   MMAs, and WAIT groups of MMAs may still run when the next step's are issued.
// - Before the MMAs read a stage: each thread waits for its copies, fences them towards the async
//   proxy (the wgmmas read shared memory through it), and the block synchronizes.
// - The epilogue stages the tile through the (then idle) shared memory so that y is written in
//   16-byte stores, a row's BN·2 bytes contiguous.
#include "wgmma.cuh"

#define GM_BM 128
#define GM_BK 64
#define GM_THREADS 256

// Shared memory of a block: the stages, plus 1 KiB to align them to 1024 bytes.
#define GM_STAGE_BYTES(BN) ((GM_BM + (BN)) * GM_BK * 2)
#define GM_SMEM_BYTES(BN, STAGES) ((STAGES) * GM_STAGE_BYTES(BN) + 1024)

// One m64nBNk16 wgmma of the warpgroup.
template <typename T, int BN> __device__ __forceinline__ void wgmma_k16(float (&d)[BN / 2], uint64_t da, uint64_t db);
template <> __device__ __forceinline__ void wgmma_k16<f16, 128>(float (&d)[64], uint64_t da, uint64_t db) {
    WGMMA_N128("f16", d, da, db);
}
template <> __device__ __forceinline__ void wgmma_k16<bf16, 128>(float (&d)[64], uint64_t da, uint64_t db) {
    WGMMA_N128("bf16", d, da, db);
}
template <> __device__ __forceinline__ void wgmma_k16<f16, 256>(float (&d)[128], uint64_t da, uint64_t db) {
    WGMMA_N256("f16", d, da, db);
}
template <> __device__ __forceinline__ void wgmma_k16<bf16, 256>(float (&d)[128], uint64_t da, uint64_t db) {
    WGMMA_N256("bf16", d, da, db);
}

// One K step of 64 as one group of wgmmas: d += A·B over the stage whose A and B tiles the
// descriptors da and db point at (four m64nBNk16, 32 bytes of K apart), committed, not awaited.
template <typename T, int BN>
__device__ __forceinline__ void mma_k_step(float (&d)[BN / 2], uint64_t da, uint64_t db) {
    fence_accumulators(d);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < GM_BK / 16; kk++) wgmma_k16<T, BN>(d, da + 2 * kk, db + 2 * kk);
    wgmma_commit();
}

template <typename T> __device__ __forceinline__ float bias_at(const void* bias, int bias_f32, int col) {
    if (!bias) return 0.0f;
    return bias_f32 ? static_cast<const float*>(bias)[col] : to_f32(static_cast<const T*>(bias)[col]);
}

// A LayerNorm folded into the product (the _ln kernels): for y = LN(x)·wᵀ + bias with LN's
// weight γ and bias β, the kernel multiplies the residual stream x itself by w' = w ⊙ γ (γ
// scaling w's columns: the weight the host prepares), and the epilogue normalizes each sum:
//   y[r][c] = inv_r · (sum[r][c] − mean_r · colsum[c]) + bias'[c]
// with colsum[c] = Σ_k w'[c][k] and bias' = bias + w·β (also prepared), mean_r and
// inv_r = 1/sqrt(var_r + eps) from row r's statistics: `parts` pairs (mean, M2) over groups of
// k / parts columns each (one from row_stats / add_scaled_stats, k / 128 from a _res_rx
// kernel's stats_out), combined as Chan et al. combine equal counts. Returns (mean, inv).
__device__ __forceinline__ float2 row_norm(const float2* __restrict__ p, int parts, int k, float eps) {
    float mean = 0.0f;
    for (int t = 0; t < parts; t++) mean += p[t].x;
    mean /= parts;
    const float group = (float)(k / parts);
    float m2 = 0.0f;
    for (int t = 0; t < parts; t++) {
        const float dm = p[t].x - mean;
        m2 += p[t].y + group * dm * dm;
    }
    return make_float2(mean, 1.0f / sqrtf(m2 / k + eps));
}

// A sum of the tile before its activation: plus the bias, or (NORM) normalized as above with
// its row's (mean, inv) `rn` and its column's sum of the folded weight `cs`.
template <bool NORM>
__device__ __forceinline__ float pre_activation(float sum, float bias, float2 rn, float cs) {
    return NORM ? fmaf(rn.y, fmaf(-rn.x, cs, sum), bias) : sum + bias;
}

// The epilogue, in two halves around a barrier of the threads that run it. First each thread's
// accumulators, the bias added (NORM: normalized, pre_activation, with rownorm [tile rows] and
// colsum [n]) and the activation applied, rounded into the output tile in shared memory: rows
// of BN·2 bytes padded by 16 (a row starts 4 banks after the previous one, so the 8 rows of a
// fragment store hit 32 different banks). `row` is the thread's first row in the tile
// (warpgroup rows + 16·warp + lane/4).
template <typename T, int ACT, int BN, bool NORM = false>
__device__ __forceinline__ void stage_tile(const float (&d)[BN / 2], uint8_t* tile, int row, int lane,
                                           const void* bias, int bias_f32, int n0,
                                           const float2* rownorm = nullptr, const float* colsum = nullptr) {
    constexpr int ROW_BYTES = BN * 2 + 16;
    const float2 rn0 = NORM ? rownorm[row] : make_float2(0.0f, 0.0f);
    const float2 rn1 = NORM ? rownorm[row + 8] : make_float2(0.0f, 0.0f);
    // Accumulator fragment of m64nNk16: d[4j + e] is row 16·warp + lane/4 (+ 8 for e >= 2),
    // column 8j + 2·(lane % 4) + (e % 2).
#pragma unroll
    for (int j = 0; j < BN / 8; j++) {
        const int col = j * 8 + (lane & 3) * 2;
        const float b0 = bias_at<T>(bias, bias_f32, n0 + col);
        const float b1 = bias_at<T>(bias, bias_f32, n0 + col + 1);
        const float s0 = NORM ? colsum[n0 + col] : 0.0f, s1 = NORM ? colsum[n0 + col + 1] : 0.0f;
        *reinterpret_cast<uint32_t*>(tile + row * ROW_BYTES + col * 2) =
            pack2<T>(activate(pre_activation<NORM>(d[4 * j], b0, rn0, s0), ACT),
                     activate(pre_activation<NORM>(d[4 * j + 1], b1, rn0, s1), ACT));
        *reinterpret_cast<uint32_t*>(tile + (row + 8) * ROW_BYTES + col * 2) =
            pack2<T>(activate(pre_activation<NORM>(d[4 * j + 2], b0, rn1, s0), ACT),
                     activate(pre_activation<NORM>(d[4 * j + 3], b1, rn1, s1), ACT));
    }
}

// Then the tile's rows below m to y, in 16-byte stores (a row's BN·2 bytes contiguous), by
// THREADS threads, `t` the index of this one among them.
template <typename T, int BN, int THREADS>
__device__ __forceinline__ void store_tile(const uint8_t* tile, T* y, int m0, int m, int n, int n0, int t) {
    constexpr int ROW_BYTES = BN * 2 + 16;
    constexpr int CHUNKS = BN / 8;
#pragma unroll 4
    for (int i = t; i < GM_BM * CHUNKS; i += THREADS) {
        const int r = i / CHUNKS, ch = i % CHUNKS;
        if (m0 + r < m) {
            *reinterpret_cast<uint4*>(y + (size_t)(m0 + r) * n + n0 + ch * 8) =
                *reinterpret_cast<const uint4*>(tile + r * ROW_BYTES + ch * 16);
        }
    }
}

// Or, as the residual update of a pre-norm block, the tile (the branch, rounded to T as it would
// be written to memory) into the residual stream x [m][n]: x += gamma ⊙ branch, summed in f32
// and rounded to X (f32, or T as the `_rx` kernels keep the stream), as add_scaled_layer_norm
// computes it, in accesses of 4 elements (16 bytes of f32, 8 of T). With stats_out [m][n / BN]
// (BN = 128: a warp holds a row's columns of the tile, 4 a lane), each row's (mean, M2) over
// the tile's columns as stored, for the next GEMM's folded LayerNorm (row_norm).
template <typename T, typename X, int BN, int THREADS>
__device__ __forceinline__ void store_tile_residual(const uint8_t* tile, X* x, const float* __restrict__ gamma,
                                                    int m0, int m, int n, int n0, int t,
                                                    float2* __restrict__ stats_out) {
    constexpr int ROW_BYTES = BN * 2 + 16;
    constexpr int QUADS = BN / 4;
    static_assert(QUADS == 32 && THREADS % 32 == 0, "a warp a row of the tile");
#pragma unroll 4
    for (int i = t; i < GM_BM * QUADS; i += THREADS) {
        const int r = i / QUADS, c = 4 * (i % QUADS);
        if (m0 + r < m) {
            X* xr = x + (size_t)(m0 + r) * n + n0 + c;
            const float4 xv = load4(xr), gv = load4(gamma + n0 + c),
                         bv = load4(reinterpret_cast<const T*>(tile + r * ROW_BYTES + c * 2));
            const float4 v = round4(make_float4(xv.x + gv.x * bv.x, xv.y + gv.y * bv.y, xv.z + gv.z * bv.z,
                                                xv.w + gv.w * bv.w),
                                    xr);
            store4(xr, v);
            if (stats_out) {
                const float mean = warp_sum(v.x + v.y + v.z + v.w) / BN;
                const float dx = v.x - mean, dy = v.y - mean, dz = v.z - mean, dw = v.w - mean;
                const float m2 = warp_sum(dx * dx + dy * dy + dz * dz + dw * dw);
                if (c == 0) stats_out[(size_t)(m0 + r) * (n / BN) + n0 / BN] = make_float2(mean, m2);
            }
        }
    }
}

template <typename T, int ACT, int BN, int STAGES, int WAIT>
__device__ __forceinline__ void gemm_body(const T* __restrict__ x, const T* __restrict__ w,
                                          const void* __restrict__ bias, int bias_f32,
                                          T* __restrict__ y, int m, int n, int k) {
    constexpr int A_BYTES = GM_BM * GM_BK * 2;
    constexpr int STAGE_BYTES = GM_STAGE_BYTES(BN);
    constexpr int LOOKAHEAD = STAGES - 1 - WAIT;
    static_assert(LOOKAHEAD >= 1, "the copies must run ahead of the MMAs");
    extern __shared__ uint8_t smem_raw[];
    const uint32_t raw = smem_addr(smem_raw);
    const uint32_t base = (raw + 1023u) & ~1023u;
    uint8_t* const tile = smem_raw + (base - raw);

    const int tid = threadIdx.x;
    const int wg = tid >> 7;
    const int m0 = blockIdx.y * GM_BM;
    const int n0 = blockIdx.x * BN;
    const int steps = k / GM_BK;

    auto load_step = [&](int step, int stage) {
        const uint32_t sa = base + stage * STAGE_BYTES;
        const int k0 = step * GM_BK;
        load_sw128_tile<GM_BM, GM_THREADS>(sa, x + (size_t)m0 * k + k0, k, m - m0);
        load_sw128_tile<BN, GM_THREADS>(sa + A_BYTES, w + (size_t)n0 * k + k0, k, BN);
    };

    float d[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; i++) d[i] = 0.0f;

#pragma unroll
    for (int s = 0; s < LOOKAHEAD; s++) {
        if (s < steps) load_step(s, s);
        cp_async_commit();
    }
    for (int step = 0; step < steps; step++) {
        // This step's copies are the oldest LOOKAHEAD groups but the newest LOOKAHEAD - 1.
        cp_async_wait<LOOKAHEAD - 1>();
        fence_proxy_async();
        // Every thread's copies of this step have landed, and every warpgroup has retired the
        // MMAs of step - 1 - WAIT, the stage the copy below overwrites.
        __syncthreads();
        const uint32_t stage = base + (step % STAGES) * STAGE_BYTES;
        const uint64_t da = sw128_desc(stage + wg * (64 * 128));
        const uint64_t db = sw128_desc(stage + A_BYTES);
        mma_k_step<T, BN>(d, da, db);
        const int next = step + LOOKAHEAD;
        if (next < steps) load_step(next, next % STAGES);
        cp_async_commit();
        wgmma_wait<WAIT>();
        fence_accumulators(d);
    }
    wgmma_wait<0>();
    fence_accumulators(d);
    cp_async_wait<0>();
    // Every warpgroup is done reading the stages: the output tile goes there.
    __syncthreads();
    stage_tile<T, ACT, BN>(d, tile, wg * 64 + ((tid >> 5) & 3) * 16 + ((tid & 31) >> 2), tid & 31, bias,
                           bias_f32, n0);
    __syncthreads();
    store_tile<T, BN, GM_THREADS>(tile, y, m0, m, n, n0, tid);
}

// The warp-specialized variant, fed by the tensor memory accelerator (TMA):
//   gemm_{f16,bf16}_{id,gelu,gelu_tanh}_tma(map_x, map_w, bias, bias_f32, y, m, n, k)
// The same product and epilogue on 128 x 256 tiles (n % 256 == 0, k % 64 == 0), 384 threads,
// grid (n / 256, ceil(m / 128)), dynamic smem GW_SMEM_BYTES. map_x and map_w are tensor maps of x
// [m][k] and w [n][k] with boxes of 64 x 128 and 64 x 256 elements in the 128-byte swizzle
// (TMA zero-fills rows past m).
// - Warpgroup 0 produces: its first thread waits for a free stage, announces the stage's bytes
//   on full[s] and has the copy engine fetch A [128][64] and B [256][64] into it; the rest of
//   the warpgroup only gives its registers to the consumers.
// - Warpgroups 1 and 2 consume (rows 0-63 and 64-127 of the tile): wait for full[s], issue four
//   m64n256k16 wgmmas on it, and once the MMAs of the previous stage have retired, release that
//   stage on empty[s] (all 256 consumer threads arrive).
// - full[s] completes a phase per fill (its k-th fill: phase k, waited with parity k & 1);
//   empty[s] a phase per release, which the producer awaits before the stage's next fill.
// - The epilogue is the one above, the two consumer warpgroups synchronizing on barrier 1.
//   gemm_{f16,bf16}_{id,gelu,gelu_tanh}_tma2(...): the same in clusters of two CTAs along M
// (grid.y even: the launcher rounds it up; a CTA wholly past m computes zeros and stores
// nothing). Both need the same B tile: each fetches half of it (map_w's box is 64 x 128) and
// the copy engine multicasts it into both CTAs, so each CTA reads 32 KiB a stage from L2
// instead of 48. A stage may be refilled once both CTAs' consumers released it: empty[s]
// counts 512 arrivals, each warp's lane 0 arriving for its warp on its own CTA's barrier and
// on the peer's. Cluster barriers after the barriers' initialization and before exit.
#define GW_BN 256
#define GW_STAGES 4
#define GW_THREADS 384
// The stages, their 2·GW_STAGES mbarriers after them, and 1 KiB to align the stages to 1024.
#define GW_SMEM_BYTES (GW_STAGES * GM_STAGE_BYTES(GW_BN) + 2 * GW_STAGES * 8 + 1024)

// A consumer warpgroup's release of the stage whose empty barrier is at `bar`: each thread
// arrives (CLUSTER 1), or each warp's lane 0 for its warp here and on the peer CTA, rank ^ 1
// (CLUSTER 2: the peer refills its half of the stage's B in both).
template <int CLUSTER> __device__ __forceinline__ void release_stage(uint32_t bar, uint32_t rank) {
    if (CLUSTER == 1) mbar_arrive(bar);
    else mbar_arrive_warp_here_and_there(bar, rank ^ 1);
}

// The TMA kernels' stage barriers, initialized by thread 0: full[s] (at full + 8s) completes
// on the producer's arrival and the stage's bytes, empty[s] (at empty + 8s) on `releases`
// arrivals. Then a barrier of the block (CLUSTER 1) or of the cluster (CLUSTER 2: the peer's
// barriers are initialized before any copy or arrival reaches them).
template <int STAGES, int CLUSTER>
__device__ __forceinline__ void init_stage_barriers(uint32_t full, uint32_t empty, uint32_t releases) {
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) {
            mbar_init(full + 8 * s, 1);
            mbar_init(empty + 8 * s, releases);
        }
        mbar_init_fence();
    }
    if (CLUSTER == 1) __syncthreads();
    else cluster_sync();
}

// The producer's pipeline iteration `it`, on stage s = it % STAGES (at base + s·stage bytes):
// it waits until the consumers have released the stage's previous fill (none before the first
// STAGES), then fills it with K step k0 of A's rows m0.. and B's rows n0.. (BN of them), the
// bytes announced on full[s] first. CLUSTER 2: this CTA (`rank`) fetches half of B, rows
// n0 + BN/2·rank.., into both CTAs of the cluster at the same offset, each counting the bytes on
// its own barrier.
template <int BN, int STAGES, int CLUSTER>
__device__ __forceinline__ void produce_stage(int it, uint32_t base, uint32_t full, uint32_t empty,
                                              const TmaMap* map_x, const TmaMap* map_w, int k0, int m0,
                                              int n0, uint32_t rank) {
    constexpr int A_BYTES = GM_BM * GM_BK * 2;
    const int s = it % STAGES;
    if (it >= STAGES) mbar_wait(empty + 8 * s, ((it / STAGES) - 1) & 1);
    const uint32_t stage = base + s * GM_STAGE_BYTES(BN), bar = full + 8 * s;
    mbar_arrive_expect_tx(bar, GM_STAGE_BYTES(BN));
    tma_load_2d(stage, map_x, bar, k0, m0);
    if (CLUSTER == 1) {
        tma_load_2d(stage + A_BYTES, map_w, bar, k0, n0);
    } else {
        constexpr int HALF = BN / 2;
        tma_load_2d_multicast(stage + A_BYTES + rank * (HALF * 128), map_w, bar, k0, n0 + rank * HALF, 0x3);
    }
}

template <typename T, int ACT, int CLUSTER>
__device__ __forceinline__ void gemm_ws_body(const TmaMap* map_x, const TmaMap* map_w,
                                             const void* __restrict__ bias, int bias_f32,
                                             T* __restrict__ y, int m, int n, int k) {
    constexpr int A_BYTES = GM_BM * GM_BK * 2;
    constexpr int STAGE_BYTES = GM_STAGE_BYTES(GW_BN);
    extern __shared__ uint8_t smem_raw[];
    const uint32_t raw = smem_addr(smem_raw);
    const uint32_t base = (raw + 1023u) & ~1023u;
    uint8_t* const tile = smem_raw + (base - raw);
    const uint32_t full = base + GW_STAGES * STAGE_BYTES; // full[s] at full + 8s
    const uint32_t empty = full + GW_STAGES * 8;          // empty[s] at empty + 8s

    const int tid = threadIdx.x;
    const int wg = tid >> 7;
    const int m0 = blockIdx.y * GM_BM;
    const int n0 = blockIdx.x * GW_BN;
    const int steps = k / GM_BK;
    // CLUSTER 2: this CTA's rank; it fetches B's rows 128·rank.. for both CTAs.
    const uint32_t rank = CLUSTER == 1 ? 0 : cluster_ctarank();

    init_stage_barriers<GW_STAGES, CLUSTER>(full, empty, CLUSTER * 2 * 128);

    if (wg == 0) {
        setmaxnreg_dec<40>();
        if (tid == 0) {
            for (int step = 0; step < steps; step++)
                produce_stage<GW_BN, GW_STAGES, CLUSTER>(step, base, full, empty, map_x, map_w, step * GM_BK,
                                                         m0, n0, rank);
        }
        if (CLUSTER == 1) return;
    } else {
        setmaxnreg_inc<232>();
        const int c = wg - 1; // this consumer's rows: 64c..64c+63
        float d[GW_BN / 2];
#pragma unroll
        for (int i = 0; i < GW_BN / 2; i++) d[i] = 0.0f;
        for (int step = 0; step < steps; step++) {
            const int s = step % GW_STAGES;
            mbar_wait(full + 8 * s, (step / GW_STAGES) & 1);
            const uint32_t stage = base + s * STAGE_BYTES;
            const uint64_t da = sw128_desc(stage + c * (64 * 128));
            const uint64_t db = sw128_desc(stage + A_BYTES);
            mma_k_step<T, GW_BN>(d, da, db);
            wgmma_wait<1>();
            fence_accumulators(d);
            // The MMAs of the previous step have retired: its stage may be refilled (CLUSTER 2:
            // also by the peer, whose B half comes into it; a warp's lane 0 arrives for the warp).
            if (step > 0) release_stage<CLUSTER>(empty + 8 * ((step - 1) % GW_STAGES), rank);
        }
        wgmma_wait<0>();
        fence_accumulators(d);
        // Both consumers are done reading the stages (every copy into them has landed: each was
        // waited for): the output tile goes there.
        named_barrier(1, 2 * 128);
        stage_tile<T, ACT, GW_BN>(d, tile, c * 64 + ((tid >> 5) & 3) * 16 + ((tid & 31) >> 2), tid & 31,
                                  bias, bias_f32, n0);
        named_barrier(1, 2 * 128);
        store_tile<T, GW_BN, 2 * 128>(tile, y, m0, m, n, n0, tid - 128);
    }
    // CLUSTER 2: neither CTA leaves while the other may still copy into it or arrive on its
    // barriers.
    if (CLUSTER == 2) cluster_sync();
}

// The persistent ping-pong variant, fed by TMA:
//   gemm_{f16,bf16}_{id,gelu,gelu_tanh}_pp(map_x, map_w, bias, bias_f32, y, m, n, k)
// The same product and epilogue on 128 x 128 tiles (n % 128 == 0, k % 64 == 0), 384 threads,
// grid (min(tiles, SMs)), dynamic smem GP_SMEM_BYTES, one block an SM; map_x and map_w have
// boxes of 64 x 128 elements. Where the kernels above end each tile with an epilogue during which
// the tensor cores idle, here a block stays resident and walks the tiles t = blockIdx.x,
// blockIdx.x + gridDim.x, ... (row tile t / (n / 128), column tile t % (n / 128)), and its two
// consumer warpgroups take turns:
// - The block's i-th tile is consumer i % 2's, all 128 rows of it (two m64n128k16 accumulators,
//   128 registers a thread).
// - The producer's first thread fills the stages for the block's tiles one after another: K step
//   `step` of tile i is iteration it = i·steps + step, on stage it % GP_STAGES.
// - Consumer c starts the MMAs of a tile once the other has issued all of its previous tile's
//   (it waits on named barrier 2 + c, where the other arrives), then does the same for it. So
//   while one issues MMAs, the other runs its epilogue (bias, activation, stores) on the CUDA
//   cores. The turns also keep each wait on full[s] at most one phase ahead of the barrier, as
//   parity waits require: without them, consumer 1 would wait for its first stage while the
//   barrier is still phases behind, and a parity of the past would pass.
// - A stage is released (empty[s], 128 arrivals: the consumer's threads) once the MMAs reading
//   it have retired, the last one of a tile after the tile's MMAs have all retired.
// - Named barriers 2 and 3 (the turns) and 4 and 5 (the output tiles) are the consumers'; 0 is
//   the block's (__syncthreads, once, after the mbarriers' initialization).
// - Each consumer stages its output tile in a buffer of its own after the stages (the producer
//   fills them for later tiles meanwhile), guarded by named barrier 4 + c.
//   gemm_{f16,bf16}_{id,gelu,gelu_tanh}_pp2(...): the same in clusters of two CTAs along M, as
// _tma2 pairs them: a cluster walks units of two row tiles by one column tile (CTA `rank` takes
// row tile 2·(u / (n / 128)) + rank: one wholly past m computes zeros and stores nothing), each
// CTA fetching half of the common B tile for both (map_w's box is 64 x 64) by multicast; a
// stage is refilled once both CTAs' consumers released it (empty[s] counts 256: each warp's
// lane 0 arrives for its warp here and on the peer). Grid: whole clusters, at most as many as
// can be resident at once (the launcher asks the driver).
#define GP_BN 128
#define GP_STAGES 4
#define GP_THREADS 384
// One consumer's output tile: 128 rows of GP_BN·2 bytes, padded by 16 (stage_tile's layout).
#define GP_TILE_BYTES (GM_BM * (GP_BN * 2 + 16))
// One consumer's (mean, inv) of the tile's rows, for a folded LayerNorm (the _ln kernels).
#define GP_NORM_BYTES (GM_BM * 8)
// The stages, the consumers' output tiles, 2·GP_STAGES mbarriers, the consumers' row norms,
// 1 KiB to align the stages.
#define GP_SMEM_BYTES \
    (GP_STAGES * GM_STAGE_BYTES(GP_BN) + 2 * GP_TILE_BYTES + 2 * GP_STAGES * 8 + 2 * GP_NORM_BYTES + 1024)

// One K step of 64 of a consumer's 128-row tile as one group of wgmmas: rows 0-63 (A at da0)
// into d0 and rows 64-127 (da1) into d1, against the same B (db).
template <typename T>
__device__ __forceinline__ void mma_k_step_128rows(float (&d0)[GP_BN / 2], float (&d1)[GP_BN / 2],
                                                   uint64_t da0, uint64_t da1, uint64_t db) {
    fence_accumulators(d0);
    fence_accumulators(d1);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < GM_BK / 16; kk++) {
        wgmma_k16<T, GP_BN>(d0, da0 + 2 * kk, db + 2 * kk);
        wgmma_k16<T, GP_BN>(d1, da1 + 2 * kk, db + 2 * kk);
    }
    wgmma_commit();
}

// The operands of a folded LayerNorm (NORM, the _ln kernels; see row_norm): each row's `parts`
// statistics [m][parts], the folded weight's column sums [n], the norm's epsilon.
struct FoldedNorm {
    const float2* stats;
    const float* colsum;
    int parts;
    float eps;
};

// RES 0: y is the output [m][n] in T; NORM: x is the residual stream and the tile's sums are
// normalized with `norm`. RES 1 and 2: y is the residual stream [m][n] (f32, or T) that the
// tile updates (store_tile_residual, gamma [n] f32, and its statistics into stats_out where
// not null); ACT is then the identity.
template <typename T, int ACT, int CLUSTER, int RES, bool NORM = false>
__device__ __forceinline__ void gemm_pp_body(const TmaMap* map_x, const TmaMap* map_w,
                                             const void* __restrict__ bias, int bias_f32, void* __restrict__ y,
                                             const float* __restrict__ gamma, int m, int n, int k,
                                             float2* __restrict__ stats_out = nullptr,
                                             FoldedNorm norm = FoldedNorm{}) {
    constexpr int A_BYTES = GM_BM * GM_BK * 2;
    constexpr int STAGE_BYTES = GM_STAGE_BYTES(GP_BN);
    extern __shared__ uint8_t smem_raw[];
    const uint32_t raw = smem_addr(smem_raw);
    const uint32_t base = (raw + 1023u) & ~1023u;
    uint8_t* const out_tiles = smem_raw + (base - raw) + GP_STAGES * STAGE_BYTES;
    const uint32_t full = base + GP_STAGES * STAGE_BYTES + 2 * GP_TILE_BYTES; // full[s] at full + 8s
    const uint32_t empty = full + GP_STAGES * 8;                              // empty[s] at empty + 8s
    float2* const row_norms = reinterpret_cast<float2*>(out_tiles + 2 * GP_TILE_BYTES + 2 * GP_STAGES * 8);

    const int tid = threadIdx.x;
    const int wg = tid >> 7;
    const int col_tiles = n / GP_BN;
    // Work units: CLUSTER row tiles (one a CTA) by one column tile; this CTA's cluster takes
    // units first, first + stride, ...
    const int units = ((m + GM_BM - 1) / GM_BM + CLUSTER - 1) / CLUSTER * col_tiles;
    const int first = blockIdx.x / CLUSTER, stride = gridDim.x / CLUSTER;
    const int steps = k / GM_BK;
    // CLUSTER 2: this CTA's rank; it takes the unit's row tile `rank` and fetches B's rows
    // 64·rank.. for both CTAs.
    const uint32_t rank = CLUSTER == 1 ? 0 : cluster_ctarank();
    // Unit u's first row (this CTA's row tile of it) and first column.
    auto unit_m0 = [&](int u) { return (u / col_tiles * CLUSTER + (int)rank) * GM_BM; };
    auto unit_n0 = [&](int u) { return u % col_tiles * GP_BN; };

    init_stage_barriers<GP_STAGES, CLUSTER>(full, empty, CLUSTER * 128);

    if (wg == 0) {
        setmaxnreg_dec<40>();
        if (tid == 0) {
            int it = 0;
            for (int u = first; u < units; u += stride)
                for (int step = 0; step < steps; step++, it++)
                    produce_stage<GP_BN, GP_STAGES, CLUSTER>(it, base, full, empty, map_x, map_w, step * GM_BK,
                                                             unit_m0(u), unit_n0(u), rank);
        }
        if (CLUSTER == 1) return;
    } else {
        setmaxnreg_inc<232>();
        const int c = wg - 1;
        uint8_t* const out = out_tiles + c * GP_TILE_BYTES;
        // This thread's first row in a 64-row half of the tile.
        const int row = ((tid >> 5) & 3) * 16 + ((tid & 31) >> 2);
        for (int i = c; first + i * stride < units; i += 2) {
            const int u = first + i * stride, m0 = unit_m0(u), n0 = unit_n0(u);
            // Our turn: the other consumer has issued the MMAs of tile i - 1.
            if (i > 0) named_barrier(2 + c, 2 * 128);
            float d0[GP_BN / 2], d1[GP_BN / 2];
#pragma unroll
            for (int j = 0; j < GP_BN / 2; j++) d0[j] = d1[j] = 0.0f;
            for (int step = 0; step < steps; step++) {
                const int it = i * steps + step, s = it % GP_STAGES;
                mbar_wait(full + 8 * s, (it / GP_STAGES) & 1);
                const uint32_t stage = base + s * STAGE_BYTES;
                mma_k_step_128rows<T>(d0, d1, sw128_desc(stage), sw128_desc(stage + 64 * 128),
                                      sw128_desc(stage + A_BYTES));
                wgmma_wait<1>();
                fence_accumulators(d0);
                fence_accumulators(d1);
                // The MMAs of the previous step have retired: its stage may be refilled (CLUSTER
                // 2: also by the peer; a warp's lane 0 arrives for the warp).
                if (step > 0) release_stage<CLUSTER>(empty + 8 * ((it - 1) % GP_STAGES), rank);
            }
            // The other consumer's turn, if the block has a tile i + 1.
            if (first + (i + 1) * stride < units) named_barrier_arrive(2 + (c ^ 1), 2 * 128);
            if (NORM) {
                // Row tid % 128 of the tile's (mean, inv), for the epilogue, while the last MMAs
                // run. The warpgroup's reads of its previous tile's ended before its turn began.
                const int r = m0 + (tid & 127);
                row_norms[c * GM_BM + (tid & 127)] =
                    r < m ? row_norm(norm.stats + (size_t)r * norm.parts, norm.parts, k, norm.eps)
                          : make_float2(0.0f, 0.0f);
            }
            wgmma_wait<0>();
            fence_accumulators(d0);
            fence_accumulators(d1);
            release_stage<CLUSTER>(empty + 8 * ((i * steps + steps - 1) % GP_STAGES), rank);
            // This warpgroup's stores of its previous tile are done reading `out`.
            named_barrier(4 + c, 128);
            const float2* const rn = row_norms + c * GM_BM;
            stage_tile<T, ACT, GP_BN, NORM>(d0, out, row, tid & 31, bias, bias_f32, n0, rn, norm.colsum);
            stage_tile<T, ACT, GP_BN, NORM>(d1, out, 64 + row, tid & 31, bias, bias_f32, n0, rn, norm.colsum);
            named_barrier(4 + c, 128);
            if (RES == 0) store_tile<T, GP_BN, 128>(out, static_cast<T*>(y), m0, m, n, n0, tid & 127);
            else if (RES == 1)
                store_tile_residual<T, float, GP_BN, 128>(out, static_cast<float*>(y), gamma, m0, m, n, n0,
                                                          tid & 127, stats_out);
            else
                store_tile_residual<T, T, GP_BN, 128>(out, static_cast<T*>(y), gamma, m0, m, n, n0, tid & 127,
                                                      stats_out);
        }
    }
    // CLUSTER 2: neither CTA leaves while the other may still copy into it or arrive on its
    // barriers.
    if (CLUSTER == 2) cluster_sync();
}

// Two tile shapes: 128 x 128 with 3 stages (97 KiB) and two blocks an SM, each waiting for its
// MMAs before the next step (the other block's fill the gap); 128 x 256 with 4 stages (193 KiB),
// one block an SM, one group of MMAs left running across steps.
#define GEMM_KERNEL(name, T, aname, ACT, BN, STAGES, WAIT, BLOCKS)                                   \
    extern "C" __global__ void __launch_bounds__(GM_THREADS, BLOCKS)                                \
        gemm_##name##_##aname##_n##BN(const T* x, const T* w, const void* bias, int bias_f32, T* y, \
                                      int m, int n, int k) {                                        \
        gemm_body<T, ACT, BN, STAGES, WAIT>(x, w, bias, bias_f32, y, m, n, k);                      \
    }
#define GEMM_SHAPES(name, T, aname, ACT)                                                           \
    GEMM_KERNEL(name, T, aname, ACT, 128, 3, 0, 2)                                                 \
    GEMM_KERNEL(name, T, aname, ACT, 256, 4, 1, 1)
// The warp-specialized kernels: one block an SM; _tma2 in clusters of two CTAs along M.
#define GEMM_WS_KERNEL(name, T, aname, ACT)                                                        \
    extern "C" __global__ void __launch_bounds__(GW_THREADS, 1)                                    \
        gemm_##name##_##aname##_tma(const __grid_constant__ TmaMap map_x,                          \
                                    const __grid_constant__ TmaMap map_w, const void* bias,        \
                                    int bias_f32, T* y, int m, int n, int k) {                     \
        gemm_ws_body<T, ACT, 1>(&map_x, &map_w, bias, bias_f32, y, m, n, k);                       \
    }                                                                                              \
    extern "C" __global__ void __cluster_dims__(1, 2, 1) __launch_bounds__(GW_THREADS, 1)          \
        gemm_##name##_##aname##_tma2(const __grid_constant__ TmaMap map_x,                         \
                                     const __grid_constant__ TmaMap map_w, const void* bias,       \
                                     int bias_f32, T* y, int m, int n, int k) {                    \
        gemm_ws_body<T, ACT, 2>(&map_x, &map_w, bias, bias_f32, y, m, n, k);                       \
    }
// The persistent ping-pong kernels: one block an SM; _pp2 in clusters of two CTAs.
#define GEMM_PP_KERNEL(name, T, aname, ACT)                                                        \
    extern "C" __global__ void __launch_bounds__(GP_THREADS, 1)                                    \
        gemm_##name##_##aname##_pp(const __grid_constant__ TmaMap map_x,                           \
                                   const __grid_constant__ TmaMap map_w, const void* bias,         \
                                   int bias_f32, T* y, int m, int n, int k) {                      \
        gemm_pp_body<T, ACT, 1, 0>(&map_x, &map_w, bias, bias_f32, y, nullptr, m, n, k);           \
    }                                                                                              \
    extern "C" __global__ void __cluster_dims__(2, 1, 1) __launch_bounds__(GP_THREADS, 1)          \
        gemm_##name##_##aname##_pp2(const __grid_constant__ TmaMap map_x,                          \
                                    const __grid_constant__ TmaMap map_w, const void* bias,        \
                                    int bias_f32, T* y, int m, int n, int k) {                     \
        gemm_pp_body<T, ACT, 2, 0>(&map_x, &map_w, bias, bias_f32, y, nullptr, m, n, k);           \
    }
// The same updating a residual stream x (f32: _res; T: _res_rx) with gamma ⊙ (x·wᵀ + bias),
// and writing the updated rows' statistics into stats [m][n / 128] where not null:
//   gemm_{f16,bf16}_res{,_rx}_{pp,pp2}(map_x, map_w, bias, bias_f32, x, gamma, stats, m, n, k)
#define GEMM_PP_RES_KERNEL(name, T, rname, RES, CLUSTER, tile, DIMS)                               \
    extern "C" __global__ void DIMS __launch_bounds__(GP_THREADS, 1)                               \
        gemm_##name##_##rname##_##tile(const __grid_constant__ TmaMap map_x,                       \
                                       const __grid_constant__ TmaMap map_w, const void* bias,     \
                                       int bias_f32, void* x, const float* gamma, float2* stats,   \
                                       int m, int n, int k) {                                      \
        gemm_pp_body<T, ACT_IDENTITY, CLUSTER, RES>(&map_x, &map_w, bias, bias_f32, x, gamma, m, n, \
                                                    k, stats);                                     \
    }
#define GEMM_PP_RES_KERNELS(name, T)                                                               \
    GEMM_PP_RES_KERNEL(name, T, res, 1, 1, pp, )                                                   \
    GEMM_PP_RES_KERNEL(name, T, res_rx, 2, 1, pp, )                                                \
    GEMM_PP_RES_KERNEL(name, T, res, 1, 2, pp2, __cluster_dims__(2, 1, 1))                         \
    GEMM_PP_RES_KERNEL(name, T, res_rx, 2, 2, pp2, __cluster_dims__(2, 1, 1))
// And with a LayerNorm folded in (FoldedNorm, row_norm): x is the residual stream, w and bias
// the folded weight and bias (bias f32), colsum [n] f32, stats [m][parts]:
//   gemm_{f16,bf16}_{id,gelu,gelu_tanh}_ln_{pp,pp2}(map_x, map_w, bias, y, stats, parts, colsum,
//                                                  eps, m, n, k)
#define GEMM_PP_LN_KERNEL(name, T, aname, ACT, CLUSTER, tile, DIMS)                                \
    extern "C" __global__ void DIMS __launch_bounds__(GP_THREADS, 1) gemm_##name##_##aname##_ln_##tile( \
        const __grid_constant__ TmaMap map_x, const __grid_constant__ TmaMap map_w, const float* bias, \
        T* y, const float2* stats, int parts, const float* colsum, float eps, int m, int n, int k) {   \
        gemm_pp_body<T, ACT, CLUSTER, 0, true>(&map_x, &map_w, bias, 1, y, nullptr, m, n, k, nullptr,   \
                                               FoldedNorm{stats, colsum, parts, eps});            \
    }
#define GEMM_KERNELS(name, T, aname, ACT)                                                          \
    GEMM_SHAPES(name, T, aname, ACT)                                                               \
    GEMM_WS_KERNEL(name, T, aname, ACT)                                                            \
    GEMM_PP_KERNEL(name, T, aname, ACT)                                                            \
    GEMM_PP_LN_KERNEL(name, T, aname, ACT, 1, pp, )                                                \
    GEMM_PP_LN_KERNEL(name, T, aname, ACT, 2, pp2, __cluster_dims__(2, 1, 1))
#define GEMM_ACTS(name, T)                                                                         \
    GEMM_KERNELS(name, T, id, ACT_IDENTITY)                                                        \
    GEMM_KERNELS(name, T, gelu, ACT_GELU)                                                          \
    GEMM_KERNELS(name, T, gelu_tanh, ACT_GELU_TANH)
GEMM_ACTS(f16, f16)
GEMM_ACTS(bf16, bf16)
GEMM_PP_RES_KERNELS(f16, f16)
GEMM_PP_RES_KERNELS(bf16, bf16)
