#!/usr/bin/env bash
# One prepared check for a lent GPU machine (H100/H200; torch 2.11 + triton 3.6, transformers,
# pytest, pytest-benchmark installed; no network). Run from the repository root:
#
#     OUT=/some/folder bash scripts/gpu_check.sh        # $OUT defaults to ./gpu_out
#
# It records the machine, builds the CUDA extension where setup.py defines one, runs the GPU
# tests (pytest -m gpu tests/) and the GPU benchmarks (bench/bench_gpu.py), and writes to $OUT:
#   env.txt, build.log, gpu_tests*.log/.xml, bench_<stage>.json/.log, results.md, gpu_check.log
# Every stage has a timeout and the whole script stops starting new stages after BUDGET_S
# seconds (default 450) so that it ends within ~8 minutes on an H100.
#
# liger-kernel and cut-cross-entropy are not on the GPU machine: they travel as wheels in a
# carried .whl/ folder (pure-Python wheels; the machine has python3.12, manylinux x86_64).
# Download them on a machine with access to PyPI:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#       --platform any -d .whl liger-kernel cut-cross-entropy
#
# and carry .whl/ with the working tree. Benchmarks of a peer that is missing are skipped.

set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
BUDGET_S="${BUDGET_S:-450}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
PY=python3
# One config per Triton kernel unless TCOD_TRITON_AUTOTUNE=1 is given: every autotuned config is
# another compilation (seconds each), too slow for an 8-minute run. Tests and benchmarks then
# share the compiled kernels through the Triton cache.
export TCOD_TRITON_AUTOTUNE="${TCOD_TRITON_AUTOTUNE:-0}"

remaining() { echo $(( BUDGET_S - SECONDS )); }
# run_stage NAME MAX_SECONDS LOG CMD...: CMD > LOG with a timeout capped by the remaining budget.
run_stage() {
    local name=$1 max=$2 log=$3; shift 3
    local left; left=$(remaining)
    if (( left < 20 )); then echo "== $name: skipped, time budget spent"; return 0; fi
    local limit=$(( max < left ? max : left ))
    echo "== $name (timeout ${limit}s, t=${SECONDS}s)"
    timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
    local rc=$?
    echo "== $name: exit $rc (t=${SECONDS}s)"
    return 0
}

# ---------------------------------------------------------------- machine
{
    date -u
    echo "TCOD_TRITON_AUTOTUNE=$TCOD_TRITON_AUTOTUNE TCOD_TRITON_GRAD=${TCOD_TRITON_GRAD:-chunked}"
    nvidia-smi || true
    $PY - <<'EOF'
import sys, torch
print("python", sys.version.split()[0])
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
try:
    import triton
    print("triton", triton.__version__)
except ImportError as exc:
    print("triton missing:", exc)
EOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# ---------------------------------------------------------------- peers (wheels)
if compgen -G ".whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
else
    echo "no .whl/ folder: Liger-Kernel and Cut Cross-Entropy benchmarks will be skipped"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
$PY -c "import liger_kernel, cut_cross_entropy; print('peers import')" >> "$OUT/env.txt" 2>&1 || echo "a peer does not import (see env.txt)"

# ---------------------------------------------------------------- CUDA extension
if grep -qE "CUDAExtension|ext_modules" setup.py 2>/dev/null; then
    export TCOD_BUILD_CUDA=1
    run_stage build 150 "$OUT/build.log" $PY setup.py build_ext --inplace
    tail -n 5 "$OUT/build.log"
else
    echo "setup.py defines no extension: nothing to build" | tee "$OUT/build.log"
fi
$PY -c "from tcod_kernels import available_backends as a; print('backends on cuda:', a('cuda'))" 2>&1 | tee -a "$OUT/env.txt"

# ---------------------------------------------------------------- GPU tests
# Three pytest processes at once (float32 / bfloat16 / the rest): Triton compiles each kernel
# variant single-threaded, so the first run on a fresh machine is compile-bound.
gpu_tests() {
    local pids=() part tag rc=0
    for part in "float32" "bfloat16" "not float32 and not bfloat16"; do
        tag=$(echo "$part" | tr -c 'A-Za-z0-9\n' '_')
        $PY -m pytest -m gpu tests/ -q -rs -p no:cacheprovider --continue-on-collection-errors --durations=5 \
            -k "$part" --junitxml="$OUT/gpu_tests_$tag.xml" > "$OUT/gpu_tests_$tag.log" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
    tail -n 12 "$OUT"/gpu_tests_*.log
    return $rc
}
export -f gpu_tests
export OUT PY
run_stage gpu-tests 180 "$OUT/gpu_tests.log" bash -c gpu_tests
cat "$OUT/gpu_tests.log"

# ---------------------------------------------------------------- benchmarks (most wanted first)
for stage in "shape_bt8192 and kl_jsd" "shape_qwen and kl_reverse" "shape_bt8192 and test_fused_logprobs" \
             "shape_qwen and test_fused_logprobs" "shape_bt8192 and kl_reverse" "shape_qwen and kl_jsd"; do
    tag=$(echo "$stage" | sed 's/ and /_/; s/[^A-Za-z0-9_]/_/g')
    run_stage "bench $stage" 120 "$OUT/bench_$tag.log" $PY -m pytest bench/bench_gpu.py --benchmark-only -q -rs \
        -p no:cacheprovider -k "$stage" --benchmark-json="$OUT/bench_$tag.json"
    tail -n 3 "$OUT/bench_$tag.log"
done

# ---------------------------------------------------------------- results.md
grep -E "^(torch|triton|python|backends|TCOD_|GPU|name)" "$OUT/env.txt" > /tmp/gpu_check_header.txt 2>/dev/null || true
{
    echo "# GPU benchmark results (fwd+bwd; peak = extra GPU memory beyond the inputs)"
    echo
    $PY bench/summarize.py "$OUT"/bench_*.json --header /tmp/gpu_check_header.txt || echo "no benchmark finished; see bench_*.log"
    grep -h "^SKIPPED" "$OUT"/bench_*.log 2>/dev/null | sed 's/^/* /'
} > "$OUT/results.md"
cat "$OUT/results.md"
# The device tool returns at most 8 files: everything but results.md travels as one archive.
(cd "$OUT" && tar czf all_outputs.tgz --exclude=results.md --exclude=all_outputs.tgz . \
    && find . -maxdepth 1 -type f ! -name results.md ! -name all_outputs.tgz ! -name gpu_check.log -delete)
echo "== done in ${SECONDS}s; outputs in $OUT (results.md, all_outputs.tgz)"
