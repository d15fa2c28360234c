"""Tile and CFG parallelism with real torch.distributed processes (gloo on CPU), started by torchrun from the test.

One torchrun launch per world size runs this file as a worker (``__main__`` below) that renders with
whole tiles (fp32 and bf16 exchange), with (tile, guidance branch) units and the sketch's branches
split over the mesh's ``cfg`` dimension, decodes with the rank-parallel VAE, and survives a rank
raising mid-run; each rank saves what it saw, and the tests compare that with a one-process render
done here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from supergen import SuperGenError
from supergen.builtin import tiny_wan_pipeline
from supergen.config import load_config
from supergen.parallel import TiledVAE, balance, plan_parallel, sequence_split
from supergen.parallel.exchanger import owned
from supergen.pipeline import SuperGenPipeline
from supergen.refine import SingleProcess
from supergen.runtime import call_arguments
from supergen.tiling import TilePlan, Unit

from ranks import free_port, parallel_leftovers, run_ranks, single_thread

# Canvas 64×112 px = 8×14 latent; tile 48×80 px = 6×10 latent does not divide it (2×2 clamped tiles
# whose owned segments shift every step). VAE tiles of 32 px every 24 px: 3×5 windows.
OVERRIDES = [
    "job.height=64", "job.width=112", "job.num_frames=5", "job.seed=7",
    "sketch.height=32", "sketch.width=56", "sketch.num_inference_steps=2",
    "refine.num_inference_steps=4", "refine.strength=0.75",
    "tiling.tile_height=48", "tiling.tile_width=80", "tiling.shift_divisor=3",
    "cache.enabled=false", "parallel.timeout_s=60",
]
# Whole tiles on every rank count (the tests of bytes and balance below count whole tiles).
WHOLE = ["parallel.cfg=off"]
# The region cache on: 6 steps from noise, a threshold that reuses tiles on some steps.
CACHE_ON = ["refine.num_inference_steps=6", "refine.strength=1.0", "cache.enabled=true", "cache.policy=region", "cache.threshold=0.5"]
VAE_TILES = dict(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=24, tile_sample_stride_width=24)
TIMEOUT = 240  # seconds for one torchrun launch (startup of N processes on 2 shared cores included)


def render(pipe, dtype="fp32", extra=(), group=None):
    """The test render: latent output ``(1, 16, 2, 8, 14)`` and its stats."""
    cfg = load_config("tiny", OVERRIDES + [f"parallel.exchange_dtype={dtype}", *extra])
    sg = SuperGenPipeline(pipe, cfg, group)
    return sg(**call_arguments(cfg.job), generator=torch.Generator().manual_seed(7), output_type="latent")


def nccl_checked(dist_module) -> list[str]:
    """Every collective of ``dist_module`` from here on also records tensors NCCL would refuse
    (non-contiguous): gloo accepts them, so a CPU run cannot see the bug otherwise."""
    refused: list[str] = []
    for name in ("broadcast", "send", "recv", "all_reduce", "isend", "irecv"):
        real = getattr(dist_module, name)

        def checked(tensor, *args, _real=real, _name=name, **kwargs):
            if not tensor.is_contiguous():
                refused.append(f"{_name} of a non-contiguous {tuple(tensor.shape)} tensor")
            return _real(tensor, *args, **kwargs)

        setattr(dist_module, name, checked)
    return refused


def worker(out_dir: Path) -> None:
    import torch.distributed as dist

    from supergen import parallel

    refused = nccl_checked(dist)
    group = parallel.init(load_config("tiny", OVERRIDES))
    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    pipe.vae.enable_tiling(**VAE_TILES)
    seen: dict = {}
    for dtype in ("fp32", "bf16"):
        out = render(pipe, dtype, extra=WHOLE, group=group)
        seen[dtype] = {"latent": out.frames, "parallel": out.stats.parallel, "computed": [s.tiles_computed for s in out.stats.steps]}
    for mode in ("on", "auto"):  # (tile, branch) units every step / where they balance better
        out = render(pipe, extra=[f"parallel.cfg={mode}"], group=group)
        seen[f"cfg_{mode}"] = {"latent": out.frames, "parallel": out.stats.parallel}
    # The sketch on diffusers' context parallelism (Ulysses over the group), then tile parallelism on
    # the same transformer: nothing of diffusers' parallel state may be left for the refinement.
    out = render(pipe, extra=["parallel.sketch=ulysses"], group=group)
    seen["ulysses"] = {"latent": out.frames, "sketch": out.sketch, "parallel": out.stats.parallel,
                       "left": parallel_leftovers(pipe.transformer)}
    out = render(pipe, extra=CACHE_ON + WHOLE, group=group)
    seen["cache"] = {"latent": out.frames, "parallel": out.stats.parallel, "computed": [s.tiles_computed for s in out.stats.steps],
                     "blocks": [[t.blocks for t in s.tiles] for s in out.cache_report.steps]}
    try:  # block-level cache state is per rank: refused rather than letting ranks diverge
        render(pipe, extra=CACHE_ON + WHOLE + ["cache.block.enabled=true"], group=group)
        seen["block_cache"] = None
    except SuperGenError as exc:
        seen["block_cache"] = str(exc)
    seen["decoded"] = TiledVAE(SuperGenPipeline(pipe, load_config("tiny")).adapter, group).decode(seen["fp32"]["latent"], 5)

    # Rank 1 raises in its third tile forward; every rank must get the same error, and the group must
    # still render afterwards.
    cfg = load_config("tiny", OVERRIDES + WHOLE)
    sg = SuperGenPipeline(pipe, cfg, group)
    real_predict, calls = sg.adapter.predict, []

    def failing_predict(*args, **kwargs):
        calls.append(1)
        if group.rank == 1 and len(calls) == 3:
            raise RuntimeError("injected fault")
        return real_predict(*args, **kwargs)

    sg.adapter.predict = failing_predict
    start = time.perf_counter()
    try:
        sg(**call_arguments(cfg.job), generator=torch.Generator().manual_seed(7), output_type="latent")
        seen["fault"] = None
    except parallel.RankFailure as exc:
        seen["fault"] = {"message": str(exc), "recoverable": exc.recoverable, "seconds": time.perf_counter() - start}
    seen["after_fault"] = render(pipe, extra=WHOLE, group=group).frames
    # A transposed sketch latent (CogVideoX's layout) through the group's broadcast.
    transposed = torch.arange(12.0).view(3, 4).t()
    group.broadcast_from_leader(transposed)
    seen["transposed"] = transposed
    seen["refused"] = list(refused)
    torch.save(seen, out_dir / f"rank{group.global_rank}.pt")

    # Last, rank 1 dies mid-render (exit status 0, so torchrun lets the others run on and report).
    def dying_predict(*args, **kwargs):
        calls.append(1)
        if group.rank == 1 and len(calls) == 3:
            os._exit(0)
        return real_predict(*args, **kwargs)

    calls.clear()
    sg.adapter.predict = dying_predict
    start = time.perf_counter()
    try:
        sg(**call_arguments(cfg.job), generator=torch.Generator().manual_seed(7), output_type="latent")
        death = None
    except parallel.RankFailure as exc:
        death = {"message": str(exc), "recoverable": exc.recoverable, "seconds": time.perf_counter() - start}
    torch.save(death, out_dir / f"death{group.global_rank}.pt")


def launch(ranks: int, out_dir: Path) -> list[dict]:
    """Run the worker on ``ranks`` processes under torchrun; each rank's saved results."""
    seen = run_ranks(__file__, ranks, out_dir, TIMEOUT)
    for r, results in enumerate(seen):
        death = out_dir / f"death{r}.pt"
        results["death"] = torch.load(death, weights_only=False) if death.exists() else "no report"
    return seen


