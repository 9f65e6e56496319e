#!/usr/bin/env bash
# The GPU proof in one command, for the day a GPU machine is lent (budget: under 8 minutes in all).
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run    # the rehearsal, here on the CPU: the same steps in the same order
#
# Everything it writes goes to $OUT (the device tool's folder that comes back; default ./gpu_check_out):
# steps.tsv (one line a step: name, PASS/FAIL/SKIP, seconds, reason), <step>.log, the tables, and
# gpu_check-<gpu>.md. Its last line is the one-line summary. Exit 0: no step failed; 1: one did;
# 2: no Python could be set up.
#
# Steps, each under its own timeout (seconds in brackets):
#   setup      [120] the Python: on the GPU machine (no package registry there) python3 with the wheels of
#                    .whl/ installed into a temporary folder; without .whl/, uv's locked environment. Make
#                    .whl/ here first, with pytest for the gpu tests:
#                      EXTRA="pytest pluggy iniconfig pytest-timeout" bash ../shared/tools/device-wheels.sh
#                    and carry it (the device tool's carry: [".whl"]). --dry-run installs the same wheels
#                    into a Python 3.12 environment (pyenv's) beside the packages the GPU image ships, and
#                    imports Ray, Optuna, SQLAlchemy, pydantic and plotly from them for real.
#   imports     [90] a real `import` (not find_spec) of every third-party module and every harness module
#   gpu_tests  [150] the tests marked gpu, with HARNESS_REQUIRE_CUDA=1 (a skip is a failure); --dry-run:
#                    collected and skipped (no CUDA), which is what a CPU machine can say
#   zero_gpu    [90] benchmarks/gpu_check.py's steps (its docstring says what each checks)
#   sweep      [150]
#   bf16        [90]
#   peak        [30]
#   throughput [180]
#   randaugment [45]
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
export PYTHONUNBUFFERED=1

DRY=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY="--dry-run" ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
: > "$OUT/steps.tsv"
T0=$SECONDS

# One line of steps.tsv, written by the script itself (the Python steps append their own).
record() {  # name status seconds reason
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(echo "$4" | tr '\t\n' '  ' | cut -c1-400)" >> "$OUT/steps.tsv"
  echo "$2 $1: $4 ($3 s)"
}

# A step: `step NAME TIMEOUT_S COMMAND...`; its output goes to $OUT/NAME.log and to the terminal.
step() {
  local name=$1 limit=$2; shift 2
  local t=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    record "$name" FAIL $((SECONDS - t)) "timed out after ${limit} s (log: $name.log)"
  fi
  return "$rc"
}

if [ -z "$DRY" ] && ! command -v nvidia-smi >/dev/null 2>&1; then
  record machine FAIL 0 "nvidia-smi not found: this checks a machine with an NVIDIA GPU and its driver (--dry-run rehearses it on a CPU)"
  echo "FAIL setup: no nvidia-smi"
  exit 2
fi
[ -n "$DRY" ] || nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee "$OUT/nvidia-smi.txt"

