// Multi-head softmax attention over packed QKV rows: qkv [B, N, 3·heads·d] (each row [q | k | v],
// head j at columns j·d..(j+1)·d of each part) -> out [B, N, heads·d]; scores q·kᵀ·scale.
//
//   attention_{f16,bf16}_d{16,32,64,96,128}  flash attention on tensor cores (mma.sync m16n8k16,
//       f32 accumulation, online softmax in f32). One block = 4 warps = 64 query rows of one
//       (image, head); K/V tiles of 64 keys double-buffered in shared memory with cp.async. The
//       suffix is the head dim padded to a multiple of 16 (any d that is a multiple of 8, d <= pad).
//       Grid (ceil(N/64), heads, B), 128 threads, dynamic shared memory 320·(pad + 8)·2 bytes.
//       The last K/V tile skips its 16-key chunks past N, and warps whose query rows all lie
//       past N only load. A last query tile of at most 16 rows (N = 257: one row; 261: five)
//       splits each K/V tile's keys across its 4 warps instead, and warp 0 merges them.
//       Softmax exponents: one FFMA into ex2.approx.ftz each.
//   attention_{f16,bf16}_d{16,32,64}_r128  the same with two m-tiles of 16 rows per warp: 128
//       query rows per block, each K/V fragment read from shared memory feeding twice the MMAs.
//       Grid (ceil(N/128), heads, B), 128 threads, dynamic shared memory 384·(pad + 8)·2 bytes.
//       Opt-in (DINOV2_ATTENTION=r128): at 253 registers two blocks fit an SM, and on an H200 at
//       257 tokens, d 64, they ran 12% slower than the 64-row kernels (477 against 424 us).
//   attention_f32   the f32 path: SIMT, 16 query rows per block (4 per warp), 32-key tiles, d <= 128.
//       Grid (ceil(N/16), heads, B), 128 threads.
//   softmax_rows_{f32,f16,bf16}  the softmax of the path that also writes the f32 probabilities
//       [B, heads, N, N], between two cuBLAS products (dinov2-kernels' probs.rs): one warp per
//       row, in place, plus a copy in the storage type. Grid ceil(rows/4), 128 threads.
#include "flash.cuh"

// attention_{name}_d{DP}: one m-tile per warp (64 rows per block), the default; _r128: two
// (128 rows per block, each K/V fragment feeding twice the MMAs), for DP <= 64 where the
// registers allow; opt-in.
#define FLASH(name, T, DP)                                                                         \
    extern "C" __global__ void __launch_bounds__(FA_THREADS)                                       \
        attention_##name##_d##DP(const T* qkv, T* out, int n, int heads, int d,                   \
                                 float scale_log2) {                                               \
        flash_attention<T, DP, 1>(qkv, out, n, heads, d, scale_log2, blockIdx.x * FA_BM);          \
    }
#define FLASH_R128(name, T, DP)                                                                    \
    extern "C" __global__ void __launch_bounds__(FA_THREADS)                                       \
        attention_##name##_d##DP##_r128(const T* qkv, T* out, int n, int heads, int d,            \
                                        float scale_log2) {                                        \
        flash_attention<T, DP, 2>(qkv, out, n, heads, d, scale_log2, blockIdx.x * 2 * FA_BM);      \
    }

FLASH(f16, f16, 16)
FLASH(f16, f16, 32)
FLASH(f16, f16, 64)
FLASH(f16, f16, 96)
FLASH(f16, f16, 128)
FLASH(bf16, bf16, 16)
FLASH(bf16, bf16, 32)
FLASH(bf16, bf16, 64)
FLASH(bf16, bf16, 96)
FLASH(bf16, bf16, 128)
FLASH_R128(f16, f16, 16)
FLASH_R128(f16, f16, 32)
FLASH_R128(f16, f16, 64)
FLASH_R128(bf16, bf16, 16)
FLASH_R128(bf16, bf16, 32)
FLASH_R128(bf16, bf16, 64)

// ---------------------------------------------------------------------------------------------
// f32 attention (SIMT, online softmax with accurate expf).

#define F32_BQ 16
#define F32_BK 32
#define DMAX 128

