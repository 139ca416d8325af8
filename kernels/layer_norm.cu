// LayerNorm over the last dimension (f32 statistics, biased variance, two passes over values held in
// registers), and the fused residual update of a pre-norm block: x += gamma ⊙ branch, then
// optionally y = LayerNorm(x). The residual stream x is f32, or (the `_rx` kernels) in the
// branch's 16-bit type as transformers keeps it in f16/bf16: the sum is then rounded to that type
// and the LayerNorm normalizes the rounded values. gamma, LayerNorm weight and bias are f32.
//
// Kernels (suffix: input dtype, then output dtype when they differ):
//   layer_norm_g{2,4,8,16}_{f32,f16,bf16,f32_f16,f32_bf16}
//                                   one warp per row in 4-column groups (16-byte f32, 8-byte
//                                   f16/bf16 accesses): h % 4 == 0, h <= 128·G, aligned buffers
//   layer_norm_wide_{...}           one block per row: any h, any alignment
//   add_scaled_{f32,f16,bf16}       x += gamma ⊙ branch (branch dtype)
//   add_scaled_layer_norm_g{2,4,8,16}_{f32,f16,bf16}
//                                   the same, then y = LN(x) (y in branch dtype), as layer_norm_g*
//   add_scaled_layer_norm_wide_{...}  block per row, any h
//   add_scaled_{f16,bf16}_rx, add_scaled_layer_norm_{g2,g4,g8,g16,wide}_{f16,bf16}_rx
//                                   the same with x in the branch's type
//   row_stats_g{2,4,8,16}_{f16,bf16}, add_scaled_stats_g{2,4,8,16}_{f16,bf16}_rx
//                                   a row's (mean, M2) for a LayerNorm folded into the next GEMM
//                                   (end of this file)
#include "common.cuh"

// The LayerNorm of a row that one block reads through load(c) (values re-read from global
// memory, L1/L2), `s` being this thread's sum of its columns threadIdx.x + k·blockDim.x.
template <typename TY, typename Load>
__device__ __forceinline__ void block_normalize_row(Load load, float s, int h, float eps,
                                                    TY* __restrict__ yr,
                                                    const float* __restrict__ w,
                                                    const float* __restrict__ b) {
    __shared__ float scratch[32];
    const float mean = block_sum(s, scratch) / h;
    float q = 0.0f;
    for (int c = threadIdx.x; c < h; c += blockDim.x) {
        const float d = load(c) - mean;
        q += d * d;
    }
    const float inv = 1.0f / sqrtf(block_sum(q, scratch) / h + eps);
    for (int c = threadIdx.x; c < h; c += blockDim.x)
        yr[c] = from_f32<TY>((load(c) - mean) * inv * w[c] + b[c]);
}


// The statistics of a row that one warp holds in 4-column groups, v[i] being columns
// 4·(lane + 32·i) .. + 3 (zero past h) and `s` this lane's sum: (mean, M2), M2 the sum of the
// squared deviations from the mean (a second pass over the values in registers), each summed
// over the warp in f32. The variance is M2 / h.
template <int G>
__device__ __forceinline__ float2 warp_mean_m2(const float4 (&v)[G], float s, int lane, int h) {
    const int groups = h >> 2;
    const float mean = warp_sum(s) / h;
    float q = 0.0f;
#pragma unroll
    for (int i = 0; i < G; i++) {
        if (lane + 32 * i < groups) {
            const float dx = v[i].x - mean, dy = v[i].y - mean, dz = v[i].z - mean,
                        dw = v[i].w - mean;
            q += dx * dx + dy * dy + dz * dz + dw * dw;
        }
    }
    return make_float2(mean, warp_sum(q));
}

