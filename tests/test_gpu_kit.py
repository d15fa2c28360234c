"""scripts/gpu_check.sh cannot come back empty: its CPU rehearsal (GPU_CHECK_CPU=1) runs the steps
that have a CPU form under the kit's own time limits and row files, so the behaviour a GPU lease
depends on is checked here: every finished row is on disk as it is measured, and a step ended by
its time limit still reports the rows it finished. (The dry run is tests/test_gpu_check.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
LIMIT_S = 30  # each step's limit here: the kernel bench's endless rounds always reach it


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """The kernel steps rehearsed on CPU: the kernel tests (which skip without CUDA, one row each)
    and the kernel bench on --smoke shapes for more rounds than its limit allows."""
    out = tmp_path_factory.mktemp("out")
    env = dict(os.environ, OUT=str(out), GPU_CHECK_CPU="1", PYTHON=sys.executable, GPU_CHECK_STEPS="kernels kernel-bench",
               GPU_CHECK_LIMIT_S=str(LIMIT_S), GPU_CHECK_CPU_ROUNDS="100000")
    env.pop("WHEELS", None)
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    report = json.loads((out / "gpu_report.json").read_text())
    return result, out, report, {s["name"]: s for s in report["steps"]}


@pytest.mark.skipif(torch.cuda.is_available(), reason="rehearses the kit where there is no GPU")
def test_a_step_past_its_time_limit_keeps_every_finished_row(rehearsal):
    result, out, report, steps = rehearsal
    bench = steps["kernel-bench"]
    assert bench["status"] == "failed" and bench["reason"] == f"CPU rehearsal; timed out after {LIMIT_S}s"
    assert result.returncode == 1 and report["failed"] == ["kernel-bench"]
    # The rows on disk when the limit struck are all in the report (a torn last line aside).
    lines = (out / "rows" / "kernel-bench.jsonl").read_text().splitlines()
    assert len(bench["rows"]) >= 1 and len(bench["rows"]) + bench["torn_rows"] == len(lines)
    assert bench["torn_rows"] <= 1
    first = bench["rows"][0]
    assert first["case"] == "smoke halo 0" and first["method"] == "dense SDPA" and first["ms"] > 0
    assert {"tflops_computed", "pct_flash", "max_abs_err", "round"} <= set(first)


@pytest.mark.skipif(torch.cuda.is_available(), reason="rehearses the kit where there is no GPU")
def test_pytest_steps_write_one_row_per_test(rehearsal):
    _, out, _, steps = rehearsal
    kernels = steps["kernels"]
    assert kernels["status"] == "ok" and kernels["reason"] == "CPU rehearsal"
    names = {row["test"].split("[")[0] for row in kernels["rows"]}
    assert names == {f"tests/test_gpu.py::{name}" for name in (
        "test_triton_matches_reference_at_wan_head_dim", "test_flex_matches_reference_at_wan_head_dim",
        "test_flex_compiles_once_per_shape_on_cuda", "test_triton_addresses_past_2_31_elements")}
    assert all(row["outcome"] == "skipped" and row["message"] == "needs a CUDA GPU" for row in kernels["rows"])
    # Steps left out by GPU_CHECK_STEPS say so and write nothing.
    assert steps["versions"]["status"] == steps["refine-2k"]["status"] == "skipped"
    assert steps["refine-2k"]["reason"] == "not in GPU_CHECK_STEPS" and not (out / "rows" / "refine-2k.jsonl").exists()
