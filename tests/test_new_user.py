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


@pytest.mark.parametrize(
    "argv,message",
    [
        # A RoPE shape error inside diffusers after the model load, while supergen plan saw no problem.
        (["render", "--model", "tiny", "--num-frames", "129"],
         "num_frames=129: the sketch would number 33 latent frames and this model's rotary position table holds 32 per axis "
         "(rope_max_seq_len); use at most 125 frames"),
        (["plan", "--config", "toy", "--num-frames", "1029"], "num_frames=1029: the sketch would number 258 latent frames"),
        (["plan", "--model", "tiny", "--height", "1024", "--width", "256", "sketch.height=256", "sketch.width=64",
          "tiling.positions=local", "tiling.tile_height=1024", "tiling.tile_width=256"],
         "a tile (tiling.positions=local) is 1024 px in height (64 positions) and this model's rotary position table holds 32 "
         "per axis (rope_max_seq_len); use tiling.tile_height of at most 512 px"),
    ],
)
def test_the_position_table_length_is_checked_before_the_load_and_in_plan(tmp_path, capsys, argv, message):
    rc = cli.main([*argv, *(["-q", "-o", str(tmp_path / "out.mp4")] if argv[0] == "render" else [])])
    assert rc == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_csv_with_a_byte_order_mark_reads_its_first_column(tmp_path):
    """A spreadsheet's "CSV UTF-8" starts with a byte-order mark: it was read as part of the first
    column's name ("unknown field(s) \\ufeffprompt; valid: prompt, ...")."""
    from supergen.jobs import parse_jobs

    jobs = tmp_path / "jobs.csv"
    jobs.write_text("prompt,seed\na red car,3\n", encoding="utf-8-sig")
    parsed = parse_jobs(jobs, load_config("tiny"))
    assert parsed.bad == [] and [(j.config.job.prompt, j.config.job.seed) for j in parsed.jobs] == [("a red car", 3)]


def test_the_tiling_is_summarised_as_it_runs():
    """Attention mode was summarised as "shift 1x1 tiles" (its tile plan is the canvas); supergen plan
    printed "2x2 tiles" beside "9 tiles/step" without saying that the shifted grid cuts the extra tiles."""
    from supergen.cost import KNOWN, estimate, format_plan
    from supergen.plan import plan_render

    attention = plan_render(load_config("tiny", ["tiling.mode=attention", "tiling.halo=16"]), KNOWN["tiny"], 256, 448, 9)
    assert attention.describe_tiling() == "attention 2x2 tiles of 8x14 tokens + 1 halo in one forward on 16x28 tokens"
    table = format_plan(estimate(load_config("tiny"), KNOWN["tiny"]))
    assert "shift/clamp 2x2 tiles of 128x224 px" in table and "(4 unshifted, up to 9 tiles/step, 2 forwards/tile)" in table


def test_inputs_are_checked_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """A missing image for an image-to-video model and a sketch video of the wrong length were found
    by the pipeline, after the (multi-GB) load."""
    from supergen.runtime import Runtime
    from supergen.videoio import write_video

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Runtime, "start", no_load)
    out = str(tmp_path / "out.mp4")
    assert cli.main(["render", "--model", "tiny-i2v", "-q", "-o", out]) == 2
    assert "tiny-i2v is image-to-video: pass image= (or job.image / --image)" in capsys.readouterr().err
    sketch = write_video(tmp_path / "sketch.mp4", np.zeros((9, 32, 64, 3), np.uint8))
    assert cli.main(["render", "--model", "tiny", "--sketch-video", str(sketch), "--num-frames", "5", "-q", "-o", out]) == 2
    assert f"sketch video {str(sketch)!r} has 9 frames; this render needs 5 (job.num_frames=5); pass --num-frames 9" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["render", "demo"])
def test_group_size_misuse_is_refused_before_the_ranks_join_or_the_model_loads(command, tmp_path, monkeypatch, capsys):
    """``parallel.group_size`` below the world size splits the ranks into groups; only ``--jobs`` renders
    several jobs. Refused from the launcher's WORLD_SIZE alone: no rendezvous (none is set up here,
    so joining would fail differently), no model load."""
    import torch.distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    args = [command, "--config", "tiny", "parallel.group_size=1"]
    args += ["--output", str(tmp_path / "out.mp4")] if command == "render" else ["--port", "0"]
    assert cli.main(args) != 0
    assert "parallel.group_size" in capsys.readouterr().err
    assert not torch.distributed.is_initialized()