// The LayerNorm of a row that one warp holds as warp_mean_m2 takes it:
// y = (v - mean) / sqrt(var + eps) · w + b, written to yr.
template <int G, typename TY>
__device__ __forceinline__ void warp_normalize_row4(const float4 (&v)[G], float s, int lane,
                                                    int h, float eps, TY* __restrict__ yr,
                                                    const float* __restrict__ w,
                                                    const float* __restrict__ b) {
    const int groups = h >> 2;
    const float2 stats = warp_mean_m2<G>(v, s, lane, h);
    const float mean = stats.x;
    const float inv = 1.0f / sqrtf(stats.y / h + eps);
#pragma unroll
    for (int i = 0; i < G; i++) {
        const int c = 4 * (lane + 32 * i);
        if (lane + 32 * i < groups) {
            const float4 wv = load4(w + c), bv = load4(b + c);
            store4(yr + c, make_float4((v[i].x - mean) * inv * wv.x + bv.x,
                                       (v[i].y - mean) * inv * wv.y + bv.y,
                                       (v[i].z - mean) * inv * wv.z + bv.z,
                                       (v[i].w - mean) * inv * wv.w + bv.w));
        }
    }
}

// One warp's row xr into v in 4-column groups (zero past h, as warp_mean_m2 takes them); returns
// this lane's sum.
template <int G, typename TX>
__device__ __forceinline__ float load_row4(const TX* __restrict__ xr, int lane, int h, float4 (&v)[G]) {
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < G; i++) {
        const int c = 4 * (lane + 32 * i);
        v[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (c < h) v[i] = load4(xr + c);
        s += v[i].x + v[i].y + v[i].z + v[i].w;
    }
    return s;
}

// One row per warp (blockDim.x = 128: 4 rows per block) in 4-column groups: h % 4 == 0,
// h <= 128·G.
template <int G, typename TX, typename TY>
__device__ __forceinline__ void layer_norm_warp4(const TX* __restrict__ x, TY* __restrict__ y,
                                                 const float* __restrict__ w,
                                                 const float* __restrict__ b, int rows, int h,
                                                 float eps) {
    const int lane = threadIdx.x & 31;
    const long row = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    float4 v[G];
    const float s = load_row4<G>(x + row * h, lane, h, v);
    warp_normalize_row4<G, TY>(v, s, lane, h, eps, y + row * h, w, b);
}

// One row per block (any blockDim.x multiple of 32); values re-read from global memory (L1/L2).
template <typename TX, typename TY>
__device__ __forceinline__ void layer_norm_block(const TX* __restrict__ x, TY* __restrict__ y,
                                                 const float* __restrict__ w,
                                                 const float* __restrict__ b, int h, float eps) {
    const long row = blockIdx.x;
    const TX* xr = x + row * h;
    float s = 0.0f;
    for (int c = threadIdx.x; c < h; c += blockDim.x) s += to_f32(xr[c]);
    block_normalize_row<TY>([=](int c) { return to_f32(xr[c]); }, s, h, eps, y + row * h, w, b);
}

#define LAYER_NORM_G(name, TX, TY, G)                                                              \
    extern "C" __global__ void __launch_bounds__(128)                                              \
        layer_norm_g##G##_##name(const TX* x, TY* y, const float* w, const float* b, int rows,     \
                                 int h, float eps) {                                               \
        layer_norm_warp4<G, TX, TY>(x, y, w, b, rows, h, eps);                                     \
    }

#define LAYER_NORM(name, TX, TY)                                                                   \
    extern "C" __global__ void __launch_bounds__(1024)                                             \
        layer_norm_wide_##name(const TX* x, TY* y, const float* w, const float* b, int h,          \
                               float eps) {                                                        \
        layer_norm_block<TX, TY>(x, y, w, b, h, eps);                                              \
    }                                                                                              \
    LAYER_NORM_G(name, TX, TY, 2)                                                                  \
    LAYER_NORM_G(name, TX, TY, 4)                                                                  \
    LAYER_NORM_G(name, TX, TY, 8)                                                                  \
    LAYER_NORM_G(name, TX, TY, 16)

