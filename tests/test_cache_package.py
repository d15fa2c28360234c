"""The cache package (issue 16): region keys, diffusers hooks per region, the block counter beside user
hooks, the steps and TeaCache policies. Tiny random Wan, the refinement loop driven directly."""

import operator
from unittest import mock

import pytest
import torch
from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, apply_group_offloading
from diffusers.models.transformers.transformer_wan import WanTransformerBlock

from supergen.adapters import Conditioning, Request, adapter_for
from supergen.cache import KeyedStates, Reported, WindowKeys, cache_policy, context_name, step_schedule
from supergen.config import load_config
from supergen.refine import ComputeAll, TileRefiner
from supergen.tiling import TilePlan

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 8
# Canvas 8x16 latent, tiles 4x8: clamp gives 2x2 tiles on step 0 and 3x3 once the grid has moved.
PLAN = dict(canvas=(8, 16), tile=(4, 8), patch=(2, 2), boundary="clamp", shift_divisor=4)


def refine(pipe, overrides=(), plan=None, steps=STEPS, **kwargs):
    """Run the refinement loop under ``cache_policy``; returns the latent and the Reported policy."""
    plan = plan or TilePlan(**PLAN)
    cfg = load_config("tiny", list(overrides)).cache
    adapter = adapter_for(pipe)
    cond = Conditioning(adapter.encode_prompt(Request("a red car", "", 9), 5.0), guidance_scale=5.0)
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    latents = torch.randn((1, 16, 3, *plan.canvas), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), cache_policy(cfg, adapter.transformers, (3, *plan.canvas), adapter.patch, steps, True, **kwargs) as policy:
        out, _ = TileRefiner(plan, adapter, cond, "global", 1, policy=policy).run(latents, adapter.stepper(scheduler, {}, None), scheduler.timesteps)
    return out, policy


def test_window_keys_follow_the_shifting_grid():
    plan, keys = TilePlan(**PLAN), WindowKeys()
    previous = {}
    for step in range(6):
        tiles = plan.tiles(step)
        assigned = keys.assign(tiles)
        assert len(set(assigned)) == len(tiles)  # two tiles of one step never share a state
        for tile, key in zip(tiles, assigned):
            if key in previous:  # a kept key means the tile covers most of that region's last window
                rows, cols = previous[key]
                shared = len(set(tile.rows.positions().tolist()) & set(rows.positions().tolist()))
                shared *= len(set(tile.cols.positions().tolist()) & set(cols.positions().tolist()))
                assert shared >= 0.5 * tile.rows.size * tile.cols.size
        previous = {k: (t.rows, t.cols) for t, k in zip(tiles, assigned)}
    # Step 0's four windows keep their keys at step 1 although the clamp grid grew to 3x3 tiles.
    keys = WindowKeys()
    first = dict(zip(keys.assign(plan.tiles(0)), (t.origin for t in plan.tiles(0))))
    second = keys.assign(plan.tiles(1))
    assert set(first) <= set(second) and len(second) == 9


def test_context_name_is_the_region_inside_a_scope_and_the_index_outside():
    tiles = TilePlan(**PLAN).tiles(0)
    policy = Reported(ComputeAll(), (8, 16))
    policy.start(1)
    policy.decide(0, torch.tensor(999.0), torch.zeros(1, 16, 3, 8, 16), tiles)
    with policy.scope(0, tiles[1:2]):
        inside = context_name(tiles[1:2])
    assert inside == "r1" and context_name(tiles[1:2]) == "tile1"


def test_diffusers_hooks_keep_one_state_per_branch_and_region(wan_t2v):
    # Both branches run under the adapter's tile-index contexts; the state keys are regions all the same.
    states = []
    original = KeyedStates.get_state

    def spy(self):
        states.append(self.context.name)
        return original(self)

    with mock.patch.object(KeyedStates, "get_state", spy):
        _, policy = refine(wan_t2v, ["cache.enabled=true", "cache.policy=fbc", "cache.fbc.threshold=0.5"])
    regions = set(policy.windows.regions)
    assert {name.split("/")[1] for name in states} == regions
    assert {name.split("/")[0] for name in states} == {"cond", "uncond"}
    assert 0.0 < policy.report.block_share_skipped < 1.0
    assert not any(hasattr(b, "_diffusers_hook") and b._diffusers_hook.hooks for b in wan_t2v.transformer.blocks)