@pytest.fixture(scope="module")
def single():
    """The one-process reference: no launcher, no process group."""
    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    pipe.vae.enable_tiling(**VAE_TILES)
    with single_thread():  # as each rank: CPU kernels split reductions by thread count (differences ~1e-6)
        cached = render(pipe, extra=CACHE_ON)
        out = render(pipe)
        sketch = out.sketch
        assert out.stats.parallel == {}  # one process: no mesh, nothing moved
        decoded = TiledVAE(SuperGenPipeline(pipe, load_config("tiny")).adapter).decode(out.frames, 5)
    return {"latent": out.frames, "sketch": sketch, "computed": [s.tiles_computed for s in out.stats.steps], "decoded": decoded, "pipe": pipe,
            "cache": {"latent": cached.frames, "report": cached.cache_report}}


@pytest.fixture(scope="module", params=[2, 3])
def ranks(request, tmp_path_factory):
    return launch(request.param, tmp_path_factory.mktemp(f"ranks{request.param}"))


def test_n_ranks_give_the_same_video_as_one(single, ranks):
    assert single["computed"] == [4, 4, 4]  # 2×2 clamped tiles of 6×10 latent shifting over 8×14
    for seen in ranks:
        torch.testing.assert_close(seen["fp32"]["latent"], single["latent"], atol=1e-6, rtol=0)
    # bf16 transport: all ranks still identical to each other (the owner uses the rounded value too).
    for seen in ranks[1:]:
        assert torch.equal(seen["bf16"]["latent"], ranks[0]["bf16"]["latent"])
    assert (ranks[0]["bf16"]["latent"] - single["latent"]).abs().max() > 0  # ... and it did round


