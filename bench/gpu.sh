#!/usr/bin/env bash
# Build, check and time pylth's CUDA path on a GPU machine without network access.
#
#   bash bench/gpu.sh LOGDIR        (from the repository root; a few minutes on an H100)
#
# Needs python3 with torch, pybind11, scikit-build-core, cmake, pytest and pytest-benchmark, and
# clean-fid for the find_ticket run (e.g. installed from a carried wheel). Builds for the local GPU
# only (PYLTH_GPU_ARCHS, default: the first GPU's compute capability). PYLTH_COMMIT names the commit
# in the logs where the tree is a copy without its git history. Writes into LOGDIR:
#   env.txt         GPU, driver, torch, commit, pylth.build_info()
#   build.log       pip's build output
#   tests.log       the CUDA tests and tests/test_optim.py (which adds CUDA cases on a GPU)
#   bench.log       the CUDA cases of bench/ (pytest-benchmark)
#   timings.md      bench/gpu_timings.py's table (event and profiler timings, % of bandwidth)
#   find_ticket.log a short find_ticket run on digits on the GPU
# and prints a summary. The exit status is the number of steps that failed.
set -uo pipefail
LOG=${1:?usage: bash bench/gpu.sh LOGDIR}
mkdir -p "$LOG"
LOG=$(cd "$LOG" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
failed=0
summary=()

step() {  # step NAME LOGFILE TIMEOUT_S COMMAND...: run it, log it, remember how it ended
  local name=$1 log=$2 limit=$3
  shift 3
  local start=$SECONDS
  timeout "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  summary+=("$(printf '%-12s rc=%-3s %4ss  %s' "$name" "$rc" "$((SECONDS - start))" "$(tail -n 1 "$log")")")
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
  return "$rc"
}

ARCH=${PYLTH_GPU_ARCHS:-$($PY -c 'import torch; a, b = torch.cuda.get_device_capability(); print(f"{a}{b}")')}
{
  nvidia-smi
  echo "commit: ${PYLTH_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
  echo "building for sm_$ARCH"
} >"$LOG/env.txt" 2>&1

step build "$LOG/build.log" 300 env PYLTH_CUDA=ON $PY -m pip install --no-build-isolation --no-deps -v . \
  -C "cmake.define.CMAKE_CUDA_ARCHITECTURES=$ARCH" || { printf '%s\n' "${summary[@]}"; exit 1; }
(cd /tmp && $PY -c 'import pylth; print(pylth.build_info())') >>"$LOG/env.txt" 2>&1

step tests "$LOG/tests.log" 240 $PY -m pytest -q tests -k "cuda or test_optim" -p no:cacheprovider
step timings "$LOG/timings.log" 240 $PY bench/gpu_timings.py --out "$LOG/timings.md"
# Includes the sparse conv against cuDNN per U-Net conv shape (bench/test_bench_sparse.py, ~100 cases):
# a quarter second per case keeps the step within its limit.
step bench "$LOG/bench.log" 300 $PY -m pytest -q bench -k cuda --benchmark-only -p no:cacheprovider \
  --benchmark-max-time=0.25 --benchmark-group-by=group,param --benchmark-columns=min,median,max,rounds
RUN=$(mktemp -d)
# From the repository root, as the README says: the source folder with the installed native module.
step find_ticket "$LOG/find_ticket.log" 180 $PY -m pylth.find_ticket --device cuda --max-rounds 3 \
  --out "$RUN/digits"

echo
printf '%s\n' "${summary[@]}"
exit "$failed"
