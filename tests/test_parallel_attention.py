"""``tiling.mode=attention`` on two ranks (gloo, started by torchrun from the test): the canvas forward
split by tokens outside attention (diffusers' context-parallel hooks from Wan's ``_cp_plan``) and by
heads inside the sparse tile attention (:class:`supergen.parallel.HeadExchange`), against one process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from supergen.builtin import tiny_wan_pipeline
from supergen.config import load_config
from supergen.parallel import plan_parallel
from supergen.pipeline import SuperGenPipeline
from supergen.runtime import call_arguments

from ranks import parallel_leftovers, run_ranks, single_thread

# Canvas 64×128 px = latent 2×8×16 = 64 tokens at patch 2 (32 per rank); the tiny Wan has 2 heads (1 per
# rank). Windows of the 32×64 native tile, a halo of one token, shifting every step; guidance on.
OVERRIDES = [
    "job.height=64", "job.width=128", "job.num_frames=5", "job.seed=3",
    "sketch.height=32", "sketch.width=64", "sketch.num_inference_steps=2",
    "refine.num_inference_steps=4", "refine.strength=0.5",
    "tiling.mode=attention", "tiling.halo=16", "tiling.shift_divisor=4",
    "cache.enabled=false", "parallel.timeout_s=60",
]
TIMEOUT = 240


def render(pipe, group=None, extra=()):
    cfg = load_config("tiny", OVERRIDES + list(extra))
    sg = SuperGenPipeline(pipe, cfg, group)
    return sg(**call_arguments(cfg.job), generator=torch.Generator().manual_seed(3), output_type="latent")


def worker(out_dir: Path) -> None:
    from supergen import parallel

    group = parallel.init(load_config("tiny", OVERRIDES))
    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    seen = {}
    first = render(pipe, group)
    seen["latent"], seen["parallel"] = first.frames, first.stats.parallel
    seen["again"] = render(pipe, group).frames  # deterministic for this rank count
    seen["left"] = parallel_leftovers(pipe.transformer)
    # The exchange alone: (B, n, H, D) tokens of this rank → all tokens of its heads, and back.
    exchange = parallel.HeadExchange(group)
    full = torch.arange(2 * 6 * 4 * 3, dtype=torch.float32).view(2, 6, 4, 3)  # (B, N, H, D), the same on every rank
    mine = full[:, group.rank * 3 : (group.rank + 1) * 3]
    heads = exchange.to_heads(mine)
    seen["to_heads"] = torch.equal(heads, full[:, :, group.rank * 2 : (group.rank + 1) * 2])
    seen["round_trip"] = torch.equal(exchange.to_tokens(heads.contiguous()), mine)
    torch.save(seen, out_dir / f"rank{group.global_rank}.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("attention2")
    return run_ranks(__file__, 2, out_dir, TIMEOUT)


@pytest.fixture(scope="module")
def single():
    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    with single_thread():  # as each rank: CPU kernels split reductions by thread count
        return render(pipe).frames


def test_attention_mode_on_two_ranks_equals_one_rank(single, two_ranks):
    """The projections run on half the rows per matrix product, which may reorder sums: equal to one
    process within 1e-5 (latent values are O(1)); ranks agree exactly and a second render repeats the first."""
    assert single.shape == (1, 16, 2, 8, 16)
    for seen in two_ranks:
        torch.testing.assert_close(seen["latent"], single, atol=1e-5, rtol=0)
        assert torch.equal(seen["latent"], two_ranks[0]["latent"])
        assert torch.equal(seen["again"], seen["latent"])
        assert seen["left"] == []  # processors, position modules, hooks and parallel configs all restored


def test_attention_mode_on_two_ranks_splits_the_canvas_forward_and_counts_its_bytes(two_ranks):
    parallel = two_ranks[0]["parallel"]
    plan = parallel["plan"]
    assert plan["refine"] == "ulysses" and plan["refine_reason"] == ""
    assert "refine: the canvas forward split by tokens and attention heads over all ranks" in plan["summary"]
    # Both ranks take part in every forward: one canvas unit per step, guided (cond + uncond) on every rank.
    assert all(p["parallel"]["tiles_computed"] == [1, 1] for p in two_ranks)
    # Per forward and rank: per block (2 blocks) two all-to-alls of which half leaves the rank — q, k, v
    # (3 × 32 tokens × 2 heads × 12 dims) and the output (32 × 2 × 12) — plus its 32-token share of the
    # gathered output (32 × 64 = C·patch); float32. Two forwards per step (guidance).
    per_forward = 2 * (3 * 32 * 2 * 12 + 32 * 2 * 12) // 2 * 4 + 32 * 64 * 4
    assert parallel["bytes_sent"] == [2 * per_forward] * 2
    assert parallel["stages"]["refine"]["bytes"] == 2 * 2 * 2 * per_forward  # 2 ranks × 2 steps


def test_the_head_exchange_trades_tokens_for_heads_and_back(two_ranks):
    assert all(seen["to_heads"] and seen["round_trip"] for seen in two_ranks)


def test_attention_mode_says_why_it_cannot_split():
    three = plan_parallel(3, True, True, True, "auto", canvas=True, canvas_blocker="2 attention heads do not split over 3 ranks")
    assert three.refine == "auto" and three.refine_reason == "2 attention heads do not split over 3 ranks"
    assert three.describe().endswith("(attention mode unsplit: 2 attention heads do not split over 3 ranks)")
    two = plan_parallel(2, True, True, True, "auto", canvas=True)
    assert (two.refine, two.refine_reason) == ("ulysses", "")
    assert plan_parallel(2, True, True, True, "auto").refine == "auto"  # shift mode: tiles over ranks as before


if __name__ == "__main__":
    torch.set_num_threads(1)
    worker(Path(sys.argv[1]))
