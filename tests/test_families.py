"""CogVideoX 1.5, HunyuanVideo and LTX-Video behind the same engine, on tiny random diffusers models.

Every model is a real diffusers class at toy size (configs as diffusers' own tests). HunyuanVideo's
text encoders (LLaMA/LLaVA + CLIP) are replaced by a fixed stand-in for ``pipe.encode_prompt``: the
adapter calls ``encode_prompt`` like the pipeline does, and the embeddings are not what is tested here.
"""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    AutoencoderKLHunyuanVideo,
    AutoencoderKLLTXVideo,
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    CogVideoXImageToVideoPipeline,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoImageToVideoPipeline,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
    LTXImageToVideoPipeline,
    LTXPipeline,
    LTXVideoTransformer3DModel,
)
from transformers import T5Config, T5EncoderModel

import supergen
from supergen import SuperGenError, SuperGenPipeline
from supergen.adapters import FIRST_FRAME, Conditioning, Request, adapter_for
from supergen.adapters.cogvideox import CogVideoXAdapter
from supergen.adapters.hunyuan import HunyuanVideoAdapter
from supergen.adapters.ltx import LTXAdapter
from supergen.builtin import char_tokenizer
from supergen.videoio import read_video, write_video
from supergen.parallel import TiledVAE
from supergen.tiling import TilePlan, crop

# Native size of the tiny models (the tile, and the exactness size); LTX pipelines take multiples of 32.
SKETCH = {"cogvideox": (32, 48), "hunyuan": (32, 48), "ltx": (32, 64)}
ODD = (58, 90)  # not a multiple of the tile nor of any VAE × patch: snapped up, tiled 2×2, cropped back


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _t5() -> T5EncoderModel:
    tokenizer = char_tokenizer()
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(config).eval()


def tiny_cogvideox(image_to_video: bool):
    """CogVideoX 1.5 style (RoPE, patch_size_t=2); T2V with the DPM scheduler, I2V with DDIM (both ship)."""
    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=8 if image_to_video else 4, out_channels=4,
        time_embed_dim=8, ofs_embed_dim=8 if image_to_video else None, text_embed_dim=32, num_layers=1,
        sample_width=16, sample_height=16, sample_frames=9, patch_size=2, patch_size_t=2, temporal_compression_ratio=4,
        max_text_seq_length=16, use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False, patch_bias=False,
    )
    vae = AutoencoderKLCogVideoX(
        down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    )
    scheduler = (CogVideoXDDIMScheduler if image_to_video else CogVideoXDPMScheduler)(
        prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing"
    )
    cls = CogVideoXImageToVideoPipeline if image_to_video else CogVideoXPipeline
    return cls(tokenizer=char_tokenizer(), text_encoder=_t5(), vae=vae.eval(), transformer=transformer.eval(), scheduler=scheduler)


def _hunyuan_text(prompt, device=None, **kwargs):
    """Stand-in for HunyuanVideo's LLaMA + CLIP encoders: fixed embeddings per prompt (embeds, pooled, mask)."""
    g = torch.Generator().manual_seed(sum(map(ord, prompt or "")))
    return torch.randn(1, 7, 16, generator=g), torch.randn(1, 8, generator=g), torch.ones(1, 7)


def tiny_hunyuan(condition: str | None):
    """T2V (``condition=None``, guidance-distilled) or I2V with ``latent_concat`` / ``token_replace`` (true CFG)."""
    torch.manual_seed(0)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=9 if condition == "latent_concat" else 4, out_channels=4, num_attention_heads=2, attention_head_dim=10,
        num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=condition is None,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4), image_condition_type=condition,
    )
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4, up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, spatial_compression_ratio=8, temporal_compression_ratio=4,
    )
    parts = dict(text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                 transformer=transformer.eval(), vae=vae.eval(), scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0))
    pipe = HunyuanVideoImageToVideoPipeline(**parts, image_processor=None) if condition else HunyuanVideoPipeline(**parts)
    pipe.encode_prompt = _hunyuan_text
    return pipe


def tiny_ltx(image_to_video: bool):
    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, num_layers=1, caption_channels=32,
    )
    vae = AutoencoderKLLTXVideo(
        latent_channels=8, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False), decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4, upsample_factor=(1,) * 4,
        timestep_conditioning=False, encoder_causal=True, decoder_causal=False,
    )
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)  # as LTX ships: shifted by mu
    cls = LTXImageToVideoPipeline if image_to_video else LTXPipeline
    return cls(scheduler=scheduler, vae=vae.eval(), text_encoder=_t5(), tokenizer=char_tokenizer(), transformer=transformer.eval())


