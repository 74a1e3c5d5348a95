#!/usr/bin/env bash
# One prepared GPU check: pytest -m gpu, bench/engine_bench.py and bench/control_upscale_bench.py,
# then one table (bench/gpu_table.py). Offline: nothing is downloaded (the random full-size weights
# are built in memory), so it runs on a GPU machine with no internet. Sized for an H100/H200 in under
# 9 minutes; every step has its own time limit, and a failed step still leaves the others' rows.
#
#   bench/gpu_check.sh            # CUDA machine: the real numbers (wheels from bench/device_wheels.sh in .whl/)
#   bench/gpu_check.sh --smoke    # CPU, tiny model: proves the plumbing (tests/engine/test_gpu_check_smoke.py)
#
# Results go to $OUT (default: a new temporary folder): the JSONs, gpu_tests.txt and gpu_check.md.
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON=.venv/bin/python
    [[ -x $PYTHON ]] || PYTHON=python3  # the lent GPU machine: its own Python holds torch
fi
if [[ "${1:-}" != "--smoke" ]] && compgen -G ".whl/*.whl" >/dev/null; then
    # Wheels carried to the lent GPU machine (bench/device_wheels.sh, Python 3.12): it cannot download.
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "installing the carried wheels failed" >&2; exit 1; }
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
OUT=${OUT:-$(mktemp -d -t gpu-check-XXXX)}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 OUT
smoke=()
if [[ "${1:-}" == "--smoke" ]]; then
    smoke=(--smoke)
elif [[ -n "${1:-}" ]]; then
    echo "usage: $0 [--smoke]" >&2
    exit 2
fi
failed=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, remember a failure
    local name=$1 seconds=$2
    shift 2
    echo "== $name (limit ${seconds} s)" >&2
    local start=$SECONDS
    timeout --kill-after=10 "$seconds" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "   rc $rc in $((SECONDS - start)) s; log: $OUT/$name.log" >&2
    if ((rc != 0)); then
        failed=1
        tail -n 20 "$OUT/$name.log" >&2
    fi
    return $rc
}

if ((${#smoke[@]})); then
    # No GPU: the gpu tests only have to be collected (they skip without CUDA).
    step gpu_tests 120 "$PYTHON" -m pytest -q -m gpu --collect-only -p no:cacheprovider tests/engine/test_gpu_smoke.py
    summary=$(tail -n 1 "$OUT/gpu_tests.log")
    echo "collected only (smoke): $summary" >"$OUT/gpu_tests.txt"
else
    step gpu_tests 150 "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests/engine/test_gpu_smoke.py
    tail -n 1 "$OUT/gpu_tests.log" >"$OUT/gpu_tests.txt"
fi
step engine_bench 230 "$PYTHON" bench/engine_bench.py "${smoke[@]}" --compile --out "$OUT/engine_bench.json"
step control_upscale_bench 140 "$PYTHON" bench/control_upscale_bench.py "${smoke[@]}" --out "$OUT/control_upscale_bench.json"

"$PYTHON" bench/gpu_table.py "$OUT" | tee "$OUT/gpu_check.md"
echo "results in $OUT" >&2
exit $failed
