"""Tile geometry: every element covered at every step, weights summing to one, shift cycles per axis."""

import itertools
import math

import pytest
import torch

from supergen.tiling import AxisSchedule, TilePlan, Window, accumulate, crop

# (canvas, tile) in latent units with patch 2: divisible, a 1080p-like canvas (1088/8 = 136 rows
# against a 60-row 480p tile), tiles larger than the canvas on one axis, 4K-like.
SHAPES = [
    ((32, 56), (16, 28)),
    ((136, 240), (60, 104)),
    ((90, 160), (60, 104)),
    ((20, 200), (60, 104)),
    ((270, 480), (90, 160)),
    ((16, 28), (16, 28)),
    ((46, 34), (12, 10)),
]
MODES = [("shift", "wrap"), ("shift", "clamp"), ("overlap", "clamp")]


def weight_sum(plan: TilePlan, step: int) -> torch.Tensor:
    total = torch.zeros(plan.canvas, dtype=torch.float64)
    for tile in plan.tiles(step):
        assert tile.shape[0] % 2 == 0 and tile.shape[1] % 2 == 0, "windows must lie on the patch grid"
        assert tile.rows.start % 2 == 0 and tile.cols.start % 2 == 0
        accumulate(total, tile, torch.ones(tile.shape, dtype=torch.float64))
    return total


@pytest.mark.parametrize("canvas,tile", SHAPES)
@pytest.mark.parametrize("mode,boundary", MODES)
def test_every_element_covered_with_weights_summing_to_one(canvas, tile, mode, boundary):
    plan = TilePlan(canvas, tile, patch=(2, 2), mode=mode, boundary=boundary, shift_divisor=16, overlap=8)
    for step in range(40):
        total = weight_sum(plan, step)
        assert torch.allclose(total, torch.ones_like(total), atol=1e-6), (step, total.min(), total.max())
        for t in plan.tiles(step):
            assert t.shape[0] <= min(tile[0], canvas[0]) and t.shape[1] <= min(tile[1], canvas[1])


@pytest.mark.parametrize("canvas,tile", SHAPES)
def test_clamp_windows_are_full_size_and_inside_the_canvas(canvas, tile):
    plan = TilePlan(canvas, tile, patch=(2, 2), mode="shift", boundary="clamp")
    for step in range(20):
        for t in plan.tiles(step):
            assert t.shape == (min(tile[0], canvas[0]), min(tile[1], canvas[1]))
            assert not t.rows.wraps and not t.cols.wraps


def test_wrap_tiles_never_overlap_and_do_wrap():
    plan = TilePlan((32, 56), (16, 28), patch=(2, 2), mode="shift", boundary="wrap", shift_divisor=4)
    tiles = plan.tiles(1)
    assert len(tiles) == 4 and all(t.weight is None for t in tiles)
    assert any(t.rows.wraps for t in tiles) and any(t.cols.wraps for t in tiles)


@pytest.mark.parametrize("length,tile,boundary", [(136, 60, "clamp"), (136, 60, "wrap"), (120, 60, "wrap"), (240, 104, "clamp"), (480, 160, "wrap")])
def test_shift_cycle_visits_every_offset_and_moves_every_border(length, tile, boundary):
    stride = max(2, round(tile / 16 / 2) * 2)
    axis = AxisSchedule(length, tile, 2, "shift", boundary, stride, 0)
    cycle = axis.cycle()
    step = math.gcd(stride, axis.period)
    assert sorted(cycle) == list(range(0, axis.period, step)), "each offset of the cycle visited exactly once"
    # Over one cycle, a border passes every position on the stride lattice: no band is always interior.
    borders = set()
    for offset in cycle:
        borders |= {s.window.start + (0 if s.weight is None else int(s.weight.argmax())) for s in axis.segments(offset)}
    assert set(range(step, length, step)) <= {b % length for b in borders} | {0}


def test_axes_cycle_independently():
    # Different tile/stride ratios on the two axes: each axis must run through its own full cycle
    # (the reference's shared modulus froze one axis' offsets inside a band).
    plan = TilePlan((136, 240), (60, 104), patch=(2, 2), mode="shift", boundary="clamp", shift_divisor=16)
    ys = {plan.offsets(s)[0] for s in range(200)}
    xs = {plan.offsets(s)[1] for s in range(200)}
    assert ys == set(plan.axes[0].cycle()) and xs == set(plan.axes[1].cycle())
    assert max(xs) > max(ys), "the wider axis reaches offsets beyond the narrower axis' period"


def test_shift_every_holds_the_grid():
    plan = TilePlan((32, 56), (16, 28), patch=(2, 2), shift_every=3, shift_divisor=4)
    assert plan.offsets(0) == plan.offsets(1) == plan.offsets(2) != plan.offsets(3)


def test_one_tile_covering_the_canvas_is_the_identity():
    plan = TilePlan((16, 28), (16, 28), patch=(2, 2))
    for step in range(5):
        (tile,) = plan.tiles(step)
        assert tile.weight is None and tile.shape == (16, 28) and tile.origin == (0, 0)


def test_crop_and_accumulate_round_trip_with_wrap():
    canvas = torch.arange(10 * 12, dtype=torch.float32).view(1, 1, 1, 10, 12)
    plan = TilePlan((10, 12), (4, 6), patch=(2, 2), mode="shift", boundary="wrap", shift_divisor=2)
    for step in range(6):
        rebuilt = torch.zeros_like(canvas)
        for tile in plan.tiles(step):
            piece = crop(canvas, tile)
            assert piece.shape[-2:] == tile.shape
            rows, cols = tile.rows.positions(), tile.cols.positions()
            expected = canvas[..., rows[:, None], cols[None, :]]
            assert torch.equal(piece, expected)
            accumulate(rebuilt, tile, piece)
        assert torch.equal(rebuilt, canvas)


def test_window_pieces():
    assert Window(8, 4, 10).pieces() == [(slice(8, 10), slice(0, 2)), (slice(0, 2), slice(2, 4))]
    assert Window(2, 4, 10).pieces() == [(slice(2, 6), slice(0, 4))]


@pytest.mark.parametrize("canvas,tile", list(itertools.islice(SHAPES, 4)))
def test_overlap_weights_feather(canvas, tile):
    plan = TilePlan(canvas, tile, patch=(2, 2), mode="overlap", overlap=16)
    tiles = plan.tiles(0)
    assert plan.tiles(0)[0].origin == plan.tiles(7)[0].origin, "overlap grid is static"
    if len(tiles) > 1:
        weights = torch.cat([t.weight.flatten() for t in tiles])
        assert weights.min() > 0 and weights.max() <= 1 + 1e-6
        assert (weights < 0.999).any(), "some feathering happens in the overlaps"