#: name → (builder, frames, guidance scale, is image-to-video). CogVideoX at 9 frames: 3 latent
#: frames, padded to 4 for patch_size_t=2.
FAMILIES = {
    "cogvideox-t2v": (lambda: tiny_cogvideox(False), 9, 5.0, False),
    "cogvideox-i2v": (lambda: tiny_cogvideox(True), 9, 5.0, True),
    "hunyuan-t2v": (lambda: tiny_hunyuan(None), 5, 6.0, False),
    "hunyuan-i2v-concat": (lambda: tiny_hunyuan("latent_concat"), 5, 3.0, True),
    "hunyuan-i2v-replace": (lambda: tiny_hunyuan("token_replace"), 5, 3.0, True),
    "ltx-t2v": (lambda: tiny_ltx(False), 5, 3.0, False),
    "ltx-i2v": (lambda: tiny_ltx(True), 5, 3.0, True),
}

_PIPES: dict[str, object] = {}


def pipeline(name: str):
    """The tiny pipeline ``name``, built once per session (weights fixed by seed)."""
    if name not in _PIPES:
        pipe = FAMILIES[name][0]()
        pipe.set_progress_bar_config(disable=True)
        _PIPES[name] = pipe
    return _PIPES[name]


def sketch_size(name: str) -> tuple[int, int]:
    return SKETCH[name.split("-")[0]]


def supergen_for(name: str, **overrides) -> SuperGenPipeline:
    _, _, scale, _ = FAMILIES[name]
    height, width = sketch_size(name)
    sections = {
        "sketch": {"height": height, "width": width, "num_inference_steps": 2, "guidance_scale": scale},
        "refine": {"num_inference_steps": 4, "strength": 0.5},
    }
    for section, values in overrides.items():
        sections[section] = {**sections.get(section, {}), **values}
    return SuperGenPipeline.from_pipe(pipeline(name), "tiny", **sections)


def _plain_call(name: str, image, steps: int) -> dict:
    """Arguments of the plain diffusers call that :func:`test_one_tile_at_strength_one_equals_the_plain_pipeline` compares with."""
    _, frames, scale, i2v = FAMILIES[name]
    height, width = sketch_size(name)
    kwargs = dict(prompt="a red car", negative_prompt="blurry", height=height, width=width, num_frames=frames,
                  num_inference_steps=steps, guidance_scale=scale, generator=gen(3), output_type="np")
    if i2v:
        kwargs["image"] = image
    if name.startswith("hunyuan-i2v"):
        # Not guidance-distilled: classifier-free guidance is the pipeline's true_cfg_scale.
        kwargs.update(guidance_scale=1.0, true_cfg_scale=scale)
    elif name == "hunyuan-t2v":
        del kwargs["negative_prompt"]  # embedded guidance only
    if name == "hunyuan-i2v-concat":
        kwargs["num_frames"] += 4  # this pipeline drops its first 4 frames; supergen returns the count asked for
    return kwargs


@pytest.mark.parametrize("name", list(FAMILIES))
def test_one_tile_at_strength_one_equals_the_plain_pipeline(name, image):
    """Target = sketch size, one tile, strength 1: the plain pipeline, same seed (noise, image posterior,
    scheduler noise and frame handling all drawn and done as the pipeline does)."""
    _, frames, _, i2v = FAMILIES[name]
    pipe = pipeline(name)
    plain = pipe(**_plain_call(name, image, steps=3)).frames
    sg = supergen_for(name, refine={"num_inference_steps": 3, "strength": 1.0})
    size = sketch_size(name)
    out = sg(prompt="a red car", negative_prompt="blurry", image=image if i2v else None,
             height=size[0], width=size[1], num_frames=frames, generator=gen(3), output_type="np")
    assert out.stats.tiling.startswith("shift 1x1") and out.sketch is None
    assert out.frames.shape == plain.shape == (1, frames, *size, 3)
    np.testing.assert_allclose(out.frames, plain, atol=2e-5, rtol=0)


