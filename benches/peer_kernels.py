#!/usr/bin/env python3
"""PyTorch's kernels at the shapes of `benches/cuda_kernels.rs` (ViT-B/14, 224 px, batch 256, f16:
257 tokens per image, 65 792 rows), timed the same way: a device synchronization before the clock
stops. What transformers' Dinov2 runs in eager mode for each of our kernels:

* attention: `scaled_dot_product_attention` on q, k, v as transformers passes them (views of the
  three projections, transposed to [B, heads, N, d]), and on contiguous [B, heads, N, d] tensors;
  also at 518 px (1370 tokens, batch 32);
* the residual update and the next norm: `layer_scale` (mul), the residual add and `layer_norm`,
  three kernels (ours: one fused kernel), and `layer_norm` alone (f16 in, f16 out);
* GELU (exact erf) after the fc1 GEMM, `linear` with bias for the four GEMMs of a block, and fc1
  followed by the GELU;
* the residual add alone, the SwiGLU gate of ViT-g/14's FFN (chunk, SiLU, product), the token
  assembly (CLS concatenated before the patches, positions added), and the eager attention that
  materializes the probabilities (what runs when attentions are requested);
* the copy ceiling: a device-to-device copy of the same 200 MB.

Prints one JSON object: {"device", "torch", "results": [{"name", "variant", "ms"}]}; the names are
criterion's ids of our benches (group/function), so `scripts/gpu/kernel_table.py` can pair them.

    python3 benches/peer_kernels.py [--repeats 20] > peer_kernels.json
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F

BATCH, TOKENS, HIDDEN, HEADS = 256, 257, 768, 12
ROWS = BATCH * TOKENS


def timed_ms(fn, repeats, inner=5):
    """Median over `repeats` of the mean time of `inner` calls, in milliseconds (CUDA events)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    dev = torch.device("cuda")
    t = torch.float16
    torch.manual_seed(0)
    results = []

    def add(name, variant, fn):
        results.append({"name": name, "variant": variant, "ms": timed_ms(fn, a.repeats)})

    src = torch.randn(ROWS, HIDDEN, device=dev, dtype=torch.float32)
    dst = torch.empty_like(src)
    add(f"ceiling/copy_d2d/{ROWS * HIDDEN * 4}", "copy_", lambda: dst.copy_(src))
    del src, dst

    h = HIDDEN
    for what, k, n in [("qkv", h, 3 * h), ("proj", h, h), ("fc1", h, 4 * h), ("fc2", 4 * h, h)]:
        x = torch.randn(ROWS, k, device=dev, dtype=t)
        w = torch.randn(n, k, device=dev, dtype=t) / k**0.5
        b = torch.randn(n, device=dev, dtype=t)
        add(f"linear_f16/vitb14/{what}/{ROWS}x{k}x{n}", "F.linear", lambda: F.linear(x, w, b))
        if what == "fc1":
            # transformers' Dinov2MLP: fc1, then nn.GELU() (erf) in its own kernel.
            add(
                f"linear_f16/vitb14/fc1_gelu/{ROWS}x{k}x{n}",
                "F.gelu(F.linear)",
                lambda: F.gelu(F.linear(x, w, b)),
            )
        del x, w, b

    d = HIDDEN // HEADS
    # ViT-B/14 at 518 px (1370 tokens), batch 32: benches/cuda_kernels.rs's HIGH_RES.
    for label, batch, tokens in [("vitb14", BATCH, TOKENS), ("vitb14_518px", 32, 1370)]:
        name = f"attention_f16/{label}/{batch}x{HEADS}x{tokens}x{d}"
        proj = [torch.randn(batch, tokens, HIDDEN, device=dev, dtype=t) for _ in range(3)]
        q, k_, v = (p.view(batch, tokens, HEADS, d).transpose(1, 2) for p in proj)
        add(name, "sdpa, transformers' views", lambda: F.scaled_dot_product_attention(q, k_, v))
        qc, kc, vc = (p.contiguous() for p in (q, k_, v))
        add(name, "sdpa, contiguous", lambda: F.scaled_dot_product_attention(qc, kc, vc))
        if tokens == TOKENS:

            def eager_attention():
                # transformers' eager attention: the probabilities materialized (attentions
                # requested).
                scores = qc @ kc.transpose(-1, -2) * d**-0.5
                return torch.softmax(scores, dim=-1, dtype=torch.float32).to(t) @ vc

            add(
                f"attention_f16/vitb14_probs/{BATCH}x{HEADS}x{TOKENS}x{d}",
                "eager softmax(QKᵀ)V",
                eager_attention,
            )
        del proj, q, k_, v, qc, kc, vc

    x = torch.randn(ROWS, h, device=dev, dtype=t)
    branch = torch.randn(ROWS, h, device=dev, dtype=t)
    gamma = torch.randn(h, device=dev, dtype=t)
    w = torch.randn(h, device=dev, dtype=t)
    b = torch.randn(h, device=dev, dtype=t)
    add(f"layer_norm/f32_to_f16/{ROWS}x{h}", "F.layer_norm f16", lambda: F.layer_norm(x, (h,), w, b, 1e-6))

    def residual_norm():
        y = branch * gamma + x
        return F.layer_norm(y, (h,), w, b, 1e-6)

    add(f"layer_norm/add_scaled_layer_norm/{ROWS}x{h}", "mul + add + F.layer_norm", residual_norm)
    add(f"layer_norm/add_scaled/{ROWS}x{h}", "add_(branch * gamma)", lambda: x.add_(branch * gamma))
    del x, branch

    u = torch.randn(ROWS, 4 * h, device=dev, dtype=t)
    add(f"elementwise_f16/gelu/{ROWS}x{4 * h}", "F.gelu", lambda: F.gelu(u))
    del u

    z = torch.randn(ROWS, 2 * 4096, device=dev, dtype=t)

    def swiglu():
        # transformers' Dinov2SwiGLUFFN between its two linears.
        a, g = z.chunk(2, dim=-1)
        return F.silu(a) * g

    add(f"elementwise_f16/swiglu/{ROWS}x4096", "chunk + silu * g", swiglu)
    del z

    n = TOKENS - 1
    patches = torch.randn(BATCH, n, h, device=dev, dtype=t)
    cls = torch.randn(1, 1, h, device=dev, dtype=t)
    pos = torch.randn(1, TOKENS, h, device=dev, dtype=t)
    add(
        f"elementwise_f16/embed_tokens/{BATCH}x{n}x{h}",
        "cat + add",
        lambda: torch.cat([cls.expand(BATCH, -1, -1), patches], dim=1) + pos,
    )
    del patches

    print(json.dumps({
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "results": results,
    }))


if __name__ == "__main__":
    main()
