// GEMMs with fused epilogues on Hopper's warpgroup MMAs (wgmma: sm_90a only, so this file builds
// into an sm_90a cubin, with no embedded PTX; other GPUs use cuBLAS):
//   gemm_{f16,bf16}_{id,gelu,gelu_tanh}_n{128,256}(x, w, bias, bias_f32, y, m, n, k)
//     y[m, n] = act(x[m, k] · w[n, k]ᵀ + bias[n])
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

template <typename T> __device__ __forceinline__ float bias_at(const void* bias, int bias_f32, int col) {
    if (!bias) return 0.0f;
    return bias_f32 ? static_cast<const float*>(bias)[col] : to_f32(static_cast<const T*>(bias)[col]);
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
        fence_accumulators(d);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < GM_BK / 16; kk++) wgmma_k16<T, BN>(d, da + 2 * kk, db + 2 * kk);
        wgmma_commit();
        const int next = step + LOOKAHEAD;
        if (next < steps) load_step(next, next % STAGES);
        cp_async_commit();
        wgmma_wait<WAIT>();
        fence_accumulators(d);
    }
    wgmma_wait<0>();
    fence_accumulators(d);
    cp_async_wait<0>();
    // Every warpgroup is done reading the stages: the output tile goes there, rows of BN·2 bytes
    // padded by 16 (a row starts 4 banks after the previous one, so the 8 rows of a fragment store
    // hit 32 different banks).
    __syncthreads();
    constexpr int ROW_BYTES = BN * 2 + 16;
    const int warp = (tid >> 5) & 3, lane = tid & 31;
    // Accumulator fragment of m64nNk16: d[4j + e] is row 16·warp + lane/4 (+ 8 for e >= 2),
    // column 8j + 2·(lane % 4) + (e % 2).
    const int row = wg * 64 + warp * 16 + (lane >> 2);
#pragma unroll
    for (int j = 0; j < BN / 8; j++) {
        const int col = j * 8 + (lane & 3) * 2;
        const float b0 = bias_at<T>(bias, bias_f32, n0 + col);
        const float b1 = bias_at<T>(bias, bias_f32, n0 + col + 1);
        *reinterpret_cast<uint32_t*>(tile + row * ROW_BYTES + col * 2) =
            pack2<T>(activate(d[4 * j] + b0, ACT), activate(d[4 * j + 1] + b1, ACT));
        *reinterpret_cast<uint32_t*>(tile + (row + 8) * ROW_BYTES + col * 2) =
            pack2<T>(activate(d[4 * j + 2] + b0, ACT), activate(d[4 * j + 3] + b1, ACT));
    }
    __syncthreads();
    constexpr int CHUNKS = BN / 8;
#pragma unroll 4
    for (int i = tid; i < GM_BM * CHUNKS; i += GM_THREADS) {
        const int r = i / CHUNKS, ch = i % CHUNKS;
        if (m0 + r < m) {
            *reinterpret_cast<uint4*>(y + (size_t)(m0 + r) * n + n0 + ch * 8) =
                *reinterpret_cast<const uint4*>(tile + r * ROW_BYTES + ch * 16);
        }
    }
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
#define GEMM_ACTS(name, T)                                                                         \
    GEMM_SHAPES(name, T, id, ACT_IDENTITY)                                                         \
    GEMM_SHAPES(name, T, gelu, ACT_GELU)                                                           \
    GEMM_SHAPES(name, T, gelu_tanh, ACT_GELU_TANH)
GEMM_ACTS(f16, f16)
GEMM_ACTS(bf16, bf16)
