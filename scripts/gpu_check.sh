#!/usr/bin/env bash
# One-shot check of this repository on a machine with one CUDA GPU, in under 8 minutes.
#
#   WHEELS=wheels scripts/gpu_check.sh        # wheels from scripts/fetch_gpu_wheels.sh
#   GPU_CHECK_DRY_RUN=1 scripts/gpu_check.sh  # anywhere: validate the steps, install/run nothing
#
# Steps, in order of importance (a global time budget skips what no longer fits):
#   install     the Python packages the GPU image lacks, from $WHEELS (pip --no-index --no-deps
#               --target), then this checkout (pip --no-deps -e .)
#   versions    nvidia-smi, Python, torch, CUDA, triton, diffusers
#   pytest-gpu  pytest -m gpu (tests/test_gpu.py: Triton kernel vs reference, tiny render CUDA vs CPU,
#               traced vs real CUDA memory of a Wan2.1-1.3B tile forward)
#   kernel-bench        kernels/bench.py, short settings
#   refine-2k/refine-4k scripts/bench_refine.py --arch wan2.1-1.3b, few frames
#   toy-dit     the toy model's transformer trained on the GPU from the shipped weights for 150 s
#               (issue #17); its EMA weights come back as $OUT/toy-dit-weights.pt (see docs/benchmarks.md)
# Without a CUDA GPU (or with GPU_CHECK_DRY_RUN=1) the GPU steps are skipped with the reason,
# each step's command is validated instead (scripts' --help lists the flags used, pytest
# collects the gpu tests), nothing is installed, and the report is written all the same.
#
# Report: $OUT/gpu_report.json when $OUT is set, else ./gpu_report.json. Per step: name,
# status (ok | failed | skipped), reason, seconds, command, output tail. Exit status 0 when no
# step failed.
#
# Environment: PYTHON (default python3), WHEELS (folder of wheels), WHEELS_TARGET (default
# /tmp/supergen-site), GPU_CHECK_BUDGET_S (default 450: total seconds for all steps),
# GPU_CHECK_DRY_RUN=1.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PYTHON=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-450}
TARGET=${WHEELS_TARGET:-/tmp/supergen-site}
REPORT=${OUT:+$OUT/gpu_report.json}
REPORT=${REPORT:-$REPO/gpu_report.json}
LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT
START=$(date +%s)
# This checkout first on the path (the kernels import as supergen_kernels from kernels/), so
# the check tests these files even when an older supergen is installed.
export PYTHONPATH="$REPO:$REPO/kernels${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

if [[ "${GPU_CHECK_DRY_RUN:-0}" == 1 ]]; then
    MODE=dry-run
    WHY_NO_GPU="dry run (GPU_CHECK_DRY_RUN=1)"
elif "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    MODE=gpu
else
    MODE=no-gpu
    WHY_NO_GPU="no CUDA GPU: torch.cuda.is_available() is False (or torch is missing)"
fi
echo "gpu_check: mode $MODE, budget ${BUDGET}s, report $REPORT"

# record NAME STATUS REASON SECONDS COMMAND: one tab-separated line per step for the report.
record() {
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "${3//$'\t'/ }" "$4" "${5//$'\t'/ }" >>"$LOGS/steps.tsv"
    echo "gpu_check: [$2] $1${3:+ — $3}"
}

# step NAME TIMEOUT NEEDS_GPU VALIDATE COMMAND...: run COMMAND under min(TIMEOUT, budget left)
# with its output in $LOGS/NAME.log. When the GPU steps cannot run, VALIDATE (a shell string)
# runs instead, and the step is recorded as skipped, or failed when validation fails.
step() {
    local name=$1 limit=$2 needs_gpu=$3 validate=$4
    shift 4
    local cmd="$*" left=$((BUDGET - ($(date +%s) - START)))
    if [[ "$needs_gpu" == 1 && "$MODE" != gpu ]]; then
        if [[ "$validate" == "${VALIDATED:-}" ]] || bash -c "$validate" >"$LOGS/$name.log" 2>&1; then
            VALIDATED=$validate  # the next step with the same validation needs no second run
            record "$name" skipped "$WHY_NO_GPU; command validated" 0 "$cmd"
        else
            record "$name" failed "validation failed: $validate" 0 "$cmd"
        fi
        return
    fi
    if ((left < 10)); then
        record "$name" skipped "time budget of ${BUDGET}s used up" 0 "$cmd"
        return
    fi
    ((limit > left)) && limit=$left
    echo "gpu_check: running $name (limit ${limit}s): $cmd"
    local t0 rc
    t0=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    rc=$?
    local secs
    secs=$(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $t0}")
    if ((rc == 0)); then
        record "$name" ok "" "$secs" "$cmd"
    elif ((rc == 124 || rc == 137)); then
        record "$name" failed "timed out after ${limit}s" "$secs" "$cmd"
    else
        record "$name" failed "exit status $rc" "$secs" "$cmd"
    fi
}

