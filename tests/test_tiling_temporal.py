"""Tiles that are windows in time too: coverage and weights over many lengths, windows that shift
along time, and the one-window case unchanged."""

import random

import pytest
import torch

from supergen.tiling import TilePlan, accumulate, crop, window_shape


def weight_sum(plan: TilePlan, step: int) -> torch.Tensor:
    total = torch.zeros(plan.shape, dtype=torch.float64)
    for tile in plan.tiles(step):
        accumulate(total, tile, torch.ones(window_shape(tile), dtype=torch.float64))
    return total


def random_cases(n: int, seed: int = 0):
    rng = random.Random(seed)
    for _ in range(n):
        window = rng.randint(1, 8)
        yield (rng.randint(window + 1, 6 * window + 3), window, rng.choice([(6, 10), (4, 4)]),
               rng.choice([("shift", "clamp"), ("shift", "wrap"), ("overlap", "clamp")]), rng.choice([1, 2, 4, 16]))


@pytest.mark.parametrize("frames,window,canvas,mode_boundary,divisor", list(random_cases(40)))
def test_every_element_covered_with_weights_summing_to_one(frames, window, canvas, mode_boundary, divisor):
    mode, boundary = mode_boundary
    plan = TilePlan(canvas, (4, 4), patch=(2, 2), mode=mode, boundary=boundary, shift_divisor=divisor, overlap=2,
                    frames=(frames, window))
    assert plan.frames == window and plan.shape == (frames, *canvas)
    for step in range(12):
        total = weight_sum(plan, step)
        assert torch.allclose(total, torch.ones_like(total), atol=1e-6), (step, total.min(), total.max())
        for tile in plan.tiles(step):
            # Every window is a full native-length window inside the clip (time clamps).
            assert tile.frames.size == window and 0 <= tile.frames.start <= frames - window


@pytest.mark.parametrize("frames,window,canvas,mode_boundary,divisor", list(random_cases(40, seed=1)))
def test_feathered_last_step_covers_every_element_with_weights_summing_to_one(frames, window, canvas, mode_boundary, divisor):
    mode, boundary = mode_boundary
    for patch in (1, 2):
        plan = TilePlan(canvas, (4, 4), patch=(2, 2), mode=mode, boundary=boundary, shift_divisor=divisor, overlap=2,
                        frames=(frames * patch, window * patch), frame_patch=patch, feather_step=3)
        for step in range(3, 9):
            total = weight_sum(plan, step)
            assert torch.allclose(total, torch.ones_like(total), atol=1e-6), (step, total.min(), total.max())
            tiles = plan.tiles(step)
            assert len(tiles) == plan.count(step)
            assert len({(t.frames.start, t.rows, t.cols) for t in tiles}) == len(tiles), "no window computed twice"
            for tile in tiles:
                assert tile.frames.size == window * patch and 0 <= tile.frames.start <= (frames - window) * patch
                assert tile.frames.start % patch == 0
                weight = tile.weight.flatten(1).amax(1)  # along time (a clamped spatial tile owns no corner)
                first, stop, _ = tile.owned_frames.indices(tile.frames.size)
                assert weight[first] > 0 and weight[stop - 1] > 0 and not weight[:first].any() and not weight[stop:].any()


def test_feathered_borders_blend_where_cut_borders_jump():
    """Wan's 241 frames (61 latent) in 21-frame windows: the last step blends five latent frames
    across each border (a quarter window) and costs no more windows than a step that cuts."""
    cut = TilePlan((4, 4), (4, 4), frames=(61, 21), shift_divisor=16)
    plan = TilePlan((4, 4), (4, 4), frames=(61, 21), shift_divisor=16, feather_step=34)
    assert not plan.feathered(33) and plan.feathered(34) and plan.time.feather_margin() == 5
    assert [plan.count(s) for s in range(34)] == [cut.count(s) for s in range(34)] and plan.count(34) == cut.count(34)
    for tile in plan.tiles(34):
        weight = tile.weight[:, 0, 0]
        ramp = weight[(weight > 0) & (weight < 1)]
        assert len(ramp) in (5, 10) or tile.frames.start in (0, 40), "a ramp of five frames at each inner border"
    for tile in cut.tiles(34):
        assert set(tile.weight[:, 0, 0].tolist()) <= {0.0, 1.0}


def test_feathering_needs_a_window_twice_the_margin():
    # Windows of one patch (two latent frames, patch 2) leave no segment between two ramps: they cut.
    plan, cut = (TilePlan((4, 4), (4, 4), frames=(8, 2), frame_patch=2, feather_step=step) for step in (0, None))
    assert plan.time.feather_margin() == 0
    assert [(t.frames, t.owned_frames) for t in plan.tiles(0)] == [(t.frames, t.owned_frames) for t in cut.tiles(0)]


def test_temporal_patch_keeps_window_edges_on_the_patch():
    plan = TilePlan((4, 4), (4, 4), patch=(2, 2), frames=(22, 6), frame_patch=2, shift_divisor=4)
    for step in range(10):
        for tile in plan.tiles(step):
            assert tile.frames.start % 2 == 0 and tile.frames.size == 6
        total = weight_sum(plan, step)
        assert torch.equal(total, torch.ones_like(total))


