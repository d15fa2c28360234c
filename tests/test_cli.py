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
        (["--height", "8"], "config key 'job.height' is 8; it must lie in [16, inf)"),
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


def write_inputs(folder):
    """Files a careless user points the CLI at."""
    (folder / "not-an-image.png").write_text("hello")
    (folder / "not-a-video.mp4").write_text("hello")
    (folder / "malformed.yaml").write_text("tiling: [\n")
    (folder / "list.yaml").write_text("- tiling\n- sketch\n")
    (folder / "a-file").write_text("")
    (folder / "jobs.jsonl").write_text('{"prompt": "x"}\n')
    (folder / "exists.mp4").write_text("")


HUGE_SEED = "1180591620717411303424"


@pytest.mark.parametrize(
    "args,message",
    [
        (["-o", "out.mp4", "--image", "/nonexistent.png"], "image '/nonexistent.png' does not exist"),
        (["-o", "out.mp4", "--model", "tiny-i2v", "--image", "not-an-image.png"], "is not an image PIL can read"),
        (["-o", "out.mp4", "--sketch-video", "not-a-video.mp4"], "is not a video ffmpeg can read"),
        (["-o", "out.mp4", "--device", "tpu"], "model.device='tpu'"),
        (["--jobs", "jobs.jsonl", "--output-dir", "a-file"], "--output-dir 'a-file' is a file, not a folder"),
        (["-o", "out.mp4", "--config", "malformed.yaml"], "config file 'malformed.yaml' is not valid YAML"),
        (["-o", "out.mp4", "--config", "list.yaml"], "config file 'list.yaml' must be a mapping"),
        (["-o", "out.mp4", "--seed", HUGE_SEED], f"'job.seed' is {HUGE_SEED}; it must lie in [-1, 9223372036854775807]"),
        (["--jobs", "jobs.jsonl", "--dry-run", "--seed", HUGE_SEED], f"'job.seed' is {HUGE_SEED}"),
        (["-o", "out.mp4", "--cache-map", "map.txt"], "--cache-map 'map.txt' must be a .png file"),
        (["-o", "out.mp4", "--cache-map", "no/map.png"], "cache-map folder 'no' does not exist"),
        (["--dry-run"], "--dry-run is for batch rendering: use it with --jobs FILE"),
        (["-o", "out.mp4", "--output-dir", "videos"], "--output-dir is for batch rendering"),
        (["-o", "out.mp4", "--jobs", "jobs.jsonl", "--output-dir", "videos"], "-o/--output names one video"),
        (["-o", "exists.mp4"], "output 'exists.mp4' exists; pass --overwrite to replace it"),
        # Strength 1 runs no sketch: else tiny's position table (125 frames at most) refuses it first.
        (["-o", "out.mp4", "--num-frames", "10000", "--height", "4320", "--width", "7680", "--strength", "1"],
         "4320x7680x9997 (height x width x frames) needs about "),
    ],
)
def test_careless_input_is_one_line_exit_2_and_leaves_no_file(tmp_path, args, message):
    write_inputs(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = supergen("render", "-q", *SMALL, *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "exists.mp4").read_text() == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: os.access calls /sys writable for root, writing there fails")
def test_a_folder_only_os_access_calls_writable_is_refused():
    result = supergen("render", "-q", "-o", "/sys/a.mp4", *SMALL)
    assert result.returncode == 2 and "output folder '/sys' is not writable" in result.stderr


def test_version():
    from supergen import __version__

    result = supergen("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"supergen {__version__}"


def test_odd_size_with_a_random_seed_renders_exactly_and_reports_the_seed(tmp_path):
    out = tmp_path / "odd.mp4"
    result = supergen("render", "-q", "--height", "17", "--width", "33", "--num-frames", "5", "--seed", "-1",
                      "--strength", "1", "--save-sketch", "refine.num_inference_steps=2", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert iio.imread(out).shape == (5, 17, 33, 3)
    assert "no sketch to save (strength 1 renders from noise)" in result.stderr
    assert "%|" not in result.stderr  # -q: no progress bar of any stage
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.mp4"]
    seed = int(result.stdout.split(" seed ")[1].split(",")[0])
    assert 0 <= seed < 2**63
    again = supergen("render", "-q", "--height", "17", "--width", "33", "-o", str(out))
    assert again.returncode == 2 and "pass --overwrite" in again.stderr


def test_ctrl_c_is_one_line_exit_130_and_leaves_no_file(tmp_path):
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "supergen", "render", "--height", "64", "--width", "128",
                             "--num-frames", "9", "sketch.num_inference_steps=50", "-o", str(tmp_path / "out.mp4")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # Ctrl-C's default action, as in a terminal: a shell starts background jobs
                            # (``pytest &``, CI under nohup) with SIGINT ignored, and children inherit that.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = ""
    while "%|" not in seen:  # a progress bar moves: the render is under way
        char = proc.stderr.read(1)
        assert char, f"the render ended before it could be interrupted: {seen}"
        seen += char
    assert seen.splitlines()[-1].lstrip("\r").startswith("sketch:")  # each stage's bar is labelled
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "error: interrupted" and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_the_install_hint_fits_where_supergen_runs(tmp_path):
    from supergen.errors import install_hint

    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert install_hint("demo") == f'pip install -e "{checkout}[demo]"'  # this checkout
    installed = tmp_path / "site-packages" / "supergen"
    installed.mkdir(parents=True)
    assert install_hint("demo", str(installed)) == 'pip install "supergen[demo]"'


def test_the_toy_model_ships_inside_the_package():
    from pathlib import Path

    import supergen
    from supergen.builtin import TOY_MODEL_DIR

    assert TOY_MODEL_DIR.parent == Path(supergen.__file__).parent  # package data, found where supergen is installed
    assert (TOY_MODEL_DIR / "model_index.json").is_file() and (TOY_MODEL_DIR / "transformer" / "config.json").is_file()


def test_plan_knows_the_toy_model():
    result = supergen("plan", "--config", "toy", "--height", "128", "--width", "384")
    assert result.returncode == 0, result.stderr
    assert "toy (float32)" in result.stdout and "128x384 (height x width), 9 frames" in result.stdout
    assert "requires torchvision" not in result.stderr  # the known library noise is filtered


def test_plan_trace_baseline_needs_the_trace():
    result = supergen("plan", "--config", "tiny", "--model", "tiny", "--trace-baseline")
    assert result.returncode == 2 and "--trace-baseline compares with the supergen trace: add --trace" in result.stderr
