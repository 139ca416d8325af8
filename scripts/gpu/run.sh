#!/usr/bin/env bash
# The device script, copied into bundle/ by `cargo xtask gpu-bundle`. On the GPU machine, from the
# repository root: `bash bundle/run.sh`. Fits one 10-minute command:
#   1. finds libcublas.so.13 / libcublasLt.so.13 and exports LD_LIBRARY_PATH (it must be set before
#      the binaries start: cudarc dlopens by name);
#   2. runs every GPU test (--include-ignored): kernels against their CPU twins, golden fixtures;
#   3. ViT-B/14, 224 px, batch 256, f16: ours (cuda_bench) against PyTorch + transformers (SDPA);
#   4. other sizes and batches while time remains;
#   5. prints one table last. The full log goes to $OUT/run.log (or bundle/out/).
set -u

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${OUT:-$HERE/out}"
mkdir -p "$OUT"
LOG="$OUT/run.log"
RESULTS="$OUT/results.txt"
: >"$RESULTS"
# Everything must end well inside the device tool's 600 s per command: each step gets at most
# the time left before DEADLINE, and optional steps start only with MIN_STEP seconds to spare.
DEADLINE="${DINOV2_DEADLINE_S:-560}"
MIN_STEP=75
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
    dirs="$(python3 - <<'PY' 2>/dev/null
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

main() {
    local status=0
    echo "== dinov2-rs device run $(date -u +%FT%TZ)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
    local libdir
    if libdir="$(find_cublas)"; then
        export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        echo "cuBLAS: $libdir"
    else
        echo "cuBLAS 13 not found (site-packages/nvidia/cu13/lib, /usr/local/cuda*/lib64); relying on the loader's default paths"
    fi
    export DINOV2_GOLDEN_DIR="$HERE/fixtures/golden"
    export RUST_BACKTRACE=1

    echo "== GPU tests"
    for t in kernels-gpu model-cuda; do
        echo "-- $t"
        if ! timeout "$(cap 200)" "$HERE/bin/$t" --include-ignored --test-threads=1 --nocapture; then
            echo "!! $t FAILED"
            status=1
        fi
    done
    echo "== tests done at ${SECONDS}s (status $status)"

    bench() { # model batch dtype
        local args=(--model "$1" --batch "$2" --dtype "$3" --size 224)
        echo "-- ours vit$1 batch $2 $3"
        timeout "$(cap 120)" "$HERE/bin/cuda_bench" "${args[@]}" | tee -a "$RESULTS"
        echo "-- torch vit$1 batch $2 $3"
        timeout "$(cap 150)" python3 "$HERE/scripts/torch_peer.py" "${args[@]}" | tee -a "$RESULTS"
    }
    echo "== benchmarks"
    if [ "$(left)" -gt 20 ]; then
        bench b 256 f16
    fi
    for cfg in "s 256 f16" "b 64 f16" "b 1 f16" "l 256 f16" "b 256 bf16" "g 64 f16"; do
        if [ "$(left)" -lt "$MIN_STEP" ]; then
            echo "(skipping $cfg and the rest: ${SECONDS}s used, deadline ${DEADLINE}s)"
            break
        fi
        # shellcheck disable=SC2086
        bench $cfg
    done
    echo "== done at ${SECONDS}s"
    return $status
}

main 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
echo
echo "== summary (tests: $([ "$status" -eq 0 ] && echo passed || echo FAILED); full log: $LOG)"
python3 "$HERE/scripts/table.py" "$RESULTS" | tee -a "$LOG"
exit "$status"
