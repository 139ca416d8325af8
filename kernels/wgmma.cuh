// Hopper (sm_90a) building blocks shared by the *_sm90a.cu kernels: asynchronous copies into
// shared memory, the fences between them and the warpgroup MMAs (wgmma), the 128-byte-swizzle
// operand descriptors, and the wgmma instructions the kernels use.
//
// Operands in shared memory are tiles of rows of 64 16-bit elements (128 bytes), in the 128-byte
// swizzle: the 16-byte chunk c of row r sits at chunk c ^ (r % 8), i.e. byte address bits 4-6 are
// XORed with bits 7-9, so a tile starts at a multiple of 1024 bytes. Such a tile is
// - a K-major operand (rows along M or N, the 64 elements along K): A = x[m][k], B = w[n][k],
//   the next 16 elements of K at descriptor + 2 (32 bytes);
// - an MN-major B operand (rows along K, the 64 elements along N, imm-trans-b = 1): V[key][d]
//   for O = P·V, the next 16 rows of K at descriptor + 128 (2048 bytes).
// Both read with the same descriptor (sw128_desc): 8-row groups 1024 bytes apart.
#pragma once

#include "common.cuh"

// 16 bytes global -> shared, asynchronously; `bytes` 0 writes zeros (src is then not read).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
// Makes this thread's shared-memory writes visible to the async proxy (the wgmma operand reads).
__device__ __forceinline__ void fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accesses of the accumulators across a wgmma issue or wait (they
// are written asynchronously, behind its back).
template <int N> __device__ __forceinline__ void fence_accumulators(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(d[i])::"memory");
}
// The same for A fragments in registers that a wgmma in flight reads: fenced after its wait,
// they stay live (and unchanged) until then.
template <int N, int M> __device__ __forceinline__ void fence_fragments(uint32_t (&a)[N][M]) {
#pragma unroll
    for (int i = 0; i < N; i++)
#pragma unroll
        for (int j = 0; j < M; j++) asm volatile("" : "+r"(a[i][j])::"memory");
}

// The wgmma descriptor of a tile at shared address `addr` in the 128-byte swizzle: start
// address >> 4 (bits 0-13), leading byte offset (unused by swizzled K-major layouts, and by
// MN-major ones no wider than 64 elements; 1), stride byte offset 1024 >> 4 (from one 8-row group
// to the next: 8 rows of 128 bytes, bits 32-45), swizzle mode 1 = 128 bytes (bits 62-63).
__device__ __forceinline__ uint64_t sw128_desc(uint32_t addr) {
    return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) |
           ((uint64_t)1 << 62);
}

// Copies ROWS rows of 64 16-bit elements (row r at src + r·ld) into a swizzled tile at shared
// address dst, with the block's THREADS threads: thread t copies the 16-byte chunk t % 8 of rows
// t/8, t/8 + THREADS/8, ... (the same swizzled chunk in each, THREADS/8 being a multiple of 8).
// Rows at and past `live` are zero-filled (src itself is then the address, not read).
template <int ROWS, int THREADS, typename T>
__device__ __forceinline__ void load_sw128_tile(uint32_t dst, const T* src, long ld, int live) {
    constexpr int STEP = THREADS / 8;
    static_assert(STEP % 8 == 0 && ROWS % STEP == 0, "whole swizzle groups, whole passes");
    const int c = threadIdx.x & 7, r0 = threadIdx.x >> 3;
    const uint32_t swizzled = (uint32_t)((c ^ (r0 & 7)) << 4);
#pragma unroll
    for (int i = 0; i < ROWS / STEP; i++) {
        const int r = r0 + STEP * i;
        const bool ok = r < live;
        cp_async16(dst + r * 128 + swizzled, ok ? src + r * ld + c * 8 : src, ok ? 16 : 0);
    }
}

#define D8(d, i)                                                                                   \
    "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]),    \
        "+f"(d[i + 6]), "+f"(d[i + 7])

// m64n128k16: d[0..64) += A(desc da) · B(desc db), inputs of PTX type TY ("f16", "bf16").
#define WGMMA_N128(TY, d, da, db)                                                           \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                 \
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " {"                 \
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "  \
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "  \
                 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "  \
                 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"  \
                 "}, %64, %65, p, 1, 1, 0, 0;\n}\n"  \
                 : D8(d, 0), D8(d, 8), D8(d, 16), D8(d, 24), D8(d, 32), D8(d, 40), D8(d, 48), D8(d, 56)  \
                 : "l"(da), "l"(db), "r"(1))

// m64n256k16: d[0..128) += A(desc da) · B(desc db), inputs of PTX type TY ("f16", "bf16").
#define WGMMA_N256(TY, d, da, db)                                                           \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"                                 \
                 "wgmma.mma_async.sync.aligned.m64n256k16.f32." TY "." TY " {"                 \
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "  \
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "  \
                 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "  \
                 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "  \
                 "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "  \
                 "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "  \
                 "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "  \
                 "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"  \
                 "}, %128, %129, p, 1, 1, 0, 0;\n}\n"  \
                 : D8(d, 0), D8(d, 8), D8(d, 16), D8(d, 24), D8(d, 32), D8(d, 40), D8(d, 48), D8(d, 56),  \
                   D8(d, 64), D8(d, 72), D8(d, 80), D8(d, 88), D8(d, 96), D8(d, 104), D8(d, 112), D8(d, 120)  \
                 : "l"(da), "l"(db), "r"(1))

