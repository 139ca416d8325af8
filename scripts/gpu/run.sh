#!/usr/bin/env bash
# The device script, copied into bundle/ by `cargo xtask gpu-bundle`. On the GPU machine, from the
# repository root: `bash bundle/run.sh`. Ends within DINOV2_DEADLINE_S seconds (default 480: one
# 10-minute command with room for the machine start and a rerun inside 15 minutes of device time):
#   1. finds libcublas.so.13 / libcublasLt.so.13 and exports LD_LIBRARY_PATH (it must be set before
#      the binaries start: cudarc dlopens by name);
#   2. runs every GPU test (--include-ignored): kernels against their CPU twins, golden fixtures,
#      pooling on the device; the new Hopper kernels' tests first, each in its own process;
#   3. `dinov2 bench`: ViT-B/14, 224 px, batch 256, f16, ours against PyTorch + transformers (SDPA)
#      in the same invocation, then against the peer under torch.compile, the same with GEMM
#      tuning (DINOV2_GEMM_TUNE=log), two copies on two streams at once (--streams 2), the
#      tanh GELU in the GEMM epilogue (DINOV2_FAST_GELU=1), then the same pass's device time
#      per operation (DINOV2_PROFILE=1);
#      Our Hopper GEMMs (DINOV2_GEMM=fused, own; DINOV2_GEMM_TILE=256, tma, tma2, pp, pp2) and attention
#      (DINOV2_ATTENTION=wgmma, wgmma2), then both against the peer, the f16 residual stream
#      (DINOV2_RESIDUAL=compute) alone and with both, come right after the headline, then
#      ViT-S at batches 1, 64, 256 against the peer and at 64 with the graphs' own allocation
#      nodes (DINOV2_PLANNED_MEMORY=0: the memory target's row), and the op profile of the
#      new kernels after the default one;
#   4. the criterion kernel benches and PyTorch's kernels on the same shapes; `dinov2 embed` on
#      the GPU (its parity with the CPU, `forward --expect` per dtype, `dinov2 serve` and the
#      Python module dinov2_rs against the same CPU vectors, then 10500 files through ViT-B/14
#      and the server under load); then, while time remains, the new kernels at the other
#      sizes, ViT-B at 256 with the graphs' own allocation nodes instead of the planned arena
#      (the memory figures side by side), ViT-B at 518 px (batches 1 and 32, against the
#      peer), ViT-B at 1
#      and 64 (with and without CUDA graphs:
#      DINOV2_CUDA_GRAPHS=0), ViT-S at 64 without graphs (every bench prints our memory by part
#      and the peer's allocator figures), ViT-L and ViT-g, short warm-up and repeats;
#   5. prints the kernel table (ours beside PyTorch's kernels) and the model table last. The
#      full log goes to $OUT/run.log (or bundle/out/), the benches' JSON to $OUT/bench.json (one
#      file: the device tool brings back at most 8), the tables to $OUT/tables.txt; criterion's
#      reports stay on the machine (/tmp/dinov2-criterion).
set -u

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${OUT:-$HERE/out}"
mkdir -p "$OUT/bench"
CRITERION="/tmp/dinov2-criterion"
# A rerun on a warm machine must not show the last run's kernel timings as its own.
rm -rf "$CRITERION"
LOG="$OUT/run.log"
# Everything must end well inside the device tool's 600 s per command: each step gets at most
# the time left before DEADLINE, and optional steps start only with enough seconds to spare.
DEADLINE="${DINOV2_DEADLINE_S:-480}"
MIN_STEP=60
PYTHON="${DINOV2_PEER_PYTHON:-python3}"
left() { echo $((DEADLINE - SECONDS)); }
cap() { # min($1, seconds left), at least 1 (timeout 0 would mean no limit)
    local l
    l=$(left)
    [ "$l" -lt "$1" ] || l=$1
    [ "$l" -ge 1 ] || l=1
    echo "$l"
}

find_cublas() {
    local dirs d
    dirs="$("$PYTHON" - <<'PY' 2>/dev/null
import glob, os, site
roots = []
try:
    roots += site.getsitepackages() + [site.getusersitepackages()]
except Exception:
    pass
try:
    import nvidia
    roots += [os.path.dirname(p) for p in nvidia.__path__]
except Exception:
    pass
seen = []
for r in roots:
    for sub in ("nvidia/cu13/lib", "nvidia/cublas/lib"):
        d = os.path.join(r, sub)
        if glob.glob(os.path.join(d, "libcublas.so.13*")) and d not in seen:
            seen.append(d)
print("\n".join(seen))
PY
)"
    for d in $dirs /usr/local/cuda*/lib64 /usr/local/cuda*/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu; do
        if [ -e "$d/libcublas.so.13" ] && [ -e "$d/libcublasLt.so.13" ]; then
            echo "$d"
            return 0
        fi
    done
    return 1
}

