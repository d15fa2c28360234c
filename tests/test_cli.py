"""The ``supergen`` command as a user runs it: a real process, a real mp4 read back."""

import os
import subprocess
import sys

import imageio.v3 as iio
import pytest

SMALL = ["--height", "64", "--width", "128", "--num-frames", "5", "sketch.height=32", "sketch.width=64",
         "sketch.num_inference_steps=2", "refine.num_inference_steps=4"]


def supergen(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "supergen", *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_render_writes_an_mp4_of_the_requested_size(tmp_path):
    out = tmp_path / "out.mp4"
    result = supergen("render", "--model", "tiny", "--prompt", "a red car in the city at night", "--seed", "0",
                      "--output", str(out), "--save-sketch", "-q", *SMALL, "tiling.mode=overlap")
    assert result.returncode == 0, result.stderr
    frames = iio.imread(out)
    assert frames.shape == (5, 64, 128, 3)
    assert iio.imread(tmp_path / "out.sketch.mp4").shape == (5, 32, 64, 3)
    assert "supergen: 64x128x5 (height x width x frames) from a 32x64 sketch, overlap" in result.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no temporary files left"


@pytest.mark.parametrize(
    "args,message",
    [
        (["tiling.mod=overlap"], "unknown config key 'tiling.mod'; valid keys in section 'tiling': mode,"),
        (["tiling.mode=diagonal"], "config key 'tiling.mode' is 'diagonal'; valid choices: shift, overlap"),
        (["job.height=tall"], "config key 'job.height'"),
        (["--config", "nope"], "unknown preset 'nope'; available presets: "),
        (["--model", "tiny-i2v"], "is image-to-video: pass image="),
        (["--height", "8"], "config key 'job.height' is 8; it must lie in [16, inf]"),
    ],
)
def test_user_errors_are_one_clear_line_and_leave_no_file(tmp_path, args, message):
    out = tmp_path / "out.mp4"
    result = supergen("render", "--output", str(out), "-q", *SMALL, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_bad_output_paths_fail_before_rendering(tmp_path):
    missing = supergen("render", "--output", str(tmp_path / "no" / "out.mp4"), *SMALL)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    wrong = supergen("render", "--output", str(tmp_path / "out.avi"), *SMALL)
    assert wrong.returncode == 2 and "must end in one of .mp4" in wrong.stderr
    (tmp_path / "dir.mp4").mkdir()
    folder = supergen("render", "--output", str(tmp_path / "dir.mp4"), *SMALL)
    assert folder.returncode == 2 and "is a folder" in folder.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder; the check cannot be exercised")
def test_unwritable_output_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = supergen("render", "--output", str(locked / "out.mp4"), *SMALL)
    finally:
        locked.chmod(0o700)
    assert result.returncode == 2 and "is not writable" in result.stderr


def test_output_file_gets_ordinary_permissions(tmp_path):
    from supergen.videoio import write_video

    import numpy as np

    path = write_video(tmp_path / "a.mp4", np.zeros((5, 16, 16, 3), np.uint8))
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~umask