def test_time_windows_shift_every_step_and_every_frame_is_interior_sometime():
    # The toy's case: 33 frames (9 latent), native 9 frames (3 latent).
    plan = TilePlan((16, 16), (16, 16), patch=(2, 2), shift_divisor=4, frames=(9, 3))
    starts = []
    borders = set()
    for step in range(6):
        tiles = plan.tiles(step)
        owned = sorted((t.frames.start + t.owned_frames.indices(t.frames.size)[0]) for t in tiles)
        starts.append(tuple(owned))
        borders |= set(owned) - {0}
    assert starts[0] != starts[1] != starts[2], "the cut lines move along time every step"
    assert starts[0] == starts[3], "with a stride of one latent frame the time cycle is the window (3)"
    assert borders == set(range(1, 9)), "over a cycle a border passes every frame"


def test_shift_every_holds_the_time_windows():
    plan = TilePlan((8, 8), (8, 8), frames=(12, 4), shift_every=3, shift_divisor=4)
    assert plan.frame_offset(0) == plan.frame_offset(2) != plan.frame_offset(3)


def test_crop_and_accumulate_round_trip_in_time():
    canvas = torch.arange(2 * 9 * 6 * 8, dtype=torch.float32).view(1, 2, 9, 6, 8)
    plan = TilePlan((6, 8), (4, 4), patch=(2, 2), mode="shift", boundary="wrap", shift_divisor=2, frames=(9, 4))
    for step in range(5):
        out = torch.zeros_like(canvas)
        for tile in plan.tiles(step):
            window = crop(canvas, tile)
            assert window.shape == (1, 2, 4, *tile.shape)
            accumulate(out, tile, window)
        assert torch.equal(out, canvas)


@pytest.mark.parametrize("mode,boundary", [("shift", "clamp"), ("shift", "wrap"), ("overlap", "clamp")])
def test_one_window_in_time_is_todays_plan(mode, boundary):
    """A clip at or under the window length: the same tiles (spanning all frames) as a plan without time."""
    kwargs = dict(patch=(2, 2), mode=mode, boundary=boundary, shift_divisor=4, overlap=4)
    today = TilePlan((32, 56), (16, 28), **kwargs)
    for frames in [(5, 5), (5, 9), None]:
        plan = TilePlan((32, 56), (16, 28), frames=frames, **kwargs)
        assert plan.time is None and plan.shape == (32, 56)
        for step in range(6):
            for a, b in zip(today.tiles(step), plan.tiles(step)):
                assert (a.rows, a.cols, a.owned, b.frames) == (b.rows, b.cols, b.owned, None)
                assert (a.weight is None and b.weight is None) or torch.equal(a.weight, b.weight)


def test_wan_canvas_positions_number_a_time_window_by_its_canvas_frames():
    """positions=global: a window of latent frames 2..3 gets exactly rows 2..3 of the whole clip's
    temporal table (spatial tables unchanged)."""
    from supergen.adapters.wan import CanvasRotaryPosEmbed
    from supergen.builtin import tiny_wan_pipeline
    from supergen.tiling import Tile, Window

    rope = tiny_wan_pipeline().transformer.rope
    rows, cols = torch.arange(4), torch.arange(7)
    whole = CanvasRotaryPosEmbed(rope)
    whole.set_tiles([rows], [cols])
    full = whole(torch.zeros(1, 16, 5, 8, 14))
    window = Tile(0, Window(0, 8, 8), Window(0, 14, 14), frames=Window(2, 2, 5))
    windowed = CanvasRotaryPosEmbed(rope)
    windowed.set_tiles([rows], [cols], frames=[window.frames.positions()])
    part = windowed(torch.zeros(1, 16, 2, 8, 14))
    tokens = 4 * 7  # per latent frame
    for ours, theirs in zip(part, full):
        assert torch.equal(ours, theirs[:, 2 * tokens : 4 * tokens])


def test_a_clip_longer_than_a_window_renders_in_shifting_time_windows():
    """tiny, 9 frames (3 latent) in windows of 5 frames (2 latent): every step two or three windows,
    the render finishes with the clip's shape (caches and attention mode with time windows:
    tests/test_temporal_cache.py)."""
    from supergen import SuperGenPipeline
    from supergen.builtin import tiny_wan_pipeline

    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    small = {"sketch": {"num_inference_steps": 2, "height": 32, "width": 64}, "refine": {"num_inference_steps": 4}}
    sg = SuperGenPipeline.from_pipe(pipe, "tiny", **small, tiling={"frames": 5})
    plan = sg.plan(32, 64, 9)
    assert plan.tiles.frames == 2 and plan.tile_latent_shape[2] == 2 and "windows of 2 latent frames" in plan.tiles.describe()
    out = sg(height=32, width=64, num_frames=9, generator=torch.Generator().manual_seed(0), output_type="latent")
    assert out.frames.shape == (1, 16, 3, 4, 8) and torch.isfinite(out.frames).all()
    assert [s.tiles for s in out.stats.steps] == [len(plan.tiles.tiles(i)) for i in range(plan.refine_steps)]