# bench TAG LIMIT_S ARGS...: one `dinov2 bench` on cuda, its JSON in $OUT/bench/TAG.json.
bench() {
    local tag=$1 limit=$2 rc
    shift 2
    local device=${BENCH_DEVICE:-cuda}
    echo "-- [$tag at ${SECONDS}s] dinov2 bench --device $device $*"
    timeout "$(cap "$limit")" "$HERE/bin/dinov2" bench --device "$device" --json "$OUT/bench/$tag.json" "$@"
    rc=$?
    [ "$rc" -eq 0 ] || echo "!! $tag: exit status $rc$([ "$rc" -eq 124 ] && echo ' (time limit)')"
    return 0
}

# The main job on the GPU, `dinov2 embed`, end to end. First the pipeline's parity: the shipped
# tiny model over assets/images on the CPU (f32) against CUDA f32 and f16. Then its throughput:
# 10500 files (the sample photos, 1500 links each: run 3's 2100 took 0.9 s, too short to be
# steady) through a ViT-B/14 of random weights written by transformers, f16, batch 128, decoding
# on every core, Parquet out. Work files stay outside $OUT (the checkpoint is 350 MB); the
# summary lines go to $OUT/pipeline.txt.
pipeline() {
    local work=/tmp/dinov2-pipeline root="$HERE/.." dt i f streams rc=0
    rm -rf "$work"
    mkdir -p "$work/images"
    local tiny="$root/assets/models/dinov2-tiny-random"
    echo "-- [embed pipeline at ${SECONDS}s]"
    timeout "$(cap 60)" "$HERE/bin/dinov2" embed --model "$tiny" --device cpu \
        --output "$work/cpu.npy" "$root/assets/images" || rc=1
    for dt in f32 f16; do
        # Batches of 1 over 7 images on 2 streams: each stream runs, records (its second pass of
        # a shape) and replays CUDA graphs within the parity check.
        timeout "$(cap 60)" "$HERE/bin/dinov2" embed --model "$tiny" --device cuda --dtype "$dt" \
            --batch-size 1 --streams 2 --output "$work/cuda-$dt.npy" "$root/assets/images" || rc=1
        local tol=1e-4
        [ "$dt" = f32 ] || tol=1e-2
        "$PYTHON" "$HERE/scripts/pipeline.py" compare "$work/cpu.npy" "$work/cuda-$dt.npy" "$tol" \
            >>"$OUT/pipeline.txt" 2>&1 || rc=1
    done
    # Parity with transformers on this machine, per dtype: its float32 outputs (hidden states
    # and attentions too) for three sample images, against `dinov2 forward --expect` on the GPU.
    if timeout "$(cap 60)" "$PYTHON" "$HERE/scripts/transformers_reference.py" --model "$tiny" \
        --hidden-states --attentions --out "$work/reference.safetensors" \
        "$root/assets/images/astronaut.jpg" "$root/assets/images/chelsea.jpg" \
        "$root/assets/images/camera.png" 2>>"$OUT/pipeline.txt"; then
        for dt in f32 f16 bf16; do
            echo "forward --expect, cuda $dt:" >>"$OUT/pipeline.txt"
            timeout "$(cap 30)" "$HERE/bin/dinov2" forward --model "$tiny" --device cuda --dtype "$dt" \
                --expect "$work/reference.safetensors" >>"$OUT/pipeline.txt" 2>&1 || rc=1
        done
        # The opt-in tanh GELU in the GEMM epilogue, against the same float32 outputs: how far
        # the approximation moves f16 from transformers' exact GELU (beside the f16 line above).
        echo "forward --expect, cuda f16, DINOV2_FAST_GELU=1:" >>"$OUT/pipeline.txt"
        DINOV2_FAST_GELU=1 timeout "$(cap 30)" "$HERE/bin/dinov2" forward --model "$tiny" \
            --device cuda --dtype f16 --expect "$work/reference.safetensors" \
            >>"$OUT/pipeline.txt" 2>&1 || rc=1
        # The opt-in f16 residual stream, likewise (hidden states then come from f16 values).
        echo "forward --expect, cuda f16, DINOV2_RESIDUAL=compute:" >>"$OUT/pipeline.txt"
        DINOV2_RESIDUAL=compute timeout "$(cap 30)" "$HERE/bin/dinov2" forward --model "$tiny" \
            --device cuda --dtype f16 --expect "$work/reference.safetensors" \
            >>"$OUT/pipeline.txt" 2>&1 || rc=1
    else
        echo "!! transformers_reference.py failed" >>"$OUT/pipeline.txt"
        rc=1
    fi
    # `dinov2 serve` on the GPU: the tiny model's vectors over HTTP against the CPU's.
    # The images in the folder walk's order (sorted paths), as cpu.npy's rows are.
    local sample=()
    mapfile -t sample < <(ls "$root"/assets/images/*.jpg "$root"/assets/images/*.png | LC_ALL=C sort)
    serve_check "$tiny" "$work/cpu.npy" 1e-4 0 "${sample[@]}" || rc=1
    # The Python module, dinov2_rs, on the GPU against the same CPU vectors.
    PYTHONPATH="$HERE/python" timeout "$(cap 60)" "$PYTHON" "$HERE/scripts/pipeline.py" binding \
        "$tiny" "$work/cpu.npy" "${sample[@]}" >>"$OUT/pipeline.txt" 2>&1 || rc=1
    [ "$rc" -eq 0 ] || echo "!! embed pipeline parity FAILED" | tee -a "$OUT/pipeline.txt"
    room 45 || return "$rc"
    # 1500 links to each photo (one process: 10500 runs of `ln` would take seconds).
    "$PYTHON" - "$work/images" "$root"/assets/images/*.jpg "$root"/assets/images/*.png <<'PY' || return 1
import os, sys
out, photos = sys.argv[1], sys.argv[2:]
for i in range(1, 1501):
    for p in photos:
        os.symlink(p, os.path.join(out, f"{i}-{os.path.basename(p)}"))
PY
    timeout "$(cap 90)" "$PYTHON" "$HERE/scripts/pipeline.py" checkpoint "$work/vitb14" || return 1
    echo "ViT-B/14 f16, batch 128, $(ls "$work/images" | wc -l) files, $(nproc) CPU cores:" >>"$OUT/pipeline.txt"
    # The defaults (two model copies on two streams, two windows decoded at once), then three
    # windows (run 4: 11.8 of 16 cores busy with two), then one window at a time (run 4: two
    # gave +20%). One stream and MIMALLOC_PURGE_DELAY=-1 were run 4's other rows (-2.5%,
    # +2.4%: no change worth a default).
    local setting decoders
    for setting in "2 2" "2 3" "2 1"; do
        read -r streams decoders <<<"$setting"
        room 30 || break
        echo "--streams $streams --decoders $decoders:" >>"$OUT/pipeline.txt"
        timeout "$(cap 90)" "$HERE/bin/dinov2" embed --model "$work/vitb14" --device cuda --dtype f16 \
            --batch-size 128 --streams "$streams" --decoders "$decoders" --overwrite \
            --output "$work/vitb14.parquet" "$work/images" 2>&1 | tee -a "$OUT/pipeline.txt"
    done
    # One decoding worker over 1050 of the files: this machine's decode + preprocess time per
    # image on one core, free of contention, beside the 16 workers' figure above.
    if room 30; then
        ls "$work/images" | head -1050 | sed "s|^|$work/images/|" >"$work/some.txt"
        echo "--workers 1, 1050 files:" >>"$OUT/pipeline.txt"
        timeout "$(cap 60)" "$HERE/bin/dinov2" embed --model "$work/vitb14" --device cuda \
            --dtype f16 --batch-size 128 --workers 1 --overwrite \
            --output "$work/some.parquet" "@$work/some.txt" 2>&1 | tee -a "$OUT/pipeline.txt"
    fi
    # Photographs as cameras write them: the sample photo upscaled to 2048 x 1366 and 4032 x
    # 3024 (a 12-megapixel phone photo) and saved by Pillow (quality 90, baseline), 300 links
    # each: the decoding a real collection costs, with the crop-only JPEG decoding (2026-11-28).
    if room 40; then
        mkdir -p "$work/photos"
        "$PYTHON" - "$work/photos" "$root/assets/images/rocket.jpg" <<'PY' || true
import os, sys
from PIL import Image
out, src = sys.argv[1], sys.argv[2]
image = Image.open(src).convert("RGB")
for w, h in [(2048, 1366), (4032, 3024)]:
    path = os.path.join(out, f"photo_{w}.jpg")
    image.resize((w, h), Image.BICUBIC).save(path, quality=90)
    for i in range(300):
        os.symlink(path, os.path.join(out, f"{i}-{w}.jpg"))
PY
        echo "large photos, $(ls "$work/photos" | grep -c -- -) files (2048 x 1366 and 4032 x 3024):" >>"$OUT/pipeline.txt"
        timeout "$(cap 90)" "$HERE/bin/dinov2" embed --model "$work/vitb14" --device cuda \
            --dtype f16 --batch-size 128 --overwrite --output "$work/photos.parquet" \
            "$work/photos" 2>&1 | tee -a "$OUT/pipeline.txt"
    fi
    # The server under load: ViT-B/14 f16, 16 clients for 15 s.
    if room 40; then
        echo "dinov2 serve, ViT-B/14 f16, --max-batch-size 128:" >>"$OUT/pipeline.txt"
        serve_check "$work/vitb14" "" 0 15 "$root"/assets/images/*.jpg --max-batch-size 128 || true
    fi
    return "$rc"
}

# serve_check MODEL REF.npy TOL SECONDS IMAGE... [-- SERVE ARGS...]: starts `dinov2 serve` on
# cuda f32 (f16 when no REF is given), checks its vectors against REF.npy, loads it for SECONDS,
# stops it; its lines go to $OUT/pipeline.txt.
serve_check() {
    local model=$1 ref=$2 tol=$3 secs=$4 log=/tmp/dinov2-serve.log addr pid i rc=0
    shift 4
    local images=() extra=()
    while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do images+=("$1"); shift; done
    extra=("$@")
    local dtype=f32
    [ -n "$ref" ] || dtype=f16
    "$HERE/bin/dinov2" serve --model "$model" --device cuda --dtype "$dtype" --port 0 \
        "${extra[@]}" 2>"$log" &
    pid=$!
    for i in $(seq 1 120); do
        addr=$(grep -o 'listening on http://[0-9.:]*' "$log" | head -1 | sed 's|listening on http://||')
        [ -n "$addr" ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if [ -z "$addr" ]; then
        echo "!! dinov2 serve did not start:" >>"$OUT/pipeline.txt"
        cat "$log" >>"$OUT/pipeline.txt"
        kill "$pid" 2>/dev/null
        return 1
    fi
    if [ -n "$ref" ]; then
        timeout "$(cap 60)" "$PYTHON" "$HERE/scripts/pipeline.py" serve "$addr" "$ref" "$tol" 0 \
            "${images[@]}" >>"$OUT/pipeline.txt" 2>&1 || rc=1
    else
        # No reference: a throughput run, its answers compared with the first ones (f16: other
        # batch compositions may round differently).
        timeout "$(cap 40)" "$PYTHON" -c '
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
import pipeline
addr, images = sys.argv[2], sys.argv[3:]
v = pipeline.post(addr, [open(p, "rb").read() for p in images])
np.save("/tmp/dinov2-serve-ref.npy", np.array(v, dtype=np.float32))
' "$HERE/scripts" "$addr" "${images[@]}" >>"$OUT/pipeline.txt" 2>&1 \
            && timeout "$(cap $((secs + 40)))" "$PYTHON" "$HERE/scripts/pipeline.py" serve "$addr" \
                /tmp/dinov2-serve-ref.npy 1e-2 "$secs" "${images[@]}" >>"$OUT/pipeline.txt" 2>&1 \
            || rc=1
        "$PYTHON" -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' \
            "http://$addr/metrics" 2>/dev/null | grep -E "^dinov2_(pass|request|images_decoded|decode|model_threads)" >>"$OUT/pipeline.txt"
    fi
    # The server finishes the requests under way, then exits; one stuck on the device must not
    # hold the run (nor the log pipe the server writes to).
    kill "$pid" 2>/dev/null
    local i
    for i in $(seq 20); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return "$rc"
}

# wg_ok: false once a test of the warpgroup-MMA attention kernels (never run on a device before)
# timed out, so that the steps that use them do not each spend their whole time limit.
wg_ok() {
    [ -z "${WG_HANGS:-}" ]
}

# room SECONDS: true when that many seconds are left before the deadline.
room() {
    if [ "$(left)" -lt "$1" ]; then
        echo "(skipping: ${SECONDS}s used, deadline ${DEADLINE}s, this step wants $1 s)"
        return 1
    fi
}

# The programs travel packed (payload.tar.xz, from `cargo xtask gpu-bundle`): bin/ and python/.
unpack() {
    [ -f "$HERE/payload.tar.xz" ] || return 0
    "$PYTHON" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
        "$HERE/payload.tar.xz" "$HERE" 2>/dev/null || tar -xJf "$HERE/payload.tar.xz" -C "$HERE"
}

main() {
    local status=0
    echo "== dinov2-rs device run $(date -u +%FT%TZ)"
    unpack || { echo "!! cannot unpack $HERE/payload.tar.xz"; return 1; }
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
    local libdir
    if libdir="$(find_cublas)"; then
        export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        echo "cuBLAS: $libdir"
    else
        echo "cuBLAS 13 not found (site-packages/nvidia/cu13/lib, /usr/local/cuda*/lib64); relying on the loader's default paths"
    fi
    export DINOV2_GOLDEN_DIR="$HERE/../tests/fixtures/golden"
    export RUST_BACKTRACE=1

    echo "== GPU tests"
    # The tests of the Hopper kernels not yet run on a device come first, each in a process of
    # its own: a fault in one (a sticky CUDA error poisons the process's context; a panic while
    # unwinding aborts it) must not take the others' results with it. The rest then run
    # together, without them.
    # attention_matches_cpu runs the wgmma attention kernels too (at every head dim 64 case).
    local hopper=("kernels-gpu own_gemm_layout_probe" "kernels-gpu wgmma_attention_probe"
        "kernels-gpu attention_matches_cpu"
        "kernels-gpu own_gemms_match_cpu" "kernels-gpu residual_gemm_matches_the_two_passes"
        "kernels-gpu folded_layer_norm_matches_the_norm_then_the_product"
        "model-cuda our_gemms_in_the_model_match_the_cpu")
    local entry bin name skips=()
    local rc
    for entry in "${hopper[@]}"; do
        read -r bin name <<<"$entry"
        skips+=(--skip "$name")
        echo "-- $bin $name"
        timeout "$(cap 60)" "$HERE/bin/$bin" --include-ignored --exact "$name" --nocapture
        rc=$?
        if [ "$rc" -ne 0 ]; then
            echo "!! $bin $name FAILED (exit status $rc$([ "$rc" -eq 124 ] && echo ': time limit, a hang?'))"
            status=1
            # The GEMM tests run the TMA kernels last: a hang there (an mbarrier that never
            # completes) would cost every bench step that uses them its whole time limit.
            # (TMA_HANGS=1 also takes them out of the kernel benches; WG_HANGS=1 likewise the
            # warpgroup-MMA attention.)
            if [ "$rc" -eq 124 ]; then
                case $name in
                    *gemm* | folded*) TMA_HANGS=1 ;;
                    *attention*) WG_HANGS=1 ;;
                esac
            fi
        fi
    done
    [ -z "${TMA_HANGS:-}" ] || echo "!! the TMA GEMM may hang: its bench steps are skipped"
    wg_ok || echo "!! the warpgroup-MMA attention may hang: its bench steps are skipped"
    for bin in kernels-gpu model-cuda; do
        echo "-- $bin (the others)"
        if ! timeout "$(cap 200)" "$HERE/bin/$bin" --include-ignored --test-threads=1 --nocapture \
            "${skips[@]}"; then
            echo "!! $bin FAILED"
            status=1
        fi
    done
    echo "== tests done at ${SECONDS}s (status $status)"

    echo "== benchmarks (f16, 224 px; timed: pixels on the device -> CLS vectors on the host)"
    # The headline first: ViT-B/14 at batch 256 against PyTorch SDPA (eager).
    if room 30; then
        bench vitb14-256 150 --dtype f16 --arch vitb14 --batch-size 256 --warmup 3 --repeats 10 --peer "$PYTHON"
    fi
    # Our Hopper GEMMs (kernels/gemm_sm90a.cu, opt-in until measured): the exact GELU fused
    # into fc1's epilogue (DINOV2_GEMM=fused: no GELU pass), every GEMM they run (own), each
    # with 128 x 128 and 128 x 256 tiles fed by cp.async and the warp-specialized TMA kernels:
    # persistent with the consumers taking turns (pp), the same in clusters of two multicasting
    # the weights (pp2), one tile a block (tma) and that in clusters (tma2). The likeliest
    # defaults first; the kernel benches below time every kernel on each GEMM.
    # Their GPU tests ran above (own_gemms_match_cpu, our_gemms_in_the_model_match_the_cpu).
    local policy gemm tile
    for policy in "fused pp" "own pp" "own pp2" "own tma" "own tma2" "fused 128" "own 256" "own 128"; do
        room 30 || break
        read -r gemm tile <<<"$policy"
        case $tile in tma* | pp*) [ -n "${TMA_HANGS:-}" ] && continue ;; esac
        DINOV2_GEMM=$gemm DINOV2_GEMM_TILE=$tile bench "vitb14-256-gemm-$gemm-$tile" 60 --dtype f16 \
            --arch vitb14 --batch-size 256 --warmup 3 --repeats 10
    done
    # The warpgroup-MMA attention (kernels/attention_sm90a.cu, opt-in), alone and with the
    # fused GEMM, against the peer: the two Hopper kernels together are the candidate default.
    if room 30 && wg_ok; then
        DINOV2_ATTENTION=wgmma bench vitb14-256-attn-wg 60 --dtype f16 --arch vitb14 --batch-size 256 \
            --warmup 3 --repeats 10
    fi
    # Two warpgroups a block sharing each K/V tile (DINOV2_ATTENTION=wgmma2): half the K/V
    # reads from L2, at 224 and 518 px (22 query tiles of 64 rows an image and head there).
    if room 30 && wg_ok; then
        DINOV2_ATTENTION=wgmma2 bench vitb14-256-attn-wg2 60 --dtype f16 --arch vitb14 --batch-size 256 \
            --warmup 3 --repeats 10
    fi
    if room 30 && wg_ok; then
        DINOV2_ATTENTION=wgmma2 bench vitb14-32-518px-attn-wg2 60 --dtype f16 --arch vitb14 \
            --batch-size 32 --image-size 518 --warmup 2 --repeats 5
    fi
    if room 30 && wg_ok; then
        DINOV2_ATTENTION=wgmma DINOV2_GEMM=fused DINOV2_GEMM_TILE=256 bench vitb14-256-hopper 120 --dtype f16 --arch vitb14 \
            --batch-size 256 --warmup 3 --repeats 10 --peer "$PYTHON"
    fi
    # The same at 518 px (1370 tokens), where our flash kernel was 0.60x SDPA in run 4.
    if room 40 && wg_ok; then
        DINOV2_ATTENTION=wgmma DINOV2_GEMM=fused DINOV2_GEMM_TILE=256 bench vitb14-32-518px-hopper 120 --dtype f16 \
            --arch vitb14 --batch-size 32 --image-size 518 --warmup 2 --repeats 5 --peer "$PYTHON"
    fi
    # The residual stream in f16 (DINOV2_RESIDUAL=compute, opt-in: 8 bytes an element through
    # each residual update + LayerNorm instead of 12), alone and with both Hopper kernels.
    if room 30; then
        DINOV2_RESIDUAL=compute bench vitb14-256-resid16 60 --dtype f16 --arch vitb14 --batch-size 256 \
            --warmup 3 --repeats 10
    fi
    if room 30 && wg_ok; then
        DINOV2_RESIDUAL=compute DINOV2_ATTENTION=wgmma DINOV2_GEMM=fused DINOV2_GEMM_TILE=256 bench vitb14-256-all 60 \
            --dtype f16 --arch vitb14 --batch-size 256 --warmup 3 --repeats 10
    fi
    # The same with the persistent TMA GEMM for every linear layer it runs and the 128-row
    # attention, then with the warp-specialized TMA GEMM.
    if room 30 && [ -z "${TMA_HANGS:-}" ] && wg_ok; then
        DINOV2_RESIDUAL=compute DINOV2_ATTENTION=wgmma2 DINOV2_GEMM=own DINOV2_GEMM_TILE=pp bench vitb14-256-all-pp 60 \
            --dtype f16 --arch vitb14 --batch-size 256 --warmup 3 --repeats 10 --peer "$PYTHON"
    fi
    # And with the LayerNorms folded into the persistent GEMMs (DINOV2_NORM=fold): no normed
    # rows written, the statistics from the residual passes and fc2's epilogue.
    if room 30 && [ -z "${TMA_HANGS:-}" ] && wg_ok; then
        DINOV2_NORM=fold DINOV2_RESIDUAL=compute DINOV2_ATTENTION=wgmma2 DINOV2_GEMM=own DINOV2_GEMM_TILE=pp \
            bench vitb14-256-all-pp-fold 60 --dtype f16 --arch vitb14 --batch-size 256 --warmup 3 --repeats 10
    fi
    if room 30 && [ -z "${TMA_HANGS:-}" ] && wg_ok; then
        DINOV2_RESIDUAL=compute DINOV2_ATTENTION=wgmma2 DINOV2_GEMM=own DINOV2_GEMM_TILE=tma bench vitb14-256-all-tma 60 \
            --dtype f16 --arch vitb14 --batch-size 256 --warmup 3 --repeats 10
    fi
    # ViT-S/14 at 1, 64 and 256 against the peer, and at 64 with the graphs' own allocation
    # nodes: the memory target's row (run 4: 258 against 248 MiB at 64) before the longer steps
    # below can crowd it out.
    if room 60; then
        bench vits14-1-64-256 150 --dtype f16 --arch vits14 --batch-size 1,64,256 --warmup 2 --repeats 5 \
            --peer "$PYTHON"
    fi
    if room 30; then
        DINOV2_PLANNED_MEMORY=0 bench vits14-64-graphmem 90 --dtype f16 --arch vits14 --batch-size 64 \
            --warmup 2 --repeats 5
    fi
    # The same against the peer under torch.compile (it compiles for a minute or more).
    if room 240; then
        bench vitb14-256-compile 170 --dtype f16 --arch vitb14 --batch-size 256 --warmup 3 --repeats 10 --peer "$PYTHON" --peer-compile
    fi
    # The same with every large GEMM timed over cuBLASLt's candidates at first use (opt-in:
    # DINOV2_GEMM_TUNE; the log lists each shape's candidates).
    if room 30; then
        DINOV2_GEMM_TUNE=log bench vitb14-256-tuned 60 --dtype f16 --arch vitb14 --batch-size 256 \
            --warmup 3 --repeats 10
    fi
    # Two copies on two streams at once, as `dinov2 embed` runs the model by default: whether
    # the memory-bound kernels of one overlap the GEMMs of the other.
    if room 30; then
        bench vitb14-256-streams2 60 --dtype f16 --arch vitb14 --batch-size 256 --warmup 3 \
            --repeats 10 --streams 2
    fi
    # The exact GELU replaced by its tanh approximation in the fc1 GEMM's epilogue (opt-in):
    # what the activation pass costs.
    if room 30; then
        DINOV2_FAST_GELU=1 bench vitb14-256-fastgelu 60 --dtype f16 --arch vitb14 --batch-size 256 \
            --warmup 3 --repeats 10
    fi
    # Where its time goes: device time per operation (CUDA events around each; graphs off).
    if room 30; then
        echo "-- [op profile at ${SECONDS}s] DINOV2_PROFILE=1 dinov2 bench --arch vitb14 --batch-size 256"
        DINOV2_PROFILE=1 timeout "$(cap 60)" "$HERE/bin/dinov2" bench --device cuda --dtype f16 \
            --arch vitb14 --batch-size 256 --warmup 1 --repeats 3 --json "$OUT/profile.json" \
            >"$OUT/profile.txt" 2>&1
        rc=$?
        cat "$OUT/profile.txt"
        [ "$rc" -eq 0 ] || echo "!! op profile: exit status $rc"
    fi
    # The same with everything opt-in (the 1.5x candidate): the persistent GEMM for every
    # linear layer, the GELU in fc1's epilogue (what moved from `activation` to `gemm`) and the
    # MLP's residual update in fc2's (`gemm_residual`, then a plain `layer_norm`), the 128-row
    # warpgroup-MMA attention, the f16 residual stream.
    if room 30 && [ -z "${TMA_HANGS:-}" ] && wg_ok; then
        echo "-- [op profile, DINOV2_GEMM=own DINOV2_GEMM_TILE=pp DINOV2_ATTENTION=wgmma2 DINOV2_RESIDUAL=compute, at ${SECONDS}s]"
        DINOV2_GEMM=own DINOV2_GEMM_TILE=pp DINOV2_ATTENTION=wgmma2 DINOV2_RESIDUAL=compute DINOV2_PROFILE=1 \
            timeout "$(cap 60)" "$HERE/bin/dinov2" bench --device cuda \
            --dtype f16 --arch vitb14 --batch-size 256 --warmup 1 --repeats 3 >"$OUT/profile-fused.txt" 2>&1
        cat "$OUT/profile-fused.txt"
    fi
    # The kernels next (the attention and LayerNorm targets), short settings, then PyTorch's
    # kernels on the same shapes.
    if [ -x "$HERE/bin/kernel-bench" ] && room "$MIN_STEP"; then
        echo "-- [kernel benches at ${SECONDS}s]"
        # About 67 benches on an H100: short settings (and 5000 bootstrap resamples instead of
        # 100000) so that all of them fit; the attention and LayerNorm targets come first.
        CRITERION_HOME="$CRITERION" DINOV2_BENCH_SKIP_TMA=${TMA_HANGS:-} DINOV2_BENCH_SKIP_WG=${WG_HANGS:-} \
            timeout "$(cap 150)" "$HERE/bin/kernel-bench" --bench --warm-up-time 0.2 \
            --measurement-time 0.6 --sample-size 30 --nresamples 5000 \
            || echo "!! kernel benches: exit status $?"
        if room 20; then
            echo "-- [PyTorch kernels at ${SECONDS}s]"
            timeout "$(cap 60)" "$PYTHON" "$HERE/scripts/peer_kernels.py" >"$OUT/peer_kernels.json" \
                || echo "!! PyTorch kernels: exit status $?"
        fi
    fi
    # The main job end to end.
    if room 60; then
        pipeline || status=1
    fi
    # The other sizes and ViT-B's small batches (with and without CUDA graphs, where launches
    # dominate) while time remains.
    local step tag arch batches gemm size
    for step in "hopper vits14 64,256 224" "hopper vitb14 1 518" "gemm fused vits14 64,256" "gemm fused vitl14 64,256" "gemm own vitg14 64,256" "graphmem vitb14 256" "hires vitb14 1,32" "vitb14 1,64" "nographs vitb14 1,64" "nographs vits14 64" "vitl14 1,64,256" "vitg14 1,64,256" "cpu vitb14 1,8,64" "cpu vits14 1,8"; do
        room "$MIN_STEP" || break
        case $step in
            hopper*)
                # Both Hopper kernels (the attention at head dim 64, the GEMM where the GELU
                # follows) against the peer, at 518 px too, where our flash kernel trailed SDPA.
                wg_ok || continue
                read -r tag arch batches size <<<"$step"
                DINOV2_ATTENTION=wgmma DINOV2_GEMM=fused DINOV2_GEMM_TILE=256 bench "$arch-${batches//,/-}-${size}px-hopper" 120 \
                    --dtype f16 --arch "$arch" --batch-size "$batches" --image-size "$size" --warmup 2 \
                    --repeats 5 --peer "$PYTHON"
                ;;
            gemm*)
                # Our Hopper GEMMs at the other sizes (ViT-g/14 has SwiGLU, no GELU: `own`).
                read -r tag gemm arch batches <<<"$step"
                DINOV2_GEMM=$gemm bench "$arch-${batches//,/-}-gemm-$gemm" 90 --dtype f16 --arch "$arch" \
                    --batch-size "$batches" --warmup 2 --repeats 5
                ;;
            nographs*)
                read -r tag arch batches <<<"$step"
                DINOV2_CUDA_GRAPHS=0 bench "$arch-${batches//,/-}-nographs" 90 --dtype f16 --arch "$arch" \
                    --batch-size "$batches" --warmup 2 --repeats 5
                ;;
            hires*)
                # 518 px (1370 tokens), DINOv2's own high resolution: the end-to-end ratio
                # where our attention trails SDPA (0.60x in run 4).
                read -r tag arch batches <<<"$step"
                bench "$arch-${batches//,/-}-518px" 120 --dtype f16 --arch "$arch" --batch-size "$batches" \
                    --image-size 518 --warmup 2 --repeats 5 --peer "$PYTHON"
                ;;
            cpu*)
                # The CPU backend on this machine's cores (the development machine has two),
                # f32 against PyTorch on as many threads: where the products and attention
                # split rows as well as columns so that every thread has work.
                read -r tag arch batches <<<"$step"
                BENCH_DEVICE=cpu bench "$arch-${batches//,/-}-cpu" 120 --arch "$arch" \
                    --batch-size "$batches" --warmup 1 --repeats 5 --peer "$PYTHON"
                ;;
            graphmem*)
                # Recordings with the graph's own allocation nodes instead of the planned arena:
                # the memory figure the arena replaced, in the same run.
                read -r tag arch batches <<<"$step"
                DINOV2_PLANNED_MEMORY=0 bench "$arch-${batches//,/-}-graphmem" 90 --dtype f16 --arch "$arch" \
                    --batch-size "$batches" --warmup 2 --repeats 5
                ;;
            *)
                read -r arch batches <<<"$step"
                bench "$arch-${batches//,/-}" 150 --dtype f16 --arch "$arch" --batch-size "$batches" \
                    --warmup 2 --repeats 5 --peer "$PYTHON"
                ;;
        esac
    done
    echo "== done at ${SECONDS}s"
    return $status
}