@pytest.mark.parametrize("name", ["cogvideox-i2v", "hunyuan-i2v-concat", "hunyuan-i2v-replace", "ltx-i2v"])
def test_tiled_image_to_video_at_an_odd_size_sees_crops_of_the_canvas_condition(name, image, tmp_path):
    """2×2 shifted tiles (wrapping) at 58×90: every tile's spatial condition is exactly its window of the
    canvas condition; the video has the asked size and frames and goes through an mp4 file."""
    _, frames, _, _ = FAMILIES[name]
    sg = supergen_for(name, tiling={"boundary": "wrap", "shift_divisor": 2})
    adapter = sg.adapter
    canvas_maps, seen = [], []
    spatial_conditioning, predict = adapter.spatial_conditioning, adapter.predict

    def recording_spatial(*args, **kwargs):
        canvas_maps.append(spatial_conditioning(*args, **kwargs))
        return canvas_maps[-1]

    def recording_predict(latents, timestep, cond, tiles, canvas, positions, branch=None):
        seen.append(({k: v.clone() for k, v in cond.spatial.items()}, tiles, latents.shape))
        return predict(latents, timestep, cond, tiles, canvas, positions, branch)

    adapter.spatial_conditioning, adapter.predict = recording_spatial, recording_predict
    out = sg(prompt="a red block", image=image, height=ODD[0], width=ODD[1], num_frames=frames, generator=gen(0), output_type="np")

    assert out.frames.shape == (1, frames, *ODD, 3) and np.isfinite(out.frames).all()
    assert out.stats.tiling.startswith("shift 2x2") and len(out.stats.steps) == 2
    (canvas_map,) = canvas_maps
    expected = {"cogvideox-i2v": {"image_latents"}, "hunyuan-i2v-concat": {"condition"}}.get(name, {FIRST_FRAME})
    assert set(canvas_map) == expected
    assert len(seen) == 8 and any(t.rows.wraps or t.cols.wraps for _, tiles, _ in seen for t in tiles)
    for spatial, tiles, shape in seen:
        assert shape[1] == adapter.latent_channels  # the engine's uniform (B, C, F, h, w) layout
        for key, value in canvas_map.items():
            assert torch.equal(spatial[key], torch.cat([crop(value, t) for t in tiles]))
    path = write_video(tmp_path / "video.mp4", out.frames[0])
    assert read_video(path).shape == (frames, *ODD, 3)


