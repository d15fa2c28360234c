"""``tiling.mode: attention``: the whole canvas in one forward with tile(+halo) attention."""

import pytest
import torch
from supergen_kernels import TileLayout

from supergen import SuperGenError, SuperGenPipeline
from supergen.adapters import Conditioning, Request, adapter_for
from supergen.tiling import Tile, Window, crop

SMALL = dict(sketch={"height": 32, "width": 64, "num_inference_steps": 2}, refine={"num_inference_steps": 4, "strength": 0.5})


def layout_tiles(layout, canvas_latent, patch=2):
    """The layout's tiles (token rectangles, all frames) as supergen Tiles in latent units."""
    return [
        Tile(i, Window(r0 * patch, (r1 - r0) * patch, canvas_latent[0]), Window(c0 * patch, (c1 - c0) * patch, canvas_latent[1]))
        for i, (r0, r1, c0, c1) in enumerate(layout.tile_rects())
    ]


@pytest.mark.parametrize("tile_tokens", [(4, 7), (3, 5)], ids=["divides", "does-not-divide"])
def test_halo_zero_canvas_forward_equals_each_tile_alone_with_global_positions(wan_t2v, tile_tokens):
    adapter = adapter_for(wan_t2v)
    canvas = (16, 28)  # latent; tokens (8, 14) at patch 2
    embeds = adapter.encode_prompt(Request("a red car", "blurry", 5), guidance_scale=5.0)
    cond = Conditioning(embeds=embeds, guidance_scale=5.0)
    latents = torch.randn(1, 16, 2, *canvas, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(700.0)
    whole = Tile(0, Window(0, canvas[0], canvas[0]), Window(0, canvas[1], canvas[1]))
    layout = TileLayout(canvas=(2, 8, 14), tile=tile_tokens, halo=0)
    with torch.no_grad():
        with adapter.tile_attention(layout, "sdpa"):
            full = adapter.predict(latents, t, cond, [whole], canvas, "global")
        tiles = layout_tiles(layout, canvas)
        assert len(tiles) == (4 if tile_tokens == (4, 7) else 9)
        for tile in tiles:
            alone = adapter.predict(crop(latents, tile), t, cond, [tile], canvas, "global")
            torch.testing.assert_close(crop(full, tile), alone, atol=2e-5, rtol=1e-5)
    # And the processors are restored: a plain forward is dense again (differs from tile-local).
    with torch.no_grad():
        dense = adapter.predict(latents, t, cond, [whole], canvas, "global")
    assert (dense - full).abs().max() > 1e-3


def test_attention_mode_renders_and_the_halo_matters(wan_t2v):
    def render(halo):
        sg = SuperGenPipeline.from_pipe(wan_t2v, "tiny", **SMALL, tiling={"mode": "attention", "halo": halo})
        return sg(height=64, width=128, num_frames=5, generator=torch.Generator().manual_seed(0), output_type="latent")

    local, haloed = render(0), render(16)
    assert local.stats.tiling.startswith("attention 2x2 tiles") and len(local.stats.steps) == 2
    assert torch.isfinite(haloed.frames).all()
    assert (local.frames - haloed.frames).abs().max() > 1e-4
    assert all(not isinstance(p, type(None)) for p in [b.attn1.processor for b in wan_t2v.transformer.blocks])
    assert all(type(b.attn1.processor).__name__ != "WanTileAttnProcessor" for b in wan_t2v.transformer.blocks)


@pytest.mark.parametrize(
    "tiling,backend,message",
    [
        ({"mode": "attention"}, "xformers", "attention.backend='xformers' is unavailable"),
        ({"mode": "shift"}, "triton", "the Triton kernel is the sparse canvas kernel"),
        ({"mode": "attention", "halo": 8}, "sdpa", "tiling.halo=8 must be a multiple of 16"),
    ],
)
def test_unusable_backends_and_halos_are_clear_errors(wan_t2v, tiling, backend, message):
    sg = SuperGenPipeline.from_pipe(wan_t2v, "tiny", **SMALL, tiling=tiling, attention={"backend": backend})
    with pytest.raises(SuperGenError, match=message) as err:
        sg(height=64, width=128, num_frames=5, generator=torch.Generator().manual_seed(0), output_type="latent")
    if "unavailable" in message:
        assert "Available: sdpa, flex" in str(err.value)


def test_attention_windows_move_every_step_as_the_layout_cycle_says(wan_t2v):
    """Each step's forward attends within ``plan.layout[step]``; the windows move between steps, and
    the render differs from one whose windows stay put (``shift_every`` past the step count)."""

    def render(shift_every):
        sg = SuperGenPipeline.from_pipe(
            wan_t2v, "tiny", **SMALL, tiling={"mode": "attention", "halo": 16, "shift_divisor": 4, "shift_every": shift_every}
        )
        seen = []

        def record(pipe, step, timestep, tensors):
            # Called after the step's forwards, while the processors still hold that step's layout.
            seen.append(wan_t2v.transformer.blocks[0].attn1.processor.layouts.layout)
            return tensors

        out = sg(height=64, width=128, num_frames=5, generator=torch.Generator().manual_seed(0), output_type="latent",
                 callback_on_step_end=record)
        return out.frames, seen, sg.plan(64, 128, 5).layout

    moving, seen, cycle = render(1)
    assert len(seen) == 2 and seen == [cycle[0], cycle[1]]
    assert seen[0].offset == (0, 0) and seen[1].offset != (0, 0)
    assert seen[0].tile_rects() != seen[1].tile_rects()
    fixed, seen_fixed, _ = render(100)
    assert [layout.offset for layout in seen_fixed] == [(0, 0), (0, 0)]
    assert (moving - fixed).abs().max() > 1e-4


def test_a_fixed_tile_layout_still_works_and_step_layouts_read_the_cycle():
    from supergen_kernels import LayoutCycle

    from supergen.attention import StepLayouts

    cycle = LayoutCycle((2, 8, 14), (4, 7), 2, shift_divisor=4, boundary="wrap")
    steps = StepLayouts(cycle)
    for step in (0, 1, 5, 2):
        steps(step)
        assert steps.layout is cycle[step]
    fixed = TileLayout((2, 8, 14), (4, 7), 2)
    steps = StepLayouts(fixed)
    steps(3)
    assert steps.layout is fixed


def test_dense_mask_backend_is_refused_before_any_compute_at_large_canvases(wan_t2v):
    # 2 latent frames x 64 x 144 tokens = 18,432 > 16,384: the dense mask would be 316 MiB here, and
    # 463 GB at 4K x 81 with Wan-14B; refused before the sketch runs, naming the sparse backends.
    sg = SuperGenPipeline.from_pipe(wan_t2v, "tiny", **SMALL, tiling={"mode": "attention"}, attention={"backend": "sdpa"})
    stages = []
    with pytest.raises(SuperGenError, match=r"dense 18432x18432 mask .* Use attention.backend='flex'"):
        sg(height=1024, width=2304, num_frames=5, output_type="latent", callback_on_stage=lambda name, info: stages.append(name))
    assert stages == []