@pytest.mark.parametrize("dtype,itemsize", [("fp32", 4), ("bf16", 2)])
def test_bytes_per_step_are_the_computed_tiles_predictions_only(single, ranks, dtype, itemsize):
    """Each computed tile sends the part of its prediction the blend uses (a clamped tile: its own segment)."""
    plan = TilePlan((8, 14), (6, 10), patch=(2, 2), mode="shift", boundary="clamp", shift_divisor=3)
    sent = [sum(seen[dtype]["parallel"]["bytes_sent"][step] for seen in ranks) for step in range(len(single["computed"]))]
    for step, n in enumerate(single["computed"]):
        tiles = plan.tiles(step)
        assert n == len(tiles)
        areas = [len(range(*r.indices(6))) * len(range(*c.indices(10))) for r, c in map(owned, tiles)]
        assert sent[step] == sum(areas) * 16 * 2 * itemsize  # owned area × C × latent frames × dtype size
        assert sum(areas) == 8 * 14 < n * 6 * 10  # the segments partition the canvas: less than whole tiles
    # Balanced: the computed tiles split across ranks within one tile of each other.
    for step, n in enumerate(single["computed"]):
        counts = [seen[dtype]["parallel"]["tiles_computed"][step] for seen in ranks]
        assert sum(counts) == n and max(counts) - min(counts) <= 1


def test_with_the_region_cache_ranks_agree_and_reused_tiles_cost_nothing(single, ranks):
    report = single["cache"]["report"]
    computed = [step.computed for step in report.steps]
    assert 0 in computed and max(computed) == 4  # some steps reuse every tile, some compute all
    for seen in ranks:
        torch.testing.assert_close(seen["cache"]["latent"], single["cache"]["latent"], atol=1e-6, rtol=0)
        assert seen["cache"]["computed"] == computed
        # Block forwards counted where each tile ran, then summed: every rank reports them all.
        assert seen["cache"]["blocks"] == [[t.blocks for t in s.tiles] for s in report.steps]
    for step, record in enumerate(report.steps):
        sent = sum(seen["cache"]["parallel"]["bytes_sent"][step] for seen in ranks)
        # The cache's own record of what each computed tile wrote: only those bytes moved.
        assert sent == sum(t.rows.size * t.cols.size for t in record.tiles if t.computed) * 16 * 2 * 4
    assert all("block-level caches keep per-rank state" in seen["block_cache"] for seen in ranks)


def test_distributed_vae_decode_equals_single_process_tiled_decode(single, ranks):
    assert single["decoded"].shape == (1, 3, 5, 64, 112)
    torch.testing.assert_close(ranks[0]["decoded"], single["decoded"], atol=0, rtol=0)
    assert all(seen["decoded"] is None for seen in ranks[1:])  # only the leader assembles the video


def test_every_collective_gets_contiguous_buffers_as_nccl_requires(ranks):
    for r in ranks:
        assert r["refused"] == []
        assert torch.equal(r["transposed"], torch.arange(12.0).view(3, 4).t())


