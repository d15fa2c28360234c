"""Time windows on 2 gloo ranks render the same latent, bit for bit, as one process, with and without
the region cache; attention mode's canvas forward per time window, split over the ranks, within
float tolerance (issue 30).

9 frames (3 latent) in windows of 5 frames (2 latent), 2x2 spatial tiles shifting every step: the
exchanger moves tiles that are windows in (frames, rows, columns), and every rank takes the cache's
decisions itself from the per-frame maps. The ranks run with one thread each, as torchrun starts
them; the reference is computed here on one thread too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from supergen.builtin import tiny_wan_pipeline
from supergen.config import load_config
from supergen.pipeline import SuperGenPipeline
from supergen.runtime import call_arguments

from ranks import run_ranks, single_thread

OVERRIDES = ["job.height=64", "job.width=128", "job.num_frames=9", "job.seed=4", "job.prompt=a red disk moving right",
             "refine.num_inference_steps=8", "refine.strength=1.0", "tiling.tile_height=32", "tiling.tile_width=64",
             "tiling.shift_divisor=4", "tiling.frames=5", "parallel.timeout_s=60"]
#: Tiles spread over the ranks by the exchanger: bit for bit.
TILED = {"uncached": ["cache.enabled=false"], "region": ["cache.enabled=true", "cache.region.change_threshold=0.3"]}
#: One canvas-wide forward per time window, split by tokens and heads (Ulysses) over the ranks.
ATTENTION = ["cache.enabled=false", "tiling.mode=attention", "tiling.halo=16"]
CASES = {**TILED, "attention": ATTENTION}


def render(group=None) -> dict:
    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    seen = {}
    for name, extra in CASES.items():
        cfg = load_config("tiny", OVERRIDES + extra)
        out = SuperGenPipeline(pipe, cfg, group)(**call_arguments(cfg.job), generator=torch.Generator().manual_seed(4), output_type="latent")
        seen[name] = {"latent": out.frames, "windows": out.stats.tiling,
                      "computed": [[t.computed for t in step.tiles] for step in out.cache_report.steps],
                      "tiles_computed": out.stats.parallel.get("tiles_computed"),
                      "refine": out.stats.parallel.get("plan", {}).get("refine")}
    return seen


def test_two_ranks_with_time_windows_equal_one_process(tmp_path):
    with single_thread():
        single = render()
    assert "windows of 2 latent frames on 3" in single["uncached"]["windows"]
    computed = single["region"]["computed"]
    assert any(not all(step) and any(step) for step in computed)  # a step computes some tiles and reuses others
    assert "per time window" in single["attention"]["windows"]
    ranks = run_ranks(__file__, 2, tmp_path, timeout=300)
    for name in TILED:
        for seen in ranks:
            assert seen[name]["computed"] == single[name]["computed"], name
            assert torch.equal(seen[name]["latent"], single[name]["latent"]), (name, (seen[name]["latent"] - single[name]["latent"]).abs().max())
        # The ranks shared the work: neither ran every unit of a step.
        shares = [sum(seen[name]["tiles_computed"]) for seen in ranks]
        assert all(0 < share < sum(map(sum, single[name]["computed"])) for share in shares), (name, shares)
    # The projections run on half the tokens per matrix product, which may reorder sums (as in
    # test_parallel_attention.py): equal to one process within 1e-5; the ranks agree exactly.
    for seen in ranks:
        assert seen["attention"]["refine"] == "ulysses"
        torch.testing.assert_close(seen["attention"]["latent"], single["attention"]["latent"], atol=1e-5, rtol=0)
        assert torch.equal(seen["attention"]["latent"], ranks[0]["attention"]["latent"])
        assert seen["attention"]["computed"] == single["attention"]["computed"]


if __name__ == "__main__":  # one rank of the test above, under torchrun
    from supergen import parallel

    group = parallel.init(load_config("tiny", OVERRIDES))
    torch.save(render(group), Path(sys.argv[1]) / f"rank{group.global_rank}.pt")
