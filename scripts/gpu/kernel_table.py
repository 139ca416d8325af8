#!/usr/bin/env python3
"""Sets our CUDA kernels (criterion's reports of `benches/cuda_kernels.rs`) beside PyTorch's on the
same shapes (`benches/peer_kernels.py`'s JSON): per kernel, our time and PyTorch's fastest variant,
the speed-up, and our throughput (GB/s of bytes moved, TFLOP/s for GEMMs and attention) with its
share of the ceiling measured in the same run (the device-to-device copy for memory-bound kernels)
or of the card's dense f16 peak (compute-bound kernels).

    python3 kernel_table.py CRITERION_HOME PEER_JSON
"""

import glob
import json
import os
import re
import sys

# Dense f16 tensor peaks in TFLOP/s by a substring of the device name (as `dinov2 bench` has them).
PEAKS = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("A100", 312.0),
]


def ours(home):
    """{criterion full id: (seconds per iteration, throughput dict)} from the latest run."""
    out = {}
    for bench in glob.glob(os.path.join(home, "**", "new", "benchmark.json"), recursive=True):
        try:
            with open(bench, encoding="utf-8") as f:
                meta = json.load(f)
            with open(os.path.join(os.path.dirname(bench), "estimates.json"), encoding="utf-8") as f:
                est = json.load(f)
        except (OSError, ValueError):
            continue
        out[meta["full_id"]] = (est["median"]["point_estimate"] * 1e-9, meta.get("throughput") or {})
    return out


def main(home, peer_path):
    mine = ours(home)
    if not mine:
        print(f"no criterion reports under {home}")
        return 1
    try:
        with open(peer_path, encoding="utf-8") as f:
            peer = json.load(f)
    except (OSError, ValueError) as e:
        print(f"(no PyTorch kernel timings: {e})")
        peer = {"results": []}
    theirs = {}
    for r in peer.get("results", []):
        best = theirs.get(r["name"])
        if best is None or r["ms"] < best["ms"]:
            theirs[r["name"]] = r
    device = peer.get("device", "?")
    peak = next((p for key, p in PEAKS if key in device), None)
    copy = next(((s, t) for k, (s, t) in mine.items() if k.startswith("ceiling/copy_d2d")), None)
    copy_gbs = copy[1].get("Bytes", 0) / copy[0] / 1e9 if copy else None

    head = f"{'kernel':<64}{'ours us':>10}{'torch us':>10}{'speed-up':>9}{'ours':>14}{'of ceiling':>11}  torch variant"
    print(head)
    print("-" * len(head))
    for name in sorted(mine):
        secs, tp = mine[name]
        # Our variants of one operation (`…/own_n128`, `vitb14_r128/…`, `vitb14_wg2/…`) are held
        # against the same PyTorch row.
        t = (
            theirs.get(name)
            or theirs.get(name.rsplit("/", 1)[0])
            or theirs.get(re.sub(r"_(r128|wg2?)/", "/", name))
        )
        speedup = f"{t['ms'] * 1e-3 / secs:.2f}x" if t else "-"
        if "Bytes" in tp:
            rate = tp["Bytes"] / secs / 1e9
            shown = f"{rate:.0f} GB/s"
            share = f"{100 * rate / copy_gbs:.0f}% copy" if copy_gbs else "-"
        elif "Elements" in tp:
            rate = tp["Elements"] / secs / 1e12
            shown = f"{rate:.0f} TFLOP/s"
            share = f"{100 * rate / peak:.0f}% peak" if peak else "-"
        else:
            shown, share = "-", "-"
        print(
            f"{name:<64}{secs * 1e6:>10.1f}{(t['ms'] * 1e3 if t else float('nan')):>10.1f}{speedup:>9}"
            f"{shown:>14}{share:>11}  {t['variant'] if t else '-'}"
        )
    print(
        f"device: {device}, torch {peer.get('torch', '?')}; speed-up = torch time / ours (the faster "
        f"torch variant); copy ceiling {copy_gbs:.0f} GB/s (read + write)" if copy_gbs else
        f"device: {device}; no copy ceiling measured"
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
