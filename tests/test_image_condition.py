"""Wan image-to-video's condition (issue 14, defect 2): the image followed by zero frames, encoded at
the canvas size through supergen's own tiled VAE once the plan has decided VAE tiling, split across
ranks like the upscaled sketch, and never built whole (:class:`~supergen.adapters.FirstFrameVideo`).

The 2-rank case runs this file as a torchrun worker (``__main__`` below), over gloo on the CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from supergen import SuperGenError
from supergen.adapters import FirstFrameVideo, Request
from supergen.builtin import tiny_wan_pipeline
from supergen.config import load_config
from supergen.pipeline import SuperGenPipeline

from ranks import run_ranks, single_thread

# 64×128 px canvas; the tiny VAE tiled in 32-px windows every 24 px: 3×6 windows.
SIZE = dict(height=64, width=128, num_frames=5)
VAE_TILES = dict(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=24, tile_sample_stride_width=24)
WINDOWS = 3 * 6
METHOD = ["sketch.height=32", "sketch.width=64", "sketch.num_inference_steps=2", "refine.num_inference_steps=4",
          "refine.strength=0.5", "tiling.tile_height=48", "tiling.tile_width=64", "cache.enabled=false"]


def tiled_i2v(group=None) -> SuperGenPipeline:
    """The tiny Wan I2V with small VAE tiles, planned with VAE tiling on."""
    pipe = tiny_wan_pipeline(image_to_video=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.vae.enable_tiling(**VAE_TILES)
    pipe.vae.disable_tiling()  # the plan turns it on; diffusers' own tiled encode must not be what runs
    return SuperGenPipeline(pipe, load_config("tiny", METHOD + ["vae.tiling=on"]), group)


def make_image():
    from PIL import Image

    y, x = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 128), indexing="ij")
    rgb = torch.stack([x, y, 1 - x], dim=-1)
    rgb[20:40, 30:60] = torch.tensor([1.0, 0.1, 0.1])
    return Image.fromarray((rgb * 255).byte().numpy())


def recorded_condition_encodes(sg: SuperGenPipeline) -> list[tuple[int, ...]]:
    """From now on, the input shapes of every VAE encode ``sg`` runs while building the image condition."""
    adapter, shapes, building = sg.adapter, [], []
    encode, spatial = adapter.encode, adapter.spatial_conditioning

    def recording_encode(video, generator=None):
        if building:
            shapes.append(tuple(video.shape))
        return encode(video, generator)

    def recording_spatial(*args, **kwargs):
        building.append(True)
        try:
            return spatial(*args, **kwargs)
        finally:
            building.clear()

    adapter.encode, adapter.spatial_conditioning = recording_encode, recording_spatial
    return shapes


@torch.no_grad()
def canvas_condition(sg: SuperGenPipeline, encode=None) -> torch.Tensor:
    return sg.adapter.spatial_conditioning(Request("a red block", "", SIZE["num_frames"], make_image()), 64, 128, encode=encode)["condition"]


def test_the_untiled_condition_is_the_pipelines_own(wan_i2v):
    """Mask and latent laid out as ``WanImageToVideoPipeline.prepare_latents`` does, bit for bit."""
    sg = SuperGenPipeline.from_pipe(wan_i2v, "tiny")
    image = wan_i2v.video_processor.preprocess(make_image(), height=64, width=128)
    shape = sg.adapter.latent_shape(5, 64, 128)
    _, reference = wan_i2v.prepare_latents(image, 1, shape[1], 64, 128, 5, torch.float32, torch.device("cpu"), None, torch.zeros(shape))
    assert torch.equal(canvas_condition(sg), reference)


def test_first_frame_video_windows_equal_the_whole_video():
    image = torch.rand(1, 3, 20, 30)
    video = FirstFrameVideo(image, 9)
    whole = video[...]
    assert video.shape == whole.shape == (1, 3, 9, 20, 30)
    assert torch.equal(whole[:, :, 0], image) and not whole[:, :, 1:].any()
    assert torch.equal(video[..., 4:12, 10:30], whole[..., 4:12, 10:30])
    with pytest.raises(SuperGenError, match=r"video\[\.\.\., rows, cols\]"):
        video[0]


def test_a_tiled_plan_encodes_the_condition_in_vae_windows():
    sg = tiled_i2v()
    shapes = recorded_condition_encodes(sg)
    tiled = canvas_condition(sg, sg._canvas_encoder(sg.plan(**SIZE)))
    # Every window of the plan's grid, each with all frames and at most one VAE tile in size.
    assert len(shapes) == WINDOWS and all(s[:3] == (1, 3, 5) and s[3] <= 32 and s[4] <= 32 for s in shapes), shapes
    untiled = canvas_condition(sg)
    assert tiled.shape == untiled.shape == (1, 4 + 16, 2, 8, 16)
    assert torch.equal(tiled[:, :4], untiled[:, :4])  # the mask
    # The same windows and blend as diffusers' own tiled encode (which the pipeline used to run) ...
    sg.pipe.vae.enable_tiling()
    diffusers_tiled = canvas_condition(sg)
    sg.pipe.vae.disable_tiling()
    torch.testing.assert_close(tiled, diffusers_tiled, atol=1e-6, rtol=0)
    # ... and close to the untiled encode: 32-px windows blended over 8 px are small next to the tiny
    # random VAE's receptive field, so seams differ (measured: 6 % mean, 18 % max of the largest value).
    error = (tiled - untiled).abs().mean() / untiled.abs().mean()
    assert 0 < error < 0.1, error


def test_an_image_to_video_render_encodes_its_condition_through_the_plans_tiling():
    """The render's condition goes through the tiled encoder (diffusers' own tiled encode is never
    reached, its tiling off), and the same seed gives the same video."""
    sg = tiled_i2v()
    shapes = recorded_condition_encodes(sg)
    tiled_encodes = []
    sg.pipe.vae.tiled_encode = lambda *a, **k: tiled_encodes.append(1)
    seen = []
    predict = sg.adapter.predict

    def recording_predict(latents, timestep, cond, *args, **kwargs):
        seen.append(cond.spatial["condition"])
        return predict(latents, timestep, cond, *args, **kwargs)

    sg.adapter.predict = recording_predict
    a = sg(prompt="a red block", image=make_image(), **SIZE, generator=torch.Generator().manual_seed(3), output_type="latent").frames
    assert len(shapes) == WINDOWS and tiled_encodes == []
    assert seen and all(c.shape[1] == 20 for c in seen)
    b = sg(prompt="a red block", image=make_image(), **SIZE, generator=torch.Generator().manual_seed(3), output_type="latent").frames
    assert torch.equal(a, b)


def test_two_ranks_each_encode_their_share_of_the_condition(tmp_path):
    ranks = run_ranks(__file__, 2, tmp_path, timeout=240)
    counts = [len(r["shapes"]) for r in ranks]
    assert sum(counts) == WINDOWS and min(counts) > 0, counts  # split, not repeated on every rank
    with single_thread():  # as each rank: CPU reductions split by thread count
        single = tiled_i2v()
        alone = canvas_condition(single, single._canvas_encoder(single.plan(**SIZE)))
    for r in ranks:
        torch.testing.assert_close(r["condition"], alone, atol=1e-6, rtol=0)


def worker(out_dir: Path) -> None:
    from supergen import parallel

    group = parallel.init(load_config("tiny", ["parallel.timeout_s=60"]))
    sg = tiled_i2v(group)
    shapes = recorded_condition_encodes(sg)
    condition = canvas_condition(sg, sg._canvas_encoder(sg.plan(**SIZE)))
    torch.save({"shapes": shapes, "condition": condition}, out_dir / f"rank{group.global_rank}.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    worker(Path(sys.argv[1]))


def test_hunyuan_token_replace_refuses_time_windows_in_one_line():
    """token_replace modulates the first latent frame of every forward as the clean image: a window
    past frame 0 would give that to a frame that is not the image. Clips within one window render as
    before; latent_concat (the image on channels of frame 0 only) takes time windows."""
    from test_families import tiny_hunyuan

    replace = SuperGenPipeline.from_pipe(tiny_hunyuan("token_replace"), "tiny", tiling={"frames": 5})
    with pytest.raises(SuperGenError, match=r"^num_frames=9 is longer than a time window \(tiling.frames=5\): "
                                            r"HunyuanVideo-I2V token_replace .* latent_concat checkpoint$") as refused:
        replace.plan(32, 32, 9)
    assert "\n" not in str(refused.value)
    assert replace.plan(32, 32, 5).tiles.time is None
    concat = SuperGenPipeline.from_pipe(tiny_hunyuan("latent_concat"), "tiny", tiling={"frames": 5})
    assert concat.plan(32, 32, 9).tiles.time is not None
