"""The two-stage pipeline on real (tiny, random) diffusers Wan pipelines."""

import numpy as np
import pytest
import torch

from supergen import SuperGenError, SuperGenPipeline
from supergen.adapters.wan import CanvasRotaryPosEmbed
from supergen.tiling import crop

# Small sizes: the tiny VAE decode dominates run time.
SMALL = dict(sketch={"height": 32, "width": 64, "num_inference_steps": 3}, refine={"num_inference_steps": 4, "strength": 0.5})


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_one_tile_at_strength_one_equals_the_plain_pipeline(wan_t2v):
    """Target = sketch size, one tile over the canvas, strength 1: exactly diffusers' WanPipeline."""
    kwargs = dict(prompt="a red car", negative_prompt="blurry", height=48, width=80, num_frames=5)
    plain = wan_t2v(**kwargs, num_inference_steps=4, guidance_scale=5.0, generator=gen(3), output_type="np").frames
    sg = SuperGenPipeline.from_pipe(
        wan_t2v, "tiny", sketch={"height": 48, "width": 80, "guidance_scale": 5.0},
        refine={"num_inference_steps": 4, "strength": 1.0},
    )
    out = sg(**kwargs, generator=gen(3), output_type="np")
    assert out.stats.tiling.startswith("shift 1x1") and out.sketch is None
    assert out.frames.shape == plain.shape == (1, 5, 48, 80, 3)
    np.testing.assert_allclose(out.frames, plain, atol=1e-6, rtol=0)


def test_one_tile_image_to_video_equals_the_plain_pipeline(wan_i2v, image):
    kwargs = dict(prompt="a red car", image=image, height=32, width=64, num_frames=5)
    plain = wan_i2v(**kwargs, num_inference_steps=3, guidance_scale=4.0, generator=gen(1), output_type="latent").frames
    sg = SuperGenPipeline.from_pipe(
        wan_i2v, "tiny", sketch={"height": 32, "width": 64, "guidance_scale": 4.0},
        refine={"num_inference_steps": 3, "strength": 1.0},
    )
    out = sg(**kwargs, generator=gen(1), output_type="latent")
    torch.testing.assert_close(out.frames, plain, atol=1e-6, rtol=0)


def test_same_seed_same_video_other_seed_other_video(wan_t2v):
    sg = SuperGenPipeline.from_pipe(wan_t2v, "tiny", **SMALL)
    a = sg(height=64, width=128, num_frames=5, generator=gen(0), output_type="latent")
    b = sg(height=64, width=128, num_frames=5, generator=gen(0), output_type="latent")
    c = sg(height=64, width=128, num_frames=5, generator=gen(1), output_type="latent")
    assert torch.equal(a.frames, b.frames)
    assert (a.frames - c.frames).abs().max() > 1e-3
    assert a.stats.sketch == (32, 64) and a.stats.canvas == (64, 128)
    assert a.stats.tiling.startswith("shift 2x2") and len(a.stats.steps) == 2


@pytest.mark.parametrize("mode,boundary", [("shift", "wrap"), ("shift", "clamp"), ("overlap", "clamp")])
def test_any_resolution_renders_at_exactly_the_requested_size(wan_t2v, mode, boundary):
    """A size the VAE/patch cannot take (70×118) is rendered at the next multiple of 16 and cropped back."""
    sg = SuperGenPipeline.from_pipe(wan_t2v, "tiny", **SMALL, tiling={"mode": mode, "boundary": boundary, "overlap": 16, "tile_height": 48, "tile_width": 96})
    out = sg(height=70, width=118, num_frames=6, generator=gen(0), output_type="np")
    assert out.frames.shape == (1, 5, 70, 118, 3)  # 6 frames → 5 (Wan takes 4k+1), with a warning
    assert out.stats.canvas == (80, 128)
    assert np.isfinite(out.frames).all()


