// LayerNorm over the last dimension (f32 statistics, biased variance, two passes over values held in
// registers), and the fused residual update of a pre-norm block: x += gamma ⊙ branch, then
// optionally y = LayerNorm(x). The residual stream x is f32; gamma, LayerNorm weight and bias are f32.
//
// Kernels (suffix: input dtype, then output dtype when they differ):
//   layer_norm_{f32,f16,bf16,f32_f16,f32_bf16}        one warp per row, h <= 32·LN_VPL
//   layer_norm_wide_{...}                              one block per row, any h
//   add_scaled_{f32,f16,bf16}                          x += gamma ⊙ branch (branch dtype)
//   add_scaled_layer_norm_{f32,f16,bf16}               the same, then y = LN(x) (y in branch dtype)
//   add_scaled_layer_norm_wide_{...}                   block per row, any h
#include "common.cuh"

#define LN_VPL 32 // values per lane of the warp-per-row kernels: h <= 1024

// The LayerNorm of a row that one warp holds, v[i] being column lane + 32·i (zero past h) and `s`
// this lane's sum of its values: y = (v - mean) / sqrt(var + eps) · w + b, written to yr.
template <typename TY>
__device__ __forceinline__ void warp_normalize_row(const float (&v)[LN_VPL], float s, int lane,
                                                   int h, float eps, TY* __restrict__ yr,
                                                   const float* __restrict__ w,
                                                   const float* __restrict__ b) {
    const float mean = warp_sum(s) / h;
    float q = 0.0f;
#pragma unroll
    for (int i = 0; i < LN_VPL; i++) {
        const int c = lane + 32 * i;
        const float d = c < h ? v[i] - mean : 0.0f;
        q += d * d;
    }
    const float inv = 1.0f / sqrtf(warp_sum(q) / h + eps);
#pragma unroll
    for (int i = 0; i < LN_VPL; i++) {
        const int c = lane + 32 * i;
        if (c < h) yr[c] = from_f32<TY>((v[i] - mean) * inv * w[c] + b[c]);
    }
}

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

// One row per warp; blockDim.x = 128 (4 rows per block).
template <typename TX, typename TY>
__device__ __forceinline__ void layer_norm_warp(const TX* __restrict__ x, TY* __restrict__ y,
                                                const float* __restrict__ w,
                                                const float* __restrict__ b, int rows, int h,
                                                float eps) {
    const int lane = threadIdx.x & 31;
    const long row = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    const TX* xr = x + row * h;
    float v[LN_VPL];
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < LN_VPL; i++) {
        const int c = lane + 32 * i;
        v[i] = c < h ? to_f32(xr[c]) : 0.0f;
        s += v[i];
    }
    warp_normalize_row<TY>(v, s, lane, h, eps, y + row * h, w, b);
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

#define LAYER_NORM(name, TX, TY)                                                                   \
    extern "C" __global__ void __launch_bounds__(128)                                              \
        layer_norm_##name(const TX* x, TY* y, const float* w, const float* b, int rows, int h,     \
                          float eps) {                                                             \
        layer_norm_warp<TX, TY>(x, y, w, b, rows, h, eps);                                         \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(1024)                                             \
        layer_norm_wide_##name(const TX* x, TY* y, const float* w, const float* b, int h,          \
                               float eps) {                                                        \
        layer_norm_block<TX, TY>(x, y, w, b, h, eps);                                              \
    }

LAYER_NORM(f32, float, float)
LAYER_NORM(f16, f16, f16)
LAYER_NORM(bf16, bf16, bf16)
LAYER_NORM(f32_f16, float, f16)
LAYER_NORM(f32_bf16, float, bf16)

// x[r, c] += gamma[c] · branch[r, c] over rows·h elements.
template <typename TB>
__device__ __forceinline__ void add_scaled(float* __restrict__ x, const TB* __restrict__ branch,
                                           const float* __restrict__ gamma, long n, int h) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long)gridDim.x * blockDim.x)
        x[i] += gamma[i % h] * to_f32(branch[i]);
}

// x += gamma ⊙ branch, then y = LN(x); one warp per row.
template <typename TB>
__device__ __forceinline__ void add_scaled_ln_warp(float* __restrict__ x,
                                                   const TB* __restrict__ branch,
                                                   const float* __restrict__ gamma,
                                                   TB* __restrict__ y, const float* __restrict__ w,
                                                   const float* __restrict__ b, int rows, int h,
                                                   float eps) {
    const int lane = threadIdx.x & 31;
    const long row = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    float* xr = x + row * h;
    const TB* br = branch + row * h;
    float v[LN_VPL];
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < LN_VPL; i++) {
        const int c = lane + 32 * i;
        v[i] = 0.0f;
        if (c < h) {
            v[i] = xr[c] + gamma[c] * to_f32(br[c]);
            xr[c] = v[i];
        }
        s += v[i];
    }
    warp_normalize_row<TB>(v, s, lane, h, eps, y + row * h, w, b);
}

template <typename TB>
__device__ __forceinline__ void add_scaled_ln_block(float* __restrict__ x,
                                                    const TB* __restrict__ branch,
                                                    const float* __restrict__ gamma,
                                                    TB* __restrict__ y,
                                                    const float* __restrict__ w,
                                                    const float* __restrict__ b, int h, float eps) {
    const long row = blockIdx.x;
    float* xr = x + row * h;
    const TB* br = branch + row * h;
    float s = 0.0f;
    // Each thread re-reads only the elements it wrote itself.
    for (int c = threadIdx.x; c < h; c += blockDim.x) {
        const float v = xr[c] + gamma[c] * to_f32(br[c]);
        xr[c] = v;
        s += v;
    }
    block_normalize_row<TB>([=](int c) { return xr[c]; }, s, h, eps, y + row * h, w, b);
}

#define ADD_SCALED(name, TB)                                                                       \
    extern "C" __global__ void add_scaled_##name(float* x, const TB* branch, const float* gamma,   \
                                                 long n, int h) {                                  \
        add_scaled<TB>(x, branch, gamma, n, h);                                                    \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) add_scaled_layer_norm_##name(                \
        float* x, const TB* branch, const float* gamma, TB* y, const float* w, const float* b,     \
        int rows, int h, float eps) {                                                              \
        add_scaled_ln_warp<TB>(x, branch, gamma, y, w, b, rows, h, eps);                           \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(1024) add_scaled_layer_norm_wide_##name(          \
        float* x, const TB* branch, const float* gamma, TB* y, const float* w, const float* b,     \
        int h, float eps) {                                                                        \
        add_scaled_ln_block<TB>(x, branch, gamma, y, w, b, h, eps);                                \
    }

DINOV2_FOR_EACH_DTYPE(ADD_SCALED)
