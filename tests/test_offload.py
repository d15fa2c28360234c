"""diffusers' memory savers under supergen (issue 14): ``model.offload`` / ``supergen render --offload``.

Under offloading a component's weights sit on the CPU (model offload) or on ``meta`` (sequential)
until its hook moves them, so the VAE's inputs go to the pipeline's execution device, not to
``vae.device``. On the CPU the savers move weights from the CPU to the CPU: they save nothing there,
but diffusers' hooks run, so the render takes the same code path as on a GPU and must give the same
video. Sequential offload cannot run with the CPU as onload device (accelerate's hooks fail, in plain
diffusers too) and is refused there; ``tests/test_gpu.py`` renders all three modes on CUDA.
"""

from __future__ import annotations

import subprocess
import sys

import imageio.v3 as iio
import pytest
import torch

from supergen import SuperGenError
from supergen.builtin import tiny_wan_pipeline
from supergen.config import load_config
from supergen.pipeline import SuperGenPipeline
from supergen.runtime import place

from test_image_condition import METHOD, VAE_TILES, make_image

CPU = torch.device("cpu")


def render(offload: str) -> torch.Tensor:
    """The tiny Wan I2V (condition, sketch and canvas encodes, tiled decode) under ``offload``: frames as a tensor."""
    pipe = tiny_wan_pipeline(image_to_video=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.vae.enable_tiling(**VAE_TILES)
    pipe = place(pipe, offload, CPU)
    sg = SuperGenPipeline(pipe, load_config("tiny", METHOD + ["vae.tiling=on"]))
    out = sg(prompt="a red block", image=make_image(), height=64, width=128, num_frames=5,
             generator=torch.Generator().manual_seed(3), output_type="pt")
    return out.frames


@pytest.fixture(scope="module")
def plain():
    return render("none")


@pytest.mark.parametrize("offload", ["model", "group"])
def test_an_offloaded_render_equals_the_plain_one(plain, offload):
    assert torch.equal(render(offload), plain)


def test_sequential_offload_is_refused_on_the_cpu_with_the_reason():
    with pytest.raises(SuperGenError, match="sequential needs a GPU: accelerate's sequential offload hooks fail"):
        place(tiny_wan_pipeline(), "sequential", CPU)


def test_render_takes_an_offload_flag(tmp_path):
    small = ["--model", "tiny", "--prompt", "a red car", "--seed", "0", "-q", "--height", "64", "--width", "128",
             "--num-frames", "5", "sketch.height=32", "sketch.width=64", "sketch.num_inference_steps=2", "refine.num_inference_steps=4"]

    def supergen(*args):
        return subprocess.run([sys.executable, "-m", "supergen", "render", *small, *args], capture_output=True, text=True, timeout=300)

    for mode in ("none", "model"):
        result = supergen("--offload", mode, "--output", str(tmp_path / f"{mode}.mp4"))
        assert result.returncode == 0, result.stderr
    assert (iio.imread(tmp_path / "model.mp4") == iio.imread(tmp_path / "none.mp4")).all()
    refused = supergen("--offload", "sequential", "--output", str(tmp_path / "sequential.mp4"))
    assert refused.returncode == 2 and "model.offload=sequential needs a GPU" in refused.stderr and "Traceback" not in refused.stderr
    wrong = supergen("--offload", "disk", "--output", str(tmp_path / "disk.mp4"))
    assert wrong.returncode == 2 and "invalid choice: 'disk'" in wrong.stderr
