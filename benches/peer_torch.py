#!/usr/bin/env python3
"""The peer for `dinov2 bench`: transformers' Dinov2Model (or Dinov2WithRegistersModel) with the
same architecture and random weights, SDPA attention, timed as `dinov2 bench` times ours.

Timed per pass: `model(pixel_values=x).pooler_output` with `x` already on the device, then a device
synchronization (ours: pixels on the device -> CLS vectors [B, h] copied to the host, which waits
for the device). Warm-up passes first (with --compile they compile the model), then the median of
the repeats. Memory is the driver's used-memory delta during the passes, measured from a baseline
taken after `torch.cuda.empty_cache()` (ours releases its allocator's cached blocks the same way).

Run by `dinov2 bench --peer PYTHON [--peer-compile]` in the same invocation as our own timing, so
that every result is a ratio measured side by side. Pinned reference: torch 2.11.0, transformers
5.17.0 (xtask/golden/requirements-5.17.txt). Prints one JSON object per batch size on stdout.

With --alternate (`dinov2 bench --alternate`) it times one pass at a time when asked, so that
ours and its passes take turns: it prints one JSON object with its versions, then answers each
line on stdin, `batch B` (make the input, run the warm-up passes) or `pass` (time one pass of
the last batch size, after an untimed one), with one JSON object; end of input ends it. No memory is measured then:
the two processes' passes interleave, so neither side's used-memory delta is its own.
"""
import argparse
import json
import statistics
import sys
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
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (compiled during warm-up)")
    ap.add_argument("--alternate", action="store_true", help="time single passes when asked on stdin")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    # Ours computes f32 GEMMs in true f32: no TF32 for the peer either (matters only for --dtype f32).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = json.loads(a.config)
    registers = cfg.get("model_type") == "dinov2_with_registers"
    config_cls, model_cls = (
        (Dinov2WithRegistersConfig, Dinov2WithRegistersModel) if registers else (Dinov2Config, Dinov2Model)
    )
    known = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures", "attn_implementation")}
    config = config_cls(**known, attn_implementation="sdpa")
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    with device:  # initialize on the device: a CPU init of ViT-g's 1.1 B parameters is slow
        model = model_cls(config)
    model = model.to(dtype=dtype).eval()
    attn = getattr(model.config, "_attn_implementation", None) or "?"
    run = torch.compile(model) if a.compile else model
    # Compilation happens in the first pass (and a shape change may recompile): warm up enough.
    warmup = max(a.warmup, 2) if a.compile else a.warmup

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    about = {
        "peer": "torch", "torch": torch.__version__, "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu", "threads": torch.get_num_threads(),
        "image_size": a.image_size, "dtype": a.dtype, "attn": attn, "compile": a.compile, "warmup": warmup,
    }
    if a.alternate:
        alternate(run, about, sync, device, dtype, a.image_size, warmup)
        return

    for b in [int(x) for x in a.batch_sizes.split(",")]:
        x = torch.randn(b, 3, a.image_size, a.image_size, device=device, dtype=dtype)
        sync()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            free_before = torch.cuda.mem_get_info(device)[0]
        peak_used = 0
        first_s = None
        with torch.inference_mode():
            for i in range(warmup):
                t = time.perf_counter()
                run(pixel_values=x).pooler_output
                sync()
                if i == 0:
                    first_s = time.perf_counter() - t
            times = []
            for _ in range(max(a.repeats, 1)):
                t = time.perf_counter()
                run(pixel_values=x).pooler_output
                sync()
                times.append(time.perf_counter() - t)
                if cuda:
                    peak_used = max(peak_used, free_before - torch.cuda.mem_get_info(device)[0])
        med = statistics.median(times)
        print(json.dumps({
            **about, "batch": b, "first_pass_s": first_s, "median_s": med, "times_s": times,
            "images_per_s": b / med,
            "memory_delta_bytes": max(peak_used, 0),
            # The caching allocator's own account, beside the driver's delta: the most it held
            # and the most in live tensors (the input counts; it was made before the baseline).
            "memory_parts_bytes": {
                "allocator_reserved_high": torch.cuda.max_memory_reserved(device),
                "allocator_allocated_high": torch.cuda.max_memory_allocated(device),
            } if cuda else {},
        }), flush=True)
        del x


def alternate(run, about, sync, device, dtype, image_size, warmup):
    """The --alternate protocol: `batch B` and `pass` lines in, one JSON line out for each."""
    print(json.dumps(about), flush=True)
    x = None
    with torch.inference_mode():
        for line in sys.stdin:
            words = line.split()
            if words[:1] == ["batch"] and len(words) == 2:
                x = None
                x = torch.randn(int(words[1]), 3, image_size, image_size, device=device, dtype=dtype)
                sync()
                for _ in range(warmup):
                    run(pixel_values=x).pooler_output
                    sync()
                reply = {"batch": int(words[1]), "ready": True}
            elif words == ["pass"] and x is not None:
                # An untimed pass first, so that the timed one finds the caches as after one
                # of its own (ours did a pass in between); ours does the same.
                run(pixel_values=x).pooler_output
                sync()
                t = time.perf_counter()
                run(pixel_values=x).pooler_output
                sync()
                reply = {"s": time.perf_counter() - t}
            else:
                reply = {"error": f"unknown request {line.strip()!r}"}
            print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