main 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
echo
echo "== summary (tests and the embed checks: $([ "$status" -eq 0 ] && echo passed || echo "FAILED, see the !! lines"); full log: $LOG; JSON: $OUT/bench.json)" | tee -a "$LOG"
if [ -f "$OUT/pipeline.txt" ]; then
    echo "-- dinov2 embed on the GPU" | tee -a "$LOG"
    cat "$OUT/pipeline.txt" | tee -a "$LOG"
    echo | tee -a "$LOG"
fi
if [ -f "$OUT/profile.txt" ]; then
    echo "-- ViT-B/14 f16 batch 256: device time per operation" | tee -a "$LOG"
    grep -E "^  " "$OUT/profile.txt" | tee -a "$LOG"
    echo | tee -a "$LOG"
fi
if [ -f "$OUT/profile-fused.txt" ]; then
    echo "-- the same with DINOV2_GEMM=own DINOV2_GEMM_TILE=pp DINOV2_ATTENTION=wgmma2 DINOV2_RESIDUAL=compute" | tee -a "$LOG"
    grep -E "^  " "$OUT/profile-fused.txt" | tee -a "$LOG"
    echo | tee -a "$LOG"
fi
if [ -d "$CRITERION" ]; then
    "$PYTHON" "$HERE/scripts/kernel_table.py" "$CRITERION" "$OUT/peer_kernels.json" 2>&1 | tee -a "$LOG" "$OUT/tables.txt"
    echo | tee -a "$LOG"
