#!/usr/bin/env bash
# The GPU proof in one call of a borrowed GPU machine: every step, setup to summary, inside one deadline.
#
#   bash benchmarks/gpu_check.sh                       # on the GPU machine (--budget 420 s by default)
#   bash benchmarks/gpu_check.sh --dry-run --python /tmp/py312/bin/python   # the rehearsal, here on the CPU
#
# The lent machine runs one command for at most 10 minutes, lends about 15 in all (its start included) and
# returns at most 8 files from $OUT. So: one deadline (--budget S, default 420 s wall, setup to summary), each
# step timed out at the end of its slot (a step that finishes early leaves its time to the next ones), a step
# whose slot has under a third of its share left recorded as SKIP "no time left" instead of started;
# everything written under a work folder, and $OUT gets 4 files: gpu_check-<gpu>.md (the table, the versions
# that ran in its header), steps.tsv (name, PASS/FAIL/SKIP, seconds, reason), gpu_check.log (all of the
# output) and gpu_check.tar.gz (the rest: each step's log and tables). The last line printed is the one-line
# summary. Exit 0: no step failed; 1: one did; 2: no GPU, or no Python could be set up.
#
# Before the call, here: `bash ../shared/tools/device-wheels.sh` (WITH_TIMM=1 carries the lock's timm; no
# EXTRA: pytest, pluggy and pytest-timeout are the image's) and the device tool's carry: [".whl"].
# --python PY: the image's Python (default python3; with .whl/ installed into a temporary folder beside it).
# --dry-run: every step in its CPU form at tiny sizes, under the same budget logic. With --python (a Python 3.12
# with torch, torchvision and timm, standing in for the image) .whl/ is installed the same way; without it the
# steps run in uv's locked environment.
#
# Each step's share of the budget, in seconds of the default 420, in the order they run (scaled to --budget;
# tests/test_gpu_check.py checks that they add up to the default). What each Python step checks:
# benchmarks/gpu_check.py's docstring; the README's gpu_check section gives the H100 estimate of each.
SHARES="setup:30 imports:20 gpu_tests:40 zero_gpu:25 sweep:55 bf16:25 peak:10 throughput:85 randaugment:15 imagefolder:45 compile:60 report:10"
DEFAULT_BUDGET=420
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
export PYTHONUNBUFFERED=1

DRY="" BUDGET=$DEFAULT_BUDGET PYTHON=""
usage="usage: bash benchmarks/gpu_check.sh [--dry-run] [--budget SECONDS] [--python PATH]"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY="--dry-run" ;;
    --budget) BUDGET=${2:-}; shift ;;
    --python) PYTHON=${2:-}; shift ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
  shift
done
case "$BUDGET" in
  ''|*[!0-9]*) echo "gpu_check: --budget '$BUDGET' is not a whole number of seconds; e.g. --budget $DEFAULT_BUDGET" >&2; exit 2 ;;
esac
if [ -n "$PYTHON" ] && ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "gpu_check: --python '$PYTHON' is not a program here; give the path of a python3 (e.g. /tmp/py312/bin/python)" >&2; exit 2
fi
T0=$SECONDS
now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }  # bash's SECONDS ticks in whole seconds
T0_MS=$(now_ms)
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/gpu_check-work.XXXXXX) || exit 2
: > "$WORK/steps.tsv"
export GPU_CHECK_WORK=$WORK

