"""The Ray render farm (``supergen render --jobs ... --ray``) on a local Ray cluster of 2 CPUs.

Real actors, real ``kill -9``: render groups of one rank (2 groups) and of two ranks over gloo (1 group),
compared with what the one-process batch writes for the same rows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from supergen.config import load_config
from supergen.farm import farm_renderer, render_farm
from supergen.jobs import RESULTS, parse_jobs, render_jobs
from supergen.videoio import read_video, temporaries

from ranks import single_thread
from test_jobs import BASE, FAILS_AT_RUN_TIME, GOOD

ray = pytest.importorskip("ray")

OVERRIDES = [a for a in BASE if "=" in a]


@pytest.fixture(scope="module")
def cluster():
    """One local Ray instance for the module: 2 CPUs, no dashboard, a small object store (videos go to files)."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20, log_to_driver=False)
    yield
    ray.shutdown()


def config(group_size: int, *more: str):
    return load_config("tiny", [*OVERRIDES, f"parallel.group_size={group_size}", *more])


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RESULTS).read_text().splitlines()]


def contents(out: Path, keep_parallel: bool = True) -> dict:
    """What a batch left in ``out``, less what differs between any two runs: timings, run ids, the folder's path
    (and, for a render on several ranks, the sidecars' parallel statistics)."""
    sidecars = {}
    for path in out.glob("*.json"):
        data = json.loads(path.read_text())
        del data["seconds"]
        for step in data["tiles"]["steps"]:
            del step["seconds"]
        if not keep_parallel:
            del data["parallel"]
        sidecars[path.name] = data
    results = sorted((json.dumps({k: v for k, v in r.items() if k not in ("run", "seconds", "output")}) for r in records(out)))
    return {"files": sorted(p.name for p in out.iterdir()), "sidecars": sidecars, "results": results}


@pytest.mark.parametrize("group_size", [1, 2], ids=["2 groups x 1 rank", "1 group x 2 ranks"])
def test_farm_writes_what_one_process_writes_and_each_resumes_the_other(cluster, tmp_path, group_size):
    jobs = write_rows(tmp_path / "jobs.jsonl", [*GOOD, FAILS_AT_RUN_TIME])
    base = config(group_size)
    reference, farm = tmp_path / "one-process", tmp_path / "farm"
    with single_thread():  # as each actor runs (Ray gives an actor of 1 CPU one thread)
        assert render_jobs(base, str(jobs), str(reference), quiet=True) == 1  # the failing row
    assert render_jobs(base, str(jobs), str(farm), quiet=True, elsewhere=farm_renderer(base, "", quiet=True)) == 1

    names = {job.name for job in parse_jobs(jobs, base).jobs[:len(GOOD)]}
    expected, got = contents(reference, group_size == 1), contents(farm, group_size == 1)
    assert got == expected
    assert len(got["files"]) == 2 * len(GOOD) + 1  # video and sidecar of each good job, results.jsonl: nothing else
    for name in got["files"]:
        if name.endswith(".mp4"):  # bit-identical frames: the one-process render is deterministic on one thread
            assert np.array_equal(read_video(farm / name), read_video(reference / name)), name
    if group_size == 2:
        assert {json.loads(p.read_text())["parallel"]["ranks"] for p in farm.glob("*.json")} == {2}

    # Either resumes the other's folder: a finished job is skipped (the farm starts no group for those).
    with single_thread():
        assert render_jobs(base, str(jobs), str(farm), quiet=True) == 1  # the failing row is tried again
    assert render_jobs(base, str(write_rows(tmp_path / "good.jsonl", GOOD)), str(reference), quiet=True, elsewhere=farm_renderer(base, "", quiet=True)) == 0
    for out in (farm, reference):
        last_run = [r for r in records(out) if r["run"] == records(out)[-1]["run"]]
        assert sorted(r["status"] for r in last_run if r["name"] in names) == ["skipped"] * len(GOOD)


def kill_while_writing(out: Path, name: str, killed: list[int]):
    """``on_dispatch`` for :func:`render_farm`: ``kill -9`` the rank given job ``name`` (the first time) while it
    writes the video, i.e. once its temporary file exists; the killed group's index goes to ``killed``."""

    def watch(group: int, pids: list[int]) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (out / f"{name}.json").exists():
            if temporaries(out / f"{name}.mp4"):
                os.kill(pids[0], signal.SIGKILL)
                killed.append(group)
                return
            time.sleep(0.0005)

    def on_dispatch(group: int, job, pids: list[int]) -> None:
        if job.name == name and not killed:
            threading.Thread(target=watch, args=(group, pids), daemon=True).start()

    return on_dispatch