# --- setup ---------------------------------------------------------------------------------------------
have_whl() { [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; }
install_whl() {  # python site: the wheels of .whl/ into site, no registry, no dependency resolution
  "$1" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$2" .whl/*.whl
}
t=$SECONDS
if [ -z "$DRY" ] && have_whl; then
  site=$(mktemp -d /tmp/gpu_check-site.XXXXXX)
  if install_whl python3 "$site" > "$OUT/setup.log" 2>&1; then
    export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
    PY=(python3)
    record setup PASS $((SECONDS - t)) "python3 ($(python3 -V 2>&1)) with .whl/ installed into $site"
  else
    record setup FAIL $((SECONDS - t)) "could not install .whl/ into $site (setup.log)"; exit 2
  fi
elif command -v uv >/dev/null 2>&1; then
  PY=(uv run --frozen python)
  if [ -n "$DRY" ]; then
    if ! have_whl; then
      record setup SKIP $((SECONDS - t)) "no .whl/ to rehearse (build it: EXTRA=\"pytest pluggy iniconfig pytest-timeout\" bash ../shared/tools/device-wheels.sh); the steps run in uv's environment"
    else
      # The GPU image's Python 3.12 with what it ships (device-wheels.sh lists it; torch, torchvision and timm
      # left out here: gigabytes, and .whl/ does not depend on them) and .whl/ beside it.
      export ENV312=/tmp/gpu_check-py312 SITE312=/tmp/gpu_check-py312-site
      rehearse_312() {
        set -e
        rm -rf "$SITE312"
        # A Python 3.12 on this machine (pyenv's): uv would otherwise try to download one.
        py312=$(ls "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 2>/dev/null | tail -1)
        [ -n "$py312" ] || py312=$(command -v python3.12)
        [ -x "$ENV312/bin/python" ] || uv venv -q --seed --python-preference only-system -p "$py312" "$ENV312"
        uv pip install -q --python "$ENV312/bin/python" pip numpy pandas pillow scipy scikit-learn rich click pyyaml \
          typing-extensions msgpack packaging requests filelock protobuf aiohttp tqdm fsspec pyarrow psutil
        install_whl "$ENV312/bin/python" "$SITE312"
        PYTHONPATH="$SITE312" "$ENV312/bin/python" -c '
import sys, ray, ray.tune, optuna, sqlalchemy, pydantic, plotly
from ray.tune.search.optuna import OptunaSearch
from ray.tune.schedulers import ASHAScheduler
ray.init(num_cpus=1, include_dashboard=False); ray.shutdown()
print("python", sys.version.split()[0], "ray", ray.__version__, "optuna", optuna.__version__, "pydantic", pydantic.__version__)'
      }
      export -f rehearse_312 install_whl
      if step setup 300 bash -c rehearse_312; then
        record setup PASS $((SECONDS - t)) "rehearsed: .whl/ installed into Python 3.12 ($ENV312) and Ray, Optuna, SQLAlchemy, pydantic, plotly imported from it, Ray started; the steps run in uv's environment"
      else
        grep -q "timed out" "$OUT/steps.tsv" || record setup FAIL $((SECONDS - t)) "the .whl/ rehearsal in Python 3.12 failed (setup.log)"
      fi
    fi
  else
    record setup PASS $((SECONDS - t)) "uv's locked environment (no .whl/ here)"
  fi
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  PY=(python3)
  record setup PASS $((SECONDS - t)) "python3 as found (no .whl/, no uv): the imports step says what is missing"
fi


# --- imports: every module, for real -------------------------------------------------------------------
t=$SECONDS
if step imports 90 "${PY[@]}" - <<'PY'
import importlib, pkgutil, sys
third = ["torch", "torchvision", "timm", "numpy", "pandas", "sklearn", "click", "yaml", "rich", "PIL",
         "ray", "ray.tune", "ray.tune.search.optuna", "ray.tune.schedulers", "optuna", "sqlalchemy", "pydantic", "plotly"]
for name in third:
    importlib.import_module(name)
import harness
mods = [m.name for m in pkgutil.walk_packages(harness.__path__, "harness.")]
for name in mods:
    importlib.import_module(name)
import torch
print(f"imported {len(third)} libraries and {len(mods)} harness modules; torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s) visible")
PY
then
  record imports PASS $((SECONDS - t)) "$(tail -1 "$OUT/imports.log")"
else
  grep -q "^imports" "$OUT/steps.tsv" || record imports FAIL $((SECONDS - t)) "$(tail -1 "$OUT/imports.log")"
  echo "gpu_check: cannot import what the steps need; see $OUT/imports.log"
  "${PY[@]}" benchmarks/gpu_check.py --report --out "$OUT" $DRY 2>/dev/null || true
  exit 1
fi

# --- the tests marked gpu --------------------------------------------------------------------------------
t=$SECONDS
if [ -z "$DRY" ]; then
  HARNESS_REQUIRE_CUDA=1 step gpu_tests 150 "${PY[@]}" -m pytest -m gpu -q -p no:cacheprovider tests
else
  step gpu_tests 150 "${PY[@]}" -m pytest -m gpu -q -p no:cacheprovider tests
fi
rc=$?
if ! grep -q "^gpu_tests" "$OUT/steps.tsv"; then
  last=$(grep -E "passed|skipped|failed|error" "$OUT/gpu_tests.log" | tail -1)
  if [ "$rc" -eq 0 ] && [ -n "$DRY" ]; then
    record gpu_tests SKIP $((SECONDS - t)) "no CUDA here: ${last:-no summary}"
  elif [ "$rc" -eq 0 ]; then
    record gpu_tests PASS $((SECONDS - t)) "${last:-no summary}"
  else
    record gpu_tests FAIL $((SECONDS - t)) "pytest exited $rc: ${last:-see gpu_tests.log}"
  fi
fi

# --- benchmarks/gpu_check.py's steps, each in its own process and under its own timeout --------------------
for spec in zero_gpu:90 sweep:150 bf16:90 peak:30 throughput:180 randaugment:45; do
  name=${spec%%:*}; limit=${spec##*:}
  step "$name" "$limit" "${PY[@]}" benchmarks/gpu_check.py --only "$name" --out "$OUT" $DRY
  grep -q "^$name"$'\t' "$OUT/steps.tsv" || record "$name" FAIL 0 "exited without a verdict (see $name.log)"
done

# --- the table and the one-line summary --------------------------------------------------------------------
"${PY[@]}" benchmarks/gpu_check.py --report --out "$OUT" $DRY 2>"$OUT/report.log" | tail -1 > "$OUT/summary.txt"
rc=${PIPESTATUS[0]}
[ -s "$OUT/summary.txt" ] || echo "gpu_check: the report could not be written (report.log); steps in $OUT/steps.tsv" > "$OUT/summary.txt"
echo "$(cat "$OUT/summary.txt") [$((SECONDS - T0)) s wall]"
exit "$rc"