# The slots, in ms after the start: step NAME must end by ENDS[NAME] (its share and every earlier one's,
# scaled to the budget); FLOOR[NAME], a third of its scaled share (at least 0.5 s), is the least it starts with.
declare -A ENDS FLOOR
total=0
for s in $SHARES; do total=$((total + ${s##*:})); done
cum=0
for s in $SHARES; do
  cum=$((cum + ${s##*:})); ENDS[${s%%:*}]=$((cum * BUDGET * 1000 / total))
  FLOOR[${s%%:*}]=$(( ${s##*:} * BUDGET * 1000 / total / 3 > 500 ? ${s##*:} * BUDGET * 1000 / total / 3 : 500 ))
done

# One line of steps.tsv, written by the script itself (the Python steps append their own).
record() {  # name status seconds reason
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(echo "$4" | tr '\t\n' '  ' | cut -c1-400)" >> "$WORK/steps.tsv"
  echo "$2 $1: $4 ($3 s)"
}

# `step NAME COMMAND...`: runs until NAME's slot ends, output to $WORK/NAME.log and the terminal; status 99
# (and a SKIP line) when too little of the slot is left to start. GPU_CHECK_SECONDS tells a Python step how
# long it has, so it can stop between models with its rows written rather than be killed mid-model.
step() {
  local name=$1; shift
  local t=$SECONDS left_ms=$((ENDS[$name] - ($(now_ms) - T0_MS)))
  local left=$((left_ms / 1000)).$(printf '%03d' $((left_ms < 0 ? 0 : left_ms % 1000)))
  if [ "$left_ms" -lt "${FLOOR[$name]}" ]; then
    local have=$((left_ms < 0 ? 0 : left_ms / 100))
    record "$name" SKIP 0 "no time left: $((have / 10)).$((have % 10)) s of its slot remain, under the $((FLOOR[$name] / 1000)).$((FLOOR[$name] % 1000 / 100)) s it starts with (--budget $BUDGET)"
    return 99
  fi
  # tee through a process substitution, not a pipe: a pipeline would wait for every process holding the
  # pipe, a daemon the step left behind included, past the slot's end.
  GPU_CHECK_STEP="$WORK:$name" GPU_CHECK_SECONDS=${left%.*} timeout --kill-after=3 "$left" "$@" \
    > >(tee "$WORK/$name.log") 2>&1
  local rc=$? tee_pid=${!:-} reaped
  reaped=$(reap "$WORK:$name")
  [ -z "$tee_pid" ] || wait "$tee_pid" 2>/dev/null
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    record "$name" FAIL $((SECONDS - t)) "timed out at the end of its slot, after ${left%.*} s (what it measured: $name.log and its tables)$reaped"
  elif [ -n "$reaped" ]; then
    echo "gpu_check: $name exited$reaped" | tee -a "$WORK/$name.log"
  fi
  return "$rc"
}

# A step stopped at its slot's end can leave Ray's daemons and trial workers running (they start in sessions
# of their own, out of timeout's reach) and training on: they would eat the CPUs of every later step. They
# inherit the step's GPU_CHECK_STEP marker, so this ends them, and only them (never a broad `ray stop`).
reap() {
  local pids
  pids=($(grep -lszxF "GPU_CHECK_STEP=$1" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3))
  [ ${#pids[@]} -eq 0 ] && return
  kill -9 "${pids[@]}" 2>/dev/null
  echo "; ended ${#pids[@]} process(es) it left running"
}

have_whl() { [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; }

main() {
  if [ -z "$DRY" ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    record machine FAIL 0 "nvidia-smi not found: this checks a machine with an NVIDIA GPU and its driver (--dry-run rehearses it on a CPU)"
    echo "FAIL setup: no nvidia-smi"
    exit 2
  fi
  [ -n "$DRY" ] || nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee "$WORK/nvidia-smi.txt"
  echo "gpu_check${DRY:+ $DRY}: budget $BUDGET s; slots end at $(for s in $SHARES; do printf '%s %s s, ' "${s%%:*}" "$((ENDS[${s%%:*}] / 1000))"; done)"

  # --- setup: the image's Python with .whl/ beside it (no registry there, no dependency resolution) ------
  local t=$SECONDS
  if [ -n "$PYTHON" ] || { [ -z "$DRY" ] && have_whl; }; then
    local py=${PYTHON:-python3}
    PY=("$py")
    if have_whl; then
      SITE=$WORK.site  # beside the work folder, not in it: the archive is the work folder
      if step setup "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl; then
        export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
        record setup PASS $((SECONDS - t)) "$("$py" -V 2>&1) ($py) with .whl/ ($(ls .whl/*.whl | wc -l) wheels) installed into $SITE"
      else
        grep -q "^setup" "$WORK/steps.tsv" || record setup FAIL $((SECONDS - t)) "could not install .whl/ into $SITE with $py (setup.log)"
        exit 2
      fi
    else
      export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
      record setup PASS $((SECONDS - t)) "$("$py" -V 2>&1) ($py) as found, no .whl/ (build it: bash ../shared/tools/device-wheels.sh): the imports step says what is missing"
    fi
  elif command -v uv >/dev/null 2>&1; then
    PY=(uv run --frozen python)
    record setup PASS $((SECONDS - t)) "uv's locked environment (no --python given$([ -z "$DRY" ] && echo ', no .whl/'))"
  else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    PY=(python3)
    record setup PASS $((SECONDS - t)) "python3 as found (no .whl/, no uv): the imports step says what is missing"
  fi

  # --- imports: every module for real, and the versions that ran ---------------------------------------
  t=$SECONDS
  if step imports "${PY[@]}" - "$WORK/versions.tsv" <<'PY'
import importlib, pkgutil, platform, sys
third = ["torch", "torchvision", "timm", "numpy", "pandas", "sklearn", "click", "yaml", "rich", "PIL",
         "ray", "ray.tune", "ray.tune.search.optuna", "ray.tune.schedulers", "optuna", "sqlalchemy", "pydantic", "plotly"]
for name in third:
    importlib.import_module(name)
import harness
mods = [m.name for m in pkgutil.walk_packages(harness.__path__, "harness.")]
for name in mods:
    importlib.import_module(name)
import optuna, ray, timm, torch, torchvision
versions = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda or "none",
            "cudnn": str(torch.backends.cudnn.version() or "none"), "torchvision": torchvision.__version__,
            "timm": timm.__version__, "ray": ray.__version__, "optuna": optuna.__version__}
with open(sys.argv[1], "w") as f:
    f.writelines(f"{k}\t{v}\n" for k, v in versions.items())
print(f"imported {len(third)} libraries and {len(mods)} harness modules; {torch.cuda.device_count()} GPU(s) visible")
print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
PY
  then
    record imports PASS $((SECONDS - t)) "$(tail -2 "$WORK/imports.log" | tr '\n' ';')"
  else
    grep -q "^imports" "$WORK/steps.tsv" || record imports FAIL $((SECONDS - t)) "$(tail -1 "$WORK/imports.log")"
    echo "gpu_check: cannot import what the steps need; see imports.log"
    "${PY[@]}" benchmarks/gpu_check.py --report --out "$WORK" $DRY 2>/dev/null | tail -1 > "$WORK/summary.txt"
    exit 1
  fi

  # --- the tests marked gpu ------------------------------------------------------------------------------
  t=$SECONDS
  if [ -z "$DRY" ]; then
    HARNESS_REQUIRE_CUDA=1 step gpu_tests "${PY[@]}" -m pytest -m gpu -q -p no:cacheprovider tests
  else
    step gpu_tests "${PY[@]}" -m pytest -m gpu -q -p no:cacheprovider tests
  fi
  local rc=$?
  if ! grep -q "^gpu_tests" "$WORK/steps.tsv"; then
    local last
    last=$(grep -E "passed|skipped|failed|error" "$WORK/gpu_tests.log" | tail -1)
    if [ "$rc" -eq 0 ] && [ -n "$DRY" ]; then
      record gpu_tests SKIP $((SECONDS - t)) "no CUDA here: ${last:-no summary}"
    elif [ "$rc" -eq 0 ]; then
      record gpu_tests PASS $((SECONDS - t)) "${last:-no summary}"
    else
      record gpu_tests FAIL $((SECONDS - t)) "pytest exited $rc: ${last:-see gpu_tests.log}"
    fi
  fi

  # --- benchmarks/gpu_check.py's steps, each in its own process, each until its slot ends ------------------
  for name in zero_gpu sweep bf16 peak throughput randaugment imagefolder compile; do
    step "$name" "${PY[@]}" benchmarks/gpu_check.py --only "$name" --out "$WORK" $DRY
    grep -q "^$name"$'\t' "$WORK/steps.tsv" || record "$name" FAIL 0 "exited without a verdict (see $name.log)"
  done

  # --- the table and the one-line summary (the report's slot also packs $OUT) ----------------------------
  "${PY[@]}" benchmarks/gpu_check.py --report --out "$WORK" --wall $((SECONDS - T0)) --budget "$BUDGET" $DRY \
    2>"$WORK/report.log" | tail -1 > "$WORK/summary.txt"
  rc=${PIPESTATUS[0]}
  [ -s "$WORK/summary.txt" ] || echo "gpu_check: the report could not be written (report.log); steps in steps.tsv" > "$WORK/summary.txt"
  exit "$rc"
}

main 2>&1 | tee "$WORK/gpu_check.log"
rc=${PIPESTATUS[0]}

# --- what comes back: 4 files in $OUT, the rest in one archive -------------------------------------------
line="$(cat "$WORK/summary.txt" 2>/dev/null || echo "gpu_check: no summary (gpu_check.log)") [$((SECONDS - T0)) s wall of a $BUDGET s budget]"
echo "$line" >> "$WORK/gpu_check.log"
report=$(ls "$WORK"/gpu_check-*.md 2>/dev/null | head -1)
for f in "$report" "$WORK/steps.tsv" "$WORK/gpu_check.log"; do [ -n "$f" ] && cp "$f" "$OUT/"; done
tar -czf "$OUT/gpu_check.tar.gz" -C "$WORK" --exclude=steps.tsv --exclude=gpu_check.log --exclude="$(basename "${report:-none}")" . \
  || line="$line (the archive could not be written)"
rm -rf "$WORK" "$WORK.site"
echo "$line"
exit "$rc"