def kill_at_once(name: str, killed: list[int]):
    """``on_dispatch``: ``kill -9`` every group job ``name`` is handed to, as soon as it is."""

    def on_dispatch(group: int, job, pids: list[int]) -> None:
        if job.name == name:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(group)

    return on_dispatch


def farm_run(tmp_path: Path, rows: list[dict], on_dispatch, *more: str) -> tuple[Path, list, object]:
    base = config(1, *more)
    jobs = parse_jobs(write_rows(tmp_path / "jobs.jsonl", rows), base).jobs
    out = tmp_path / "out"
    out.mkdir()
    report = render_farm(base, jobs, out, "run", quiet=True, on_dispatch=on_dispatch)
    return out, jobs, report


def test_a_job_whose_rank_is_killed_while_writing_runs_again_on_another_group(cluster, tmp_path):
    killed: list[int] = []
    out = tmp_path / "out"
    out, jobs, report = farm_run(tmp_path, [{"prompt": "a victim", "name": "victim"}, *GOOD], kill_while_writing(out, "victim", killed))

    assert len(killed) == 1, "the kill missed: the video was written before the watcher saw its temporary file"
    final = [r for r in records(out) if r["status"] != "retried"]
    assert sorted(r["name"] for r in final) == sorted(j.name for j in jobs)  # every job recorded once ...
    assert {r["status"] for r in final} == {"ok"}  # ... and ok
    retried = [r for r in records(out) if r["status"] == "retried"]
    assert [r["name"] for r in retried] == ["victim"] and "died" in retried[0]["error"]
    assert len(report.lost) == 1 and report.lost[0].startswith(f"group {killed[0]}:")
    assert report.groups == 3  # the two first groups and the killed one's replacement
    # Nothing half-written: each job's video and sidecar, results.jsonl; no temporary file, no claim left.
    assert sorted(p.name for p in out.iterdir()) == sorted([RESULTS, *(f"{j.name}{s}" for j in jobs for s in (".mp4", ".json"))])


def test_a_job_that_kills_every_group_it_touches_fails_after_the_configured_attempts(cluster, tmp_path):
    killed: list[int] = []
    out, jobs, report = farm_run(tmp_path, [*GOOD, {"prompt": "poison", "name": "poison"}], kill_at_once("poison", killed),
                                 "parallel.attempts=2")

    by_name: dict[str, list[dict]] = {}
    for r in records(out):
        by_name.setdefault(r["name"], []).append(r)
    poisoned = by_name.pop("poison")
    assert [r["status"] for r in poisoned] == ["retried", "failed"] and "failed after 2 attempts" in poisoned[-1]["error"]
    assert len(by_name) == len(GOOD) and all([r["status"] for r in rs] == ["ok"] for rs in by_name.values())
    assert len(killed) == 2 and len(report.lost) == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file, no claim left


def test_temporaries_finds_what_a_killed_writer_left_and_nothing_else(tmp_path):
    """A process killed (``kill -9``) inside :func:`~supergen.videoio.atomic_file` leaves its temporary files behind."""
    names = ["a.mp4", "a.b.mp4", "a.json", "a.sketch.mp4", "b.mp4"]
    script = ("import contextlib, os, sys\nfrom pathlib import Path\nfrom supergen.videoio import atomic_file\n"
              "with contextlib.ExitStack() as stack:\n    for name in sys.argv[2:]:\n"
              "        stack.enter_context(atomic_file(Path(sys.argv[1]) / name)).write_text(name)\n"
              "    os.kill(os.getpid(), 9)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path), *names], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    (tmp_path / ".a.lock").touch()  # a claim's lock file is no temporary
    for name in names:
        left = temporaries(tmp_path / name)
        assert [p.read_text() for p in left] == [name]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == []  # none took a finished name


def test_ray_is_refused_without_jobs(capsys):
    from supergen.cli import main

    assert main(["render", "--ray", "auto"]) == 2
    assert "--ray is for batch rendering: use it with --jobs FILE" in capsys.readouterr().err


def test_retry_count_and_timeout_leave_the_fingerprint_a_rerun_resumes_by(tmp_path):
    jobs = write_rows(tmp_path / "jobs.jsonl", GOOD)

    def fingerprints(*more: str) -> list[str]:
        return [job.fingerprint for job in parse_jobs(jobs, config(1, *more)).jobs]

    assert fingerprints("parallel.attempts=5", "parallel.timeout_s=60") == fingerprints()
    assert fingerprints("refine.strength=0.6") != fingerprints()  # a setting that changes the video still counts
