#!/usr/bin/env python3
"""The peer for `dinov2 bench`: transformers' Dinov2Model with the same architecture and random
weights, timed the same way (warm-up, then the median of repeated forward passes).

Run by `dinov2 bench --peer PYTHON` in the same invocation as our own timing, so that every result
is a ratio measured side by side. Pinned reference: torch 2.11.0, transformers 5.17.0
(xtask/golden/requirements-5.17.txt). Prints one JSON object per batch size on stdout.
"""
import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="config.json content (JSON)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"])
    ap.add_argument("--batch-sizes", default="8")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = json.loads(a.config)
    registers = cfg.get("model_type") == "dinov2_with_registers"
    config_cls, model_cls = (
        (Dinov2WithRegistersConfig, Dinov2WithRegistersModel) if registers else (Dinov2Config, Dinov2Model)
    )
    known = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures")}
    config = config_cls(**known)
    config._attn_implementation = "sdpa"
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    device = torch.device(a.device)
    torch.manual_seed(0)
    model = model_cls(config).eval().to(device=device, dtype=dtype)
    if a.compile:
        model = torch.compile(model)
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for b in [int(x) for x in a.batch_sizes.split(",")]:
        x = torch.randn(b, 3, a.image_size, a.image_size, device=device, dtype=dtype)
        if cuda:
            torch.cuda.empty_cache()
            free_before = torch.cuda.mem_get_info()[0]
        peak_used = 0
        with torch.inference_mode():
            for _ in range(a.warmup):
                model(pixel_values=x)
            sync()
            times = []
            for _ in range(a.repeats):
                t = time.perf_counter()
                model(pixel_values=x)
                sync()
                times.append(time.perf_counter() - t)
                if cuda:
                    peak_used = max(peak_used, free_before - torch.cuda.mem_get_info()[0])
        med = statistics.median(times)
        print(json.dumps({
            "peer": "torch", "torch": torch.__version__, "transformers": transformers.__version__,
            "device": torch.cuda.get_device_name() if cuda else "cpu", "threads": torch.get_num_threads(),
            "batch": b, "image_size": a.image_size, "dtype": a.dtype, "compile": a.compile,
            "median_s": med, "images_per_s": b / med, "memory_delta_bytes": peak_used,
        }), flush=True)


if __name__ == "__main__":
    main()