def test_a_diffusers_config_from_python_is_applied_per_region(wan_t2v):
    reference, _ = refine(wan_t2v)
    ratios = [1.0] + [0.99] * (STEPS - 1)
    out, policy = refine(wan_t2v, diffusers_config=MagCacheConfig(threshold=0.5, num_inference_steps=STEPS, mag_ratios=ratios))
    assert policy.report.tiles_skipped == 0 and 0.0 < policy.report.block_share_skipped < 1.0
    assert not torch.equal(out, reference)
    assert torch.equal(refine(wan_t2v)[0], reference)  # hooks removed afterwards


def counting_block_forward():
    """Patches the block class's own forward (below every hook) to count the forwards that really run."""
    calls = {"n": 0}
    original = WanTransformerBlock.forward

    def forward(self, *args, **kwargs):
        calls["n"] += 1
        return original(self, *args, **kwargs)

    return calls, mock.patch.object(WanTransformerBlock, "forward", forward)


def test_block_counter_counts_what_runs_under_a_users_own_hooks():
    from supergen.builtin import tiny_wan_pipeline

    for user_hooks in ("fbc", "group_offloading"):
        pipe = tiny_wan_pipeline()
        calls, patch = counting_block_forward()
        with patch:
            # The user's hooks go on first, as they would before handing the pipeline over.
            if user_hooks == "fbc":
                pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.5))
            else:
                apply_group_offloading(pipe.transformer, onload_device=torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1)
            _, policy = refine(pipe)
        report = policy.report
        counted = sum(t.blocks for s in report.steps for t in s.tiles)
        assert counted == calls["n"], user_hooks
        full = sum(s.blocks_per_tile * len(s.tiles) for s in report.steps)
        if user_hooks == "fbc":
            assert counted < full  # the user's FBC skipped tail blocks, and they were not counted
        else:
            assert counted == full


def test_no_counter_unless_asked():
    from supergen.builtin import tiny_wan_pipeline

    pipe = tiny_wan_pipeline()  # fresh: a pipeline that had hooks keeps its bound forward as an attribute
    seen = []
    original = WanTransformerBlock.forward

    def forward(self, *args, **kwargs):
        seen.append(len(self._forward_pre_hooks) + len(self._forward_hooks))
        return original(self, *args, **kwargs)

    with mock.patch.object(WanTransformerBlock, "forward", forward):
        _, policy = refine(pipe, count_blocks=False, steps=2)
    assert seen and set(seen) == {0}
    assert policy.report.block_share_skipped == 0.0 and all(t.blocks == 0 for s in policy.report.steps for t in s.tiles)


def test_step_schedule():
    for steps in (8, 12, 20):
        for fraction in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
            schedule = step_schedule(steps, fraction, 2)
            assert schedule[0] and schedule[1] and schedule[-1]
            assert sum(schedule) == max(3, round(fraction * steps)), (steps, fraction)
            gaps = [b - a for a, b in zip([s for s in range(steps) if schedule[s]], [s for s in range(steps) if schedule[s]][1:])]
            assert max(gaps) - min(gaps[1:-1] or [1]) <= 1 or fraction == 1.0


def test_steps_policy_reuses_every_tile_on_the_scheduled_steps(wan_t2v):
    _, policy = refine(wan_t2v, ["cache.enabled=true", "cache.policy=steps", "cache.steps.fraction=0.5"])
    pattern = [[t.computed for t in s.tiles] for s in policy.report.steps]
    assert [all(p) for p in pattern] == step_schedule(STEPS, 0.5, 2)
    assert all(all(p) or not any(p) for p in pattern)
    reference, _ = refine(wan_t2v)
    assert torch.equal(refine(wan_t2v, ["cache.enabled=true", "cache.policy=steps", "cache.steps.fraction=1.0"])[0], reference)


