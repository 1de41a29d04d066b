#!/usr/bin/env bash
# Every GPU check of the project in one run on a bare device machine without internet (issue 25):
# the CUDA tests (pytest -m cuda), then the Wan2.1-1.3B and Qwen2.5-VL-3B benches side by side with the plain
# diffusers / transformers loops, then the encoder-offload memory figure. Each step has its own time limit, so
# one that hangs leaves time for the others; every figure goes to bench/results/*.jsonl (command, device,
# versions, date) and, with the logs, to $OUT when the device tool sets it.
#
#   bash bench/gpu_check.sh prepare      # here, with the package registries: the wheels the device lacks
#   bash bench/gpu_check.sh run          # on the device machine (carry .gpu_wheels), about 8 minutes
#   bash bench/gpu_check.sh rehearse     # here, on the CPU: the same steps at tiny shapes, no install
#
# The device image has python3 with torch, transformers, peft, pluggy, safetensors ... but no diffusers, PyAV or
# ftfy, and pip cannot reach a registry there: `prepare` downloads those (for its Python 3.12, x86-64) and builds
# mm's own six packages as wheels into .gpu_wheels/ (git-ignored), which `run` installs with --no-index.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-run}
PY=${PYTHON:-python3}
LOGS=${OUT:-bench/results/gpu_check_logs}
WHEELS=.gpu_wheels
mkdir -p "$LOGS"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $LOGS/NAME.log, report its status
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
    local rc=$?
    echo "   $name: exit $rc after $((SECONDS - start))s (log $LOGS/$name.log)"
    tail -n 5 "$LOGS/$name.log"
    return 0
}

case "$MODE" in
prepare)
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    pip download -q --only-binary=:all: --python-version 3.12 --implementation cp --no-deps -d "$WHEELS" \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -c constraints.txt diffusers av ftfy wcwidth transformers
    pip wheel -q --no-deps -w "$WHEELS" packages/*
    du -sh "$WHEELS"
    ;;
run)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOGS/device.txt"
    $PY -m pip install -q --no-index --no-deps "$WHEELS"/*.whl 2>&1 | tail -n 3
    $PY -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', \
diffusers.__version__, 'transformers', transformers.__version__)" | tee -a "$LOGS/device.txt"
    step cuda_tests 120 $PY -m pytest -m cuda -q -p no:cacheprovider packages
    step bench_wan2_1 150 $PY bench/wan2_1.py --warmup 3 --steps 8
    step bench_qwen2_5_vl 120 $PY bench/qwen2_5_vl.py --warmup 3 --steps 8
    step bench_encoder_offload 90 $PY bench/encoder_engines.py --world 1 --steps 2 --frames 17 --height 240 \
        --width 416
    # the device tool brings back at most 8 files: device.txt, the 4 logs and these 3
    cp bench/results/{wan2_1,qwen2_5_vl,encoder_engines}.jsonl "$LOGS/" 2>/dev/null
    ;;
rehearse)
    step cuda_tests 300 $PY -m pytest -m cuda -q -p no:cacheprovider packages
    step bench_wan2_1 300 $PY bench/wan2_1.py --tiny --device cpu --warmup 0 --steps 2 --results "$LOGS"
    step bench_qwen2_5_vl 300 $PY bench/qwen2_5_vl.py --tiny --device cpu --warmup 0 --steps 2 --results "$LOGS"
    step bench_encoder_offload 300 $PY bench/encoder_engines.py --tiny --device cpu --world 1 --steps 2 \
        --results "$LOGS"
    ;;
*)
    echo "usage: bash bench/gpu_check.sh prepare | run | rehearse" >&2
    exit 2
    ;;
esac