fi
"$PYTHON" "$HERE/scripts/table.py" "$OUT/bench" 2>&1 | tee -a "$LOG" "$OUT/tables.txt"
# One file of every bench's JSON, by tag (what table.py also reads), in place of the many, with
# the op profile's: the device tool brings back at most 8 files, and the other files of $OUT
# (run.log, tables.txt, pipeline.txt, profile.txt, profile-fused.txt, peer_kernels.json) are 6.
# A file that does not parse (a bench cut off mid-write) is named under "errors", not fatal.
"$PYTHON" - "$OUT/bench" "$OUT/profile.json" "$OUT/bench.json" <<'PY'
import glob, json, os, sys
runs, errors = {}, {}
files = sorted(glob.glob(os.path.join(sys.argv[1], "*.json")))
if os.path.exists(sys.argv[2]):
    files.append(sys.argv[2])
for f in files:
    tag = os.path.splitext(os.path.basename(f))[0]
    try:
        with open(f, encoding="utf-8") as fh:
            runs[tag] = json.load(fh)
    except (OSError, ValueError) as e:
        errors[tag] = str(e)
with open(sys.argv[3], "w", encoding="utf-8") as fh:
    json.dump({"runs": runs, "errors": errors}, fh, indent=1)
PY
rm -rf "$OUT/bench" "$OUT/profile.json"
exit "$status"
