#!/usr/bin/env python3
"""Prints one table from the `--json` files that `dinov2 bench` wrote during the device run: per
(model, image size, batch, dtype, peer mode) our img/s and PyTorch's, the ratio, each side's share
of the peak (on a card its dense f16/bf16 tensor peak, on the CPU the f32 FMA ceiling measured in
that run), each side's device memory (the driver's used-memory delta), and whether our passes were
CUDA-graph replays (on), ran without graphs (off), or fell back (FAIL); `run` is the JSON file's
name, the device script's tag for the invocation (e.g. `-tuned`: DINOV2_GEMM_TUNE). With
`--streams N`, `ours img/s` is the N copies' rate together.

    python3 table.py DIR_OR_FILE...   (a folder of bench JSON files, or run.sh's merged bench.json)
"""

import glob
import json
import os
import sys


def load(paths):
    files = []
    for p in paths:
        files += sorted(glob.glob(os.path.join(p, "*.json"))) if os.path.isdir(p) else [p]
    rows = []
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError) as e:
            print(f"(skipping {f}: {e})")
            continue
        # A merged file (run.sh's bench.json): {"runs": {tag: one bench's JSON}}.
        runs = data["runs"] if "runs" in data else {os.path.splitext(os.path.basename(f))[0]: data}
        for run, one in runs.items():
            graphs = str(one.get("cuda_graphs") or "-")
            graphs = "off" if graphs == "off" else "FAIL" if graphs.startswith("failed") else "on" if graphs != "-" else "-"
            rows += [dict(r, graphs=graphs, run=run) for r in one.get("results", [])]
    return rows


def fmt(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f}"


def mib(v):
    return "-" if v is None else str(int(v) >> 20)


def main(paths):
    rows = load(paths)
    if not rows:
        print("no benchmark results (see the log above for why)")
        return 1
    head = (
        f"{'model':<10}{'px':>5}{'batch':>6}{'dtype':>6}{'peer':>8}{'ours img/s':>12}{'torch img/s':>12}"
        f"{'ratio':>7}{'ours %pk':>9}{'torch %pk':>10}{'ours MiB':>9}{'torch MiB':>10}{'graphs':>7}"
        f"  run"
    )
    print(head)
    print("-" * len(head))
    devices, peaks = set(), set()
    for r in rows:
        ours, torch_ = r.get("ours") or {}, r.get("torch") or {}
        devices.add(r.get("device_name") or "?")
        if r.get("device") != "cpu":
            peaks.add(r.get("peak_tflop_per_s"))
        together = r.get("streams_together") or {}
        ours_rate = together.get("images_per_s", ours.get("images_per_s"))
        ratio = r.get("ratio")
        peer = "-" if not torch_ else ("compile" if r.get("peer_compile") else "eager")
        print(
            f"{os.path.basename(str(r.get('arch', '?'))):<10}{r.get('image_size', '?'):>5}"
            f"{r.get('batch', '?'):>6}{r.get('dtype', '?'):>6}{peer:>8}"
            f"{fmt(ours_rate):>12}{fmt(torch_.get('images_per_s')):>12}"
            f"{(fmt(ratio, 2) + 'x') if ratio else '-':>7}"
            f"{fmt(ours.get('percent_of_peak')):>9}{fmt(torch_.get('percent_of_peak')):>10}"
            f"{mib(ours.get('memory_delta_bytes')):>9}{mib(torch_.get('memory_delta_bytes')):>10}"
            f"{r.get('graphs', '-'):>7}  {r.get('run', '-')}"
        )
    peak = ", ".join(fmt(p, 0) for p in peaks if p) or "unknown"
    print(
        f"device: {', '.join(sorted(devices))}; %pk = share of the dense f16/bf16 tensor peak "
        f"({peak} TFLOP/s; CPU rows: of the f32 FMA ceiling measured in that run); timed: pixels "
        f"on the device -> CLS vectors, median of the repeats; MiB = the driver's used-memory "
        f"delta during the passes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["."]))