LAYER_NORM(f32, float, float)
LAYER_NORM(f16, f16, f16)
LAYER_NORM(bf16, bf16, bf16)
LAYER_NORM(f32_f16, float, f16)
LAYER_NORM(f32_bf16, float, bf16)


// x[r, c] += gamma[c] · branch[r, c] over rows·h elements.
template <typename TX, typename TB>
__device__ __forceinline__ void add_scaled(TX* __restrict__ x, const TB* __restrict__ branch,
                                           const float* __restrict__ gamma, long n, int h) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long)gridDim.x * blockDim.x)
        x[i] = from_f32<TX>(to_f32(x[i]) + gamma[i % h] * to_f32(branch[i]));
}

// x += gamma ⊙ branch over one warp's row (xr, br) in 4-column groups, each sum rounded to TX and
// stored; the updated values into v as load_row4 gives them; returns this lane's sum.
template <int G, typename TX, typename TB>
__device__ __forceinline__ float add_scaled_row4(TX* __restrict__ xr, const TB* __restrict__ br,
                                                 const float* __restrict__ gamma, int lane, int h,
                                                 float4 (&v)[G]) {
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < G; i++) {
        const int c = 4 * (lane + 32 * i);
        v[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (c < h) {
            const float4 xv = load4(xr + c), bv = load4(br + c), gv = load4(gamma + c);
            v[i] = round4(make_float4(xv.x + gv.x * bv.x, xv.y + gv.y * bv.y, xv.z + gv.z * bv.z,
                                      xv.w + gv.w * bv.w),
                          xr);
            store4(xr + c, v[i]);
        }
        s += v[i].x + v[i].y + v[i].z + v[i].w;
    }
    return s;
}

// x += gamma ⊙ branch, then y = LN(x): one row per warp in 4-column groups, as layer_norm_warp4.
template <int G, typename TX, typename TB>
__device__ __forceinline__ void add_scaled_ln_warp4(TX* __restrict__ x,
                                                    const TB* __restrict__ branch,
                                                    const float* __restrict__ gamma,
                                                    TB* __restrict__ y,
                                                    const float* __restrict__ w,
                                                    const float* __restrict__ b, int rows, int h,
                                                    float eps) {
    const int lane = threadIdx.x & 31;
    const long row = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    float4 v[G];
    const float s = add_scaled_row4<G>(x + row * h, branch + row * h, gamma, lane, h, v);
    warp_normalize_row4<G, TB>(v, s, lane, h, eps, y + row * h, w, b);
}

template <typename TX, typename TB>
__device__ __forceinline__ void add_scaled_ln_block(TX* __restrict__ x,
                                                    const TB* __restrict__ branch,
                                                    const float* __restrict__ gamma,
                                                    TB* __restrict__ y,
                                                    const float* __restrict__ w,
                                                    const float* __restrict__ b, int h, float eps) {
    const long row = blockIdx.x;
    TX* xr = x + row * h;
    const TB* br = branch + row * h;
    float s = 0.0f;
    // Each thread re-reads only the elements it wrote itself.
    for (int c = threadIdx.x; c < h; c += blockDim.x) {
        const TX v = from_f32<TX>(to_f32(xr[c]) + gamma[c] * to_f32(br[c]));
        xr[c] = v;
        s += to_f32(v);
    }
    block_normalize_row<TB>([=](int c) { return to_f32(xr[c]); }, s, h, eps, y + row * h, w, b);
}

// name: the branch's type; suffix: empty (x f32) or _rx (x of type TX = TB).
#define ADD_SCALED_LN_G(name, suffix, TX, TB, G)                                                   \
    extern "C" __global__ void __launch_bounds__(128) add_scaled_layer_norm_g##G##_##name##suffix( \
        TX* x, const TB* branch, const float* gamma, TB* y, const float* w, const float* b,        \
        int rows, int h, float eps) {                                                              \
        add_scaled_ln_warp4<G, TX, TB>(x, branch, gamma, y, w, b, rows, h, eps);                   \
    }

