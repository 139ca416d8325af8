#!/usr/bin/env python3
"""Reads the `RESULT <who> key=value ...` lines of the device run and prints one table: img/s,
ratio ours/PyTorch and % of the card's dense f16/bf16 tensor peak, per (model, batch, dtype)."""

import re
import shlex
import sys

# Dense f16/bf16 tensor-core peaks in TFLOP/s (no sparsity).
PEAKS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def peak(device: str) -> float | None:
    for key, value in PEAKS.items():
        if key in device:
            return value
    return None


def main(path: str) -> int:
    rows: dict[tuple, dict[str, dict[str, str]]] = {}
    for line in open(path, encoding="utf-8", errors="replace"):
        if not line.startswith("RESULT "):
            continue
        parts = shlex.split(line.strip())
        who = parts[1]
        kv = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
        key = (kv.get("model"), kv.get("batch"), kv.get("dtype"), kv.get("size"))
        rows.setdefault(key, {})[who] = kv
    if not rows:
        print("no RESULT lines")
        return 1
    head = f"{'model':<9}{'batch':>6}{'dtype':>6}{'ours img/s':>12}{'torch img/s':>12}{'ratio':>7}{'ours %pk':>9}{'torch %pk':>10}{'ours MiB':>9}{'torch MiB':>10}"
    print(head)
    print("-" * len(head))
    device = ""
    for key, who in rows.items():
        ours, torch_ = who.get("ours", {}), who.get("torch", {})
        device = ours.get("device") or torch_.get("device") or device
        pk = peak(device)
        def num(d, k):
            try:
                return float(d[k])
            except (KeyError, ValueError):
                return None
        oi, ti = num(ours, "img_s"), num(torch_, "img_s")
        ratio = f"{oi / ti:.2f}" if oi and ti else "-"
        def pct(d):
            t = num(d, "tflops")
            return f"{100 * t / pk:.1f}" if t and pk else "-"
        fmt = lambda v: f"{v:.1f}" if v is not None else "-"
        print(f"{key[0]:<9}{key[1]:>6}{key[2]:>6}{fmt(oi):>12}{fmt(ti):>12}{ratio:>7}{pct(ours):>9}{pct(torch_):>10}{ours.get('mem_mib', '-'):>9}{torch_.get('mem_mib', '-'):>10}")
    print(f"device: {device or 'unknown'}; %pk = share of the dense f16 tensor peak ({peak(device) or '?'} TFLOP/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "/dev/stdin"))