extern "C" __global__ void __launch_bounds__(128)
    attention_f32(const float* __restrict__ qkv, float* __restrict__ out, int n, int heads, int d,
                  float scale) {
    __shared__ float sQ[F32_BQ][DMAX];
    __shared__ float sK[F32_BK][DMAX + 1];
    __shared__ float sV[F32_BK][DMAX];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int head = blockIdx.y, img = blockIdx.z, q0 = blockIdx.x * F32_BQ;
    const int hd = heads * d;
    const long ld = 3L * hd;
    const float* base = qkv + (long)img * n * ld + (long)head * d;
    for (int i = threadIdx.x; i < F32_BQ * d; i += blockDim.x) {
        const int r = i / d, c = i - r * d;
        sQ[r][c] = q0 + r < n ? base[(long)(q0 + r) * ld + c] : 0.0f;
    }
    float m[4], l[4], o[4][4];
#pragma unroll
    for (int r = 0; r < 4; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int c = 0; c < 4; c++) o[r][c] = 0.0f;
    }
    for (int k0 = 0; k0 < n; k0 += F32_BK) {
        __syncthreads();
        for (int i = threadIdx.x; i < F32_BK * d; i += blockDim.x) {
            const int r = i / d, c = i - r * d;
            const bool ok = k0 + r < n;
            const long at = (long)(k0 + r) * ld + c;
            sK[r][c] = ok ? base[hd + at] : 0.0f;
            sV[r][c] = ok ? base[2 * hd + at] : 0.0f;
        }
        __syncthreads();
        const bool valid = k0 + lane < n;
#pragma unroll
        for (int rr = 0; rr < 4; rr++) {
            const float* q = sQ[warp * 4 + rr];
            float s = 0.0f;
            for (int c = 0; c < d; c++) s = fmaf(q[c], sK[lane][c], s);
            s = valid ? s * scale : -INFINITY;
            const float mx = fmaxf(m[rr], warp_max(s));
            const float alpha = expf(m[rr] - mx);
            const float p = valid ? expf(s - mx) : 0.0f;
            l[rr] = l[rr] * alpha + warp_sum(p);
            m[rr] = mx;
#pragma unroll
            for (int cc = 0; cc < 4; cc++) o[rr][cc] *= alpha;
            for (int jj = 0; jj < F32_BK; jj++) {
                const float pj = __shfl_sync(0xffffffffu, p, jj);
#pragma unroll
                for (int cc = 0; cc < 4; cc++) {
                    const int c = lane + 32 * cc;
                    if (c < d) o[rr][cc] = fmaf(pj, sV[jj][c], o[rr][cc]);
                }
            }
        }
    }
#pragma unroll
    for (int rr = 0; rr < 4; rr++) {
        const int row = q0 + warp * 4 + rr;
        if (row >= n) continue;
        const float inv = 1.0f / l[rr];
        float* orow = out + ((long)img * n + row) * hd + (long)head * d;
#pragma unroll
        for (int cc = 0; cc < 4; cc++) {
            const int c = lane + 32 * cc;
            if (c < d) orow[c] = o[rr][cc] * inv;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The softmax of the attention that also returns its probabilities. cuBLAS writes the scores
// scale·q·kᵀ into p [rows, n] (f32); this turns each row into exp(s - max) / sum in place, with
// the accurate expf as the CPU reference does (not the flash kernels' ex2.approx). pt, when not
// null, receives the same probabilities rounded to the storage type: the operand of the P·V
// product (cuBLAS multiplies operands of one type). One warp per row, 4 rows per block.

template <typename T>
__device__ __forceinline__ void softmax_rows(float* __restrict__ p, T* __restrict__ pt, int n,
                                             long rows) {
    const long row = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;  // whole warps: a row is one warp's
    const int lane = threadIdx.x & 31;
    float* r = p + row * n;
    float mx = -INFINITY;
    for (int j = lane; j < n; j += 32) mx = fmaxf(mx, r[j]);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int j = lane; j < n; j += 32) sum += expf(r[j] - mx);
    const float inv = 1.0f / warp_sum(sum);
    T* rt = pt == nullptr ? nullptr : pt + row * n;
    for (int j = lane; j < n; j += 32) {
        const float v = expf(r[j] - mx) * inv;
        r[j] = v;
        if (rt != nullptr) rt[j] = from_f32<T>(v);
    }
}

#define SOFTMAX_ROWS(name, T)                                                                      \
    extern "C" __global__ void __launch_bounds__(128)                                              \
        softmax_rows_##name(float* p, T* pt, int n, long rows) {                                   \
        softmax_rows<T>(p, pt, n, rows);                                                           \
    }

DINOV2_FOR_EACH_DTYPE(SOFTMAX_ROWS)
