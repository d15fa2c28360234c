#!/usr/bin/env bash
# One-shot check of this repository on a machine with one CUDA GPU, in under 8 minutes, that
# cannot come back empty: every step appends what it measures to the report folder as it goes.
#
#   WHEELS=wheels scripts/gpu_check.sh        # wheels from scripts/fetch_gpu_wheels.sh
#   GPU_CHECK_DRY_RUN=1 scripts/gpu_check.sh  # anywhere: validate the steps, install/run nothing
#   GPU_CHECK_CPU=1 scripts/gpu_check.sh      # anywhere: rehearse the steps that have a CPU form
#
# Steps, in order of value (each under its own time limit; a global budget skips what no longer fits):
#   install       the Python packages the GPU image lacks, from $WHEELS (pip --no-index --no-deps
#                 --target), then this checkout (pip --no-deps -e .)
#   versions      nvidia-smi, Python, torch, CUDA, triton, diffusers
#   kernels       correctness of the Triton and FlexAttention kernels on the GPU (tests/test_gpu.py,
#                 the tests in KERNEL_TESTS below), and one compiled FlexAttention graph for a whole
#                 shift cycle
#   kernel-bench  their speed against dense flash attention (kernels/bench.py, 2K and 4K)
#   refine-2k/4k  one refinement step tiled vs one full-canvas forward: time and peak memory
#                 (scripts/bench_refine.py --arch wan2.1-1.3b, few frames)
#   trace-memory  the fake-tensor memory trace's peak for a Wan2.1-1.3B tile forward vs CUDA's
#   gpu-tests     the rest of tests/test_gpu.py (tiny renders on CUDA vs CPU, offload)
#   toy-dit       the toy model's transformer trained on the GPU from the shipped weights for 150 s
#                 (issue #17); its EMA weights come back as toy-dit-weights.pt (see docs/benchmarks.md)
#
# Report folder: $OUT when set, else runs/gpu-check. Written as the run goes, so a run cut short (a
# step past its limit, or the whole kit ended by its lease) still has everything finished so far:
#   rows/STEP.jsonl  one JSON line per measured row or finished test, appended and flushed the
#                    moment it exists (kernel-bench: a method on a case; refine-*: a variant;
#                    pytest steps: a test, via the pytest_rows plugin in scripts/)
#   steps.jsonl      one line per finished step: name, status (ok | failed | skipped), reason,
#                    seconds, command
#   logs/STEP.log    each step's output
#   gpu_report.json  at the end: all of the above in one file (a torn last row of a killed step is
#                    left out and counted), the versions, nvidia-smi. Exit status 0 when no step failed.
#
# Without a CUDA GPU (or with GPU_CHECK_DRY_RUN=1) the GPU steps are skipped with the reason and
# each step's command is validated instead (scripts' --help lists the flags used, pytest collects
# the selected tests); nothing is installed. With GPU_CHECK_CPU=1 the steps that have a CPU form
# run it instead of being validated (the kernel bench's --smoke shapes; the pytest steps, whose
# tests then report themselves skipped), under the same limits and row files.
#
# Environment: PYTHON (default python3), WHEELS (folder of wheels), WHEELS_TARGET (default
# /tmp/supergen-site), GPU_CHECK_BUDGET_S (default 450: total seconds for all steps),
# GPU_CHECK_LIMIT_S (caps every step's own limit), GPU_CHECK_STEPS (names of the steps to run; the
# others are recorded as skipped), GPU_CHECK_DRY_RUN=1, GPU_CHECK_CPU=1, GPU_CHECK_CPU_ROUNDS
# (kernel-bench --rounds in CPU mode, default 1).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PYTHON=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-450}
TARGET=${WHEELS_TARGET:-/tmp/supergen-site}
DIR=${OUT:-$REPO/runs/gpu-check}
ROWS=$DIR/rows LOGS=$DIR/logs
mkdir -p "$ROWS" "$LOGS"
rm -f "$DIR/steps.jsonl" "$DIR/gpu_report.json" "$ROWS"/*.jsonl
START=$(date +%s)
# This checkout first on the path (the kernels import as supergen_kernels from kernels/; the
# pytest_rows plugin from scripts/), so the check tests these files even when an older supergen
# is installed.
export PYTHONPATH="$REPO:$REPO/kernels:$REPO/scripts${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

if [[ "${GPU_CHECK_DRY_RUN:-0}" == 1 ]]; then
    MODE=dry-run
    WHY_NO_GPU="dry run (GPU_CHECK_DRY_RUN=1)"
elif [[ "${GPU_CHECK_CPU:-0}" == 1 ]]; then
    MODE=cpu
    WHY_NO_GPU="CPU rehearsal (GPU_CHECK_CPU=1)"
elif "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    MODE=gpu
else
    MODE=no-gpu
    WHY_NO_GPU="no CUDA GPU: torch.cuda.is_available() is False (or torch is missing)"
fi
echo "gpu_check: mode $MODE, budget ${BUDGET}s, report folder $DIR"

# record NAME STATUS REASON SECONDS COMMAND: one JSON line per finished step, appended at once.
record() {
    "$PYTHON" -c 'import json, sys
name, status, reason, seconds, command = sys.argv[1:]
print(json.dumps(dict(name=name, status=status, reason=reason, seconds=float(seconds), command=command)))' \
        "$@" >>"$DIR/steps.jsonl"
    echo "gpu_check: [$2] $1${3:+ — $3}"
}

# run_limited NAME LIMIT COMMAND...: COMMAND under min(LIMIT, GPU_CHECK_LIMIT_S, budget left),
# its output in logs/NAME.log; records the step. `timeout` ends the command's whole process group.
run_limited() {
    local name=$1 limit=$2 note=$3
    shift 3
    local cmd="$*" left=$((BUDGET - ($(date +%s) - START)))
    if ((left < 10)); then
        record "$name" skipped "time budget of ${BUDGET}s used up" 0 "$cmd"
        return
    fi
    ((limit > left)) && limit=$left
    [[ -n "${GPU_CHECK_LIMIT_S:-}" ]] && ((limit > GPU_CHECK_LIMIT_S)) && limit=$GPU_CHECK_LIMIT_S
    echo "gpu_check: running $name (limit ${limit}s): $cmd"
    local t0 rc secs
    t0=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    rc=$?
    secs=$(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $t0}")
    if ((rc == 0)); then
        record "$name" ok "$note" "$secs" "$cmd"
    elif ((rc == 124 || rc == 137)); then
        record "$name" failed "${note:+$note; }timed out after ${limit}s" "$secs" "$cmd"
    else
        record "$name" failed "${note:+$note; }exit status $rc" "$secs" "$cmd"
    fi
}

# step NAME LIMIT NEEDS_GPU VALIDATE CPU_FORM COMMAND...: run COMMAND (see run_limited). When the
# GPU steps cannot run: in CPU mode CPU_FORM (a shell string) runs instead if there is one;
# otherwise VALIDATE (a shell string) runs, and the step is recorded as skipped, or failed when
# validation fails.
selected() { [[ -z "${GPU_CHECK_STEPS:-}" || " $GPU_CHECK_STEPS " == *" $1 "* ]]; }
step() {
    local name=$1 limit=$2 needs_gpu=$3 validate=$4 cpu_form=$5
    shift 5
    if ! selected "$name"; then
        record "$name" skipped "not in GPU_CHECK_STEPS" 0 "$*"
        return
    fi
    if [[ "$needs_gpu" == 1 && "$MODE" != gpu ]]; then
        if [[ "$MODE" == cpu && -n "$cpu_form" ]]; then
            run_limited "$name" "$limit" "CPU rehearsal" bash -c "$cpu_form"
        elif [[ "$validate" == "${VALIDATED:-}" ]] || bash -c "$validate" >"$LOGS/$name.log" 2>&1; then
            VALIDATED=$validate  # the next step with the same validation needs no second run
            record "$name" skipped "$WHY_NO_GPU; command validated" 0 "$*"
        else
            record "$name" failed "validation failed: $validate" 0 "$*"
        fi
        return
    fi
    run_limited "$name" "$limit" "" "$@"
}

# --------------------------------------------------------------------------- install
# What the image lacks, from what is installed (distributions, by importlib.metadata): with WHEELS,
# every wheel there whose distribution is not installed (scripts/fetch_gpu_wheels.sh derives that
# folder from pyproject.toml and the image's packages; what its WHEELS/LEFT_OUT names may stay
# missing); without, the dependencies pyproject.toml declares that are not installed. No list by hand.
cat >"$LOGS/missing.py" <<'PY'
import importlib.metadata as md, pathlib, re, sys, tomllib

def installed(name):
    try:
        md.distribution(name)
    except md.PackageNotFoundError:
        return False
    return True

repo, wheels = pathlib.Path(sys.argv[1]), sys.argv[2]
declared = [re.match(r"[A-Za-z0-9._-]+", d).group() for d in tomllib.loads((repo / "pyproject.toml").read_text())["project"]["dependencies"]]
found = sorted(pathlib.Path(wheels).glob("*.whl")) if wheels else []
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
provided = {norm(w.name.split("-")[0]) for w in found}
left_out = pathlib.Path(wheels, "LEFT_OUT") if wheels else None  # fetch_gpu_wheels.sh WITHOUT=...
provided |= {norm(n) for n in left_out.read_text().split()} if left_out and left_out.exists() else set()
print(" ".join(str(w) for w in found if not installed(w.name.split("-")[0])))  # wheels to install
print(" ".join(d for d in declared if not installed(d) and norm(d) not in provided))  # missing even so
PY
{ read -r -a wheels; read -r -a missing; } < <("$PYTHON" "$LOGS/missing.py" "$REPO" "${WHEELS:-}")
install=("$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$TARGET" "${wheels[@]}")
install_cmd="${install[*]}"
if ((${#missing[@]} > 0)); then
    if [[ -n "${WHEELS:-}" ]]; then
        record install failed "missing ${missing[*]}, and $WHEELS has no wheel for them" 0 "$install_cmd"
    elif [[ "$MODE" == gpu ]]; then
        record install failed "missing ${missing[*]}; set WHEELS=dir (scripts/fetch_gpu_wheels.sh downloads them)" 0 ""
    else
        record install skipped "would need ${missing[*]} from WHEELS=dir; $MODE: nothing installed" 0 ""
    fi
elif ((${#wheels[@]} == 0)); then
    record install ok "nothing missing" 0 ""
elif [[ "$MODE" != gpu ]]; then
    record install skipped "would install ${wheels[*]} to $TARGET; $MODE: nothing installed" 0 "$install_cmd"
else
    run_limited install 120 "" "${install[@]}"
fi
[[ "$MODE" == gpu && ${#wheels[@]} -gt 0 ]] && export PYTHONPATH="$PYTHONPATH:$TARGET"
if [[ "$MODE" == gpu ]]; then
    # The package metadata and the `supergen` command; imports resolve to this checkout either
    # way (PYTHONPATH above). No build isolation: it would fetch setuptools from the network.
    run_limited editable-install 120 "" "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e "$REPO"
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
for name in ("triton", "diffusers", "transformers", "accelerate"):
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
step versions 60 0 "" "" "$PYTHON" "$LOGS/versions.py"
[[ -f "$LOGS/versions.log" ]] && cat "$LOGS/versions.log"

# ----------------------------------------------------------------------- GPU steps
# validate_flags SCRIPT FLAGS...: the script's --help lists every flag the step passes.
validate_flags() {
    local script=$1
    shift
    local flags="" f
    for f in "$@"; do flags+="grep -q -- '$f' \"\$h\" && "; done
    echo "h=\$(mktemp) && $PYTHON $script --help >\"\$h\" && ${flags}true"
}

# pytest_step NAME LIMIT -k EXPRESSION: the gpu tests of tests/test_gpu.py that EXPRESSION selects,
# one row per finished test. --noconftest: they use no fixture, and tests/conftest.py imports
# diffusers (seconds).
pytest_step() {
    local name=$1 limit=$2 expr=$3
    local cmd=("$PYTHON" -m pytest -q -m gpu --noconftest -p no:cacheprovider -p pytest_rows
               --rows "$ROWS/$name.jsonl" -k "$expr" tests/test_gpu.py)
    local printed
    printf -v printed '%q ' "${cmd[@]}"
    step "$name" "$limit" 1 "$PYTHON -m pytest -q -m gpu --noconftest -p pytest_rows --collect-only -k '$expr' tests/test_gpu.py" \
        "$printed" "${cmd[@]}"
}

# 1. Do the kernels compute the right thing on the GPU?
KERNEL_TESTS="reference_at_wan_head_dim or past_2_31 or compiles_once"
pytest_step kernels 150 "$KERNEL_TESTS"

# 2. How fast are they against dense flash attention?
KB=(--canvas 2k 4k --heads wan14b --halo 8 --iters 5 --warmup 2 --jsonl "$ROWS/kernel-bench.jsonl")
step kernel-bench 120 1 "$(validate_flags kernels/bench.py --canvas --heads --halo --iters --warmup --jsonl)" \
    "$PYTHON kernels/bench.py --smoke --rounds ${GPU_CHECK_CPU_ROUNDS:-1} --jsonl $ROWS/kernel-bench.jsonl" \
    "$PYTHON" kernels/bench.py "${KB[@]}"

# 3. Tiled vs full-canvas refinement at 2K and 4K, and the memory trace against CUDA's peak.
RF=(--arch wan2.1-1.3b --dtype bfloat16 --repeats 2 --warmup 1)
RF_FLAGS=(--arch --canvas --frames --dtype --repeats --warmup --jsonl)
step refine-2k 100 1 "$(validate_flags scripts/bench_refine.py "${RF_FLAGS[@]}")" "" \
    "$PYTHON" scripts/bench_refine.py "${RF[@]}" --canvas 1440x2560 --frames 9 --jsonl "$ROWS/refine-2k.jsonl"
step refine-4k 100 1 "$(validate_flags scripts/bench_refine.py "${RF_FLAGS[@]}")" "" \
    "$PYTHON" scripts/bench_refine.py "${RF[@]}" --canvas 2160x3840 --frames 5 --jsonl "$ROWS/refine-4k.jsonl"
pytest_step trace-memory 90 "traced_transformer_peak"

# 4. The rest.
pytest_step gpu-tests 150 "not ($KERNEL_TESTS or traced_transformer_peak)"

# The toy transformer needs more training than a CPU gives it (issue #17): what the lease leaves,
# spent on it. Saved every 30 s, so a run cut short by the budget still returns its weights.
TOY=(--stage dit --init-from assets/toy-wan --device cuda --bank 2048 --dit-batch 64 --dit-lr 4e-4
     --dit-steps 1000000 --dit-time-limit-s 150 --eval-every 2000 --save-every-s 30
     --run-dir "$DIR/toy-run" --dit-export-weights "$DIR/toy-dit-weights.pt")
TOY_FLAGS=(--stage --init-from --device --bank --dit-batch --dit-lr --dit-steps --dit-time-limit-s --eval-every
           --save-every-s --run-dir --dit-export-weights)
step toy-dit 240 1 "$(validate_flags scripts/train_toy_model.py "${TOY_FLAGS[@]}")" "" \
    "$PYTHON" scripts/train_toy_model.py "${TOY[@]}"

# --------------------------------------------------------------------------- report
"$PYTHON" - "$DIR" "$MODE" "$START" <<'PY'
import json, pathlib, sys, time

folder, mode, start = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])


def tail(name, chars=4000):
    path = folder / "logs" / f"{name}.log"
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def rows(name):
    """The step's rows; a step killed while writing may leave a torn last line, counted apart."""
    path = folder / "rows" / f"{name}.jsonl"
    good, torn = [], 0
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            good.append(json.loads(line))
        except json.JSONDecodeError:
            torn += 1
    return good, torn


steps = []
for line in (folder / "steps.jsonl").read_text().splitlines():
    entry = json.loads(line)
    entry["output_tail"] = tail(entry["name"])
    entry["rows"], entry["torn_rows"] = rows(entry["name"])
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
report = folder / "gpu_report.json"
report.write_text(json.dumps(data, indent=2) + "\n")
print(f"gpu_check: report {report}: ok={data['ok']}, failed={data['failed']}, skipped={data['skipped']}")
sys.exit(0 if data["ok"] else 1)
PY
