#!/usr/bin/env bash
# The GPU check: what CPU tests cannot check, on a fresh GPU machine, in minutes.
#
#   bash benchmarks/gpu_check.sh                       # every check
#   bash benchmarks/gpu_check.sh --only bf16,throughput
#
# Checks (benchmarks/gpu_check.py; each prints PASS or FAIL with its reason):
#   fractional  two `harness benchmark` trials with resources {gpu: 0.5} land on the cards Ray granted
#               them (runs.gpus in results.db, Ray's processes in nvidia-smi)
#   zero_gpu    a trial granted no GPU trains on the CPU (no card recorded, no Ray process on a card)
#   bf16        a few bf16 steps of resnet50, efficientnet_b3, vit_base, swin_tiny at 224 px
#   throughput  benchmarks/throughput.py at 224 px, RandAugment on in the plain loop and in harness
# The table goes to benchmarks/results/gpu_check-<gpu>.md (the device named); exit status 1 when a
# check fails, 2 when the environment could not be set up.
#
# Python: `uv run` when uv is installed (the project's locked environment). Without uv, the image's
# python3 with the wheels in .whl/ (made by ../shared/tools/device-wheels.sh: ray, optuna, sqlalchemy
# and the small ones the image lacks) installed into a temporary folder; torch, timm, pandas and the
# rest must already be in the image.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
export PYTHONUNBUFFERED=1

if command -v uv >/dev/null 2>&1; then
  PY=(uv run python)
elif [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
  site=$(mktemp -d /tmp/gpu_check-site.XXXXXX)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl \
    || { echo "FAIL setup: could not install the wheels in .whl/ into $site"; exit 2; }
  export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
  PY=(python3)
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  PY=(python3)
fi

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "FAIL setup: nvidia-smi not found: this script checks a machine with an NVIDIA GPU and its driver"
  exit 2
fi
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader

if ! "${PY[@]}" -c "import torch, timm, ray, optuna, sqlalchemy" 2>/dev/null; then
  echo "FAIL setup: ${PY[*]} cannot import torch, timm, ray, optuna and sqlalchemy (uv sync, or the wheels in .whl/)"
  exit 2
fi

"${PY[@]}" benchmarks/gpu_check.py "$@"
