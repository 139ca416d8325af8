#!/usr/bin/env python3
"""Helpers of the device script's `dinov2 embed` step (run with the GPU machine's python3):

    pipeline.py checkpoint DIR      writes a ViT-B/14 checkpoint with random weights (transformers'
                                    Dinov2Model, facebook/dinov2-base's config) and the DINOv2
                                    preprocessor_config.json into DIR
    pipeline.py compare A.npy B.npy TOL
                                    prints the worst relative L2 error per row of B against A and
                                    exits 1 above TOL
"""
import json
import os
import sys


def checkpoint(out):
    import torch
    from transformers import Dinov2Config, Dinov2Model

    os.makedirs(out, exist_ok=True)
    config = Dinov2Config(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4,
        patch_size=14, image_size=518, layerscale_value=1.0, layer_norm_eps=1e-6,
    )
    torch.manual_seed(0)
    Dinov2Model(config).save_pretrained(out, safe_serialization=True)
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "..", "assets", "models", "dinov2-tiny-random",
                           "preprocessor_config.json"), encoding="utf-8") as f:
        pre = json.load(f)
    with open(os.path.join(out, "preprocessor_config.json"), "w", encoding="utf-8") as f:
        json.dump(pre, f, indent=2)
    print(f"wrote {out}")


def compare(a_path, b_path, tol):
    import numpy as np

    a, b = np.load(a_path).astype(np.float64), np.load(b_path).astype(np.float64)
    if a.shape != b.shape:
        print(f"shapes differ: {a.shape} vs {b.shape}")
        return 1
    err = np.linalg.norm(b - a, axis=1) / np.maximum(np.linalg.norm(a, axis=1), 1e-30)
    print(f"{b_path} vs {a_path}: {a.shape[0]} rows, worst relative L2 {err.max():.3e} (limit {tol:g})")
    return 0 if err.max() <= tol else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "checkpoint":
        sys.exit(checkpoint(sys.argv[2]))
    if len(sys.argv) == 5 and sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3], float(sys.argv[4])))
    print(__doc__)
    sys.exit(2)
