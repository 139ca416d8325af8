// Flash attention on Hopper's warpgroup MMAs (wgmma: sm_90a only), head dim 64, over packed QKV
// rows as attention.cu's kernels take them: qkv [B, N, 3·heads·64] -> out [B, N, heads·64],
// scores q·kᵀ·scale, softmax in f32, f32 accumulation:
//   attention_wg_{f16,bf16}_d64(qkv, out, n, heads, d, scale_log2, q_first)
//     attention_{t}_d64's parameters (d must be 64; scale_log2 = scale·log2(e)) and the first
//     query row of block 0. One warpgroup a block, 64 query rows. Grid (query tiles, heads, B),
//     128 threads, dynamic smem ATTN_WG_SMEM bytes.
//   attention_wg2_{f16,bf16}_d64(qkv, out, n, heads, d, scale_log2)
//     Two warpgroups a block, 128 query rows (64 each) sharing every K/V tile they load: half
//     the K/V traffic from L2 of 64-row blocks. Grid (ceil(N/128), heads, B), 256 threads,
//     dynamic smem ATTN_WG2_SMEM bytes. A warpgroup whose rows all lie past N only loads. The
//     launcher gives a last tile of at most 16 rows to attention_wg (q_first) instead.
//
// A warpgroup computes 64 query rows of one (image, head); warp w holds rows 16w..16w+15 of
// every m64 result, a thread rows lane/4 and lane/4 + 8 of them. Per K/V tile j of 64 keys:
// - S = Q·K_jᵀ: four m64n64k16 wgmmas reading Q [64][64] and K [64 keys][64] from shared memory
//   (both K-major in the 128-byte swizzle, see wgmma.cuh);
// - the online softmax on S in registers (log2 domain, one FFMA into ex2.approx per score, the
//   running maximum of the raw scores, keys past N masked), O rescaled;
// - O += P·V_j: four m64n64k16 wgmmas with P from registers (the S accumulators rounded to
//   16 bits are the A fragments, as in FlashAttention-2) and V [64 keys][64] from shared memory,
//   MN-major (imm-trans-b): V is stored as loaded, like K.
// Step j issues S = Q·K_jᵀ and then O += P_{j-1}·V_{j-1} as two groups back to back (the order
// of FlashAttention-3's intra-warpgroup overlap), waits for the first, starts tile j's softmax,
// waits for the second, then rescales O and packs P_j; the last tile's P·V runs after the loop.
// ptxas (13.0) places the second wait before the exponentials, so within a warpgroup only the
// row maxima run under the P·V; the SM's other warpgroups (4 at 64 rows a block, 2 blocks of 2
// at 128) fill the tensor cores during a softmax. Step j needs K_j and V_{j-1}: its copies
// (cp.async, zero-filled past N) fetch K_{j+1} and V_j into the buffers that K_{j-1} and
// V_{j-2} left, one barrier a step.
// A last tile of at most 16 or 32 keys (257 tokens: 1) runs m64n16 or m64n32 products and that
// many keys of P·V. Query rows past N compute on zero rows and are not written.
//
// A last query tile of at most 16 rows (257 tokens: one row) would pay every load and MMA of a
// full tile for them: the flash kernel's key-split path (flash.cuh: 4 warps, 16 keys of each
// K/V tile apiece, merged by warp 0) runs that block instead, on the same grid and threads.
#include "flash.cuh"
#include "wgmma.cuh"

#define ATTN_WG_ROWS 64
#define ATTN_WG_KEYS 64
#define ATTN_WG_D 64
#define ATTN_WG_THREADS 128
// Q, then K and V in two buffers each: 8 KiB a tile; + 1 KiB to align the tiles to 1024 bytes.
// The block's dynamic shared memory is the flash path's (Q and the K/V buffers in rows padded to
// 72 elements), which is more.
#define ATTN_WG_TILE_BYTES (64 * 64 * 2)
#define ATTN_WG_SMEM ((FA_BM + 4 * FA_BN) * (ATTN_WG_D + 8) * 2)
static_assert(ATTN_WG_SMEM >= 5 * ATTN_WG_TILE_BYTES + 1024, "room for the wgmma path's tiles");
// attention_wg2: two Q tiles, then the K and V buffers.
#define ATTN_WG2_SMEM (6 * ATTN_WG_TILE_BYTES + 1024)
static_assert(FA_BM == ATTN_WG_ROWS && FA_THREADS == ATTN_WG_THREADS, "one grid for both paths");

