#!/usr/bin/env python3
"""Helpers of the device script's `dinov2 embed` step (run with the GPU machine's python3):

    pipeline.py checkpoint DIR      writes a ViT-B/14 checkpoint with random weights (transformers'
                                    Dinov2Model, facebook/dinov2-base's config) and the DINOv2
                                    preprocessor_config.json into DIR
    pipeline.py compare A.npy B.npy TOL
                                    prints the worst relative L2 error per row of B against A and
                                    exits 1 above TOL
    pipeline.py serve ADDR REF.npy TOL SECONDS IMAGE...
                                    against a running `dinov2 serve` at ADDR: its vectors for the
                                    IMAGEs (one /v1/embeddings request) against REF.npy's rows
                                    (exit 1 above TOL); then, for SECONDS, 16 clients sending
                                    requests of 8 images, and the images/s answered
    pipeline.py binding MODEL REF.npy IMAGE...
                                    the Python module dinov2_rs (on PYTHONPATH) on CUDA, f32 and
                                    f16, against REF.npy's rows; then a timed f16 pass
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


def post(addr, images):
    import base64
    import urllib.request

    body = json.dumps({"input": [
        "data:image/jpeg;base64," + base64.b64encode(im).decode() for im in images
    ]}).encode()
    req = urllib.request.Request(f"http://{addr}/v1/embeddings", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return [d["embedding"] for d in json.load(r)["data"]]


def serve(addr, ref_path, tol, seconds, paths):
    import threading
    import time

    import numpy as np

    images = [open(p, "rb").read() for p in paths]
    got = np.array(post(addr, images), dtype=np.float64)
    ref = np.load(ref_path).astype(np.float64)
    rc = 0
    if got.shape != ref.shape:
        print(f"serve: shape {got.shape}, {ref_path} has {ref.shape}")
        rc = 1
    else:
        err = np.linalg.norm(got - ref, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-30)
        print(f"serve vs {ref_path}: {len(ref)} rows, worst relative L2 {err.max():.3e} (limit {tol:g})")
        rc = 0 if err.max() <= tol else 1
    if seconds <= 0:
        return rc
    done, failed = [0], [0]
    lock = threading.Lock()
    stop = time.time() + seconds

    def client(k):
        batch = [images[(k + i) % len(images)] for i in range(8)]
        while time.time() < stop:
            try:
                n = len(post(addr, batch))
            except Exception:  # counted, not fatal: a 429 under load is the server's answer
                with lock:
                    failed[0] += 1
                continue
            with lock:
                done[0] += n
    start = time.time()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.time() - start
    print(f"serve load: 16 clients x 8 images per request for {took:.1f} s: "
          f"{done[0] / took:.1f} images/s answered, {failed[0]} requests refused or failed")
    return rc


def binding(model_dir, ref_path, images):
    """The Python module on CUDA: f32 within 1e-4 and f16 within 1e-2 (relative L2, per row) of
    the CPU's vectors for the same images, then a timed pass over them."""
    import time

    import numpy as np

    try:
        import dinov2_rs
    except ImportError as e:
        print(f"dinov2_rs does not import here ({e}; it needs CPython 3.11 or later)")
        return 1
    ref = np.load(ref_path).astype(np.float64)
    rc = 0
    for dtype, tol in (("f32", 1e-4), ("f16", 1e-2)):
        embedder = dinov2_rs.Embedder(model_dir, device="cuda", dtype=dtype, batch_size=4)
        out = np.asarray(embedder.embed(images)).astype(np.float64)
        err = np.linalg.norm(out - ref, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-30)
        ok = out.shape == ref.shape and err.max() <= tol
        print(f"dinov2_rs cuda {dtype}: {out.shape[0]} rows, worst relative L2 {err.max():.3e} "
              f"(limit {tol:g}) {'ok' if ok else 'FAILED'}")
        rc |= 0 if ok else 1
    start = time.perf_counter()
    embedder.embed(images * 8)
    dt = time.perf_counter() - start
    print(f"dinov2_rs cuda f16: {len(images) * 8} images in {dt:.2f} s")
    return rc


if __name__ == "__main__":
    if len(sys.argv) >= 7 and sys.argv[1] == "serve":
        sys.exit(serve(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]),
                       sys.argv[6:]))
    if len(sys.argv) == 3 and sys.argv[1] == "checkpoint":
        sys.exit(checkpoint(sys.argv[2]))
    if len(sys.argv) >= 5 and sys.argv[1] == "binding":
        sys.exit(binding(sys.argv[2], sys.argv[3], sys.argv[4:]))
    if len(sys.argv) == 5 and sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3], float(sys.argv[4])))
    print(__doc__)
    sys.exit(2)
