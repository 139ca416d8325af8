// Shared helpers of the dinov2 kernels: element types, conversions, warp reductions, activations.
// Every kernel computes in f32 (statistics, accumulation, activations) whatever its storage type.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

typedef __half f16;
typedef __nv_bfloat16 bf16;

// Loads/stores of one element as f32.
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(f16 x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ f16 from_f32<f16>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) { return __float2bfloat16_rn(x); }

// Two 16-bit values in one 32-bit register, x in the low half: packed from f32 with rounding to
// nearest, and unpacked to f32 (f16 and bf16; the MMA fragments' and 8-byte accesses' layout).
template <typename T> __device__ __forceinline__ uint32_t pack2(float x, float y);
template <> __device__ __forceinline__ uint32_t pack2<f16>(float x, float y) {
    __half2 h = __floats2half2_rn(x, y);
    return *reinterpret_cast<uint32_t*>(&h);
}
template <> __device__ __forceinline__ uint32_t pack2<bf16>(float x, float y) {
    __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
    return *reinterpret_cast<uint32_t*>(&h);
}
template <typename T> __device__ __forceinline__ float2 unpack2(uint32_t r);
template <> __device__ __forceinline__ float2 unpack2<f16>(uint32_t r) {
    return __half22float2(*reinterpret_cast<__half2*>(&r));
}
template <> __device__ __forceinline__ float2 unpack2<bf16>(uint32_t r) {
    return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&r));
}

// 2^x by the special-function unit (ex2.approx.ftz: about 2 ulp; results below 2^-126 flush to 0,
// which a softmax weight next to its row's maximum of 1 never misses); exp2f adds a range check
// and two multiplies around the same instruction.
__device__ __forceinline__ float ex2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` holds 32 floats of shared memory; the call synchronizes the block.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(t);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < warps ? scratch[lane] : -INFINITY;
    return warp_max(t);
}

// The activations of dinov2_checkpoint::Activation, in the order of its variants. Evaluated in f32
// with the accurate libdevice functions (erff, expf, tanhf): no fast-math approximations.
enum Act {
    ACT_IDENTITY = 0,
    ACT_GELU = 1,       // exact 0.5·x·(1 + erf(x/√2))
    ACT_GELU_TANH = 2,  // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
    ACT_QUICK_GELU = 3, // x·σ(1.702·x)
    ACT_RELU = 4,
    ACT_RELU6 = 5,
    ACT_SELU = 6,
    ACT_SILU = 7,
    ACT_TANH = 8,
    ACT_SIGMOID = 9,
};

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ __forceinline__ float activate(float x, int act) {
    switch (act) {
    case ACT_GELU: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case ACT_GELU_TANH: {
        const float c = 0.79788456080286536f; // √(2/π)
        return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
    }
    case ACT_QUICK_GELU: return x * sigmoidf_(1.702f * x);
    case ACT_RELU: return fmaxf(x, 0.0f);
    case ACT_RELU6: return fminf(fmaxf(x, 0.0f), 6.0f);
    case ACT_SELU: {
        const float alpha = 1.6732632423543772f, scale = 1.0507009873554805f;
        return scale * (fmaxf(x, 0.0f) + fminf(alpha * expm1f(x), 0.0f));
    }
    case ACT_SILU: return x * sigmoidf_(x);
    case ACT_TANH: return tanhf(x);
    case ACT_SIGMOID: return sigmoidf_(x);
    default: return x;
    }
}

// Four consecutive elements as f32: one 16-byte (f32) or 8-byte (f16, bf16) access. The address
// must be aligned to the access (the launchers check their buffers).
__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
template <typename T> __device__ __forceinline__ float4 load4(const T* p) {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    const float2 a = unpack2<T>(u.x), b = unpack2<T>(u.y);
    return make_float4(a.x, a.y, b.x, b.y);
}
__device__ __forceinline__ void store4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }
template <typename T> __device__ __forceinline__ void store4(T* p, float4 v) {
    *reinterpret_cast<uint2*>(p) = make_uint2(pack2<T>(v.x, v.y), pack2<T>(v.z, v.w));
}
// Four values as a store of them to TX would leave them (rounded to 16 bits, or unchanged).
__device__ __forceinline__ float4 round4(float4 v, const float*) { return v; }
template <typename T> __device__ __forceinline__ float4 round4(float4 v, const T*) {
    const float2 a = unpack2<T>(pack2<T>(v.x, v.y)), b = unpack2<T>(pack2<T>(v.z, v.w));
    return make_float4(a.x, a.y, b.x, b.y);
}

// The shared-memory address of a generic pointer into shared memory.
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

// Instantiates `KERNEL_BODY(name, type)` style macros for the three storage types.
#define DINOV2_FOR_EACH_DTYPE(M) M(f32, float) M(f16, f16) M(bf16, bf16)
