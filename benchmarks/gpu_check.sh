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
# python3 with the wheels in .whl/ installed into a temporary folder: ../shared/tools/device-wheels.sh
# makes them (ray, optuna, sqlalchemy, pydantic and the small ones a CUDA image lacks); add plotly,
# which `harness benchmark` needs for its pages: `EXTRA=plotly bash ../shared/tools/device-wheels.sh`.
# torch, timm, pandas, scikit-learn, click and pyyaml must already be in the image.
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

MODULES="torch timm ray optuna sqlalchemy pydantic plotly pandas sklearn click yaml"
missing=$("${PY[@]}" - $MODULES <<'PY'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
PY
) || { echo "FAIL setup: ${PY[*]} does not start"; exit 2; }
if [ -n "$missing" ]; then
  echo "FAIL setup: ${PY[*]} cannot import: $missing (uv sync, or add their wheels to .whl/)"
  exit 2
fi

"${PY[@]}" benchmarks/gpu_check.py "$@"