def test_tiled_vae_matches_diffusers_tiled_decode(single):
    """Same grid and blending as diffusers' tiled decode; it clamps each tile before blending, so
    the two agree wherever the tiles stay inside [-1, 1] and are close elsewhere."""
    pipe = single["pipe"]
    adapter = SuperGenPipeline(pipe, load_config("tiny")).adapter
    adapter.set_vae_tiling(True)
    reference = adapter.decode(single["latent"], 5)
    assert reference.shape == single["decoded"].shape
    inside = reference.abs() < 0.999
    torch.testing.assert_close(single["decoded"][inside], reference[inside], atol=1e-5, rtol=0)


def test_a_rank_raising_ends_the_job_on_every_rank_and_the_group_goes_on(single, ranks):
    for seen in ranks:
        fault = seen["fault"]
        assert fault is not None and fault["recoverable"]
        assert fault["message"].startswith("rank 1 failed at step") and "RuntimeError: injected fault" in fault["message"]
        assert fault["seconds"] < 60
        torch.testing.assert_close(seen["after_fault"], single["latent"], atol=1e-6, rtol=0)


def test_ranks_started_with_different_configs_are_stopped_at_start_up(tmp_path):
    """Two ranks joined by hand (the environment torchrun would set), one with another seed."""
    port = str(free_port())
    procs = []
    for rank, seed in ((0, 1), (1, 2)):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        cmd = [sys.executable, "-m", "supergen", "render", "--seed", str(seed), "--output", str(tmp_path / "x.mp4"), "--quiet"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=TIMEOUT) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 2, err[-2000:]
        assert "error: ranks [1] were started with a config different from rank 0's" in err
    assert not (tmp_path / "x.mp4").exists()


def test_a_rank_dying_stops_the_others_with_a_clear_message(ranks):
    assert ranks[1]["death"] == "no report"  # it died
    for r, seen in enumerate(ranks):
        if r != 1:
            death = seen["death"]
            assert death is not None and not death["recoverable"]  # the group is gone: the process must end
            assert "another rank died or did not answer within parallel.timeout_s" in death["message"]
            assert death["seconds"] < 60  # parallel.timeout_s bounds it; a closed connection is seen at once


def test_cfg_parallelism_gives_the_same_video_on_every_rank_count(single, ranks):
    """(tile, branch) units and the sketch's branches on two ranks: the branches are combined after the
    exchange, in float32, in the same order as one process, so 1, 2 and 3 ranks render the same video."""
    size = len(ranks)
    for mode in ("on", "auto"):
        for seen in ranks:
            torch.testing.assert_close(seen[f"cfg_{mode}"]["latent"], single["latent"], atol=1e-6, rtol=0)
            assert torch.equal(seen[f"cfg_{mode}"]["latent"], ranks[0][f"cfg_{mode}"]["latent"])
    plan = ranks[0]["cfg_on"]["parallel"]["plan"]
    # The mesh: cfg × tile; the sketch's branches split only where the cfg dimension has both.
    assert plan["mesh"] == ({"cfg": 2, "tile": 1} if size == 2 else {"cfg": 1, "tile": 3})
    assert plan["sketch"] == ("cfg" if size == 2 else "replicated")
    assert plan["sketch_reason"] == ("" if size == 2 else "3 ranks: the cfg dimension needs an even rank count")
    stages = ranks[0]["cfg_on"]["parallel"]["stages"]
    assert set(stages) == {"setup", "sketch", "upscale", "refine"}  # latent output: no decode
    latent_bytes = 16 * 2 * 4 * 8 * 4  # a sketch prediction (1, 16, 2, 4, 8) float32 (32x56 snapped to 32x64); the leader's sketch copy is as large
    # 2 ranks: each sends its branch's prediction at each of the 2 sketch steps; then the leader broadcasts its copy.
    assert stages["sketch"]["bytes"] == (2 * 2 * latent_bytes if size == 2 else 0) + latent_bytes
    assert stages["upscale"]["bytes"] > 0  # the rank-parallel tiled encode
    tiles = TilePlan((8, 14), (6, 10), patch=(2, 2), mode="shift", boundary="clamp", shift_divisor=3)
    areas = [sum(len(range(*r.indices(6))) * len(range(*c.indices(10))) for r, c in map(owned, tiles.tiles(step))) for step in range(3)]
    on = ranks[0]["cfg_on"]["parallel"]
    assert on["split"] == [True] * 3
    assert [sum(seen["cfg_on"]["parallel"]["bytes_sent"][step] for seen in ranks) for step in range(3)] == [2 * a * 16 * 2 * 4 for a in areas]
    assert stages["refine"]["bytes"] == sum(2 * a * 16 * 2 * 4 for a in areas)
    # auto: 4 tiles split evenly over 2 ranks as whole tiles (half the bytes); over 3 ranks 8 units
    # leave the busiest rank 3 forwards instead of 4.
    auto = [seen["cfg_auto"]["parallel"] for seen in ranks]
    assert auto[0]["split"] == [size == 3] * 3
    counts = sorted(a["tiles_computed"][0] for a in auto)
    assert counts == ([2, 2] if size == 2 else [2, 3, 3])


