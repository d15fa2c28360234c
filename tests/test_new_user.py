"""What a new user hit (issue 28): values accepted silently, tracebacks, misleading messages, checks
that came only after the model load, and noise. Most cases stop before any model loads."""

import logging
import subprocess
import sys

import numpy as np
import pytest

from supergen import cli
from supergen.config import load_config

SMALL = ["--height", "64", "--width", "128", "--num-frames", "5", "sketch.height=32", "sketch.width=64",
         "sketch.num_inference_steps=2", "refine.num_inference_steps=4"]


def supergen(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "supergen", *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_overrides_between_flags_are_overrides():
    """``supergen render key=val --output x key2=val2``: argparse's positional run ends at the first
    flag, so the second override was "unrecognized arguments"."""
    args = cli.parse_args(["render", "tiling.mode=overlap", "--output", "x.mp4", "tiling.overlap=16", "--seed", "3", "cache.enabled=true"])
    assert args.overrides == ["tiling.mode=overlap", "tiling.overlap=16", "cache.enabled=true"]
    assert (args.output, args.seed) == ("x.mp4", 3)
    with pytest.raises(SystemExit):
        cli.parse_args(["render", "tiling.mode=overlap", "--output", "x.mp4", "--bogus"])


def test_plan_reports_a_config_typo_before_importing_torch(tmp_path):
    """``supergen plan`` imported the planner (torch, diffusers: 5-20 s) before reading the config."""
    typo = tmp_path / "typo.yaml"
    typo.write_text("tilin: {mode: shift}\n")
    probe = ("import sys; from supergen.cli import main; rc = main(['plan', '--config', sys.argv[1]]); "
             "print(rc, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe, str(typo)], capture_output=True, text=True, timeout=120)
    assert "unknown config key 'tilin'" in result.stderr
    assert result.stdout.split() == ["2", "False"]


def test_quiet_hides_loading_bars_and_float16_on_the_cpu_warns_once_at_most(tmp_path):
    """``-q`` hid the step bars but not diffusers' "Loading pipeline components" bar; float16 on the
    CPU printed diffusers' "cannot run with `cpu` device" (wrong: it runs) once per component."""
    from supergen.builtin import tiny_wan_pipeline

    tiny_wan_pipeline().save_pretrained(tmp_path / "model")
    out = tmp_path / "out.mp4"
    result = supergen("render", "--config", "tiny", "--model", str(tmp_path / "model"), "--dtype", "float16", "--device", "cpu",
                      "-q", "-o", str(out), *SMALL)
    assert result.returncode == 0, result.stderr
    assert "Loading pipeline components" not in result.stderr
    assert "cannot run with `cpu` device" not in result.stderr
    assert out.is_file()


def test_float16_on_the_cpu_is_one_supergen_line(caplog):
    with caplog.at_level(logging.INFO, logger="supergen"):
        cli.cpu_float16_note(load_config("tiny", ["model.dtype=float16", "model.device=cpu"]))
        cli.cpu_float16_note(load_config("tiny", ["model.device=cpu"]))
    assert [r.getMessage()[:38] for r in caplog.records] == ["model.dtype=float16 on the CPU: it run"]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        # Rendered one frame, rendered without guidance, rendered from a white sketch.
        (dict(num_frames=0), r"num_frames=0: must be at least 1 \(this VAE takes 4k\+1 frames: 1, 5, 9, ...\)"),
        (dict(num_frames=-3), "num_frames=-3: must be at least 1"),
        (dict(guidance_scale=float("nan")), "config key 'sketch.guidance_scale' is nan; it must be a finite number"),
        (dict(sketch_video=np.full((5, 32, 64, 3), 200.0, np.float32)),
         r"sketch_video \(float32\) has values from 200 to 200: pass uint8 in \[0, 255\] or floats in \[0, 1\]"),
    ],
)
def test_call_arguments_outside_their_range_are_refused(wan_t2v, kwargs, message):
    from supergen import SuperGenPipeline
    from supergen.errors import SuperGenError

    sg = SuperGenPipeline.from_pipe(wan_t2v, "tiny", sketch={"height": 32, "width": 64, "num_inference_steps": 1},
                                    refine={"num_inference_steps": 2})
    with pytest.raises(SuperGenError, match=message):
        sg(prompt="a red car", height=64, width=128, **{"num_frames": 5, **kwargs})
