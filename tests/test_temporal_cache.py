"""Caches and attention mode with time windows (issue 30): a clip longer than a window is refined in
windows of (frames, rows, columns) whose borders shift in time too, and everything built on tiles
keys by that region.

Real tiny diffusers Wan, from strength 1 (no sketch, no VAE), ``output_type="latent"``: 9 frames
(3 latent) in windows of 5 frames (2 latent), 2x2 spatial tiles shifting every step.
"""

import pytest
import torch

from supergen.cache import RegionCache, RegionCacheConfig, cache_map
from supergen.config import load_config
from supergen.cost import estimate, format_plan
from supergen.architectures import KNOWN
from supergen.pipeline import SuperGenPipeline
from supergen.plan import plan_render
from supergen.tiling import TilePlan, accumulate, crop, window_shape

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = {"height": 64, "width": 128, "num_frames": 9}
TILING = {"tile_height": 32, "tile_width": 64, "shift_divisor": 4, "frames": 5}
STEPS = 8


def render(pipe, tiling=TILING, **cache):
    sg = SuperGenPipeline.from_pipe(pipe, "tiny", refine={"num_inference_steps": STEPS, "strength": 1.0}, tiling=tiling, cache=cache)
    return sg(**SIZE, generator=torch.Generator().manual_seed(0), output_type="latent")


@pytest.fixture(scope="module")
def uncached(wan_t2v):
    return render(wan_t2v, enabled=False)


def test_region_cache_decides_per_frame():
    """Frames 0-2 never change, frames 3-5 change every step, at the same rows and columns: the
    tiles writing only still frames are reused, those writing a changing frame never are. With the
    maps per (row, column) alone, both kinds of tile read the same statistics (averaged over frames)
    and get the same decision."""
    plan = TilePlan((8, 8), (4, 8), patch=(1, 1), shift_divisor=2, frames=(6, 2))
    policy = RegionCache(RegionCacheConfig(threshold=0.01, warmup_steps=2, max_consecutive=2, region_strength=0.0, cost=0.0))
    steps = 8
    policy.start(steps)
    moving = torch.zeros(1, 1, 6, 1, 1)
    moving[:, :, 3:] = 1.0
    base = torch.linspace(1, 2, 4 * 6 * 8 * 8).view(1, 4, 6, 8, 8)
    still_reused, moving_reused = 0, 0
    for step in range(steps):
        x = base + step * moving
        tiles = plan.tiles(step)
        decisions = policy.decide(step, torch.tensor(500.0), x, tiles)
        output = 2 * x  # the "model": its output moves exactly where its input does
        predictions = policy.predictions(step, x, tiles, {t.index: crop(output, t) for t, c in zip(tiles, decisions) if c})
        prediction = torch.zeros_like(x)
        for tile in tiles:
            accumulate(prediction, tile, predictions[tile.index])
        policy.observe(step, x, prediction)
        assert policy._state["count"].shape == (6, 8, 8)
        for tile, computed in zip(tiles, decisions):
            owned = range(tile.frames.start + tile.owned_frames.start, tile.frames.start + tile.owned_frames.stop)
            if max(owned) < 3:
                still_reused += not computed
                # A reused still tile gives exactly what the model would have.
                assert torch.equal(predictions[tile.index], crop(output, tile))
            else:
                moving_reused += not computed
    assert still_reused > 0 and moving_reused == 0, (still_reused, moving_reused)


def covered(report, frames: int, canvas: tuple[int, int]) -> bool:
    """Every step's tile records (the part each tile writes) cover every (frame, row, column)."""
    for step in report.steps:
        count = torch.zeros(frames, *canvas)
        for tile in step.tiles:
            for fs, _ in tile.frames.pieces():
                for rs, _ in tile.rows.pieces():
                    for cs, _ in tile.cols.pieces():
                        count[fs, rs, cs] += 1
        if count.min() < 1:
            return False
    return True


@pytest.mark.parametrize("cache,per_tile", [
    ({"region": {"change_threshold": 0.3}}, True),
    # Whole steps: one schedule, and one timestep embedding, for every tile.
    ({"policy": "steps", "steps": {"fraction": 0.5}}, False),
    ({"policy": "teacache", "teacache": {"rel_l1_threshold": 1.0}}, False),
], ids=["region", "steps", "teacache"])
def test_tile_caches_reuse_tiles_in_time_windows(wan_t2v, uncached, cache, per_tile):
    out = render(wan_t2v, enabled=True, **cache)
    report = out.cache_report
    assert len({(t.frames.start, t.frames.size) for t in report.steps[0].tiles}) == 2  # two time windows a step
    assert covered(report, 3, (8, 16))
    assert report.tiles_skipped > 0, cache
    # The region rule computes some tiles of a step and reuses others (in one time window or another).
    assert any(0 < step.computed < len(step.tiles) for step in report.steps) == per_tile
    for frame in range(3):  # the cache map draws the tiles that write one latent frame
        assert cache_map(report, panel_width=64, frame=frame).shape == (18 + 32, STEPS * 68, 3)
    assert torch.isfinite(out.frames).all()
    error = (out.frames - uncached.frames).abs().mean() / uncached.frames.abs().mean()
    assert 0 < error < 0.15, (cache, float(error))  # measured 0.01-0.08


