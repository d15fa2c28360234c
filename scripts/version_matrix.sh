#!/usr/bin/env bash
# The version matrix: a named fast subset of the CPU suite plus the README's quickstart render, each in a
# fresh venv per row of library versions. The rows are the ends of the range pyproject.toml declares and
# the GPU image's versions; docs/compatibility.md records what each row gave.
#
#   scripts/version_matrix.sh [ROW...]        # rows: oldest newest gpu-image (default: all three)
#   VENV_ROOT=/work/venvs scripts/version_matrix.sh gpu-image
#   INSTALL_ONLY=1 scripts/version_matrix.sh gpu-image     # build the venv, run nothing
#
# A venv is built once per row ($VENV_ROOT/<row>, marked READY when fully installed) and reused after.
# Rows with a CUDA torch (gpu-image, newest) download several GB from the package index; they run on a
# CPU all the same. Results: one line per row on stdout and $VENV_ROOT/<row>/matrix.log.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
VENV_ROOT=${VENV_ROOT:-.venvs-matrix}
PYTHON=${PYTHON:-python3}
mkdir -p "$VENV_ROOT" && VENV_ROOT=$(cd "$VENV_ROOT" && pwd)

# Pins per row: what pip installs next to `-e .` in the same command (so the resolver can't pick others).
# Keep in step with pyproject.toml's `dependencies` bounds and the table in docs/compatibility.md.
declare -A PINS=(
  # The lower bounds pyproject.toml declares for diffusers, transformers and accelerate (torch's lower
  # bound is the gpu-image row's).
  [oldest]="torch==2.13.0 diffusers==0.41.0 transformers==5.0.0 accelerate==1.0.1"
  # The newest releases on the package index today.
  [newest]="torch==2.14.1 diffusers==0.42.1 transformers==5.25.0 accelerate==1.16.0"
  # The H100/H200 image scripts/gpu_check.sh targets: these four are installed there; the rest comes
  # from the wheels the kit carries.
  [gpu-image]="torch==2.11.0 triton==3.6.0 transformers==5.17.0 accelerate==1.15.0 diffusers==0.42.1"
)

# The fast subset: for every private name supergen/compat.py registers, a test that runs the code
# reaching it (diffusers' hooks and cache contexts, the block cache, context parallelism and its byte
# counts, attention dispatch in the CogVideoX/LTX processors, group offloading, fake-tensor traces,
# the LTX latent layout, compiled FlexAttention), plus the layering and compat checks themselves.
FAST_TESTS=(
  tests/test_compat.py
  tests/test_layout.py::test_light_modules_do_not_import_diffusers
  tests/test_cache_package.py::test_diffusers_hooks_keep_one_state_per_branch_and_region
  tests/test_cache_package.py::test_a_diffusers_config_from_python_is_applied_per_region
  tests/test_cache_package.py::test_block_counter_counts_what_runs_under_a_users_own_hooks
  tests/test_cache_package.py::test_block_cache_state_is_kept_per_branch_by_a_state_manager
  tests/test_offload.py::test_an_offloaded_render_equals_the_plain_one
  tests/test_trace.py::test_tiny_trace_has_no_host_copy_and_names_its_stages
  tests/test_trace.py::test_group_offload_trace_counts_only_the_onloaded_groups
  tests/test_parallel_attention.py::test_attention_mode_on_two_ranks_splits_the_canvas_forward_and_counts_its_bytes
  tests/test_families.py::test_one_tile_at_strength_one_equals_the_plain_pipeline
  tests/test_diffusers_habits.py::test_from_pretrained_takes_diffusers_loading_options_and_builtin_names
  tests/test_tile_attention.py::test_one_compiled_flex_graph_serves_a_whole_shift_cycle
)

build() {  # build() ROW: a fresh venv with ROW's pins, supergen editable, pytest; READY when done.
  local row=$1 venv=$VENV_ROOT/$1
  [ -f "$venv/READY" ] && return 0
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv" || return 1
  # shellcheck disable=SC2086
  "$venv/bin/pip" install -q --disable-pip-version-check ${PINS[$row]} -e . "pytest>=8.0" || return 1
  "$venv/bin/python" -c "import torch, diffusers, transformers, accelerate; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)" > "$venv/versions.txt" || return 1
  touch "$venv/READY"
}

run_row() {  # run_row ROW: prints "ROW: <versions>: tests <pytest summary>; quickstart ok|FAILED"
  local row=$1 venv=$VENV_ROOT/$1 out
  out=$(mktemp -d)
  if ! build "$row" > "$out/install.log" 2>&1; then
    echo "$row: install FAILED ($(tail -n 1 "$out/install.log"))"
    return 1
  fi
  [ -n "${INSTALL_ONLY:-}" ] && { echo "$row: installed: $(cat "$venv/versions.txt")"; return 0; }
  "$venv/bin/python" -m pytest -q -p no:cacheprovider "${FAST_TESTS[@]}" > "$venv/matrix.log" 2>&1
  local tests=$? summary
  summary=$(grep -E "^(=+ )?[0-9]+ (passed|failed)|(passed|failed|error).* in [0-9.]+s" "$venv/matrix.log" | tail -n 1)
  local quick=ok
  (cd "$out" && "$venv/bin/supergen" render --config toy --output "$out/out.mp4") >> "$venv/matrix.log" 2>&1 \
    && [ -s "$out/out.mp4" ] || quick=FAILED
  echo "$row: $(cat "$venv/versions.txt"): tests ${summary:-no summary, see $venv/matrix.log}; quickstart $quick"
  rm -rf "$out"
  [ $tests -eq 0 ] && [ $quick = ok ]
}

main() {
  local rows=("$@") row status=0
  [ ${#rows[@]} -eq 0 ] && rows=(oldest newest gpu-image)
  for row in "${rows[@]}"; do
    [ -n "${PINS[$row]:-}" ] || { echo "unknown row '$row': valid rows are ${!PINS[*]}"; return 2; }
    run_row "$row" || status=1
  done
  return $status
}

# One line, read whole before it runs: editing this file during a long run cannot derail it.
main "$@"; exit $?