def _tile_predictions(name: str, canvas: tuple[int, int], step: int) -> tuple[list, dict[str, list[torch.Tensor]]]:
    """Each tile's prediction at ``step`` of a wrapping shift plan over a random latent, per position mode."""
    adapter = adapter_for(pipeline(name))
    _, frames, _, _ = FAMILIES[name]
    embeds = adapter.encode_prompt(Request("a red car", "", frames), 1.0)
    cond = Conditioning(embeds=embeds, guidance_scale=FAMILIES[name][2] if name == "hunyuan-t2v" else 1.0)
    shape = adapter.latent_shape(frames, canvas[0] * adapter.vae_scale[1], canvas[1] * adapter.vae_scale[2])
    latents = torch.randn(shape, generator=gen(1))
    tile = tuple(s // adapter.vae_scale[1] for s in sketch_size(name))
    plan = TilePlan(canvas=canvas, tile=tile, patch=adapter.patch[1:], mode="shift", boundary="wrap", shift_divisor=2)
    tiles = plan.tiles(step)
    timestep = adapter.schedule(type(adapter.scheduler).from_config(adapter.scheduler.config), 4, 0, shape)[0]
    modes = ("local", "global") if isinstance(adapter, LTXAdapter) else ("local", "global", "ntk")
    out = {
        mode: [adapter.predict(crop(latents, t), timestep, cond.for_tiles([t]), [t], canvas, mode) for t in tiles]
        for mode in modes
    }
    return tiles, out


@pytest.mark.parametrize("name", ["cogvideox-t2v", "hunyuan-t2v", "ltx-t2v"])
def test_position_modes_differ_where_they_should(name):
    """A tile away from the origin: global ≠ local. At the origin: global = local (same positions), and
    ntk ≠ global (θ scaled for a canvas twice the tile). Inputs are identical and CPU kernels
    deterministic, so any difference comes from the positions alone (LTX's tiny model barely reacts to
    them: its coordinates are fractions of a 2048-pixel base)."""
    latent_tile = tuple(s // adapter_for(pipeline(name)).vae_scale[1] for s in sketch_size(name))
    tiles, out = _tile_predictions(name, (2 * latent_tile[0], 2 * latent_tile[1]), step=0)
    for k, tile in enumerate(tiles):
        if tile.origin == (0, 0):
            assert torch.equal(out["global"][k], out["local"][k])
            if "ntk" in out:
                assert not torch.equal(out["ntk"][k], out["global"][k])
        else:
            assert not torch.equal(out["global"][k], out["local"][k])
    assert any(t.origin == (0, 0) for t in tiles) and any(t.origin != (0, 0) for t in tiles)


@pytest.mark.parametrize("name", ["cogvideox-t2v", "hunyuan-t2v", "ltx-t2v"])
def test_position_modes_are_identical_with_one_tile_at_offset_zero(name):
    latent_tile = tuple(s // adapter_for(pipeline(name)).vae_scale[1] for s in sketch_size(name))
    (tile,), out = _tile_predictions(name, latent_tile, step=0)
    assert tile.origin == (0, 0)
    for mode, (pred,) in out.items():
        assert torch.equal(pred, out["local"][0]), mode


def test_ltx_rejects_ntk_positions_by_name():
    adapter = adapter_for(pipeline("ltx-t2v"))
    plan = TilePlan(canvas=(8, 16), tile=(8, 16))
    (tile,) = plan.tiles(0)
    latents = torch.zeros(adapter.latent_shape(5, 32, 64))
    cond = Conditioning(embeds=adapter.encode_prompt(Request("x", "", 5), 1.0), guidance_scale=1.0)
    with pytest.raises(SuperGenError, match="positions=ntk is not supported for LTX"):
        adapter.predict(latents, torch.tensor(500.0), cond, [tile], (8, 16), "ntk")


@pytest.mark.parametrize("name", ["cogvideox-t2v", "ltx-t2v"])
def test_the_loop_is_family_agnostic(name):
    """The same engine drives a DDIM-style v-prediction family with (B, F, C, H, W) latents and a stateful
    stochastic scheduler (CogVideoX + DPM) and a flow-matching family with packed tokens (LTX): the loop
    sees one canvas layout and calls only the adapter interface; its modules name no family."""
    for module in (supergen.pipeline, supergen.refine, supergen.plan, supergen.tiling):
        source = Path(module.__file__).read_text()
        assert not re.search(r"cogvideo|hunyuan|ltx|\bwan", source, re.IGNORECASE), module.__name__
    sg = supergen_for(name, tiling={"boundary": "clamp"}, sketch={"guidance_scale": 1.0})
    shapes = []
    predict = sg.adapter.predict
    sg.adapter.predict = lambda latents, *args: shapes.append(latents.shape) or predict(latents, *args)
    frames = 5  # CogVideoX: 2 latent frames, no padding (covered elsewhere); keeps the VAE cheap
    a = sg(prompt="a red car", height=ODD[0], width=ODD[1], num_frames=frames, generator=gen(0), output_type="latent")
    calls = len(shapes)
    b = sg(prompt="a red car", height=ODD[0], width=ODD[1], num_frames=frames, generator=gen(0), output_type="latent")
    assert torch.equal(a.frames, b.frames)  # the same seed, the same video (every draw from the generator)
    canvas = sg.adapter.latent_shape(frames, *a.stats.canvas)
    assert a.frames.shape == canvas and a.stats.canvas == (64, 96)
    assert [s.tiles for s in a.stats.steps][0] >= 4 and calls == a.stats.tile_forwards
    assert all(s[0] == 1 and s[1:3] == canvas[1:3] for s in shapes)


def test_from_pretrained_picks_the_family(tmp_path):
    pipeline("ltx-i2v").save_pretrained(tmp_path / "ltx")
    sg = SuperGenPipeline.from_pretrained(str(tmp_path / "ltx"), config="tiny")
    assert isinstance(sg.adapter, LTXAdapter) and sg.adapter.requires_image
    assert isinstance(adapter_for(pipeline("cogvideox-t2v")), CogVideoXAdapter)
    assert isinstance(adapter_for(pipeline("hunyuan-t2v")), HunyuanVideoAdapter)


def test_cogvideox_1_0_is_refused_by_name():
    transformer = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                                              time_embed_dim=8, text_embed_dim=32, num_layers=1, sample_width=8, sample_height=8,
                                              sample_frames=9, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=16)
    pipe = pipeline("cogvideox-t2v")
    old = CogVideoXPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae, transformer=transformer,
                            scheduler=pipe.scheduler)
    with pytest.raises(SuperGenError, match="only CogVideoX 1.5-style"):
        SuperGenPipeline.from_pipe(old, "tiny")


def test_frame_bookkeeping():
    """CogVideoX 1.5 pads latent frames to its temporal patch; HunyuanVideo-I2V (latent_concat) renders
    one extra image frame; both decode to exactly the frames asked for."""
    cog = adapter_for(pipeline("cogvideox-t2v"))
    assert [cog.latent_shape(f, 32, 48)[2] for f in (1, 5, 9, 13)] == [2, 2, 4, 4]
    concat = adapter_for(pipeline("hunyuan-i2v-concat"))
    assert concat.latent_shape(5, 32, 48)[2] == 3 and concat.pipeline_frames(5) == 9
    for adapter, frames in ((cog, 9), (concat, 5)):
        latents = torch.randn(adapter.latent_shape(frames, 32, 48), generator=gen(0))
        assert adapter.decode(latents, frames).shape == (1, 3, frames, 32, 48)
        video = torch.rand(1, 3, frames, 32, 48) * 2 - 1
        assert adapter.encode(video, None).shape == latents.shape


def test_rank_parallel_tiled_vae_keeps_the_frame_bookkeeping():
    """TiledVAE runs the adapter's decode/encode per spatial window on CogVideoX's own tile grid
    (overlap stated as a fraction, strides whole latents)."""
    cog = adapter_for(pipeline("cogvideox-t2v"))
    vae = cog.pipe.vae
    saved = (vae.tile_sample_min_height, vae.tile_sample_min_width)
    vae.tile_sample_min_height, vae.tile_sample_min_width = 48, 64
    try:
        assert cog.vae_tile == ((48, 64), (40, 48))
        latents = torch.randn(cog.latent_shape(9, 64, 96), generator=gen(0))
        assert TiledVAE(cog).decode(latents, 9).shape == (1, 3, 9, 64, 96)
        assert TiledVAE(cog).encode(torch.rand(1, 3, 9, 64, 96) * 2 - 1).shape == latents.shape
    finally:
        vae.tile_sample_min_height, vae.tile_sample_min_width = saved


def test_block_level_caches_refuse_what_they_cannot_cache_with_a_clear_error():
    block = supergen_for("hunyuan-t2v", cache={"enabled": True, "block": {"enabled": True}})
    with pytest.raises(SuperGenError, match="cache.block needs transformer blocks that return one tensor"):
        block(height=64, width=96, num_frames=5, generator=gen(0), output_type="latent")
    fbc = supergen_for("ltx-t2v", cache={"enabled": True, "policy": "fbc"})
    with pytest.raises(SuperGenError, match="cache.policy=fbc needs a transformer with at least 2 blocks"):
        fbc(height=64, width=128, num_frames=5, generator=gen(0), output_type="latent")


@pytest.mark.parametrize("name,positions", [("cogvideox-t2v", "global"), ("cogvideox-t2v", "ntk"), ("hunyuan-t2v", "global"),
                                            ("hunyuan-t2v", "ntk"), ("ltx-t2v", "global")])
def test_refinement_steps_build_no_position_table(name, positions, monkeypatch):
    """Issue 14 defect 9: the position table of every window of the grid's shift cycle (rotary tables,
    LTX's ``video_coords``) is built on the device before the first refinement step, so no step builds
    one (on the host, then copied). Every family keeps its tables in a render's ``DeviceTables``."""
    from supergen.adapters.positions import DeviceTables
    from supergen.refine import TileRefiner

    sg = supergen_for(name, tiling={"boundary": "wrap", "shift_divisor": 2, "positions": positions}, sketch={"num_inference_steps": 1})
    built, in_step = [], [False]
    get, step = DeviceTables.get, TileRefiner.step

    def counted_get(tables, key, build):
        def counted_build():
            built.append(in_step[0])
            return build()
        return get(tables, key, counted_build)

    def flagged_step(*args, **kwargs):
        in_step[0] = True
        try:
            return step(*args, **kwargs)
        finally:
            in_step[0] = False

    monkeypatch.setattr(DeviceTables, "get", counted_get)
    monkeypatch.setattr(TileRefiner, "step", flagged_step)
    out = sg(prompt="a red block", height=ODD[0], width=ODD[1], num_frames=FAMILIES[name][1], generator=gen(0), output_type="latent")
    assert out.stats.tiling.startswith("shift 2x2") and len(out.stats.steps) == 2
    assert built and not any(built), f"{sum(built)} of {len(built)} tables built inside refinement steps"
