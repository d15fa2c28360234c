"""Makespan of a batch of uneven jobs: jobs pulled by idle Ray render groups vs today's static split.

8 jobs of the tiny model, 4 large and 4 small, in the order ``large, small, large, small, ...``: the
static split of a ``torchrun`` batch (job ``i`` to group ``i mod 2``) gives every large job to group 0,
while the farm (:mod:`supergen.farm`) hands the next job to whichever group is idle. Both run here,
one after the other, on 2 groups of 1 rank (CPU, one thread each):

- static: ``torchrun --nproc_per_node 2 -m supergen render --jobs ... parallel.group_size=1``;
- pulled: ``ray.init(num_cpus=2)`` and :func:`supergen.farm.render_farm` on the same jobs.

Printed for each: the wall time of the run (for the farm with Ray's start-up, ``ray.init``, and the
render groups' start-up: actor processes, imports, model load, until the first job is handed out);
the render span, from the first job's start to the last job's end (each job ends when its sidecar is
written and started its recorded ``seconds`` before); each group's sum of job seconds; the ratios.
Run it niced on a shared machine::

    nice -n 19 python scripts/bench_farm.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SMALL = {"height": 48, "width": 80, "num_frames": 5, "overrides": ["refine.num_inference_steps=2"]}
LARGE = {"height": 96, "width": 160, "num_frames": 13, "overrides": ["refine.num_inference_steps=12"]}
COMMON = ["job.height=48", "job.width=80", "job.num_frames=5", "sketch.height=32", "sketch.width=48",
          "sketch.num_inference_steps=2", "refine.strength=0.5", "parallel.group_size=1"]


def write_jobs(folder: Path) -> Path:
    rows = [{"prompt": f"{kind} job {i}", "seed": i, "name": f"{i}-{kind}", **(LARGE if kind == "large" else SMALL)}
            for i, kind in enumerate(["large", "small"] * 4)]
    path = folder / "jobs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def render_span(out: Path) -> tuple[float, dict[str, float]]:
    """Seconds from the first job's start to the last job's end, and each job's seconds, from the folder:
    a job ends when its sidecar is written (its mtime) and started its recorded ``seconds`` before."""
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok"] * 8, records
    ends = {r["name"]: (out / f"{r['name']}.json").stat().st_mtime for r in records}
    seconds = {r["name"]: r["seconds"] for r in records}
    return max(ends.values()) - min(ends[n] - seconds[n] for n in ends), seconds


def static(jobs: Path, out: Path) -> tuple[float, float, list[float]]:
    """The torchrun batch: its wall seconds, its render span, each group's sum of job seconds (job i went to group i mod 2)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "supergen", "render", "--config", "tiny",
           "--quiet", *COMMON, "--jobs", str(jobs), "--output-dir", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(proc.stdout[-2000:] + proc.stderr[-4000:])
    span, seconds = render_span(out)
    names = [json.loads(line)["name"] for line in jobs.read_text().splitlines()]
    return wall, span, [sum(seconds[n] for n in names[g::2]) for g in range(2)]


def pulled(jobs: Path, out: Path) -> tuple[float, float, float, float, list[float]]:
    """The farm: its wall seconds (Ray's start included), Ray's start-up, the groups' start-up (to the first
    job handed out), its render span, each group's sum of job seconds."""
    import ray

    from supergen.config import load_config
    from supergen.farm import render_farm
    from supergen.jobs import parse_jobs

    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20, log_to_driver=False)
    ray_up = time.perf_counter() - start
    base = load_config("tiny", COMMON)
    first: list[float] = []
    taken: dict[str, int] = {}

    def handed_out(group: int, job, pids) -> None:
        first.append(time.perf_counter())
        taken[job.name] = group

    out.mkdir()
    farm_start = time.perf_counter()
    render_farm(base, parse_jobs(jobs, base).jobs, out, "bench", quiet=True, on_dispatch=handed_out)
    wall = time.perf_counter() - start
    ray.shutdown()
    span, seconds = render_span(out)
    per_group = [sum(seconds[n] for n, g in taken.items() if g == k) for k in sorted(set(taken.values()))]
    return wall, ray_up, first[0] - farm_start, span, per_group


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        jobs = write_jobs(folder)
        static_wall, static_span, static_groups = static(jobs, folder / "static")
        farm_wall, ray_up, groups_up, farm_span, farm_groups = pulled(jobs, folder / "pulled")
    sums = lambda groups: " + ".join(f"{s:.1f}" for s in groups)  # noqa: E731
    print(f"8 jobs (4 large, 4 small, alternating), 2 groups x 1 rank, CPU; load average {os.getloadavg()[0]:.1f} at the end")
    print(f"static (torchrun, job i -> group i mod 2): wall {static_wall:.1f} s, render span {static_span:.1f} s, "
          f"job seconds per group {sums(static_groups)}")
    print(f"pulled (Ray farm): wall {farm_wall:.1f} s (ray.init {ray_up:.1f} s, first group up after {groups_up:.1f} s more), "
          f"render span {farm_span:.1f} s, job seconds per group {sums(farm_groups)}")
    print(f"render span pulled / static: {farm_span / static_span:.2f}; wall pulled / static: {farm_wall / static_wall:.2f}")


if __name__ == "__main__":
    main()