// S = Q·Kᵀ over the first N keys of a tile (N = 64, or 32 or 16 for a last tile that short).
template <typename T, int N>
__device__ __forceinline__ void wg_qk(float (&s)[N / 2], uint64_t dq, uint64_t dk);
#define WG_QK(T, TY, N, MACRO)                                                                     \
    template <>                                                                                    \
    __device__ __forceinline__ void wg_qk<T, N>(float (&s)[N / 2], uint64_t dq, uint64_t dk) {     \
        MACRO(TY, s, dq, dk);                                                                      \
    }
WG_QK(f16, "f16", 64, WGMMA_N64_SS)
WG_QK(f16, "f16", 32, WGMMA_N32_SS)
WG_QK(f16, "f16", 16, WGMMA_N16_SS)
WG_QK(bf16, "bf16", 64, WGMMA_N64_SS)
WG_QK(bf16, "bf16", 32, WGMMA_N32_SS)
WG_QK(bf16, "bf16", 16, WGMMA_N16_SS)
template <typename T>
__device__ __forceinline__ void wg_pv(float (&o)[32], const uint32_t (&a)[4], uint64_t dv);
template <> __device__ __forceinline__ void wg_pv<f16>(float (&o)[32], const uint32_t (&a)[4], uint64_t dv) {
    WGMMA_N64_RS_TRANS_B("f16", o, a, dv);
}
template <> __device__ __forceinline__ void wg_pv<bf16>(float (&o)[32], const uint32_t (&a)[4], uint64_t dv) {
    WGMMA_N64_RS_TRANS_B("bf16", o, a, dv);
}

// Step j of the pipeline for a tile of KEYS keys (64, or the 32 or 16 a short last tile needs:
// fewer MMAs) at key_base; TAIL: keys at and past n are masked. Issues S = Q·Kᵀ (K at dk) and,
// when PV, O += P·V of the previous tile (P in p, V at dv); computes the tile's softmax (the
// running maxima and sums of rows g and g + 8 of the warp's 16); once the P·V has retired,
// rescales O and packs the tile's probabilities into p (its first KEYS / 16 steps of 16 keys).
template <typename T, int KEYS, bool TAIL, bool PV>
__device__ __forceinline__ void wg_step(float (&o)[32], uint32_t (&p)[4][4], float& m0, float& m1, float& l0,
                                        float& l1, uint64_t dq, uint64_t dk, uint64_t dv, int key_base,
                                        int n, int q, float scale_log2) {
    constexpr int S = KEYS / 2; // accumulators of S a thread holds
    float s[S];
#pragma unroll
    for (int i = 0; i < S; i++) s[i] = 0.0f;
    fence_accumulators(s);
    fence_accumulators(o);
    // P's registers are the P·V's A operand: written before the fence (FlashAttention-3 fences
    // them too).
    if (PV) fence_fragments(p);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < ATTN_WG_D / 16; kk++) wg_qk<T, KEYS>(s, dq + 2 * kk, dk + 2 * kk);
    wgmma_commit();
    if (PV) {
#pragma unroll
        for (int kk = 0; kk < ATTN_WG_KEYS / 16; kk++) wg_pv<T>(o, p[kk], dv + 128 * kk);
        wgmma_commit();
        wgmma_wait<1>();
    } else {
        wgmma_wait<0>();
    }
    fence_accumulators(s);

    // Element 4j + e: key 8j + 2q + (e % 2), row g + 8·(e >= 2).
    if (TAIL) {
        const int key0 = key_base + 2 * q;
#pragma unroll
        for (int i = 0; i < S; i++)
            if (key0 + 8 * (i >> 2) + (i & 1) >= n) s[i] = -INFINITY;
    }
    float mx0 = m0, mx1 = m1;