def test_teacache_policy(wan_t2v):
    reference, _ = refine(wan_t2v)
    out, policy = refine(wan_t2v, ["cache.enabled=true", "cache.policy=teacache", "cache.teacache.rel_l1_threshold=0"])
    assert torch.equal(out, reference) and policy.report.tiles_skipped == 0
    # Only the embedding's change decides: a larger threshold reuses more, and the rules still hold.
    skipped = [refine(wan_t2v, ["cache.enabled=true", "cache.policy=teacache", f"cache.teacache.rel_l1_threshold={t}", "cache.max_consecutive=8"])[1].report.tiles_skipped
               for t in (0.05, 0.2, 1e9)]
    assert skipped == sorted(skipped) and skipped[-1] > 0
    huge = refine(wan_t2v, ["cache.enabled=true", "cache.policy=teacache", "cache.teacache.rel_l1_threshold=1e9", "cache.max_consecutive=2"])[1]
    pattern = [[t.computed for t in s.tiles] for s in huge.report.steps]
    assert all(pattern[0]) and all(pattern[1]) and all(pattern[-1]) and not any(pattern[2])


def test_block_cache_state_is_kept_per_branch_by_a_state_manager(wan_t2v):
    from supergen.cache import BlockCacheHook

    hooks = []
    original = BlockCacheHook.new_forward

    def spy(self, module, *args, **kwargs):
        hooks.append(self)
        return original(self, module, *args, **kwargs)

    with mock.patch.object(BlockCacheHook, "new_forward", spy):
        _, policy = refine(wan_t2v, ["cache.enabled=true", "cache.region.change_threshold=0", "cache.block.enabled=true", "cache.block.input_threshold=0.5"])
    assert {tuple(sorted(h.state_manager._state_cache)) for h in hooks} == {("cond", "uncond")}
    assert 0.0 < policy.report.block_share_skipped < 1.0


RATIOS = "[" + ",".join(["1.0"] + ["0.99"] * (STEPS - 1)) + "]"


@pytest.mark.parametrize("policy,old,new", [
    ("region", ["cache.threshold=0.5"], ["cache.region.change_threshold=0.5"]),
    ("region", ["cache.threshold=0", "cache.block.enabled=true", "cache.block.threshold=0.5"],
     ["cache.region.change_threshold=0", "cache.block.enabled=true", "cache.block.input_threshold=0.5"]),
    ("steps", ["cache.fraction=0.5"], ["cache.steps.fraction=0.5"]),
    ("teacache", ["cache.threshold=1e9"], ["cache.teacache.rel_l1_threshold=1e9"]),
    ("fbc", ["cache.threshold=0.5"], ["cache.fbc.threshold=0.5"]),
    ("magcache", ["cache.threshold=0.5", f"cache.mag_ratios={RATIOS}"], ["cache.magcache.threshold=0.5", f"cache.magcache.mag_ratios={RATIOS}"]),
], ids=["region", "block", "steps", "teacache", "fbc", "magcache"])
def test_old_keys_warn_once_and_give_the_identical_render(wan_t2v, caplog, policy, old, new):
    """Before the cache's sections, ``cache.threshold`` meant each policy's own quantity (and
    ``cache.fraction``, ``cache.mag_ratios``, ``cache.block.threshold`` theirs): a preset or command
    that still says so renders what the new key renders, after one line per old key naming it."""
    base = ["cache.enabled=true", f"cache.policy={policy}"]
    with caplog.at_level("WARNING", logger="supergen"):
        out, reported = refine(wan_t2v, base + old)
    lines = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    pairs = [(o.partition("=")[0], n.partition("=")[0]) for o, n in zip(old, new) if o != n]
    assert len(lines) == len(pairs), lines
    for line, (key, target) in zip(lines, pairs):
        assert f"'{key}' is deprecated" in line and f"'{target}'" in line and "\n" not in line
        value = operator.attrgetter(target)
        assert value(load_config("tiny", base + old)) == value(load_config("tiny", base + new)) != value(load_config("tiny", base))
    expected, reported_new = refine(wan_t2v, base + new)
    assert torch.equal(out, expected)
    assert [[(t.computed, t.blocks) for t in s.tiles] for s in reported.report.steps] == \
        [[(t.computed, t.blocks) for t in s.tiles] for s in reported_new.report.steps]
    assert reported.report.tiles_skipped + reported.report.block_share_skipped > 0