def test_image_to_video_tiles_see_the_crop_of_the_canvas_condition(wan_i2v, image):
    sg = SuperGenPipeline.from_pipe(wan_i2v, "tiny", **SMALL, tiling={"boundary": "wrap", "shift_divisor": 2})
    seen = []
    original = sg.adapter.predict

    def recording_predict(latents, timestep, cond, tiles, *args, **kwargs):
        seen.append((cond.spatial["condition"].clone(), tiles))
        return original(latents, timestep, cond, tiles, *args, **kwargs)

    sg.adapter.predict = recording_predict
    out = sg(prompt="a red block", image=image, height=64, width=128, num_frames=5, generator=gen(0), output_type="latent")
    canvas_condition = sg.adapter.spatial_conditioning(
        __import__("supergen.adapters", fromlist=["Request"]).Request("a red block", "", 5, image), 64, 128
    )["condition"]
    assert canvas_condition.shape[-2:] == (8, 16) and len(seen) >= 4
    assert any(t.rows.wraps or t.cols.wraps for _, tiles in seen for t in tiles), "the wrapped case is exercised"
    for condition, tiles in seen:
        expected = torch.cat([crop(canvas_condition, t) for t in tiles])
        assert torch.equal(condition, expected)
    assert out.frames.shape == (1, 16, 2, 8, 16)


def test_positions_differ_where_they_should(wan_t2v):
    """Wan's RoPE is relative: a constant offset (global positions on a tile that does not wrap) cancels
    in attention, so global equals local up to rounding. Positions matter where relative distances
    change: wrapped tiles (opposite edges are far apart on the canvas) and NTK-scaled theta."""

    def render(positions, boundary):
        sg = SuperGenPipeline.from_pipe(wan_t2v, "tiny", **SMALL, tiling={"positions": positions, "boundary": boundary, "shift_divisor": 2})
        return sg(height=64, width=128, num_frames=5, generator=gen(0), output_type="latent").frames

    local, global_, ntk = (render(p, "clamp") for p in ("local", "global", "ntk"))
    assert (local - global_).abs().max() < 2e-5  # rounding only
    assert (global_ - ntk).abs().max() > 1e-4  # 10x the rounding; small because the tiny model's rotary dims are 4
    assert (render("local", "wrap") - render("global", "wrap")).abs().max() > 1e-3


def test_canvas_rope_at_offset_zero_is_bit_identical_to_diffusers(wan_t2v):
    from supergen.tiling import Tile, Window

    rope = wan_t2v.transformer.rope
    hidden = torch.zeros(1, 16, 3, 8, 14)
    tile = Tile(0, Window(0, 8, 8), Window(0, 14, 14))
    canvas_rope = CanvasRotaryPosEmbed(rope)
    canvas_rope.set_tiles([tile.rows.positions()[::2] // 2], [tile.cols.positions()[::2] // 2])
    ours = canvas_rope(hidden)
    theirs = rope(hidden)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


def test_global_positions_with_one_tile_equal_local(wan_t2v):
    sg = {p: SuperGenPipeline.from_pipe(wan_t2v, "tiny", **SMALL, tiling={"positions": p}) for p in ("local", "global")}
    a = sg["local"](height=32, width=64, num_frames=5, generator=gen(0), output_type="latent").frames
    b = sg["global"](height=32, width=64, num_frames=5, generator=gen(0), output_type="latent").frames
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)  # reloaded weights may use other kernels: rounding only


def test_sketch_video_makes_an_upscaler(wan_t2v):
    low = (np.random.default_rng(0).random((5, 32, 64, 3)) * 255).astype(np.uint8)
    sg = SuperGenPipeline.from_pipe(wan_t2v, "tiny", **SMALL)
    out = sg(height=64, width=128, num_frames=5, sketch_video=low, generator=gen(0), output_type="np")
    assert out.frames.shape == (1, 5, 64, 128, 3) and out.stats.sketch == (32, 64)
    assert "sketch" not in out.stats.seconds  # stage 1 did not run


def test_callback_on_step_end_sees_every_refinement_step(wan_t2v):
    seen = []

    def callback(pipe, step, timestep, tensors):
        seen.append((step, tensors["latents"].shape))
        return {}

    sg = SuperGenPipeline.from_pipe(wan_t2v, "tiny", **SMALL)
    sg(height=64, width=128, num_frames=5, generator=gen(0), output_type="latent", callback_on_step_end=callback)
    assert [s for s, _ in seen] == [0, 1] and seen[0][1] == (1, 16, 2, 8, 16)


# ---- bad input: clear errors --------------------------------------------------------------------


def test_missing_image_for_image_to_video(wan_i2v):
    sg = SuperGenPipeline.from_pipe(wan_i2v, "tiny", **SMALL)
    with pytest.raises(SuperGenError, match="image-to-video: pass image="):
        sg(height=64, width=128, num_frames=5, generator=gen(0))


def test_unsupported_pipeline_names_the_supported_ones():
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 8), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    with pytest.raises(SuperGenError, match="DDPMPipeline is not supported; supported diffusers pipelines: WanPipeline"):
        SuperGenPipeline.from_pipe(DDPMPipeline(unet=unet, scheduler=DDPMScheduler()))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(height=8), "height=8: must be an integer of at least 16"),
        (dict(strength=0.0), r"strength=0.0: must lie in \(0, 1\]"),
        (dict(strength=0.1), "leaves no refinement step"),
        (dict(output_type="gif"), "output_type 'gif'"),
    ],
)
def test_bad_call_arguments(wan_t2v, kwargs, message):
    sg = SuperGenPipeline.from_pipe(wan_t2v, "tiny", **SMALL)
    args = dict(height=64, width=128, num_frames=5, generator=gen(0)) | kwargs
    with pytest.raises(SuperGenError, match=message):
        sg(**args)


