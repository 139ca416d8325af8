#!/usr/bin/env python3
"""Write what transformers computes for a checkpoint and some images, for `dinov2 forward --expect`.

Checks a checkpoint of your own, on your machine, against the reference this project follows:

    python scripts/transformers_reference.py --model facebook/dinov2-small cat.jpg dog.jpg \\
        --out reference.safetensors
    dinov2 forward --model facebook/dinov2-small --expect reference.safetensors
    dinov2 forward --model facebook/dinov2-small --expect reference.safetensors --device cuda --dtype f16

The file holds `pixel_values` (the checkpoint's preprocessing by `BitImageProcessorPil`, the PIL
backend, which `dinov2` reproduces bit for bit) and the model's float32 outputs under transformers'
names: `last_hidden_state`, `pooler_output`, `hidden_states.N` (with --hidden-states),
`attentions.N` (with --attentions), `logits` for a classification checkpoint, `feature_maps.N` for a
backbone. Images of
different sizes are preprocessed to one size only when the config crops; otherwise give images of
one size.

Needs torch and transformers (this project follows transformers 5.17.0 and torch 2.11.0), Pillow,
numpy and safetensors.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import save_file
import transformers
from transformers import AutoConfig, AutoModel, BitImageProcessorPil


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="model directory or hub id")
    ap.add_argument("images", nargs="+", help="image files")
    ap.add_argument("--out", required=True, help="the .safetensors file to write")
    ap.add_argument("--hidden-states", action="store_true", help="also write hidden_states.N")
    ap.add_argument("--attentions", action="store_true", help="also write attentions.N")
    args = ap.parse_args()

    config = AutoConfig.from_pretrained(args.model)
    # The class the checkpoint names (Dinov2Model, Dinov2ForImageClassification, Dinov2Backbone,
    # their WithRegisters forms), as `dinov2 forward` picks its head from it.
    architectures = config.architectures or []
    loader = getattr(transformers, architectures[0], None) if architectures else None
    loader = loader or AutoModel
    # Eager attention: the probabilities are only returned by it.
    model = loader.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager").eval()
    try:
        processor = BitImageProcessorPil.from_pretrained(args.model)
    except OSError:
        # No preprocessor_config.json: the facebook/dinov2-* one, as `dinov2` assumes then.
        print("no preprocessor_config.json: using facebook/dinov2's preprocessing", file=sys.stderr)
        processor = BitImageProcessorPil(
            size={"shortest_edge": 256},
            crop_size={"height": 224, "width": 224},
            resample=3,
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
        )
    images = [Image.open(p) for p in args.images]
    pixels = processor(images, return_tensors="np")["pixel_values"].astype(np.float32)

    with torch.inference_mode():
        out = model(
            pixel_values=torch.from_numpy(pixels),
            output_hidden_states=args.hidden_states,
            output_attentions=args.attentions,
        )
    tensors = {"pixel_values": pixels}
    for name in ("last_hidden_state", "pooler_output", "logits"):
        value = getattr(out, name, None)
        if value is not None:
            tensors[name] = value.float().numpy()
    for group in ("feature_maps", "hidden_states", "attentions"):
        for i, value in enumerate(getattr(out, group, None) or ()):
            tensors[f"{group}.{i}"] = value.float().numpy()
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, args.out)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {list(v.shape)}" for k, v in tensors.items()), file=sys.stderr)


if __name__ == "__main__":
    main()