def test_the_ulysses_sketch_equals_one_process_and_leaves_no_hooks(single, ranks):
    """parallel.sketch=ulysses: diffusers' context parallelism splits the sketch's tokens over the
    ranks (2 heads split over 2 ranks), and the bytes it moves are counted in the sketch stage; it may reorder sums, so the sketch is compared to one process
    within 1e-5 (it came out equal on this model), and ranks agree exactly. 3 ranks cannot split 2
    heads: the plan says why and the sketch is replicated."""
    seen = [r["ulysses"] for r in ranks]
    plan = seen[0]["parallel"]["plan"]
    if len(ranks) == 2:
        assert plan["sketch"] == "ulysses" and plan["sketch_reason"] == ""
    else:
        assert plan["sketch"] == "replicated"
        assert plan["sketch_reason"] == "no Ulysses: 2 attention heads do not split over 3 ranks; 3 ranks: the cfg dimension needs an even rank count"
    if len(ranks) == 2:
        # The sketch's bytes: diffusers' Ulysses all-to-alls and gathered outputs, and the leader's copy.
        config = single["pipe"].transformer.config
        heads, dim, layers, (pt, ph, pw) = config.num_attention_heads, config.attention_head_dim, config.num_layers, config.patch_size
        latent = (16, 2, 4, 8)  # (C, F, h, w) of the 32x56 sketch snapped to 32x64, float32
        shard = latent[1] // pt * latent[2] // ph * latent[3] // pw // 2  # 8 of the 16 tokens per rank
        forwards = 2 * 2  # 2 sketch steps × 2 guidance branches, each forward on both ranks
        # Per self-attention a rank sends q, k, v (its tokens, every head) and the output (every token, its
        # heads), each shard × heads × dim float32, all but its own half; cross-attention is not split.
        all_to_alls = 4 * shard * heads * dim * 4 // 2
        gathered = shard * config.out_channels * pt * ph * pw * 4  # its share of proj_out's output
        latent_bytes = 4 * latent[0] * latent[1] * latent[2] * latent[3]
        assert seen[0]["parallel"]["stages"]["sketch"]["bytes"] == 2 * forwards * (layers * all_to_alls + gathered) + latent_bytes
    for r in seen:
        assert r["left"] == []  # no context-parallel hook or config left for the refinement
        torch.testing.assert_close(r["sketch"], single["sketch"], atol=1e-5, rtol=0)
        torch.testing.assert_close(r["latent"], single["latent"], atol=1e-5, rtol=0)
        assert torch.equal(r["latent"], seen[0]["latent"])