def test_tile_not_on_the_patch_grid(wan_t2v):
    sg = SuperGenPipeline.from_pipe(wan_t2v, "tiny", **SMALL, tiling={"tile_height": 40, "tile_width": 64})
    with pytest.raises(SuperGenError, match="tiling.tile_height=40 must be a multiple of 16"):
        sg(height=64, width=128, num_frames=5, generator=gen(0), output_type="latent")


def test_wan22_two_experts_switch_at_the_boundary_like_diffusers(wan_t2v):
    """Wan 2.2 A14B style: transformer above boundary_ratio, transformer_2 below; one tile = WanPipeline."""
    from diffusers import WanPipeline

    from supergen.builtin import tiny_wan_pipeline

    second = tiny_wan_pipeline(seed=1).transformer  # different weights, so the switch is visible
    pipe = WanPipeline(tokenizer=wan_t2v.tokenizer, text_encoder=wan_t2v.text_encoder, vae=wan_t2v.vae,
                       transformer=wan_t2v.transformer, transformer_2=second, scheduler=wan_t2v.scheduler,
                       boundary_ratio=0.6)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a red car", height=32, width=64, num_frames=5)
    plain = pipe(**kwargs, num_inference_steps=4, guidance_scale=4.0, guidance_scale_2=2.0, generator=gen(2), output_type="latent").frames
    sg = SuperGenPipeline.from_pipe(pipe, "tiny", sketch={"height": 32, "width": 64, "guidance_scale": 4.0, "guidance_scale_2": 2.0},
                                    refine={"num_inference_steps": 4, "strength": 1.0})
    out = sg(**kwargs, generator=gen(2), output_type="latent").frames
    torch.testing.assert_close(out, plain, atol=1e-6, rtol=0)
    single = wan_t2v(**kwargs, num_inference_steps=4, guidance_scale=4.0, generator=gen(2), output_type="latent").frames
    assert (single - plain).abs().max() > 1e-3, "the second expert was used"


def test_from_pretrained_loads_a_model_folder(wan_t2v, tmp_path):
    wan_t2v.save_pretrained(tmp_path / "model")
    sg = SuperGenPipeline.from_pretrained(str(tmp_path / "model"), torch_dtype=torch.float32, config="tiny", **SMALL)
    assert type(sg.pipe).__name__ == "WanPipeline"
    sg.pipe.set_progress_bar_config(disable=True)
    a = sg(height=32, width=64, num_frames=5, generator=gen(0), output_type="latent").frames
    b = SuperGenPipeline.from_pipe(wan_t2v, "tiny", **SMALL)(height=32, width=64, num_frames=5, generator=gen(0), output_type="latent").frames
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)  # reloaded weights may use other kernels: rounding only


def _state(pipe):
    """What a render may touch on the wrapped pipeline: VAE tiling, attention processors, rope modules, hooks."""
    blocks = pipe.transformer.blocks
    return (
        pipe.vae.use_tiling,
        [type(b.attn1.processor) for b in blocks],
        id(pipe.transformer.rope),
        [getattr(m, "_diffusers_hook", None) is not None for m in pipe.transformer.modules()],
    )


