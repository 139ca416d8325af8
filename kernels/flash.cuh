// Flash attention on tensor cores (mma.sync m16n8k16, sm_80+), f16/bf16, the device code of
// attention.cu's attention_{t}_d{pad}[_r128] kernels (see there for the kernels and their
// geometry). A header so that attention_sm90a.cu can run its key-split path for the last query
// tile of at most 16 rows. Its copy helpers are its own (fa_cp_async*: no "memory" clobbers,
// as measured); the wgmma kernels' are in wgmma.cuh.
#pragma once

#include "common.cuh"

// ---------------------------------------------------------------------------------------------
// PTX helpers (sm_80+).

// 16-byte asynchronous copy global -> shared; zero-fills the destination when !valid.
__device__ __forceinline__ void fa_cp_async16(uint32_t dst, const void* src, bool valid) {
    const int bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void fa_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void fa_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

template <typename T> struct Mma;

template <> struct Mma<f16> {
    // c += a · b for one m16n8k16 tile (row-major A, column-major B, f32 C).
    static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                               uint32_t b1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
                     "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    // Two f32 values as one register of two halves (x in the low half).
    static __device__ __forceinline__ uint32_t pack(float x, float y) { return pack2<f16>(x, y); }
};

template <> struct Mma<bf16> {
    static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                               uint32_t b1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                     "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ uint32_t pack(float x, float y) { return pack2<bf16>(x, y); }
};

// ---------------------------------------------------------------------------------------------
// Flash attention, f16/bf16.

#define FA_BM 64
#define FA_BN 64
#define FA_THREADS 128

// Copies rows row0..row0+ROWS (row stride ld) of one head's columns into a [ROWS][DP + 8] tile,
// zero-filling rows >= n and columns >= d. Each thread copies the 16-byte chunks c = tid + i·128
// (i < ROWS·CPR / 128, unrolled): where 128 is a multiple of CPR (every DP but 96) a thread keeps
// one column and steps 128 / CPR rows at a time, so its addresses are one add apart.
template <typename T, int DP, int ROWS>
__device__ __forceinline__ void fa_load_tile(T* dst, const T* src, int row0, int n, int d, long ld) {
    constexpr int LDS = DP + 8, CPR = DP / 8, CHUNKS = ROWS * CPR;
    static_assert(CHUNKS % FA_THREADS == 0, "a tile is whole passes of the block");
    if constexpr (FA_THREADS % CPR == 0) {
        constexpr int RSTEP = FA_THREADS / CPR;
        const int r = threadIdx.x / CPR, col = (threadIdx.x % CPR) * 8;
        const T* g = src + (long)(row0 + r) * ld + col;
        const uint32_t s = smem_addr(dst + r * LDS + col);
#pragma unroll
        for (int i = 0; i < CHUNKS / FA_THREADS; i++) {
            const bool ok = row0 + r + i * RSTEP < n && col < d;
            fa_cp_async16(s + i * RSTEP * LDS * (int)sizeof(T), ok ? g + i * RSTEP * ld : src, ok);
        }
    } else {
#pragma unroll
        for (int i = 0; i < CHUNKS / FA_THREADS; i++) {
            const int c = threadIdx.x + i * FA_THREADS;
            const int r = c / CPR, col = (c % CPR) * 8;
            const bool ok = row0 + r < n && col < d;
            fa_cp_async16(smem_addr(dst + r * LDS + col), ok ? src + (long)(row0 + r) * ld + col : src, ok);
        }
    }
}

// KEYS keys of a K/V tile (all FA_BN, or the 16 of one warp in a key-split block; k and v point
// at the first) through the online softmax for a warp's MT m-tiles of 16 query rows: S = Q·Kᵀ,
// the running max and sum (log2 domain; per m-tile, rows g (elements 0, 1) and g + 8 (elements
// 2, 3)), O += P·V. Each K and V fragment loaded from shared memory feeds all MT m-tiles. TAIL:
// the keys end past n, so keys >= n are masked and the 16-key chunks wholly past n are skipped
// (at 257 tokens the last tile holds one key: one chunk of four). key_base < n.
template <typename T, int DP, int MT, bool TAIL, int KEYS>
__device__ __forceinline__ void fa_tile(const uint32_t (&qf)[MT][DP / 16][4],
                                        float (&o)[MT][DP / 8][4], float (&m0)[MT],
                                        float (&m1)[MT], float (&l0)[MT], float (&l1)[MT],
                                        const T* k, const T* v, int key_base, int n, int lane,
                                        float scale_log2) {
    constexpr int LDS = DP + 8;
    constexpr int KSTEPS = DP / 16;   // k-steps of S = Q·Kᵀ
    constexpr int STILES = KEYS / 8;  // n-tiles of S (keys)
    constexpr int OTILES = DP / 8;    // n-tiles of O (head dims)
    const int tig = lane & 3;
    const int valid = n - key_base; // keys of this tile below n (>= FA_BN unless TAIL)

    float s[MT][STILES][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int t = 0; t < STILES; t++) s[mt][t][0] = s[mt][t][1] = s[mt][t][2] = s[mt][t][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KSTEPS; kk++) {
#pragma unroll
        for (int np = 0; np < STILES / 2; np++) {
            if (TAIL && np * 16 >= valid) continue;
            const int mat = lane >> 3;
            const int key = np * 16 + (lane & 7) + (mat >> 1) * 8;
            const int dim = kk * 16 + (mat & 1) * 8;
            uint32_t b[4];
            ldmatrix_x4(b, smem_addr(k + key * LDS + dim));
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                Mma<T>::run(s[mt][2 * np], qf[mt][kk], b[0], b[1]);
                Mma<T>::run(s[mt][2 * np + 1], qf[mt][kk], b[2], b[3]);
            }
        }
    }

    // The running maxima are of the raw scores (scale_log2 > 0 keeps the order); each exponent is
    // one FFMA, x·scale_log2 - max·scale_log2, into ex2.approx.
    const int key0 = key_base + tig * 2;
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        float mx0 = m0[mt], mx1 = m1[mt];
#pragma unroll
        for (int t = 0; t < STILES; t++) {
            if (TAIL) {
#pragma unroll
                for (int e = 0; e < 4; e++)
                    if (key0 + t * 8 + (e & 1) >= n) s[mt][t][e] = -INFINITY;
            }
            mx0 = fmaxf(mx0, fmaxf(s[mt][t][0], s[mt][t][1]));
            mx1 = fmaxf(mx1, fmaxf(s[mt][t][2], s[mt][t][3]));
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float ms0 = mx0 * scale_log2, ms1 = mx1 * scale_log2;
        const float alpha0 = ex2_approx(fmaf(m0[mt], scale_log2, -ms0));
        const float alpha1 = ex2_approx(fmaf(m1[mt], scale_log2, -ms1));
        m0[mt] = mx0;
        m1[mt] = mx1;
        float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
        for (int t = 0; t < STILES; t++) {
            s[mt][t][0] = ex2_approx(fmaf(s[mt][t][0], scale_log2, -ms0));
            s[mt][t][1] = ex2_approx(fmaf(s[mt][t][1], scale_log2, -ms0));
            s[mt][t][2] = ex2_approx(fmaf(s[mt][t][2], scale_log2, -ms1));
            s[mt][t][3] = ex2_approx(fmaf(s[mt][t][3], scale_log2, -ms1));
            sum0 += s[mt][t][0] + s[mt][t][1];
            sum1 += s[mt][t][2] + s[mt][t][3];
        }
        l0[mt] = l0[mt] * alpha0 + sum0;
        l1[mt] = l1[mt] * alpha1 + sum1;
#pragma unroll
        for (int t = 0; t < OTILES; t++) {
            o[mt][t][0] *= alpha0;
            o[mt][t][1] *= alpha0;
            o[mt][t][2] *= alpha1;
            o[mt][t][3] *= alpha1;
        }
    }

    // O += P·V: P straight from the S accumulators (their layout is the A-fragment layout).
#pragma unroll
    for (int kk = 0; kk < KEYS / 16; kk++) {
        if (TAIL && kk * 16 >= valid) continue; // P is zero there
        uint32_t a[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            a[mt][0] = Mma<T>::pack(s[mt][2 * kk][0], s[mt][2 * kk][1]);
            a[mt][1] = Mma<T>::pack(s[mt][2 * kk][2], s[mt][2 * kk][3]);
            a[mt][2] = Mma<T>::pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
            a[mt][3] = Mma<T>::pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int dp = 0; dp < DP / 16; dp++) {
            const int mat = lane >> 3;
            const int key = kk * 16 + (lane & 7) + (mat & 1) * 8;
            const int dim = dp * 16 + (mat >> 1) * 8;
            uint32_t b[4];
            ldmatrix_x4_trans(b, smem_addr(v + key * LDS + dim));
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                Mma<T>::run(o[mt][2 * dp], a[mt], b[0], b[1]);
                Mma<T>::run(o[mt][2 * dp + 1], a[mt], b[2], b[3]);
            }
        }
    }
}

