// Epilogues of a GEMM and the gated FFN, computed in f32 in place or out of place:
//   bias_act_{f32,f16,bf16}(y, bias, rows, cols, act)   y = act(y + bias[col]); bias may be null
//   bias_act_v8_{f32,f16,bf16}(...)                     the same, 8 elements per access (cols % 8 == 0),
//                                                       2-D grid: column groups x rows
//   swiglu_{f32,f16,bf16}(z, out, rows, f)              out = silu(z[:, :f]) · z[:, f:]
//   swiglu_v8_{f32,f16,bf16}(...)                       the same, 8 elements per access (f % 8 == 0),
//                                                       2-D grid: column groups x rows
// `act` is the Act code of common.cuh (the order of dinov2_checkpoint::Activation).
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void bias_act(T* __restrict__ y, const float* __restrict__ bias,
                                         long rows, int cols, int act) {
    const long n = rows * cols;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long)gridDim.x * blockDim.x) {
        float v = to_f32(y[i]);
        if (bias) v += bias[i % cols];
        y[i] = from_f32<T>(activate(v, act));
    }
}

// The same with 16-byte accesses, 8 columns per thread and no index division: thread x of the
// grid is the column group blockIdx.x·blockDim.x + threadIdx.x (of cols / 8), its 8 biases in
// registers; rows blockIdx.y, + gridDim.y, ... (cols % 8 == 0, y 16-byte aligned), two rows a
// step with both loads issued before either is used (at 45 registers an SM holds 1280 threads,
// and one 16-byte load each in flight is short of what the memory system needs). The activation
// is a template argument, so the 8 evaluations of a row interleave (a run-time `act` would
// branch through the switch per element).
template <typename T, int ACT>
__device__ __forceinline__ void bias_act_v8_body(T* __restrict__ y, const float* __restrict__ bias,
                                                 long rows, int cols) {
    constexpr int WORDS = sizeof(T) * 8 / 16; // uint4 per 8 elements: 1 (f16/bf16), 2 (f32)
    union Pack {
        uint4 raw[WORDS];
        T v[8];
    };
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= cols / 8) return;
    float bv[8];
#pragma unroll
    for (int e = 0; e < 8; e++) bv[e] = bias ? bias[g * 8 + e] : 0.0f;
    auto apply = [&](Pack& u) {
#pragma unroll
        for (int e = 0; e < 8; e++) {
            float v = to_f32(u.v[e]);
            if (bias) v += bv[e];
            u.v[e] = from_f32<T>(activate(v, ACT));
        }
    };
    const long step = gridDim.y;
    long r = blockIdx.y;
    for (; r + step < rows; r += 2 * step) {
        uint4* p0 = reinterpret_cast<uint4*>(y + r * cols + g * 8);
        uint4* p1 = reinterpret_cast<uint4*>(y + (r + step) * cols + g * 8);
        Pack u0, u1;
#pragma unroll
        for (int w = 0; w < WORDS; w++) {
            u0.raw[w] = p0[w];
            u1.raw[w] = p1[w];
        }
        apply(u0);
        apply(u1);
#pragma unroll
        for (int w = 0; w < WORDS; w++) {
            p0[w] = u0.raw[w];
            p1[w] = u1.raw[w];
        }
    }
    if (r < rows) {
        uint4* p0 = reinterpret_cast<uint4*>(y + r * cols + g * 8);
        Pack u0;
#pragma unroll
        for (int w = 0; w < WORDS; w++) u0.raw[w] = p0[w];
        apply(u0);
#pragma unroll
        for (int w = 0; w < WORDS; w++) p0[w] = u0.raw[w];
    }
}

