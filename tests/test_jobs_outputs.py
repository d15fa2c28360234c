"""What a batch does with its output folder: sketches, existing outputs, concurrent batches, unwritable places."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from supergen.cli import main
from supergen.jobs import claim

from test_jobs import BASE, results

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny renders in this process

SKETCHED = {"prompt": "a red car", "seed": 1, "name": "sketched", "overrides": ["output.save_sketch=true"]}
PLAIN = {"prompt": "a blue boat", "seed": 2, "name": "plain"}


def batch(capsys, *args: str) -> tuple[int, str, str]:
    """``supergen render`` with the small settings of tests/test_jobs.py, in this process (the model loads
    in a second, the imports are done); its exit status, stdout and stderr."""
    code = main(["render", *BASE, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write(path: Path, *rows: dict) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_save_sketch_per_job_and_flag_and_overwrite_like_a_single_render(tmp_path, capsys):
    jobs, out = write(tmp_path / "jobs.jsonl", SKETCHED, PLAIN), tmp_path / "out"
    code, stdout, stderr = batch(capsys, "--jobs", str(jobs), "--output-dir", str(out))
    assert code == 0 and "2 ok" in stdout, stdout + stderr
    # Per job: output.save_sketch=true writes the sketch, and the sidecar says where.
    assert (out / "sketched.sketch.mp4").stat().st_size > 0 and not (out / "plain.sketch.mp4").exists()
    assert json.loads((out / "sketched.json").read_text())["sketch_video"] == "sketched.sketch.mp4"
    assert json.loads((out / "plain.json").read_text())["sketch_video"] is None
    stamp = (out / "plain.mp4").stat().st_mtime_ns

    # --save-sketch changes the plain job's settings: its existing video is kept and the job refused, as a
    # single render refuses an existing output; the sketched job's settings are unchanged, so it is skipped.
    code, stdout, stderr = batch(capsys, "--save-sketch", "--jobs", str(jobs), "--output-dir", str(out))
    assert code == 1 and "0 ok, 1 skipped, 1 failed" in stdout, stdout + stderr
    refused = next(r for r in results(out) if r["status"] == "failed")
    assert refused["name"] == "plain" and "pass --overwrite" in refused["error"]
    assert (out / "plain.mp4").stat().st_mtime_ns == stamp and not (out / "plain.sketch.mp4").exists()

    code, stdout, stderr = batch(capsys, "--save-sketch", "--overwrite", "--jobs", str(jobs), "--output-dir", str(out))
    assert code == 0 and "1 ok, 1 skipped, 0 failed" in stdout, stdout + stderr
    assert (out / "plain.mp4").stat().st_mtime_ns != stamp and (out / "plain.sketch.mp4").stat().st_size > 0
    assert json.loads((out / "plain.json").read_text())["config"]["output"]["save_sketch"] is True


def test_cache_map_names_one_picture_and_is_refused_with_jobs(tmp_path, capsys):
    jobs = write(tmp_path / "jobs.jsonl", PLAIN)
    code = main(["render", "--jobs", str(jobs), "--output-dir", str(tmp_path / "out"), "--cache-map", str(tmp_path / "map.png")])
    assert code == 2 and "--cache-map draws one render" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_claimed_job_is_left_to_the_batch_rendering_it(tmp_path, capsys):
    """A second batch on the same folder skips the job the first one holds and renders the rest."""
    jobs, out = write(tmp_path / "jobs.jsonl", SKETCHED, PLAIN), tmp_path / "out"
    out.mkdir()
    with claim(out, "plain") as held:  # "the other batch", rendering plain (a second open file: its own lock)
        assert held
        code, stdout, stderr = batch(capsys, "--jobs", str(jobs), "--output-dir", str(out))
    assert code == 0 and "1 ok, 1 skipped" in stdout, stdout + stderr
    assert (out / "sketched.mp4").exists() and not (out / "plain.mp4").exists()
    assert next(r for r in results(out) if r["name"] == "plain")["note"] == "rendered by another batch"
    assert not list(out.glob(".*.lock"))  # released claims leave no file


def test_claim_is_exclusive_and_dies_with_its_process(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from supergen.jobs import claim\n"
         "with claim(Path(sys.argv[1]), 'job') as held:\n    print(held, flush=True); time.sleep(600)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        with claim(tmp_path, "job") as held:
            assert not held
    finally:
        holder.send_signal(signal.SIGKILL)  # no cleanup runs: the lock file stays, the kernel drops the lock
        holder.wait(timeout=30)
    assert (tmp_path / ".job.lock").exists()
    with claim(tmp_path, "job") as held:
        assert held
    assert not (tmp_path / ".job.lock").exists()


def test_output_dir_that_cannot_be_created_is_one_line(tmp_path, capsys):
    jobs = write(tmp_path / "jobs.jsonl", PLAIN)
    (tmp_path / "file").write_text("")
    assert main(["render", "--jobs", str(jobs), "--output-dir", str(tmp_path / "file" / "out")]) == 2
    assert "cannot be created: Not a directory" in capsys.readouterr().err
    if os.geteuid() == 0:  # root writes through file modes: /sys is a read-only place even for root
        blocked = Path("/sys/supergen-test/out")
    else:
        (tmp_path / "locked").mkdir(mode=0o555)
        blocked = tmp_path / "locked" / "out"
    assert main(["render", "--jobs", str(jobs), "--output-dir", str(blocked)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --output-dir {str(blocked)!r} cannot be created") and len(err.splitlines()) == 1


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a device on which every write fails as on a full disk)")
def test_full_disk_stops_with_one_line_and_keeps_the_finished_video(tmp_path, capsys):
    jobs, out = write(tmp_path / "jobs.jsonl", PLAIN), tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").symlink_to("/dev/full")  # appending fails with ENOSPC, as on a full disk
    code, stdout, stderr = batch(capsys, "--jobs", str(jobs), "--output-dir", str(out))
    assert code == 2 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith(f"error: cannot append to {str(out / 'results.jsonl')!r} (No space left")
    assert (out / "plain.mp4").stat().st_size > 0 and (out / "plain.json").exists()  # nothing lost ...
    (out / "results.jsonl").unlink()
    code, stdout, stderr = batch(capsys, "--jobs", str(jobs), "--output-dir", str(out))
    assert code == 0 and "0 ok, 1 skipped" in stdout, stdout + stderr  # ... and the rerun resumes