def test_threshold_zero_with_time_windows_is_the_uncached_render(wan_t2v, uncached):
    out = render(wan_t2v, enabled=True, region={"change_threshold": 0.0})
    assert out.cache_report.tiles_skipped == 0 and torch.equal(out.frames, uncached.frames)


@pytest.mark.parametrize("cache", [
    {"region": {"change_threshold": 0.0}, "block": {"enabled": True, "input_threshold": 0.5}},
    {"policy": "fbc", "fbc": {"threshold": 0.5}},
], ids=["block", "fbc"])
def test_block_caches_key_by_frame_row_and_column(wan_t2v, uncached, cache):
    """The block cache's canvas of tokens and diffusers' First Block Cache per (frames, rows, columns)
    region both skip blocks inside tiles of time windows, and stay close to the uncached render."""
    out = render(wan_t2v, enabled=True, **cache)
    assert out.cache_report.tiles_skipped == 0 and 0.0 < out.cache_report.block_share_skipped < 1.0
    error = (out.frames - uncached.frames).abs().mean() / uncached.frames.abs().mean()
    assert 0 < error < 0.15, (cache, float(error))  # measured 0.01-0.08


ATTENTION = {"mode": "attention", "tile_height": 32, "tile_width": 64, "halo": 16, "shift_divisor": 4, "frames": 5}


def test_attention_mode_runs_one_canvas_forward_per_time_window(wan_t2v):
    config = load_config("tiny", [f"tiling.{k}={v}" for k, v in ATTENTION.items()])
    plan = plan_render(config, KNOWN["tiny"], 64, 128, 9, strength=1.0, num_inference_steps=STEPS)
    assert plan.tiles.frames == 2 and plan.layout.canvas == (2, 4, 8)  # the layout spans a window's frames
    assert "per time window" in plan.describe_tiling() and "windows of 2 latent frames on 3" in plan.describe_tiling()
    # The planner counts a forward per time window, each of a window's tokens.
    resources = estimate(config, KNOWN["tiny"], plan)
    assert resources.tokens_per_tile == 2 * 4 * 8 and resources.tiles_per_step == max(plan.tiles.count(i) for i in range(STEPS)) == 2
    assert "one canvas forward per time window (2 of 2 latent frames, shifting)" in format_plan(resources)
    starts = set()
    for step in range(STEPS):
        tiles = plan.tiles.tiles(step)
        cover = torch.zeros(3)
        for tile in tiles:
            assert (tile.rows.size, tile.cols.size) == (8, 16)  # the whole canvas, in space
            weight = tile.weight if tile.weight is not None else torch.ones(window_shape(tile))
            cover[tile.frames.start : tile.frames.start + tile.frames.size] += weight[:, 0, 0]
        assert torch.equal(cover, torch.ones(3)), (step, cover)  # every frame, once
        starts.add(tuple(t.frames.start + t.owned_frames.start for t in tiles))
    assert len(starts) > 1  # the windows' borders move along time
    out = SuperGenPipeline.from_pipe(wan_t2v, "tiny", refine={"num_inference_steps": STEPS, "strength": 1.0}, tiling=ATTENTION)(
        **SIZE, generator=torch.Generator().manual_seed(0), output_type="latent")
    assert out.frames.shape == (1, 16, 3, 8, 16) and torch.isfinite(out.frames).all()
    assert [s.tiles for s in out.stats.steps] == [plan.tiles.count(i) for i in range(STEPS)]


def test_attention_mode_with_one_tile_is_dense_attention_in_the_same_time_windows(wan_t2v):
    """A layout of one tile (the canvas) with no halo is dense attention: attention mode then gives
    shift mode's render with whole-canvas tiles in the same time windows (the sparse kernel against
    diffusers' attention: float tolerance)."""
    whole = {"tile_height": 64, "tile_width": 128, "shift_divisor": 4, "frames": 5}

    def run(tiling):
        sg = SuperGenPipeline.from_pipe(wan_t2v, "tiny", refine={"num_inference_steps": 4, "strength": 1.0}, tiling=tiling,
                                        attention={"backend": "sdpa"})
        return sg(**SIZE, generator=torch.Generator().manual_seed(1), output_type="latent")

    attention, shift = run({**whole, "mode": "attention", "halo": 0}), run({**whole, "mode": "shift"})
    assert [s.tiles for s in attention.stats.steps] == [s.tiles for s in shift.stats.steps] != [1] * 4
    torch.testing.assert_close(attention.frames, shift.frames, atol=1e-4, rtol=1e-4)


def test_attention_mode_with_the_region_cache_reuses_whole_time_windows(wan_t2v):
    """In attention mode a tile is a time window's canvas forward: the region cache reuses windows."""
    sg = SuperGenPipeline.from_pipe(wan_t2v, "tiny", refine={"num_inference_steps": STEPS, "strength": 1.0}, tiling=ATTENTION,
                                    cache={"enabled": True, "region": {"change_threshold": 0.3}})
    report = sg(**SIZE, generator=torch.Generator().manual_seed(0), output_type="latent").cache_report
    assert report.tiles_skipped > 0 and covered(report, 3, (8, 16))
    assert all(len(step.tiles) == 2 and (t.rows.size, t.cols.size) == (8, 16) for step in report.steps for t in step.tiles)