@pytest.mark.parametrize("mode", ["shift", "attention"])
def test_the_wrapped_pipeline_is_left_as_it_was_found_also_when_the_call_raises(wan_t2v, mode):
    sg = SuperGenPipeline.from_pipe(wan_t2v, "tiny", **SMALL, tiling={"mode": mode, "positions": "global"})
    before = _state(wan_t2v)
    seen = []

    def peek(pipe, step, t, tensors):
        seen.append(_state(wan_t2v))
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        sg(height=64, width=128, num_frames=5, generator=gen(0), output_type="latent", callback_on_step_end=peek)
    assert seen and seen[0] != before  # the render did change it, for its duration
    assert _state(wan_t2v) == before
    sg(height=64, width=128, num_frames=5, generator=gen(0), output_type="latent")
    assert _state(wan_t2v) == before


def test_two_identical_image_to_video_calls_give_identical_videos(wan_i2v, image):
    """VAE tiling used to stay as the last call left it: the image condition was encoded untiled by the
    first call and tiled by the next ones (a different video for the same seed)."""
    wan_i2v.vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=24, tile_sample_stride_width=24)
    wan_i2v.vae.disable_tiling()  # small VAE tiles, so tiling changes the values; off, as a fresh pipeline
    sg = SuperGenPipeline.from_pipe(wan_i2v, "tiny", **SMALL)
    a = sg(prompt="a red car", image=image, height=64, width=128, num_frames=5, generator=gen(1), output_type="latent").frames
    b = sg(prompt="a red car", image=image, height=64, width=128, num_frames=5, generator=gen(1), output_type="latent").frames
    assert torch.equal(a, b)
    assert not wan_i2v.vae.use_tiling


def test_every_output_type_is_the_tiled_decode_converted_strip_by_strip(wan_t2v):
    """The decode converts each finished strip of VAE tiles into the output type (never a whole float
    video): the same values as diffusers' postprocessing of the whole decoded video, cropped."""
    from supergen.output import VideoOutput
    from supergen.parallel import TiledVAE
    from supergen.videoio import to_uint8

    vae = wan_t2v.vae
    tiles = {name: getattr(vae, name) for name in ("tile_sample_min_height", "tile_sample_min_width", "tile_sample_stride_height", "tile_sample_stride_width")}
    vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=24, tile_sample_stride_width=24)
    try:
        sg = SuperGenPipeline.from_pipe(wan_t2v, "tiny", **SMALL)
        call = dict(height=70, width=118, num_frames=5, generator=gen(0))
        latent = sg(**call, output_type="latent").frames
        torch.set_grad_enabled(False)  # as in the pipeline's call
        whole = TiledVAE(sg.adapter).decode(latent, 5)[..., :70, :118]  # 4 x 5 VAE tiles on the 80x128 canvas
        post = wan_t2v.video_processor.postprocess_video
        outputs = {}
        for output_type in ("np", "pt", "pil", "uint8"):
            video = VideoOutput(wan_t2v.video_processor, output_type, 5, (70, 118))
            strips = list(TiledVAE(sg.adapter).decode_strips(latent, 5))
            for top, strip in strips:
                video.write(top, strip)
            outputs[output_type] = video.result()
        assert len(strips) == 4
        assert np.array_equal(outputs["np"], post(whole, output_type="np"))
        assert torch.equal(outputs["pt"], post(whole, output_type="pt"))
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(outputs["pil"][0], post(whole, output_type="pil")[0], strict=True))
        assert np.array_equal(outputs["uint8"].numpy(), to_uint8(outputs["np"]))
        # ... and the pipeline's own outputs are these.
        rendered = sg(**dict(call, generator=gen(0)), output_type="uint8")
        assert rendered.frames.dtype == torch.uint8 and rendered.frames.shape == (1, 5, 70, 118, 3)
        assert torch.equal(rendered.frames, outputs["uint8"])
        assert np.array_equal(rendered.sketch.numpy(), to_uint8(sg(**dict(call, generator=gen(0)), output_type="np").sketch))
    finally:
        torch.set_grad_enabled(True)
        vae.disable_tiling()
        vae.__dict__.update(tiles)