# --------------------------------------------------------------------------- install
# Import name and wheel (distribution) name of each package the GPU image lacks.
PACKAGES="diffusers:diffusers omegaconf:omegaconf antlr4:antlr4_python3_runtime ftfy:ftfy wcwidth:wcwidth importlib_metadata:importlib_metadata"
# One interpreter start, and find_spec rather than import (importing diffusers takes seconds).
FIND_MISSING='import importlib.util, sys; print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))'
absent=" $("$PYTHON" -c "$FIND_MISSING" $(for pair in $PACKAGES; do echo "${pair%%:*}"; done)) "
missing=() wheels=()
for pair in $PACKAGES; do
    module=${pair%%:*} dist=${pair##*:}
    [[ "$absent" == *" $module "* ]] || continue
    missing+=("$module")
    if [[ -n "${WHEELS:-}" ]]; then
        wheel=$(ls "$WHEELS/${dist}"-*.whl 2>/dev/null | head -n 1)
        [[ -n "$wheel" ]] && wheels+=("$wheel")
    fi
done
install=("$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$TARGET" "${wheels[@]}")
install_cmd="${install[*]}"
if ((${#missing[@]} == 0)); then
    record install ok "nothing missing" 0 ""
elif [[ -z "${WHEELS:-}" ]]; then
    if [[ "$MODE" == gpu ]]; then
        record install failed "missing ${missing[*]}; set WHEELS=dir (scripts/fetch_gpu_wheels.sh downloads them)" 0 ""
    else
        record install skipped "would need ${missing[*]} from WHEELS=dir; $MODE: nothing installed" 0 ""
    fi
elif ((${#wheels[@]} < ${#missing[@]})); then
    record install failed "missing ${missing[*]}, but $WHEELS has wheels only for: ${wheels[*]:-none}" 0 "$install_cmd"
elif [[ "$MODE" != gpu ]]; then
    record install skipped "would install ${wheels[*]} to $TARGET; $MODE: nothing installed" 0 "$install_cmd"
else
    step install 120 0 "" "${install[@]}"
    export PYTHONPATH="$PYTHONPATH:$TARGET"
fi
if [[ "$MODE" == gpu ]]; then
    # The package metadata and the `supergen` command; imports resolve to this checkout either
    # way (PYTHONPATH above). No build isolation: it would fetch setuptools from the network.
    step editable-install 120 0 "" "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e "$REPO"
fi

# -------------------------------------------------------------------------- versions
cat >"$LOGS/versions.py" <<'PY'
import json, platform, sys
info = {"python": platform.python_version()}
try:
    import torch
    info["torch"] = torch.__version__
    info["cuda"] = torch.version.cuda
    info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
except Exception as exc:
    info["torch"] = f"unavailable: {exc}"
for name in ("triton", "diffusers", "transformers"):
    try:
        info[name] = __import__(name).__version__
    except Exception as exc:
        info[name] = f"unavailable: {type(exc).__name__}: {exc}"
try:
    import supergen_kernels
    info["kernel_backends_cuda"] = supergen_kernels.available_backends("cuda")
    info["triton_kernel"] = supergen_kernels._unavailable_reason("triton", torch.device("cuda")) or "usable"
except Exception as exc:
    info["kernel_backends_cuda"] = f"unavailable: {type(exc).__name__}: {exc}"
print(json.dumps(info))
PY
nvidia-smi >"$LOGS/nvidia-smi.log" 2>&1 || echo "nvidia-smi: not available here" >"$LOGS/nvidia-smi.log"
cat "$LOGS/nvidia-smi.log"
step versions 60 0 "" "$PYTHON" "$LOGS/versions.py"
cat "$LOGS/versions.log"

# ----------------------------------------------------------------------- GPU steps
# validate_flags SCRIPT FLAGS...: the script's --help lists every flag the step passes.
validate_flags() {
    local script=$1
    shift
    local flags="" f
    for f in "$@"; do flags+="grep -q -- '$f' \"\$h\" && "; done
    echo "h=\$(mktemp) && $PYTHON $script --help >\"\$h\" && ${flags}true"
}

# --noconftest: the gpu tests use no fixture, and tests/conftest.py imports diffusers (seconds).
step pytest-gpu 150 1 "$PYTHON -m pytest -q -m gpu --noconftest --collect-only tests/test_gpu.py" \
    "$PYTHON" -m pytest -q -m gpu --noconftest -p no:cacheprovider tests/test_gpu.py

KB=(--canvas 2k 4k --heads wan14b --halo 8 --iters 5 --warmup 2)
step kernel-bench 120 1 "$(validate_flags kernels/bench.py --canvas --heads --halo --iters --warmup)" \
    "$PYTHON" kernels/bench.py "${KB[@]}"

RF=(--arch wan2.1-1.3b --dtype bfloat16 --repeats 2 --warmup 1)
RF_FLAGS=(--arch --canvas --frames --dtype --repeats --warmup --json)
step refine-2k 100 1 "$(validate_flags scripts/bench_refine.py "${RF_FLAGS[@]}")" \
    "$PYTHON" scripts/bench_refine.py "${RF[@]}" --canvas 1440x2560 --frames 9 --json "$LOGS/refine-2k.json"
step refine-4k 100 1 "$(validate_flags scripts/bench_refine.py "${RF_FLAGS[@]}")" \
    "$PYTHON" scripts/bench_refine.py "${RF[@]}" --canvas 2160x3840 --frames 5 --json "$LOGS/refine-4k.json"

# The toy transformer needs more training than a CPU gives it (issue #17): what the lease leaves,
# spent on it. Saved every 30 s, so a run cut short by the budget still returns its weights.
TOY=(--stage dit --init-from assets/toy-wan --device cuda --bank 2048 --dit-batch 64 --dit-lr 4e-4
     --dit-steps 1000000 --dit-time-limit-s 150 --eval-every 2000 --save-every-s 30
     --run-dir "$LOGS/toy-run" --dit-export-weights "$(dirname "$REPORT")/toy-dit-weights.pt")
TOY_FLAGS=(--stage --init-from --device --bank --dit-batch --dit-lr --dit-steps --dit-time-limit-s --eval-every
           --save-every-s --run-dir --dit-export-weights)
step toy-dit 240 1 "$(validate_flags scripts/train_toy_model.py "${TOY_FLAGS[@]}")" \
    "$PYTHON" scripts/train_toy_model.py "${TOY[@]}"

# --------------------------------------------------------------------------- report
mkdir -p "$(dirname "$REPORT")"
"$PYTHON" - "$LOGS" "$REPORT" "$MODE" "$START" <<'PY'
import json, pathlib, sys, time

logs, report, mode, start = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])


def tail(name, chars=4000):
    path = logs / f"{name}.log"
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


steps = []
for line in (logs / "steps.tsv").read_text().splitlines():
    name, status, reason, seconds, command = line.split("\t")
    entry = dict(name=name, status=status, reason=reason, seconds=float(seconds), command=command,
                 output_tail=tail(name))
    results = logs / f"{name}.json"
    if results.exists():
        entry["results"] = json.loads(results.read_text())
    steps.append(entry)
versions = next((s for s in steps if s["name"] == "versions" and s["status"] == "ok"), None)
data = dict(
    mode=mode,
    gpu_steps_run=mode == "gpu",
    started=time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start)),
    seconds=round(time.time() - start, 1),
    versions=json.loads(versions["output_tail"].strip().splitlines()[-1]) if versions else None,
    nvidia_smi=tail("nvidia-smi"),
    ok=all(s["status"] != "failed" for s in steps),
    skipped=[s["name"] for s in steps if s["status"] == "skipped"],
    failed=[s["name"] for s in steps if s["status"] == "failed"],
    steps=steps,
)
pathlib.Path(report).write_text(json.dumps(data, indent=2) + "\n")
print(f"gpu_check: report {report}: ok={data['ok']}, failed={data['failed']}, skipped={data['skipped']}")
sys.exit(0 if data["ok"] else 1)
PY
