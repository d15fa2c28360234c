"""A job's image input: refused where the model would ignore it, and read by its bit depth where it is used."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from supergen.cli import main
from supergen.config import load_config
from supergen.errors import SuperGenError
from supergen.jobs import parse_jobs
from supergen.pipeline import SuperGenPipeline
from supergen.videoio import load_image

#: The tiny image-to-video render of tests/test_image_condition.py's size: 64x112, 5 frames, 2 + 2 steps.
CALL = dict(prompt="a cat", height=64, width=112, num_frames=5, num_inference_steps=4)


def grey_ramp(bits: int) -> np.ndarray:
    """A 64x112 horizontal ramp from black to white at ``bits`` bits per sample."""
    top = 2**bits - 1
    return np.tile(np.linspace(0, top, 112).round().astype(np.uint16 if bits == 16 else np.uint8), (64, 1))


def test_image_for_a_text_to_video_pipeline_is_refused_naming_the_image_to_video_models(wan_t2v, image):
    """The API: the video would be the same without the image, so the call stops instead."""
    sg = SuperGenPipeline.from_pipe(wan_t2v, "tiny")
    with pytest.raises(SuperGenError, match="WanPipeline is a text-to-video model") as caught:
        sg(**CALL, image=image, generator=torch.Generator().manual_seed(0))
    assert "tiny-i2v" in str(caught.value) and "Wan2.1-I2V-14B" in str(caught.value)


def test_cli_refuses_image_for_text_to_video_model_before_loading(tmp_path, capsys):
    picture = tmp_path / "cat.png"
    Image.new("RGB", (112, 64), (90, 120, 150)).save(picture)
    code = main(["render", "--model", "tiny", "--image", str(picture), "-o", str(tmp_path / "cat.mp4"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: tiny is a text-to-video model") and "tiny-i2v" in err
    assert not (tmp_path / "cat.mp4").exists()


def test_batch_row_with_image_for_text_to_video_model_is_a_bad_row(tmp_path):
    Image.new("RGB", (112, 64)).save(tmp_path / "cat.png")
    path = tmp_path / "jobs.jsonl"
    path.write_text(json.dumps({"prompt": "a cat", "image": "cat.png"}) + "\n")
    parsed = parse_jobs(path, load_config("tiny"))
    assert not parsed.jobs and "text-to-video" in parsed.bad[0].error
    assert parse_jobs(path, load_config("tiny", ["model.name=tiny-i2v"])).jobs  # the image-to-video model takes it


def test_sixteen_bit_png_is_scaled_by_its_bit_depth(tmp_path):
    Image.fromarray(grey_ramp(16)).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"  # what Pillow's convert("RGB") clips at 255
    loaded = np.asarray(load_image(tmp_path / "deep.png"))
    assert loaded.shape == (64, 112, 3) and loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded[..., 0], grey_ramp(8))  # 65535 -> 255, exactly the 8-bit ramp
    assert abs(loaded.mean() - 127.5) < 1


def test_sixteen_bit_image_renders_as_its_eight_bit_twin(wan_i2v, tmp_path):
    """The same picture at 16 and at 8 bits conditions the image-to-video model identically."""
    Image.fromarray(grey_ramp(16)).save(tmp_path / "deep.png")
    Image.fromarray(grey_ramp(8)).convert("RGB").save(tmp_path / "flat.png")
    sg = SuperGenPipeline.from_pipe(wan_i2v, "tiny", sketch={"num_inference_steps": 2})
    videos = [sg(**CALL, image=str(tmp_path / name), generator=torch.Generator().manual_seed(0), output_type="uint8").frames
              for name in ("deep.png", "flat.png")]
    assert torch.equal(videos[0], videos[1])