#pragma unroll
    for (int jj = 0; jj < S / 4; jj++) {
        mx0 = fmaxf(mx0, fmaxf(s[4 * jj], s[4 * jj + 1]));
        mx1 = fmaxf(mx1, fmaxf(s[4 * jj + 2], s[4 * jj + 3]));
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    const float ms0 = mx0 * scale_log2, ms1 = mx1 * scale_log2;
    const float alpha0 = ex2_approx(fmaf(m0, scale_log2, -ms0));
    const float alpha1 = ex2_approx(fmaf(m1, scale_log2, -ms1));
    m0 = mx0;
    m1 = mx1;
    float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
    for (int jj = 0; jj < S / 4; jj++) {
        s[4 * jj] = ex2_approx(fmaf(s[4 * jj], scale_log2, -ms0));
        s[4 * jj + 1] = ex2_approx(fmaf(s[4 * jj + 1], scale_log2, -ms0));
        s[4 * jj + 2] = ex2_approx(fmaf(s[4 * jj + 2], scale_log2, -ms1));
        s[4 * jj + 3] = ex2_approx(fmaf(s[4 * jj + 3], scale_log2, -ms1));
        sum0 += s[4 * jj] + s[4 * jj + 1];
        sum1 += s[4 * jj + 2] + s[4 * jj + 3];
    }
    l0 = l0 * alpha0 + sum0;
    l1 = l1 * alpha1 + sum1;

    // The previous tile's P·V has retired: O and p are this thread's again.
    if (PV) {
        wgmma_wait<0>();
        fence_accumulators(o);
        fence_fragments(p);
    }
#pragma unroll
    for (int jj = 0; jj < 8; jj++) {
        o[4 * jj] *= alpha0;
        o[4 * jj + 1] *= alpha0;
        o[4 * jj + 2] *= alpha1;
        o[4 * jj + 3] *= alpha1;
    }
    // P's A fragment for keys 16kk.. is S's columns 16kk..16kk+15, accumulator chunks 2kk
    // (columns 2q, 2q+1) and 2kk + 1 (columns 8 + 2q, 8 + 2q + 1).
#pragma unroll
    for (int kk = 0; kk < KEYS / 16; kk++) {
        p[kk][0] = pack2<T>(s[8 * kk], s[8 * kk + 1]);
        p[kk][1] = pack2<T>(s[8 * kk + 2], s[8 * kk + 3]);
        p[kk][2] = pack2<T>(s[8 * kk + 4], s[8 * kk + 5]);
        p[kk][3] = pack2<T>(s[8 * kk + 6], s[8 * kk + 7]);
    }
}

// The last tile's O += P·V, over its KEYS keys (V at dv), awaited.
template <typename T, int KEYS>
__device__ __forceinline__ void wg_last_pv(float (&o)[32], uint32_t (&p)[4][4], uint64_t dv) {
    fence_accumulators(o);
    fence_fragments(p);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < KEYS / 16; kk++) wg_pv<T>(o, p[kk], dv + 128 * kk);
    wgmma_commit();
    wgmma_wait<0>();
    fence_accumulators(o);
    fence_fragments(p);
}

// A compile-time flag passed as a value (to a generic lambda).
template <bool V> struct Flag {
    static constexpr bool value = V;
};

