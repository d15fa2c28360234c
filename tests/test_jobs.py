"""Batch rendering (``supergen render --jobs``) run the way a person runs it: the command, in processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from supergen.config import load_config
from supergen.jobs import parse_jobs, read_rows

from ranks import torchrun

# Small and fast: the tiny model, 48×80 px, 5 frames, 2+1 steps.
BASE = [
    "--config", "tiny", "--quiet",
    "job.height=48", "job.width=80", "job.num_frames=5",
    "sketch.height=32", "sketch.width=48", "sketch.num_inference_steps=2",
    "refine.num_inference_steps=2", "refine.strength=0.5",
]
TIMEOUT = 240

GOOD = [
    {"prompt": "a red car", "seed": 1},
    {"prompt": "a blue boat", "seed": 2, "negative_prompt": "blurry", "overrides": ["tiling.boundary=wrap"]},
    {"prompt": "a green tree", "seed": 3, "height": 64, "num_frames": 5},
]
# Valid on paper, fails when rendered: 0.01 × 2 steps leaves no refinement step.
FAILS_AT_RUN_TIME = {"prompt": "too little strength", "overrides": ["refine.strength=0.01"]}


def write_jobs(folder: Path) -> tuple[Path, set[int], int]:
    """A JSONL file mixing good and bad rows; returns it, the bad line numbers, the run-time failure's line."""
    lines = [
        json.dumps(GOOD[0]),                                          # 1
        "{not json",                                                  # 2 bad
        json.dumps({"prompt": "x", "colour": "red"}),                 # 3 bad: unknown field
        "",                                                           # 4 blank: ignored
        json.dumps(GOOD[1]),                                          # 5
        json.dumps({"prompt": "x", "height": 8}),                     # 6 bad: below the minimum size
        json.dumps({"prompt": "x", "overrides": ["tiling.nope=1"]}),  # 7 bad: unknown key
        json.dumps({"prompt": "x", "image": "missing.png"}),          # 8 bad: no such file
        json.dumps(FAILS_AT_RUN_TIME),                                # 9
        json.dumps({"prompt": "x", "overrides": ["model.name=toy"]}), # 10 bad: the model is per batch
        json.dumps(GOOD[2]),                                          # 11
    ]
    path = folder / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, {2, 3, 6, 7, 8, 10}, 9


def supergen(*args: str, ranks: int = 1) -> subprocess.CompletedProcess:
    if ranks > 1:
        return torchrun(ranks, "-m", "supergen", *args, timeout=TIMEOUT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "supergen", *args], capture_output=True, text=True, timeout=TIMEOUT, env=env)


def results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_dry_run_reports_exactly_the_bad_rows(tmp_path):
    path, bad, _ = write_jobs(tmp_path)
    proc = supergen("render", *BASE, "--jobs", str(path), "--dry-run")
    assert proc.returncode == 2, proc.stderr
    reported = {int(line.split(":")[1]) for line in proc.stderr.splitlines() if line.startswith(str(path))}
    assert reported == bad
    assert "4 valid job(s), 6 bad row(s)" in proc.stdout
    assert "unknown field(s) colour" in proc.stderr and "'tiling.nope'" in proc.stderr
    assert not (tmp_path / "out").exists()  # a dry run renders and writes nothing


def test_batch_over_two_groups_finishes_good_jobs_records_failures_and_resumes(tmp_path):
    path, bad, fails = write_jobs(tmp_path)
    out = tmp_path / "out"
    # Two ranks in two groups of one: job parallelism, each group renders different jobs.
    proc = supergen("render", *BASE, "parallel.group_size=1", "--jobs", str(path), "--output-dir", str(out), ranks=2)
    assert proc.returncode != 0  # some jobs failed ...
    assert "3 ok, 0 skipped, 1 failed, 6 invalid" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    videos = sorted(out.glob("*.mp4"))
    assert len(videos) == 3  # ... and every good one finished
    sidecars = [json.loads(v.with_suffix(".json").read_text()) for v in videos]
    assert {s["parallel"]["group"] for s in sidecars} == {0, 1}  # both groups rendered
    first = next(s for s in sidecars if s["line"] == 1)
    assert first["seed"] == 1 and first["config"]["job"]["prompt"] == "a red car"
    assert set(first["seconds"]) >= {"sketch", "refine", "decode", "total"} and first["versions"]["torch"]
    assert len(first["tiles"]["steps"]) == 1 and first["tiles"]["tiling"].startswith("shift")
    assert next(s for s in sidecars if s["line"] == 11)["size"] == [64, 80]
    records = results(out)
    assert {r["line"] for r in records if r["status"] == "invalid"} == bad
    failed = [r for r in records if r["status"] == "failed"]
    assert [r["line"] for r in failed] == [fails] and "leaves no refinement step" in failed[0]["error"]

    # Rerun (one process, no launcher): nothing finished is rendered again.
    stamps = {v: v.stat().st_mtime_ns for v in videos}
    proc = supergen("render", *BASE, "parallel.group_size=1", "--jobs", str(path), "--output-dir", str(out))
    assert "0 ok, 3 skipped, 1 failed, 6 invalid" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert {v: v.stat().st_mtime_ns for v in out.glob("*.mp4")} == stamps


def test_csv_rows_take_the_same_fields(tmp_path):
    path = tmp_path / "jobs.csv"
    path.write_text("prompt,seed,height,overrides\na cat,5,64,tiling.boundary=wrap; refine.strength=0.6\na dog,x,,\n")
    rows = read_rows(path)
    assert rows[0] == (2, {"prompt": "a cat", "seed": "5", "height": "64", "overrides": ["tiling.boundary=wrap", "refine.strength=0.6"]})
    parsed = parse_jobs(path, load_config("tiny"))
    job = parsed.jobs[0]
    assert (job.config.job.seed, job.config.job.height, job.config.tiling.boundary, job.config.refine.strength) == (5, 64, "wrap", 0.6)
    assert job.config.job.width == 448  # a missing field takes the config's value
    assert [b.line for b in parsed.bad] == [3] and "job.seed" in parsed.bad[0].error


def test_fingerprint_counts_only_settings_that_differ_from_the_defaults(tmp_path):
    """A rerun after an upgrade that adds a config key (at a default keeping today's behaviour) resumes the
    folder: the fingerprint is the row plus the non-default settings, so the new key changes nothing."""
    import dataclasses

    from supergen.config import SuperGenConfig, TilingConfig
    from supergen.jobs import Job, settings

    @dataclasses.dataclass
    class NewTiling(TilingConfig):
        new_knob: int = 0  # a key a later release adds

    @dataclasses.dataclass
    class NewConfig(SuperGenConfig):
        tiling: NewTiling = dataclasses.field(default_factory=NewTiling)

    row = {"prompt": "a red car", "seed": 1}
    today = load_config("tiny", ["tiling.mode=overlap"])
    upgraded = NewConfig(**{f.name: getattr(today, f.name) for f in dataclasses.fields(SuperGenConfig)})
    upgraded.tiling = NewTiling(**dataclasses.asdict(today.tiling))

    assert settings(today)["tiling.mode"] == "overlap"
    assert "tiling.new_knob" not in settings(upgraded)
    same = Job(1, row, today, "a").fingerprint
    assert Job(1, row, upgraded, "a").fingerprint == same
    upgraded.tiling.new_knob = 1  # set away from its default, it makes another video
    assert Job(1, row, upgraded, "a").fingerprint != same
    assert Job(1, row | {"seed": 2}, today, "a").fingerprint != same