// m64n16k16, both operands in shared memory (K-major): d[0..8) += A·B.
#define WGMMA_N16_SS(TY, d, da, db)                                                         \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"                                  \
                 "wgmma.mma_async.sync.aligned.m64n16k16.f32." TY "." TY " {"                  \
                 "%0, %1, %2, %3, %4, %5, %6, %7"  \
                 "}, %8, %9, p, 1, 1, 0, 0;\n}\n"  \
                 : D8(d, 0)  \
                 : "l"(da), "l"(db), "r"(1))

// m64n32k16, both operands in shared memory (K-major): d[0..16) += A·B.
#define WGMMA_N32_SS(TY, d, da, db)                                                         \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"                                  \
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32." TY "." TY " {"                  \
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"  \
                 "}, %16, %17, p, 1, 1, 0, 0;\n}\n"  \
                 : D8(d, 0), D8(d, 8)  \
                 : "l"(da), "l"(db), "r"(1))

// m64n64k16, A and B in shared memory (descriptors da, db, both K-major): d[0..32) += A·B.
#define WGMMA_N64_SS(TY, d, da, db)                                                         \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                  \
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " {"                  \
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "  \
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"  \
                 "}, %32, %33, p, 1, 1, 0, 0;\n}\n"  \
                 : D8(d, 0), D8(d, 8), D8(d, 16), D8(d, 24)  \
                 : "l"(da), "l"(db), "r"(1))

// m64n64k16, A in registers (four 32-bit registers of two 16-bit values: the accumulator
// fragment's layout, rows lane/4 and lane/4 + 8 of the warp's 16, columns 2·(lane % 4) and + 8)
// and B in shared memory MN-major (descriptor db, imm-trans-b = 1): d[0..32) += A·B.
#define WGMMA_N64_RS_TRANS_B(TY, d, a, db)                                                  \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                  \
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " {"                  \
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "  \
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"  \
                 "}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"  \
                 : D8(d, 0), D8(d, 8), D8(d, 16), D8(d, 24)  \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1))

// ---- mbarriers and the tensor memory accelerator (TMA), for the warp-specialized kernels ----

// A tensor map (cuTensorMapEncodeTiled's CUtensorMap, 128 bytes, aligned as CUDA 13 aligns it):
// what a TMA copy reads its global tensor's address, shape, box and swizzle from. Kernels take
// it as a `const __grid_constant__` parameter.
struct alignas(128) TmaMap {
    unsigned long long opaque[16];
};

// An mbarrier at shared address `bar` expecting `count` arrivals a phase.
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Makes initialized mbarriers visible to the async proxy (the copy engine) before their use.
__device__ __forceinline__ void mbar_init_fence() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// One arrival, and `bytes` more transaction bytes the current phase waits for.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Waits until the phase of parity `parity` has completed (phases count from 0: the k-th
// completion of a barrier ends phase k - 1, of parity (k - 1) & 1).
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    asm volatile("{\n.reg .pred done;\nWAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 "@!done bra WAIT;\n}\n" ::"r"(bar),
                 "r"(parity)
                 : "memory");
}
// The TMA copy of the box at element coordinates (x innermost, y) of `map`'s tensor into shared
// memory at `dst` (laid out as the map's swizzle says; elements out of the tensor read as zeros),
// its bytes counted on the mbarrier `bar`.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const TmaMap* map, uint32_t bar, int x, int y) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%3, %4}], [%2];\n" ::"r"(dst),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(x), "r"(y)
                 : "memory");
}
// Hands registers between warpgroups: a producer gives some up, the consumers take them.
template <int N> __device__ __forceinline__ void setmaxnreg_dec() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N> __device__ __forceinline__ void setmaxnreg_inc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
// A barrier among `threads` threads of the block (whole warps), numbered `id` (0 is __syncthreads').
__device__ __forceinline__ void named_barrier(int id, int threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// An arrival at named barrier `id` without waiting: the other `threads` - (these) threads wait on
// it with named_barrier (a signal from one warpgroup to another).
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// ---- thread block clusters (the multicast kernel: two CTAs sharing their B tiles) ----

// This CTA's rank in its cluster.
__device__ __forceinline__ uint32_t cluster_ctarank() {
    uint32_t rank;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(rank));
    return rank;
}
// A barrier of every thread of the cluster, releasing this CTA's shared-memory writes (barrier
// initializations) to the others and acquiring theirs.
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" :::
                     "memory");
}
// A warp's arrivals, on this CTA's mbarrier at `bar` and on the one at the same offset in CTA
// `cta` of the cluster: 32 on each, by lane 0 alone (predicated, so that no branch separates
// the warp while its wgmmas are in flight). The warp must be converged.
__device__ __forceinline__ void mbar_arrive_warp_here_and_there(uint32_t bar, uint32_t cta) {
    asm volatile("{\n.reg .pred lead;\n.reg .b32 lane, remote;\n"
                 "mov.u32 lane, %%laneid;\nsetp.eq.u32 lead, lane, 0;\n"
                 "mapa.shared::cluster.u32 remote, %0, %1;\n"
                 "@lead mbarrier.arrive.shared::cta.b64 _, [%0], 32;\n"
                 "@lead mbarrier.arrive.shared::cluster.b64 _, [remote], 32;\n}\n" ::"r"(bar),
                 "r"(cta)
                 : "memory");
}
// tma_load_2d into the same offset `dst` of every CTA of the cluster in `mask`, each counting
// the bytes on its own mbarrier at offset `bar`.
__device__ __forceinline__ void tma_load_2d_multicast(uint32_t dst, const TmaMap* map, uint32_t bar, int x,
                                                      int y, uint16_t mask) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
                 ".multicast::cluster [%0], [%1, {%3, %4}], [%2], %5;\n" ::"r"(dst),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(x), "r"(y), "h"(mask)
                 : "memory");
}