template <typename T>
__device__ __forceinline__ void bias_act_v8(T* __restrict__ y, const float* __restrict__ bias,
                                            long rows, int cols, int act) {
    switch (act) {
    case ACT_GELU: bias_act_v8_body<T, ACT_GELU>(y, bias, rows, cols); break;
    case ACT_GELU_TANH: bias_act_v8_body<T, ACT_GELU_TANH>(y, bias, rows, cols); break;
    case ACT_QUICK_GELU: bias_act_v8_body<T, ACT_QUICK_GELU>(y, bias, rows, cols); break;
    case ACT_RELU: bias_act_v8_body<T, ACT_RELU>(y, bias, rows, cols); break;
    case ACT_RELU6: bias_act_v8_body<T, ACT_RELU6>(y, bias, rows, cols); break;
    case ACT_SELU: bias_act_v8_body<T, ACT_SELU>(y, bias, rows, cols); break;
    case ACT_SILU: bias_act_v8_body<T, ACT_SILU>(y, bias, rows, cols); break;
    case ACT_TANH: bias_act_v8_body<T, ACT_TANH>(y, bias, rows, cols); break;
    case ACT_SIGMOID: bias_act_v8_body<T, ACT_SIGMOID>(y, bias, rows, cols); break;
    default: bias_act_v8_body<T, ACT_IDENTITY>(y, bias, rows, cols); break;
    }
}

template <typename T>
__device__ __forceinline__ void swiglu(const T* __restrict__ z, T* __restrict__ out, long rows,
                                       int f) {
    const long n = rows * f;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long)gridDim.x * blockDim.x) {
        const long r = i / f, c = i - r * f;
        const float a = to_f32(z[r * 2 * f + c]);
        const float g = to_f32(z[r * 2 * f + f + c]);
        out[i] = from_f32<T>(a * sigmoidf_(a) * g);
    }
}

// swiglu with 16-byte accesses and no index division, 8 columns per thread: thread x of the grid
// is the column group blockIdx.x·blockDim.x + threadIdx.x (of f / 8); rows blockIdx.y, + gridDim.y,
// ... (f % 8 == 0, z and out 16-byte aligned).
template <typename T>
__device__ __forceinline__ void swiglu_v8(const T* __restrict__ z, T* __restrict__ out, long rows,
                                          int f) {
    constexpr int WORDS = sizeof(T) * 8 / 16; // uint4 per 8 elements: 1 (f16/bf16), 2 (f32)
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= f / 8) return;
    union Pack {
        uint4 raw[WORDS];
        T v[8];
    };
    for (long r = blockIdx.y; r < rows; r += gridDim.y) {
        const uint4* a = reinterpret_cast<const uint4*>(z + r * 2 * f + g * 8);
        const uint4* b = reinterpret_cast<const uint4*>(z + r * 2 * f + f + g * 8);
        Pack pa, pb, po;
#pragma unroll
        for (int w = 0; w < WORDS; w++) {
            pa.raw[w] = a[w];
            pb.raw[w] = b[w];
        }
#pragma unroll
        for (int e = 0; e < 8; e++) {
            const float x = to_f32(pa.v[e]);
            po.v[e] = from_f32<T>(x * sigmoidf_(x) * to_f32(pb.v[e]));
        }
        uint4* o = reinterpret_cast<uint4*>(out + r * f + g * 8);
#pragma unroll
        for (int w = 0; w < WORDS; w++) o[w] = po.raw[w];
    }
}

#define ACTIVATION(name, T)                                                                        \
    extern "C" __global__ void bias_act_##name(T* y, const float* bias, long rows, int cols,       \
                                               int act) {                                          \
        bias_act<T>(y, bias, rows, cols, act);                                                     \
    }                                                                                              \
    extern "C" __global__ void bias_act_v8_##name(T* y, const float* bias, long rows, int cols,    \
                                                  int act) {                                       \
        bias_act_v8<T>(y, bias, rows, cols, act);                                                  \
    }                                                                                              \
    extern "C" __global__ void swiglu_##name(const T* z, T* out, long rows, int f) {               \
        swiglu<T>(z, out, rows, f);                                                                \
    }                                                                                              \
    extern "C" __global__ void swiglu_v8_##name(const T* z, T* out, long rows, int f) {            \
        swiglu_v8<T>(z, out, rows, f);                                                             \
    }

DINOV2_FOR_EACH_DTYPE(ACTIVATION)
