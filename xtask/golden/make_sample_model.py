#!/usr/bin/env python3
"""Writes assets/models/dinov2-tiny-random: a small DINOv2 checkpoint in transformers' format with
RANDOM weights (it computes nothing meaningful), for the README's main-job command and the tests.

Real-model geometry (patch 14, 518 px pretraining grid of 37 x 37, the facebook/dinov2
preprocessor_config.json), tiny width and depth so that it is about 1 MB. Made with transformers
5.17.0 `save_pretrained`; regenerate with `cargo xtask golden`.
"""
import json
import pathlib

import torch
import transformers
from PIL import Image
from safetensors.numpy import save_file
from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model

assert transformers.__version__ == "5.17.0", transformers.__version__
assert torch.__version__.split("+")[0] == "2.11.0", torch.__version__

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "assets" / "models" / "dinov2-tiny-random"
EXPECTED = ROOT / "tests" / "fixtures" / "embed" / "expected.safetensors"

PREPROCESSOR = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "BitImageProcessor",
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 256},
}

README = """# dinov2-tiny-random

A DINOv2 checkpoint in Hugging Face transformers' format with **random weights**: it exists so
that `dinov2 embed` and the tests run on a fresh clone without downloading anything. Its
embeddings mean nothing. Geometry of the released models (patch 14, 518 px position grid, the
facebook/dinov2 preprocessing), width 48, 2 layers, 3 heads of 16.

Made by `xtask/golden/make_sample_model.py` (transformers 5.17.0, torch 2.11.0, seed 0).
For real embeddings use a released checkpoint, e.g. `--model facebook/dinov2-small`.
"""


def main():
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=3, mlp_ratio=4,
        image_size=518, patch_size=14, layerscale_value=1.0,
    )
    model = Dinov2Model(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lambda1"):
                p.uniform_(0.05, 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.normal_(1.0, 0.1)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.02)
            elif p.dim() >= 2 and "embeddings." not in name:
                p.normal_(0.0, (1.0 / p.shape[1]) ** 0.5)
            else:
                p.normal_(0.0, 0.5)
    OUT.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(OUT)
    (OUT / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2, sort_keys=True) + "\n")
    (OUT / "README.md").write_text(README)
    print(f"wrote {OUT}")
    write_expected()


def write_expected():
    """What transformers gives for each sample image (float64 model, PIL processor): the truth the
    `dinov2 embed` end-to-end test compares with (pooler_output and patch-token mean)."""
    processor = BitImageProcessorPil.from_dict(PREPROCESSOR)
    model = Dinov2Model.from_pretrained(OUT, attn_implementation="eager").eval().to(torch.float64)
    tensors = {}
    names = sorted(p.name for p in (ROOT / "assets" / "images").iterdir() if p.suffix in (".jpg", ".png"))
    for name in names:
        pixels = processor(Image.open(ROOT / "assets" / "images" / name), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            out = model(pixel_values=pixels.to(torch.float64))
        tensors[f"{name}.cls"] = out.pooler_output[0].numpy()
        tensors[f"{name}.mean"] = out.last_hidden_state[0, 1:].mean(0).numpy()
    EXPECTED.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, EXPECTED)
    print(f"wrote {EXPECTED} ({len(names)} images)")


if __name__ == "__main__":
    main()