def test_branch_units_in_one_process_equal_guided_tiles(single):
    """The refinement with every tile cut into (tile, branch) units gives the same numbers as whole,
    guided tiles: the combine is the adapter's own, in the same order."""

    class Branches(SingleProcess):
        def units(self, tiles, branches):
            return [Unit(tile, branch) for tile in tiles for branch in branches] if branches else super().units(tiles, branches)

    pipe = single["pipe"]
    cfg = load_config("tiny", OVERRIDES)
    sg = SuperGenPipeline(pipe, cfg)
    plan = sg.plan(cfg.job.height, cfg.job.width, cfg.job.num_frames)
    from supergen.adapters import Conditioning
    from supergen.refine import TileRefiner

    gen = torch.Generator().manual_seed(0)
    embeds = {"prompt_embeds": torch.randn(1, 16, 32, generator=gen), "negative_prompt_embeds": torch.randn(1, 16, 32, generator=gen),
              "image_embeds": None}
    latents = torch.randn(plan.latent_shape, generator=gen)
    t = torch.tensor(700.0)
    outs = []
    with sg.adapter.positions("global"):
        for runner in (SingleProcess(), Branches()):
            refiner = TileRefiner(plan.tiles, sg.adapter, Conditioning(embeds, guidance_scale=5.0), "global", runner=runner)
            outs.append(refiner.step(0, t, latents)[0])
    assert torch.equal(outs[0], outs[1])
    assert Branches().units(plan.tiles.tiles(0), ())[0].branch is None  # no guidance: whole tiles


def test_the_parallel_plan_names_why_the_sketch_is_not_split():
    assert plan_parallel(1, True, True, True, "auto").describe() == "1 rank"
    two = plan_parallel(2, True, True, True, "auto")
    assert (two.sketch, two.refine) == ("cfg", "auto")
    assert two.describe() == "2 ranks, mesh cfg=2 × tile=1; sketch: cfg; refine: (tile, branch) units where they balance better over all ranks"
    assert plan_parallel(4, True, True, False, "on").sketch_reason == "the family's pipeline runs both guidance branches in one batched forward"
    assert plan_parallel(4, False, False, True, "auto").sketch_reason == "no classifier-free guidance in the sketch"
    off = plan_parallel(8, True, True, True, "off")
    assert (off.mesh, off.sketch, off.sketch_reason, off.refine) == ((2, 4), "replicated", "parallel.cfg=off", "tiles")


def test_more_ranks_than_units_chooses_a_sequence_split():
    """HunyuanVideo at 2K on 8 GPUs: 4 whole tiles (embedded guidance) leave 4 ranks idle; 2 ranks per tile
    halve the busiest rank's load. With CFG the 8 (tile, branch) units already fill 8 ranks."""
    assert sequence_split(8, 4, heads=24, tokens=21 * 30 * 52) == 2
    assert sequence_split(8, 8, heads=24, tokens=21 * 30 * 52) == 1
    assert sequence_split(8, 1, heads=24, tokens=21 * 30 * 52) == 8  # one tile: all ranks on it
    # 3 units: on 4 pairs 1/2 each, on 2 quads 2 × 1/4, on all 8 ranks 3 × 1/8 (the least; ties would go to fewer ranks)
    assert sequence_split(8, 3, heads=24, tokens=21 * 30 * 52) == 8
    assert sequence_split(8, 4, heads=5, tokens=100) == 1  # heads do not split: whole units
    assert sequence_split(6, 4, heads=12, tokens=90) == 3  # 2 sub-groups of 3: 2 units each at 1/3 = 2/3 < 1
    plan = plan_parallel(8, False, False, True, "auto", units=4, seq=2)
    assert (plan.units, plan.seq, plan.as_dict()["seq"]) == (4, 2, 2)
    assert plan.describe().endswith("4 units < 8 ranks: each unit on 2 ranks with Ulysses (tile=4 × seq=2)")


def test_balance_minimises_the_busiest_rank():
    costs = [4, 4, 4, 1, 1, 1, 1]
    owner = balance(costs, 2)
    assert max(sum(c for c, o in zip(costs, owner) if o == r) for r in range(2)) == 8  # the optimum: 16 / 2
    owner = balance([9, 1, 1, 1, 1, 1, 1, 1, 1, 1], 2)
    assert sorted(owner.count(r) for r in range(2)) == [1, 9]  # the big tile alone on one rank
    assert balance([1.0] * 5, 3) == balance([1.0] * 5, 3)  # deterministic


if __name__ == "__main__":
    torch.set_num_threads(1)
    worker(Path(sys.argv[1]))
