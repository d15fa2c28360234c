"""More ranks than units of work: each tile on a sub-group of ranks with Ulysses, on 4 ranks (gloo,
started by torchrun from the test) against one process.

Tiny Wan without guidance on a canvas of two tiles a step: 2 units for 4 ranks, so the plan runs
each tile on 2 ranks (tile=2 × seq=2): diffusers' Wan plan splits the tile's tokens over the pair,
its attention runs with Ulysses, and the pair's first rank sends the prediction to the group.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from supergen.builtin import tiny_wan_pipeline
from supergen.config import load_config
from supergen.pipeline import SuperGenPipeline
from supergen.runtime import call_arguments

from ranks import parallel_leftovers, run_ranks, single_thread

# Canvas 48×112 px = latent 6×14; tiles 48×80 px = 6×10 latent (30 tokens with 2 latent frames at patch
# 2): 2 clamped tiles a step. Guidance 1: one forward per tile, so 2 units a step.
OVERRIDES = [
    "job.height=48", "job.width=112", "job.num_frames=5", "job.seed=11",
    "sketch.height=32", "sketch.width=56", "sketch.num_inference_steps=2", "sketch.guidance_scale=1.0",
    "refine.num_inference_steps=4", "refine.strength=0.75",
    "tiling.tile_height=48", "tiling.tile_width=80", "tiling.shift_divisor=3",
    "cache.enabled=false", "parallel.timeout_s=90",
]
TIMEOUT = 300


def render(pipe, group=None):
    cfg = load_config("tiny", OVERRIDES)
    sg = SuperGenPipeline(pipe, cfg, group)
    return sg(**call_arguments(cfg.job), generator=torch.Generator().manual_seed(11), output_type="latent")


def worker(out_dir: Path) -> None:
    from supergen import parallel

    group = parallel.init(load_config("tiny", OVERRIDES))
    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    model = pipe.transformer
    lengths = set()  # tokens each rank's second block sees: the sketch's whole sequence, a tile's share
    hook = model.blocks[1].register_forward_pre_hook(lambda block, args: lengths.add(args[0].shape[1]))
    out = render(pipe, group)
    hook.remove()
    left = parallel_leftovers(model)
    torch.save({"latent": out.frames, "parallel": out.stats.parallel, "again": render(pipe, group).frames, "left": left, "lengths": lengths,
                "tiles": [s.tiles_computed for s in out.stats.steps]}, out_dir / f"rank{group.global_rank}.pt")


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("subgroups4")
    return run_ranks(__file__, 4, out_dir, TIMEOUT)


@pytest.fixture(scope="module")
def single():
    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    with single_thread():  # as each rank
        out = render(pipe)
        return out.frames, [s.tiles_computed for s in out.stats.steps]


def test_tiles_on_sub_groups_equal_one_process(single, four_ranks):
    """Each tile's tokens split over a pair of ranks (Ulysses): sums may be reordered, so the video equals
    one process within 1e-5; all ranks agree exactly, a second render repeats the first, no hook is left."""
    latent, tiles = single
    assert latent.shape == (1, 16, 2, 6, 14)
    for seen in four_ranks:
        torch.testing.assert_close(seen["latent"], latent, atol=1e-5, rtol=0)
        assert torch.equal(seen["latent"], four_ranks[0]["latent"])
        assert torch.equal(seen["again"], seen["latent"])
        assert seen["left"] == []
        assert seen["tiles"] == tiles


def test_the_plan_puts_two_ranks_on_each_tile_and_the_pairs_share_the_work(four_ranks):
    plan = four_ranks[0]["parallel"]["plan"]
    assert (plan["units"], plan["seq"]) == (2, 2)
    assert plan["summary"].endswith("2 units < 4 ranks: each unit on 2 ranks with Ulysses (tile=2 × seq=2)")
    computed = [seen["parallel"]["tiles_computed"] for seen in four_ranks]
    assert computed[0] == computed[1] and computed[2] == computed[3]  # a pair takes part in the same units
    # Only each pair's first rank sends predictions; every unit is sent once.
    sent = [seen["parallel"]["bytes_sent"] for seen in four_ranks]
    assert all(b == 0 for b in sent[1] + sent[3]) and all(b > 0 for b in sent[0] + sent[2])
    # The tile forwards really were split: every rank of a pair sent its half of each gathered output
    # (15 of the tile's 30 tokens × 64 values = C·patch, float32) on top of the exchanged predictions.
    gathered = sum(sum(c) for c in computed) * 15 * 64 * 4
    # ... and in each of the 2 self-attentions its half of q, k, v and the output to the other (Ulysses:
    # 15 tokens × 2 heads × 12 dims float32 each, half of it sent).
    all_to_alls = sum(sum(c) for c in computed) * 2 * 4 * 15 * 2 * 12 * 4 // 2
    # The sketch's 16 tokens (replicated: no guidance to split) and half of each tile's 30 tokens.
    assert all(seen["lengths"] == {16, 15} for seen in four_ranks)
    assert four_ranks[0]["parallel"]["stages"]["refine"]["bytes"] == sum(map(sum, sent)) + gathered + all_to_alls


if __name__ == "__main__":
    torch.set_num_threads(1)
    worker(Path(sys.argv[1]))
