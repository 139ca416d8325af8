// Patch embedding input, token assembly, pooling and dtype casts.
//   im2col_{f32,f16,bf16,       pixels [B, C, H, W] -> [B·gh·gw, kp] rows in (c, dy, dx) order
//          f32_f16,f32_bf16}    (the flattened Conv2d weight layout; remainder pixels dropped),
//                               pixels and rows of one type, or f32 pixels into f16/bf16 rows;
//                               zero past C·p·p (kp >= C·p·p pads rows for aligned GEMM reads);
//                               a block per row (blocks step on by gridDim.x), threads over columns
//   embed_tokens_{f32,f16,bf16} patches [B, N, h] (T) -> f32 tokens [B, 1 + R + N, h]:
//                               row 0 = cls + pos[0]; rows 1..=R = registers; row 1 + R + t =
//                               (mask[b·N + t] ? mask_token : patch) + pos[1 + t]
//   embed_tokens_{f16,bf16}_rx  the same, tokens in T (a residual stream kept in T)
//   pool_tokens_{f32,f16,bf16}  x [B, S, h] -> f32 [B, (cls + mean)·h]: token 0 (when cls), then
//                               the mean of tokens start..S (when mean); the embedding poolings
//   cast_{f32_f16,f32_bf16,f16_f32,bf16_f32}
#include "common.cuh"

template <typename TI, typename T>
__device__ __forceinline__ void im2col(const TI* __restrict__ px, T* __restrict__ cols, int b,
                                       int c, int h, int w, int p, int kp) {
    const int gh = h / p, gw = w / p, pp = p * p, k = c * pp;
    const long rows = (long)b * gh * gw;
    for (long row = blockIdx.x; row < rows; row += gridDim.x) {
        const int img = (int)(row / (gh * gw));
        const int cell = (int)(row - (long)img * gh * gw);
        const int gi = cell / gw, gj = cell - gi * gw;
        const TI* patch = px + ((long)img * c * h + (long)gi * p) * w + (long)gj * p;
        T* out = cols + row * kp;
        for (int col = threadIdx.x; col < kp; col += blockDim.x) {
            float v = 0.0f;
            if (col < k) {
                const int ch = col / pp, r = col - ch * pp;
                const int dy = r / p, dx = r - dy * p;
                v = to_f32(patch[((long)ch * h + dy) * w + dx]);
            }
            out[col] = from_f32<T>(v);
        }
    }
}

template <typename T, typename TX>
__device__ __forceinline__ void embed_tokens(const T* __restrict__ patches, TX* __restrict__ x,
                                             const float* __restrict__ cls,
                                             const T* __restrict__ pos, const T* __restrict__ regs,
                                             const float* __restrict__ mask_token,
                                             const uint8_t* __restrict__ mask, int b, int n, int r,
                                             int h) {
    const int seq = 1 + r + n;
    const long total = (long)b * seq * h;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long)gridDim.x * blockDim.x) {
        const long row = i / h;
        const int c = (int)(i - row * h);
        const int img = (int)(row / seq);
        const int t = (int)(row - (long)img * seq);
        float v;
        if (t == 0) {
            v = cls[c] + to_f32(pos[c]);
        } else if (t <= r) {
            v = to_f32(regs[(long)(t - 1) * h + c]);
        } else {
            const int p = t - 1 - r;
            const long cell = (long)img * n + p;
            const float e = (mask && mask[cell]) ? mask_token[c] : to_f32(patches[cell * h + c]);
            v = e + to_f32(pos[(long)(1 + p) * h + c]);
        }
        x[i] = from_f32<TX>(v);
    }
}

// The f32 mean of column `c` of tokens start..s, `base` pointing at token 0, column c.
template <typename T>
__device__ __forceinline__ float token_mean(const T* __restrict__ base, int s, int start, int h) {
    float acc = 0.0f;
    for (int t = start; t < s; t++) acc += to_f32(base[(long)t * h]);
    return acc / (float)(s - start);
}

// One thread per (image, column): consecutive threads read consecutive columns of a token row.
template <typename T>
__device__ __forceinline__ void pool_tokens(const T* __restrict__ x, float* __restrict__ out, int b,
                                            int s, int start, int h, int cls, int mean) {
    const long n = (long)b * h;
    const int width = (cls + mean) * h;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long)gridDim.x * blockDim.x) {
        const int img = (int)(i / h), c = (int)(i - (long)img * h);
        const T* base = x + (long)img * s * h + c;
        float* o = out + (long)img * width + c;
        if (cls) {
            *o = to_f32(base[0]);
            o += h;
        }
        if (mean) *o = token_mean(base, s, start, h);
    }
}

#define IM2COL(name, TI, T)                                                                        \
    extern "C" __global__ void im2col_##name(const TI* px, T* cols, int b, int c, int h, int w,    \
                                             int p, int kp) {                                      \
        im2col<TI, T>(px, cols, b, c, h, w, p, kp);                                                \
    }

IM2COL(f32, float, float)
IM2COL(f16, f16, f16)
IM2COL(bf16, bf16, bf16)
IM2COL(f32_f16, float, f16)
IM2COL(f32_bf16, float, bf16)

#define EMBED(name, T)                                                                             \
    extern "C" __global__ void embed_tokens_##name(const T* patches, float* x, const float* cls,   \
                                                   const T* pos, const T* regs,                    \
                                                   const float* mask_token, const uint8_t* mask,   \
                                                   int b, int n, int r, int h) {                   \
        embed_tokens<T, float>(patches, x, cls, pos, regs, mask_token, mask, b, n, r, h);          \
    }                                                                                              \
    extern "C" __global__ void pool_tokens_##name(const T* x, float* out, int b, int s, int start, \
                                                  int h, int cls, int mean) {                      \
        pool_tokens<T>(x, out, b, s, start, h, cls, mean);                                         \
    }

DINOV2_FOR_EACH_DTYPE(EMBED)

// Tokens in T (a residual stream kept in the compute type).
#define EMBED_RX(name, T)                                                                          \
    extern "C" __global__ void embed_tokens_##name##_rx(const T* patches, T* x, const float* cls,  \
                                                        const T* pos, const T* regs,               \
                                                        const float* mask_token,                   \
                                                        const uint8_t* mask, int b, int n, int r,  \
                                                        int h) {                                   \
        embed_tokens<T, T>(patches, x, cls, pos, regs, mask_token, mask, b, n, r, h);              \
    }
EMBED_RX(f16, f16)
EMBED_RX(bf16, bf16)

template <typename TI, typename TO>
__device__ __forceinline__ void cast(const TI* __restrict__ in, TO* __restrict__ out, long n) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long)gridDim.x * blockDim.x)
        out[i] = from_f32<TO>(to_f32(in[i]));
}

#define CAST(name, TI, TO)                                                                         \
    extern "C" __global__ void cast_##name(const TI* in, TO* out, long n) {                        \
        cast<TI, TO>(in, out, n);                                                                  \
    }

CAST(f32_f16, float, f16)
CAST(f32_bf16, float, bf16)
CAST(f16_f32, f16, float)
CAST(bf16_f32, bf16, float)