#define ADD_SCALED_X(name, suffix, TX, TB)                                                         \
    extern "C" __global__ void add_scaled_##name##suffix(TX* x, const TB* branch,                  \
                                                         const float* gamma, long n, int h) {      \
        add_scaled<TX, TB>(x, branch, gamma, n, h);                                                \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(1024) add_scaled_layer_norm_wide_##name##suffix(  \
        TX* x, const TB* branch, const float* gamma, TB* y, const float* w, const float* b,        \
        int h, float eps) {                                                                        \
        add_scaled_ln_block<TX, TB>(x, branch, gamma, y, w, b, h, eps);                            \
    }                                                                                              \
    ADD_SCALED_LN_G(name, suffix, TX, TB, 2)                                                       \
    ADD_SCALED_LN_G(name, suffix, TX, TB, 4)                                                       \
    ADD_SCALED_LN_G(name, suffix, TX, TB, 8)                                                       \
    ADD_SCALED_LN_G(name, suffix, TX, TB, 16)

#define ADD_SCALED(name, TB) ADD_SCALED_X(name, , float, TB)
DINOV2_FOR_EACH_DTYPE(ADD_SCALED)
ADD_SCALED_X(f16, _rx, f16, f16)
ADD_SCALED_X(bf16, _rx, bf16, bf16)


// The statistics of a LayerNorm folded into the next GEMM (gemm_*_ln_{pp,pp2}, which normalizes
// its sums with them), for a residual stream in a 16-bit type T: stats[row] = (mean, M2) as
// warp_mean_m2 gives them, from the row as stored. One row per warp in 4-column groups
// (blockDim.x = 128), h % 4 == 0, h <= 128·G, aligned buffers.
//   row_stats_g{2,4,8,16}_{f16,bf16}(x, stats, rows, h)
//   add_scaled_stats_g{2,4,8,16}_{f16,bf16}_rx(x, branch, gamma, stats, rows, h): first
//     x += gamma ⊙ branch, as add_scaled_layer_norm_*_rx updates it.
template <int G, typename T>
__device__ __forceinline__ void row_stats_warp4(const T* __restrict__ x, float2* __restrict__ stats, int rows,
                                                int h) {
    const int lane = threadIdx.x & 31;
    const long row = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    float4 v[G];
    const float s = load_row4<G>(x + row * h, lane, h, v);
    const float2 st = warp_mean_m2<G>(v, s, lane, h);
    if (lane == 0) stats[row] = st;
}

template <int G, typename T>
__device__ __forceinline__ void add_scaled_stats_warp4(T* __restrict__ x, const T* __restrict__ branch,
                                                       const float* __restrict__ gamma,
                                                       float2* __restrict__ stats, int rows, int h) {
    const int lane = threadIdx.x & 31;
    const long row = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    float4 v[G];
    const float s = add_scaled_row4<G>(x + row * h, branch + row * h, gamma, lane, h, v);
    const float2 st = warp_mean_m2<G>(v, s, lane, h);
    if (lane == 0) stats[row] = st;
}

#define ROW_STATS_G(name, T, G)                                                                    \
    extern "C" __global__ void __launch_bounds__(128)                                              \
        row_stats_g##G##_##name(const T* x, float2* stats, int rows, int h) {                      \
        row_stats_warp4<G, T>(x, stats, rows, h);                                                  \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) add_scaled_stats_g##G##_##name##_rx(         \
        T* x, const T* branch, const float* gamma, float2* stats, int rows, int h) {               \
        add_scaled_stats_warp4<G, T>(x, branch, gamma, stats, rows, h);                            \
    }
#define ROW_STATS(name, T)                                                                         \
    ROW_STATS_G(name, T, 2)                                                                        \
    ROW_STATS_G(name, T, 4)                                                                        \
    ROW_STATS_G(name, T, 8)                                                                        \
    ROW_STATS_G(name, T, 16)
ROW_STATS(f16, f16)
ROW_STATS(bf16, bf16)