// A block of 4 warps covers FA_BM·MT query rows of one (image, head): warp w the MT m-tiles of
// 16 rows from w·16·MT. Key split (MT = 1): a block with at most 16 query rows below n (the last
// query tile at 257 or 261 tokens holds one or five) would leave three warps idle; there every
// warp takes the block's first 16 rows against its own 16 keys of each K/V tile, 16·w..16·w+16,
// and warp 0 merges the four partial softmaxes. q0: the block's first query row (the kernels:
// blockIdx.x · FA_BM · MT).
template <typename T, int DP, int MT>
__device__ __forceinline__ void flash_attention(const T* __restrict__ qkv, T* __restrict__ out,
                                                int n, int heads, int d, float scale_log2, int q0) {
    constexpr int LDS = DP + 8;        // padded row: conflict-free ldmatrix
    constexpr int KSTEPS = DP / 16;    // k-steps of S = Q·Kᵀ
    constexpr int OTILES = DP / 8;     // n-tiles of O (head dims)
    constexpr int BQ = FA_BM * MT;     // query rows per block
    extern __shared__ __align__(16) unsigned char fa_smem[];
    T* sQ = reinterpret_cast<T*>(fa_smem);  // [BQ][LDS]
    T* sK = sQ + BQ * LDS;                  // [2][64][LDS]
    T* sV = sK + 2 * FA_BN * LDS;           // [2][64][LDS]

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, tig = lane & 3;
    const int head = blockIdx.y, img = blockIdx.z;
    const int wrow = warp * 16 * MT; // this warp's first row in the block
    const int hd = heads * d;
    const long ld = 3L * hd;
    const T* base = qkv + (long)img * n * ld + (long)head * d;
    const T* kbase = base + hd;
    const T* vbase = base + 2 * hd;
    const int ntiles = (n + FA_BN - 1) / FA_BN;
    const bool split = MT == 1 && n - q0 <= 16;
    const int qrow = split ? 0 : wrow; // the first query row of this warp's m-tiles
    // A warp whose query rows all lie past n (in the last query tile) only helps load.
    const bool live = split || q0 + wrow < n;

    fa_load_tile<T, DP, BQ>(sQ, base, q0, n, d, ld);
    fa_load_tile<T, DP, FA_BN>(sK, kbase, 0, n, d, ld);
    fa_load_tile<T, DP, FA_BN>(sV, vbase, 0, n, d, ld);
    fa_cp_async_commit();

    uint32_t qf[MT][KSTEPS][4];
    float o[MT][OTILES][4];
    float m0[MT], m1[MT], l0[MT], l1[MT];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int t = 0; t < OTILES; t++) o[mt][t][0] = o[mt][t][1] = o[mt][t][2] = o[mt][t][3] = 0.0f;
        m0[mt] = m1[mt] = -INFINITY;
        l0[mt] = l1[mt] = 0.0f;
    }

    for (int j = 0; j < ntiles; j++) {
        const int buf = j & 1;
        if (j + 1 < ntiles) {
            fa_load_tile<T, DP, FA_BN>(sK + (buf ^ 1) * FA_BN * LDS, kbase, (j + 1) * FA_BN, n, d, ld);
            fa_load_tile<T, DP, FA_BN>(sV + (buf ^ 1) * FA_BN * LDS, vbase, (j + 1) * FA_BN, n, d, ld);
            fa_cp_async_commit();
            fa_cp_async_wait<1>();
        } else {
            fa_cp_async_wait<0>();
        }
        __syncthreads();
        if (live) {
            if (j == 0) {
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
#pragma unroll
                    for (int kk = 0; kk < KSTEPS; kk++)
                        ldmatrix_x4(qf[mt][kk], smem_addr(sQ + (qrow + mt * 16 + (lane & 15)) * LDS +
                                                          kk * 16 + (lane >> 4) * 8));
            }
            const T* k = sK + buf * FA_BN * LDS;
            const T* v = sV + buf * FA_BN * LDS;
            if (split) {
                const int c0 = warp * 16, key_base = j * FA_BN + c0;
                if (key_base + 16 > n) {
                    if (key_base < n)
                        fa_tile<T, DP, MT, true, 16>(qf, o, m0, m1, l0, l1, k + c0 * LDS,
                                                     v + c0 * LDS, key_base, n, lane, scale_log2);
                } else {
                    fa_tile<T, DP, MT, false, 16>(qf, o, m0, m1, l0, l1, k + c0 * LDS,
                                                  v + c0 * LDS, key_base, n, lane, scale_log2);
                }
            } else if ((j + 1) * FA_BN > n) {
                fa_tile<T, DP, MT, true, FA_BN>(qf, o, m0, m1, l0, l1, k, v, j * FA_BN, n, lane,
                                                scale_log2);
            } else {
                fa_tile<T, DP, MT, false, FA_BN>(qf, o, m0, m1, l0, l1, k, v, j * FA_BN, n, lane,
                                                 scale_log2);
            }
        }
        __syncthreads();
    }
    if (!live) return;
    if (split) {
        // Warps 1-3 hand warp 0 their state through the (now free) tiles, element-major [3][PER][32]
        // (their fragment layouts agree lane for lane); warp 0 rescales each to the common max.
        constexpr int PER = OTILES * 4 + 4;
        float* xs = reinterpret_cast<float*>(fa_smem);
        if (warp > 0) {
            float* p = xs + (warp - 1) * PER * 32 + lane;
#pragma unroll
            for (int t = 0; t < OTILES; t++)
#pragma unroll
                for (int e = 0; e < 4; e++) p[(t * 4 + e) * 32] = o[0][t][e];
            p[(OTILES * 4) * 32] = m0[0];
            p[(OTILES * 4 + 1) * 32] = m1[0];
            p[(OTILES * 4 + 2) * 32] = l0[0];
            p[(OTILES * 4 + 3) * 32] = l1[0];
        }
        __syncthreads();
        if (warp > 0) return;
        // Key 0 is warp 0's, so its maxima are finite; a warp that saw no key below n has
        // m = -inf, l = 0, O = 0 and weight 0.
        for (int w = 0; w < 3; w++) {
            const float* p = xs + w * PER * 32 + lane;
            const float mw0 = p[(OTILES * 4) * 32], mw1 = p[(OTILES * 4 + 1) * 32];
            const float mx0 = fmaxf(m0[0], mw0), mx1 = fmaxf(m1[0], mw1);
            const float ms0 = mx0 * scale_log2, ms1 = mx1 * scale_log2;
            const float a0 = ex2_approx(fmaf(m0[0], scale_log2, -ms0));
            const float a1 = ex2_approx(fmaf(m1[0], scale_log2, -ms1));
            const float b0 = ex2_approx(fmaf(mw0, scale_log2, -ms0));
            const float b1 = ex2_approx(fmaf(mw1, scale_log2, -ms1));
            m0[0] = mx0;
            m1[0] = mx1;
            l0[0] = l0[0] * a0 + p[(OTILES * 4 + 2) * 32] * b0;
            l1[0] = l1[0] * a1 + p[(OTILES * 4 + 3) * 32] * b1;
#pragma unroll
            for (int t = 0; t < OTILES; t++) {
                o[0][t][0] = o[0][t][0] * a0 + p[(t * 4) * 32] * b0;
                o[0][t][1] = o[0][t][1] * a0 + p[(t * 4 + 1) * 32] * b0;
                o[0][t][2] = o[0][t][2] * a1 + p[(t * 4 + 2) * 32] * b1;
                o[0][t][3] = o[0][t][3] * a1 + p[(t * 4 + 3) * 32] * b1;
            }
        }
    }

    T* obase = out + (long)img * n * hd + (long)head * d + tig * 2;
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        float s0 = l0[mt], s1 = l1[mt];
        s0 += __shfl_xor_sync(0xffffffffu, s0, 1);
        s0 += __shfl_xor_sync(0xffffffffu, s0, 2);
        s1 += __shfl_xor_sync(0xffffffffu, s1, 1);
        s1 += __shfl_xor_sync(0xffffffffu, s1, 2);
        const float inv0 = 1.0f / s0, inv1 = 1.0f / s1;
        const int r0 = q0 + qrow + mt * 16 + g, r1 = r0 + 8;
#pragma unroll
        for (int t = 0; t < OTILES; t++) {
            if (t * 8 < d) {
                if (r0 < n)
                    *reinterpret_cast<uint32_t*>(obase + (long)r0 * hd + t * 8) =
                        Mma<T>::pack(o[mt][t][0] * inv0, o[mt][t][1] * inv0);
                if (r1 < n)
                    *reinterpret_cast<uint32_t*>(obase + (long)r1 * hd + t * 8) =
                        Mma<T>::pack(o[mt][t][2] * inv1, o[mt][t][3] * inv1);
            }
        }
    }
}
