#!/usr/bin/env python3
"""The PyTorch peer of `cuda_bench`: transformers' Dinov2Model (random weights from a config, SDPA
attention) on the GPU, timed with CUDA events over the same batch, dtype and image size, peak
memory as the driver's used-memory delta. Prints one `RESULT torch ...` line.

Run on the GPU machine (torch 2.11 + transformers 5.17):
    python3 scripts/gpu/torch_peer.py --model b --batch 256 --dtype f16
"""

import argparse
import sys

import torch
import transformers
from transformers import Dinov2Config, Dinov2Model

# hidden, heads, layers, FFN width, SwiGLU: the released ViT/14 shapes.
ARCH = {
    "s": (384, 6, 12, 1536, False),
    "b": (768, 12, 12, 3072, False),
    "l": (1024, 16, 24, 4096, False),
    "g": (1536, 24, 40, 4096, True),
}
DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="b", choices=sorted(ARCH))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dtype", default="f16", choices=sorted(DTYPES))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model first")
    args = ap.parse_args()

    h, heads, layers, ffn, swiglu = ARCH[args.model]
    dtype = DTYPES[args.dtype]
    dev = torch.device("cuda")
    torch.cuda.init()
    torch.backends.cuda.matmul.allow_tf32 = False
    free0, total = torch.cuda.mem_get_info()
    config = Dinov2Config(
        hidden_size=h,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        mlp_ratio=4,
        patch_size=14,
        image_size=518,
        use_swiglu_ffn=swiglu,
        attn_implementation="sdpa",
    )
    with torch.device(dev):
        model = Dinov2Model(config)
    model = model.to(dtype=dtype).eval()
    impl = getattr(model.config, "_attn_implementation", "?")
    if args.compile:
        model = torch.compile(model)
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev, dtype=dtype)

    with torch.inference_mode():
        for _ in range(args.warmup):
            model(pixel_values=x)
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(args.iters):
            model(pixel_values=x)
        end.record()
        torch.cuda.synchronize()
    ms = start.elapsed_time(end) / max(args.iters, 1)
    free1, _ = torch.cuda.mem_get_info()

    p = 14
    n = (args.size // p) ** 2
    tokens = n + 1
    per_layer = 2.0 * tokens * (4.0 * h * h + (3.0 if swiglu else 2.0) * h * ffn) + 4.0 * tokens * tokens * h
    flops = args.batch * (layers * per_layer + 2.0 * n * 3 * p * p * h)
    name = torch.cuda.get_device_name(dev)
    tag = "torch_compile" if args.compile else "torch"
    print(
        f"RESULT {tag} model=vit{args.model}14 batch={args.batch} dtype={args.dtype} size={args.size} "
        f"ms={ms:.3f} img_s={args.batch / (ms / 1e3):.1f} tflops={flops / (ms / 1e3) / 1e12:.1f} "
        f"mem_mib={(free0 - free1) >> 20} device=\"{name}\" attn={impl} "
        f"torch={torch.__version__} transformers={transformers.__version__}"
    )
    print(f"total device memory {total >> 20} MiB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