// The block of WGS warpgroups (1: attention_wg, 2: attention_wg2) whose first query row is
// q_first + blockIdx.x·64·WGS; warpgroup w takes the 64 rows from q0 + 64w.
template <typename T, int WGS>
__device__ __forceinline__ void attention_wg(const T* __restrict__ qkv, T* __restrict__ out, int n,
                                             int heads, float scale_log2, int q_first) {
    constexpr int D = ATTN_WG_D;
    constexpr int THREADS = WGS * ATTN_WG_THREADS;
    extern __shared__ uint8_t smem_raw[];
    const uint32_t raw = smem_addr(smem_raw);
    const uint32_t sq = (raw + 1023u) & ~1023u;             // [WGS] Q tiles
    const uint32_t sk = sq + WGS * ATTN_WG_TILE_BYTES;      // [2] K tiles
    const uint32_t sv = sk + 2 * ATTN_WG_TILE_BYTES;        // [2] V tiles

    const int wg = threadIdx.x >> 7;
    const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
    const int g = lane >> 2, q = lane & 3;
    const int head = blockIdx.y, img = blockIdx.z;
    const int q0 = q_first + blockIdx.x * WGS * ATTN_WG_ROWS;
    const int hd = heads * D;
    const long ld = 3L * hd;
    const T* base = qkv + (long)img * n * ld + (long)head * D;
    const T* kbase = base + hd;
    const T* vbase = base + 2 * hd;
    const int tiles = (n + ATTN_WG_KEYS - 1) / ATTN_WG_KEYS;
    if (WGS == 1 && n - q0 <= 16) {
        flash_attention<T, ATTN_WG_D, 1>(qkv, out, n, heads, ATTN_WG_D, scale_log2, q0);
        return;
    }

#pragma unroll
    for (int w = 0; w < WGS; w++) {
        const int rows = q0 + ATTN_WG_ROWS * w; // a tile wholly past n is zero-filled
        load_sw128_tile<64, THREADS>(sq + w * ATTN_WG_TILE_BYTES, base + (long)(rows < n ? rows : 0) * ld,
                                     ld, n - rows);
    }
    load_sw128_tile<64, THREADS>(sk, kbase, ld, n);
    cp_async_commit();
    // This warpgroup has query rows below n (else it only loads; one alone always has).
    const bool live = WGS == 1 || q0 + ATTN_WG_ROWS * wg < n;

    // Accumulator fragments (m64n64): element 4j + e is row g + 8·(e >= 2) of the warp's 16,
    // column 8j + 2q + (e % 2).
    float o[32];
#pragma unroll
    for (int i = 0; i < 32; i++) o[i] = 0.0f;
    uint32_t p[4][4];
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    const uint64_t dq = sw128_desc(sq + wg * ATTN_WG_TILE_BYTES);

    for (int j = 0; j < tiles; j++) {
        // K_j and V_{j-1} have landed, and every warpgroup is done with step j - 1: K_{j-1}'s and
        // V_{j-2}'s buffers are free.
        cp_async_wait<0>();
        fence_proxy_async();
        __syncthreads();
        const long key_base = (long)j * ATTN_WG_KEYS, next = key_base + ATTN_WG_KEYS;
        if (j + 1 < tiles)
            load_sw128_tile<64, THREADS>(sk + ((j + 1) & 1) * ATTN_WG_TILE_BYTES, kbase + next * ld, ld,
                                         n - (int)next);
        load_sw128_tile<64, THREADS>(sv + (j & 1) * ATTN_WG_TILE_BYTES, vbase + key_base * ld, ld,
                                     n - (int)key_base);
        cp_async_commit();

        const uint64_t dk = sw128_desc(sk + (j & 1) * ATTN_WG_TILE_BYTES);
        const uint64_t dv = sw128_desc(sv + ((j + 1) & 1) * ATTN_WG_TILE_BYTES); // V_{j-1}
        const int kb = (int)key_base, left = n - kb;
        // Step j on a tile of 64 keys, or the 16 or 32 a short last tile needs (TAIL: masked);
        // with the previous tile's P·V (PV) from the second step on.
        auto step = [&](auto pv) {
            constexpr bool PV = decltype(pv)::value;
#define WG_STEP(KEYS, TAIL) \
    wg_step<T, KEYS, TAIL, PV>(o, p, m0, m1, l0, l1, dq, dk, dv, kb, n, q, scale_log2)
            if (left <= 16) WG_STEP(16, true);
            else if (left <= 32) WG_STEP(32, true);
            else if (left < ATTN_WG_KEYS) WG_STEP(64, true);
            else WG_STEP(64, false);
#undef WG_STEP
        };
        if (!live) {
        } else if (j == 0) {
            step(Flag<false>());
        } else {
            step(Flag<true>());
        }
    }
    // The last tile's V.
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();
    if (!live) return;
    const int left = n - (tiles - 1) * ATTN_WG_KEYS;
    const uint64_t dv = sw128_desc(sv + ((tiles - 1) & 1) * ATTN_WG_TILE_BYTES);
    if (left <= 16) wg_last_pv<T, 16>(o, p, dv);
    else if (left <= 32) wg_last_pv<T, 32>(o, p, dv);
    else wg_last_pv<T, 64>(o, p, dv);

    float t0 = l0, t1 = l1;
    t0 += __shfl_xor_sync(0xffffffffu, t0, 1);
    t0 += __shfl_xor_sync(0xffffffffu, t0, 2);
    t1 += __shfl_xor_sync(0xffffffffu, t1, 1);
    t1 += __shfl_xor_sync(0xffffffffu, t1, 2);
    const float inv0 = 1.0f / t0, inv1 = 1.0f / t1;
    const int r0 = q0 + ATTN_WG_ROWS * wg + warp * 16 + g, r1 = r0 + 8;
    T* obase = out + (long)img * n * hd + (long)head * D + 2 * q;
#pragma unroll
    for (int jj = 0; jj < 8; jj++) {
        if (r0 < n)
            *reinterpret_cast<uint32_t*>(obase + (long)r0 * hd + 8 * jj) =
                pack2<T>(o[4 * jj] * inv0, o[4 * jj + 1] * inv0);
        if (r1 < n)
            *reinterpret_cast<uint32_t*>(obase + (long)r1 * hd + 8 * jj) =
                pack2<T>(o[4 * jj + 2] * inv1, o[4 * jj + 3] * inv1);
    }
}

#define ATTENTION_WG(name, T)                                                                      \
    extern "C" __global__ void __launch_bounds__(ATTN_WG_THREADS, 4)                               \
        attention_wg_##name##_d64(const T* qkv, T* out, int n, int heads, int d, float scale_log2,  \
                                  int q_first) {                                                   \
        attention_wg<T, 1>(qkv, out, n, heads, scale_log2, q_first);                               \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(2 * ATTN_WG_THREADS, 2)                           \
        attention_wg2_##name##_d64(const T* qkv, T* out, int n, int heads, int d,                  \
                                   float scale_log2) {                                             \
        attention_wg<T, 2>(qkv, out, n, heads, scale_log2, 0);                                     \
    }
ATTENTION_WG(f16, f16)
ATTENTION_WG(bf16, bf16)
