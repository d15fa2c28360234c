"""The resource planner: hand-computed numbers, FLOPs against PyTorch's counter, geometry against a render."""

import dataclasses

import diffusers
import pytest
import torch
from diffusers import WanTransformer3DModel
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from supergen.builtin import tiny_wan_pipeline
from supergen.cli import main
from supergen.config import load_config
from supergen.runtime import call_arguments
from supergen.errors import SuperGenError
from supergen.pipeline import SuperGenPipeline
from supergen.cost import KNOWN, Architecture, architecture, attended_pairs, estimate, transformer_flops, with_native_sketch

from test_families import tiny_cogvideox, tiny_hunyuan, tiny_ltx


def test_wan_1_3b_720p_matches_hand_calculation():
    """Wan2.1-1.3B, 1280x720, 81 frames, bfloat16, library defaults (50 steps, strength 0.5), native sketch."""
    arch = KNOWN["Wan2.1-1.3B"]
    cfg = with_native_sketch(load_config(None, {"model.dtype": "bfloat16"}), arch)
    plan = estimate(cfg, arch, height=720, width=1280, num_frames=81)

    # Geometry: VAE 4x8x8, patch 1x2x2. Latent 16 x (80/4+1) x 90 x 160; tile = native 480x832 -> 60x104.
    assert plan.latent == (16, 21, 90, 160)
    assert plan.sketch == (480, 832) and plan.plan.tile == (60, 104)
    assert plan.refine_steps == 25 and plan.sketch_steps == 50
    # Clamp mode: 2x2 windows at offset 0; shifted by 4 (60/16 -> 2 patches) and 6 (104/16 -> 3 patches)
    # latent rows/cols per step, an offset cut adds a segment per axis while it lies inside the canvas: 3x3.
    assert len(plan.plan.tiles(0)) == 4 and plan.tiles_per_step == 9
    L = 21 * (60 // 2) * (104 // 2)
    assert plan.tokens_per_tile == L == 32760

    # FLOPs of one forward: 30 blocks of D=1536, FFN 8960, 512 text tokens; embeddings; x2 guidance x9 tiles.
    D, F, S = 1536, 8960, 512
    block = 12 * L * D * D + 4 * L * L * D + 4 * S * D * D + 4 * L * S * D + 4 * L * D * F
    embed = 2 * L * 16 * 4 * D + 2 * L * D * 16 * 4 + 2 * S * 4096 * D + 2 * S * D * D + 2 * (256 * D + D * D + 6 * D * D)
    assert plan.flops_per_step == 9 * 2 * (30 * block + embed)
    assert plan.flops_per_step == 9 * 2 * 283_001_787_777_024  # ~283 TFLOP per forward

    # Memory (bf16 = 2 bytes): FFN live set, 6 float32 canvas copies, tiled decode of the 720p video.
    assert plan.memory["transformer"] == 32760 * (2 * 1536 + 2 * 8960) * 2 == 1_375_395_840
    assert plan.memory["canvas"] == 6 * (16 * 21 * 90 * 160) * 4 == 116_121_600
    # The VAE in float32 (Wan's recipe). Tiled decode, a row of tiles at a time: one row of decoded
    # 256-px tiles plus the 64-px overlap kept of the row above (tile widths 6x256+128), a finished
    # strip of 192 rows, and the decoder's working set on one tile (13 x 96 channels x 4 frames); the
    # uint8 output is on the host (supergen.output), not on the device.
    working = 13 * 96 * 4 * 256 * 256 * 4
    rows = 3 * 81 * (256 + 64) * 1664 * 4
    assert plan.memory["vae_decode"] == rows + 3 * 81 * 192 * 1280 * 4 + working
    # Upscale: a band of 256 resized rows, the encoder's working set (10 x 96 channels; more than the
    # resize of 8 whole frames and the float32 sketch copy), the encoded latent and its re-noising.
    latent = 16 * 21 * 90 * 160 * 4
    resize = 3 * 81 * 480 * 832 * 4 + 3 * 8 * 720 * 1280 * 4
    assert resize < 10 * 96 * 4 * 256 * 256 * 4
    assert plan.memory["upscale"] == 3 * 81 * 256 * 1280 * 4 + 10 * 96 * 4 * 256 * 256 * 4 + 3 * latent == 1_383_198_720
    counts = plan.parameters
    # bf16 transformer and text encoder, float32 VAE (Wan's recipe).
    assert plan.weights == 2 * (counts["transformer"] + counts["text_encoder"]) + 4 * counts["vae"]
    # The text encoder (10.6 GiB) leaves the device once the prompts are encoded: every later stage
    # fits under the weights loaded at the start, which are the peak; without parking the untiled
    # sketch decode at 480x832 outweighs everything at 720p.
    assert plan.resident("upscale") == plan.resident("sketch") == plan.weights - 2 * counts["text_encoder"]
    assert plan.peak_stage == "setup" and plan.peak == plan.weights
    kept = estimate(load_config(cfg, ["encoders.park=false"]), arch, height=720, width=1280, num_frames=81)
    assert kept.peak_stage == "sketch" and kept.peak == kept.weights + kept.memory["stage.sketch"]


def test_flop_formula_matches_pytorch_flop_counter():
    """The formula equals torch.utils.flop_counter on the real diffusers forward (1.3B and I2V-14B on meta, tiny on CPU).

    On CPU, attention runs in the math backend: the counter does not count the fused CPU kernel.
    """
    cases = (("Wan2.1-1.3B", (1, 16, 21, 60, 104), "meta"), ("Wan2.1-I2V-14B", (1, 36, 3, 16, 28), "meta"), ("tiny", (2, 16, 3, 16, 28), "cpu"))
    for name, shape, device in cases:
        arch = KNOWN[name]
        with torch.device(device):
            model = WanTransformer3DModel.from_config(arch.transformer).eval()
            x = torch.zeros(shape)
            text = torch.zeros(shape[0], 512, arch.transformer["text_dim"])
            image = torch.zeros(shape[0], arch.image_tokens, arch.transformer["image_dim"]) if arch.image_tokens else None
            t = torch.full((shape[0],), 500, dtype=torch.long)
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(hidden_states=x, timestep=t, encoder_hidden_states=text, encoder_hidden_states_image=image, return_dict=False)
        tokens = shape[2] * (shape[3] // 2) * (shape[4] // 2)
        assert counter.get_total_flops() == transformer_flops(arch, tokens, batch=shape[0]), name


#: Each family's tiny transformer (tests/test_families.py) and its released architecture, on a latent
#: of (frames, height, width); LTX's is packed into tokens by the pipeline, so its shape is the tokens'.
FAMILY_FLOP_CASES = {
    "cogvideox": (lambda: tiny_cogvideox(False), (4, 8, 12)), "cogvideox-i2v": (lambda: tiny_cogvideox(True), (4, 8, 12)),
    "hunyuan": (lambda: tiny_hunyuan(None), (2, 6, 8)), "hunyuan-latent_concat": (lambda: tiny_hunyuan("latent_concat"), (2, 6, 8)),
    "hunyuan-token_replace": (lambda: tiny_hunyuan("token_replace"), (2, 6, 8)),
    "ltx": (lambda: tiny_ltx(False), (2, 4, 6)), "ltx-i2v": (lambda: tiny_ltx(True), (2, 4, 6)),
    "CogVideoX1.5-5B-I2V": (None, (4, 16, 24)), "HunyuanVideo-I2V": (None, (2, 16, 24)), "LTX-Video": (None, (2, 8, 12)),
}


def _forward_arguments(arch: Architecture, batch: int, latent: tuple[int, int, int]) -> dict:
    """The transformer's inputs for ``batch`` tiles of ``latent``: the text of the shapes the planner
    counts (:attr:`FamilySpec.prompt_shapes`), what each family's forward takes besides."""
    t, (f, h, w) = arch.transformer, latent
    text = {k: torch.ones(batch, *shape) for k, shape in arch.spec.prompt_shapes(t, arch.image_to_video).items()}
    step = torch.full((batch,), 500.0)
    channels = t["in_channels"]
    if arch.spec.name == "CogVideoX":
        ofs = torch.zeros(batch) if t.get("ofs_embed_dim") else None
        return dict(hidden_states=torch.zeros(batch, f, channels, h, w), timestep=step, ofs=ofs,
                    encoder_hidden_states=text["prompt_embeds"])
    if arch.spec.name == "HunyuanVideo":
        guidance = torch.full((batch,), 6000.0) if t.get("guidance_embeds") else None
        return dict(hidden_states=torch.zeros(batch, channels, f, h, w), timestep=step, guidance=guidance,
                    encoder_hidden_states=text["prompt_embeds"], encoder_attention_mask=text["prompt_attention_mask"],
                    pooled_projections=text["pooled_prompt_embeds"])
    # LTX: packed tokens; image-to-video gives every token its own timestep, as the adapter does.
    timestep = step[:, None].expand(batch, f * h * w) if arch.image_to_video else step
    return dict(hidden_states=torch.zeros(batch, f * h * w, channels), timestep=timestep, num_frames=f, height=h, width=w,
                encoder_hidden_states=text["prompt_embeds"], encoder_attention_mask=text["prompt_attention_mask"])


@pytest.mark.parametrize("name", FAMILY_FLOP_CASES)
def test_family_flop_layouts_match_pytorch_flop_counter(name):
    """Every family's FLOP layout (supergen.families) against torch.utils.flop_counter on its real diffusers
    transformer: the tiny ones on CPU (math attention), the released ones on meta. The layouts list
    every matrix product the forward runs, so they agree exactly (tolerance 0)."""
    make, latent = FAMILY_FLOP_CASES[name]
    arch = Architecture.from_pipeline(make()) if make else KNOWN[name]
    device, batch = ("cpu", 2) if make else ("meta", 1)
    with torch.device(device):
        model = getattr(diffusers, arch.spec.modules.transformer).from_config(arch.transformer).eval()
        arguments = _forward_arguments(arch, batch, latent)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(**arguments, return_dict=False)
    p_t, p, _ = arch.patch
    tokens = latent[0] // p_t * (latent[1] // p) * (latent[2] // p)
    counted, planned = counter.get_total_flops(), transformer_flops(arch, tokens, batch=batch)
    assert planned == counted, (name, planned, counted)


def test_parameter_counts_are_the_real_modules():
    pipe = tiny_wan_pipeline()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert KNOWN["tiny"].parameters() == {
        "transformer": count(pipe.transformer), "vae": count(pipe.vae), "text_encoder": count(pipe.text_encoder),
    }
    assert Architecture.from_pipeline(pipe).parameters() == KNOWN["tiny"].parameters()


def test_model_folder_config_json(tmp_path):
    tiny_wan_pipeline().save_pretrained(tmp_path / "tiny-folder")
    arch = architecture(str(tmp_path / "tiny-folder"))
    assert arch.parameters() == KNOWN["tiny"].parameters()
    # Image-to-video: the CLIP image encoder is counted and its tokens enter the cross-attention.
    i2v = tiny_wan_pipeline(image_to_video=True)
    i2v.save_pretrained(tmp_path / "tiny-i2v-folder")
    folder = architecture(str(tmp_path / "tiny-i2v-folder"))
    assert folder.parameters() == Architecture.from_pipeline(i2v).parameters()
    assert folder.image_tokens == 32 * 32 + 1 and "image_encoder" in folder.parameters()
    cfg = load_config("tiny")
    assert estimate(cfg, arch).flops_per_step == estimate(cfg, KNOWN["tiny"]).flops_per_step
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(SuperGenError, match="not a diffusers model folder"):
        architecture(str(tmp_path / "not-a-model"))


def test_plan_matches_what_the_pipeline_renders(wan_t2v):
    """Canvas, sketch, tile grid and tiles per step of the plan are those of an actual render."""
    cfg = load_config("tiny", ["job.height=72", "job.width=120", "job.num_frames=5", "sketch.height=48", "sketch.width=64",
                               "sketch.num_inference_steps=2", "refine.num_inference_steps=4"])
    plan = estimate(cfg, Architecture.from_pipeline(wan_t2v))
    out = SuperGenPipeline.from_pipe(wan_t2v, cfg)(**call_arguments(cfg.job), generator=torch.Generator().manual_seed(0), output_type="latent")
    stats = out.stats
    assert plan.canvas == stats.canvas == (80, 128)  # 72x120 rounded up to multiples of 16
    assert plan.sketch == stats.sketch == (48, 64)
    assert plan.plan.describe() == stats.tiling
    assert plan.refine_steps == len(stats.steps)
    assert plan.tiles_per_step == max(s.tiles for s in stats.steps)
    assert tuple(out.frames.shape[1:]) == plan.latent


def test_plan_cli_prints_one_table(capsys):
    assert main(["plan", "--model", "Wan-AI/Wan2.1-T2V-14B-Diffusers", "--height", "2160", "--width", "3840",
                 "--num-frames", "81", "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    for label in ("sketch", "tile grid", "tokens per tile", "transformer FLOPs/step", "canvas state", "VAE decode", "estimated peak"):
        assert label in out
    assert "720x1280, 50 steps" in out and "75,600" in out  # 21 x 45 x 80 tokens per 720p tile (sizes height x width)
    assert "2160x3840 (height x width), 81 frames" in out
    assert main(["plan", "--model", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


def test_size_errors_are_the_pipelines():
    with pytest.raises(SuperGenError, match="at least 16"):
        estimate(load_config("tiny"), KNOWN["tiny"], height=8, width=64)


def test_attention_mode_counts_tile_plus_halo_pairs():
    """tiling.mode=attention: one forward over the canvas, self-attention only within tile + halo windows."""
    cfg = load_config("tiny", ["tiling.mode=attention"])  # 256x448x9, tiles 128x224, halo 64 px
    plan = estimate(cfg, KNOWN["tiny"])
    # Tokens: 3 latent frames x 16 x 28 patches, all in one forward.
    assert plan.tokens_per_tile == 3 * 16 * 28 and plan.tiles_per_step == 1
    # Step 0: 2x2 tiles of 8x14 tokens; the 4-token halo, clipped at the canvas, gives 12x18 windows.
    assert attended_pairs(plan.layout[0]) == 4 * (3 * 8 * 14) * (3 * 12 * 18) == 870_912
    # The windows move (2x4 tokens a step, tiny's shift_divisor 4); with clamp an offset grid has
    # 3x3 tiles. The costliest of the 4 steps is step 2, offset (4, 8): rows 4+8+4 owning windows
    # of 12, 16, 12 rows; columns 8+14+6 owning windows of 18, 22, 18 columns.
    assert plan.layout[2].offset == (4, 8) and plan.layout[2].grid == (3, 3)
    pairs = 3 * 3 * (4 * 12 + 8 * 16 + 4 * 12) * (8 * 18 + 14 * 22 + 6 * 18)
    assert pairs == 1_128_960 < (3 * 16 * 28) ** 2
    assert plan.flops_per_step == 2 * transformer_flops(KNOWN["tiny"], 1344, pairs=pairs)
    assert plan.memory["transformer"] == 1344 * (2 * 24 + 2 * 32) * 4


def _no_tables(monkeypatch):
    """Make building any tile, window list or canvas-sized weight fail: what an estimate must not need."""
    from supergen import tiling

    def refuse(*args, **kwargs):
        raise AssertionError("the estimate built per-tile or per-pixel tables")

    for owner, name in ((tiling.TilePlan, "tiles"), (tiling.TilePlan, "tiles_unnormalised"), (tiling.TilePlan, "_weight_sum"),
                        (tiling.AxisSchedule, "segments")):
        monkeypatch.setattr(owner, name, refuse)


@pytest.mark.parametrize("mode", ["tiling.mode=shift", "tiling.boundary=wrap", "tiling.mode=overlap", "tiling.mode=attention"])
def test_an_absurd_size_is_priced_by_arithmetic_and_refused_before_anything_loads(monkeypatch, mode):
    """Issue 28: 999999x999999 was OOM-killed after minutes (a tile list with a weight per tile, a canvas-sized
    normaliser, a search over wrap shifts). The estimate counts tiles instead of building them, so it costs
    what a 720p one does, and the memory check refuses the size before any load."""
    from supergen import runtime

    _no_tables(monkeypatch)
    cfg = load_config("tiny", [mode, "job.height=999999", "job.width=999999", "job.num_frames=9"])
    plan = estimate(cfg, KNOWN["tiny"])
    assert plan.canvas == (1000000, 1000000)
    # Wan1.3B-like numbers: the canvas latent alone is 6 float32 copies of 16 x 3 x 125000²
    assert plan.memory["canvas"] == 6 * 16 * 3 * 125000 * 125000 * 4
    if "attention" not in mode:  # tens of millions of tiles a step, none of them built
        assert plan.tiles_per_step > 10**7
    with pytest.raises(SuperGenError, match=r"^999999x999999x9 \(height x width x frames\) needs about "):
        runtime.check_memory(cfg, torch.device("cpu"))


@pytest.mark.parametrize("mode, boundary, canvas, tile", [
    ("shift", "clamp", (30, 44), (8, 12)), ("shift", "wrap", (30, 44), (8, 12)), ("shift", "wrap", (32, 48), (8, 12)),
    ("overlap", "clamp", (30, 44), (8, 12)), ("shift", "clamp", (8, 12), (8, 12)), ("shift", "wrap", (26, 10), (6, 4)),
])
def test_tile_counts_are_the_tiles_a_render_cuts(mode, boundary, canvas, tile):
    """TilePlan.count (arithmetic, what the estimate reads) is len(tiles(step)) at every step of a cycle."""
    from supergen.tiling import TilePlan

    plan = TilePlan(canvas, tile, (2, 2), mode, boundary, shift_divisor=4, overlap=2)
    for step in range(12):
        assert plan.count(step) == len(plan.tiles(step))


@pytest.mark.parametrize("name", ["cogvideox-i2v", "hunyuan-i2v-concat", "ltx-t2v"])
def test_every_family_is_planned_from_its_pipeline_and_its_folder(name, tmp_path):
    """No Wan-only refusal: a loaded pipeline or a saved folder of any family gives its architecture (the
    family's encoders counted, the same numbers both ways), and its plan is the render plan of the pipeline."""
    from test_families import FAMILIES

    pipe = FAMILIES[name][0]()
    loaded = Architecture.from_pipeline(pipe)
    pipe.save_pretrained(tmp_path / name)
    folder = architecture(str(tmp_path / name))
    assert folder.parameters() == loaded.parameters()
    assert set(loaded.parameters()) == {"transformer", "vae", *SuperGenPipeline.from_pipe(pipe, "tiny").adapter.spec.modules.encoders} & (
        {"transformer", "vae"} | {k for k in ("text_encoder", "text_encoder_2", "image_encoder") if getattr(pipe, k, None) is not None})
    cfg = load_config("tiny", ["job.height=64", "job.width=96", "job.num_frames=9", "sketch.height=32", "sketch.width=48"])
    plan, render = estimate(cfg, loaded), SuperGenPipeline.from_pipe(pipe, cfg).plan(64, 96, 9)
    assert dataclasses.replace(plan.render, tiles=None) == dataclasses.replace(render, tiles=None)
    assert plan.render.tiles.describe() == render.tiles.describe()
    assert plan.flops_per_step > 0 and plan.peak > plan.weights
