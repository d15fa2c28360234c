"""The render plan is what the pipeline does: every decision compared with a real render."""

import dataclasses
import random

import pytest
import torch

from supergen import SuperGenError, SuperGenPipeline
from supergen.config import load_config
from supergen.plan import plan_render
from supergen.cost import KNOWN, estimate

FAST = dict(sketch={"height": 48, "width": 96, "num_inference_steps": 2}, refine={"num_inference_steps": 4, "strength": 0.5})


class DecodeSpy:
    """Counts the VAE decodes of a render and records their latent sizes: tiled decodes are many and small."""

    def __init__(self, vae):
        self.vae, self.sizes = vae, []

    def __enter__(self):
        self.original = self.vae.decode

        def decode(z, *args, **kwargs):
            self.sizes.append(tuple(z.shape[-2:]))
            return self.original(z, *args, **kwargs)

        self.vae.decode = decode
        return self

    def __exit__(self, *exc):
        del self.vae.decode  # back to the class's method


def _check(sg, out, plan, latent_canvas, spy):
    stats = out.stats
    assert stats.size == plan.size and stats.canvas == plan.canvas and stats.num_frames == plan.num_frames
    assert stats.sketch == (plan.sketch if plan.from_sketch else None)
    assert stats.tile == tuple(s * sg.adapter.vae_scale[1] for s in plan.tiles.tile) and stats.tiling == plan.tiles.describe()
    assert len(stats.steps) == plan.refine_steps
    assert [s.tiles for s in stats.steps] == [len(plan.tiles.tiles(i)) for i in range(plan.refine_steps)]
    final = [size for size in spy.sizes if size != tuple(s // 8 for s in plan.sketch)]
    # Tiled: the canvas decodes in windows smaller than it; untiled: one decode of the whole canvas.
    assert (max(final) < latent_canvas) == plan.vae_tiling if final else True
    assert out.frames.shape[1:4] == (plan.num_frames, *plan.size)


def test_twenty_random_sizes_render_as_planned(wan_t2v):
    rng = random.Random(12)
    sg = SuperGenPipeline.from_pipe(wan_t2v, "tiny", **FAST, tiling={"boundary": "wrap"})
    wan_t2v.vae.enable_tiling(tile_sample_min_height=64, tile_sample_min_width=64, tile_sample_stride_height=48, tile_sample_stride_width=48)
    try:
        for _ in range(20):
            height, width = rng.randint(16, 140), rng.randint(16, 220)
            plan = sg.plan(height, width, 5)
            with DecodeSpy(wan_t2v.vae) as spy:
                out = sg(height=height, width=width, num_frames=5, generator=torch.Generator().manual_seed(0))
            _check(sg, out, plan, tuple(c // 8 for c in plan.canvas), spy)
    finally:
        wan_t2v.vae.disable_tiling()


def test_strength_one_decodes_tiled_as_the_planner_says(wan_t2v):
    """The defect: at strength 1 the pipeline decoded the whole canvas untiled while ``supergen plan`` said tiled."""
    sg = SuperGenPipeline.from_pipe(wan_t2v, "tiny", sketch={"height": 48, "width": 96}, refine={"num_inference_steps": 2, "strength": 1.0})
    plan = sg.plan(96, 192, 5)
    assert plan.vae_tiling and not plan.from_sketch
    resource = estimate(load_config("tiny", ["sketch.height=48", "sketch.width=96", "refine.strength=1.0"]), KNOWN["tiny"], height=96, width=192, num_frames=5)
    assert resource.vae_tiling == plan.vae_tiling
    with DecodeSpy(wan_t2v.vae) as spy:
        out = sg(height=96, width=192, num_frames=5, generator=torch.Generator().manual_seed(0))
    _check(sg, out, plan, (12, 24), spy)
    assert len(spy.sizes) > 1


@pytest.mark.parametrize("preset", ["tiny", "toy", "wan2.1-t2v-1.3b-2k", "wan2.1-t2v-1.3b-4k", "wan2.1-i2v-14b-2k", "wan2.1-i2v-14b-4k"])
def test_the_planner_reports_the_render_plan_of_every_preset(preset):
    cfg = load_config(preset)
    arch = KNOWN[{"tiny": "tiny", "toy": "tiny"}.get(preset, "Wan2.1-I2V-14B" if "i2v" in preset else "Wan2.1-1.3B")]
    resource = estimate(cfg, arch)
    render = plan_render(cfg, arch, cfg.job.height, cfg.job.width, cfg.job.num_frames)
    assert dataclasses.replace(resource.render, tiles=None, layout=None) == dataclasses.replace(render, tiles=None, layout=None)
    assert resource.render.tiles.describe() == render.tiles.describe()
    assert (resource.canvas, resource.sketch, resource.num_frames, resource.refine_steps, resource.vae_tiling) == (
        render.canvas, render.sketch if render.from_sketch else None, render.num_frames, render.refine_steps, render.vae_tiling)
    assert resource.latent == render.latent_shape[1:] and resource.plan is resource.render.tiles


@pytest.mark.parametrize(
    "size,preset_sketch,expected",
    [
        ((128, 384), (128, 128), (80, 224)),  # the toy preset at 3:1: the canvas's aspect at the preset's area
        ((2560, 1440), (480, 832), (832, 480)),  # portrait canvas, landscape preset: orientation swapped
        ((2160, 3840), (480, 832), (480, 832)),  # 4K on the 480p preset: close enough, kept
    ],
)
def test_the_sketch_follows_the_requested_aspect(size, preset_sketch, expected):
    # Wan2.1-1.3B: the same size rules as tiny, whose position table holds too few positions for a 480x832 sketch.
    cfg = load_config("tiny", {"sketch.height": preset_sketch[0], "sketch.width": preset_sketch[1]})
    plan = plan_render(cfg, KNOWN["Wan2.1-1.3B"], *size, 9)
    assert plan.sketch == expected
    fixed = load_config(cfg, {"sketch.aspect": "fixed"})
    assert plan_render(fixed, KNOWN["Wan2.1-1.3B"], *size, 9).sketch == preset_sketch


def test_an_overlap_of_half_the_tile_or_more_is_refused_with_the_largest_valid_one():
    cfg = load_config("tiny", {"tiling.mode": "overlap", "tiling.overlap": 128})
    with pytest.raises(SuperGenError, match=r"tiling.overlap=128 px is not less than half the 128x224 px tile .*use at most 48"):
        plan_render(cfg, KNOWN["tiny"], 256, 448, 9)
    auto = plan_render(load_config("tiny", {"tiling.mode": "overlap"}), KNOWN["tiny"], 256, 448, 9)
    assert auto.tiles.axes[0].overlap == 32 // 8  # a quarter of the 128-px side, in latent units
