"""Full-size dry runs (``supergen.trace``): the real pipeline on fake tensors, no weights, no GPU.

The 4K × 81 trace of Wan2.1-I2V-14B (one sketch step, one refinement step, one transformer block per
expert, the other blocks' weights added; a few minutes on one core) checks: no host-to-device copy
inside a refinement step (host synchronisations raise under fake tensors, so a
completed trace has none but the declared ones), the largest single allocation, the 60 GiB target and
the planner's estimate within 15% of the traced peak. It covers what a Wan2.1-1.3B 4K trace would
(the same refinement step, larger), so that one is not traced here.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import DataDependentOutputException

from supergen import SuperGenError
from supergen.config import load_config
from supergen.cost import KNOWN, estimate
from supergen.trace import format_trace, trace_pipeline, trace_render

GiB = 2**30


@pytest.fixture(scope="module")
def i2v_4k():
    return trace_render(load_config("wan2.1-i2v-14b-4k"), KNOWN["Wan2.1-I2V-14B"], 2160, 3840, 81, steps=1, layers=1)


def test_wan_i2v_14b_at_4k_fits_the_60_gib_target(i2v_4k):
    assert i2v_4k.peak <= 60 * GiB, format_trace(i2v_4k)


def test_every_stage_before_the_decode_fits_the_60_gib_target(i2v_4k):
    # The sketch (all weights but the parked text encoder, and diffusers' untiled 720p VAE) is highest.
    assert all(i2v_4k.stages[s].peak <= 60 * GiB for s in ("setup", "sketch", "upscale", "refine")), format_trace(i2v_4k)


def test_the_image_condition_is_encoded_in_vae_windows(i2v_4k):
    # The setup stage encodes the 4K x 81 condition: were it one tensor, it would be 8 GB in float32.
    assert i2v_4k.stages["setup"].largest < GiB, format_trace(i2v_4k)


def test_no_single_allocation_above_4_gib(i2v_4k):
    size, what = i2v_4k.largest
    assert size <= 4 * GiB, f"{what}\n{format_trace(i2v_4k)}"


def test_refinement_steps_copy_nothing_from_the_host(i2v_4k):
    # Blend weights and rotary tables of every grid offset are put on the device before the first step.
    assert i2v_4k.host_copies == [], format_trace(i2v_4k)


def test_the_planner_is_within_15_percent_of_the_traced_peak_transient(i2v_4k):
    # The peak stage's transient (the sketch's untiled 720p decode, ~18 GiB), not the total: 33 GiB of
    # weights would make a 15 % bound on the total hide a 30 % error in the transient. (A fitted case:
    # the Wan VAE's k was fitted to this trace; docs/planner.md names the fitted and held-out cases.)
    stage = i2v_4k.plan.peak_stage
    assert stage == i2v_4k.peak_stage, format_trace(i2v_4k)
    planned, traced = i2v_4k.plan.memory[f"stage.{stage}"], i2v_4k.stages[stage].transient
    assert abs(planned - traced) <= 0.15 * traced, format_trace(i2v_4k)


def test_the_weights_not_built_are_added_exactly(i2v_4k):
    counts = KNOWN["Wan2.1-I2V-14B"].parameters()
    assert i2v_4k.added["text_encoder"] == counts["text_encoder"] * 2
    built = i2v_4k.resident - sum(i2v_4k.added.values())
    # bf16 transformer (all blocks, built or added) + float32 VAE and image encoder, nothing else
    # (and the CLIP embeddings' position_ids buffer: 257 int64)
    assert built + i2v_4k.added["transformer blocks"] == counts["transformer"] * 2 + (counts["vae"] + counts["image_encoder"]) * 4 + 257 * 8


def test_the_encoders_leave_the_device_once_used(i2v_4k):
    counts = KNOWN["Wan2.1-I2V-14B"].parameters()
    text, image = counts["text_encoder"] * 2, counts["image_encoder"] * 4
    assert any("parked on the host once used" in n for n in i2v_4k.notes)
    # The planner counts the same weights as resident per stage as the trace does.
    plan = i2v_4k.plan
    assert plan.resident("sketch") == plan.weights - text and plan.resident("refine") == plan.weights - text - image
    assert i2v_4k.resident - plan.weights == 257 * 8  # the planner counts parameters, not the CLIP's position_ids buffer


#: The 4K preset's method on a 448 x 768 x 9 canvas (2 x 4 VAE tiles) from a 224 x 384 sketch: ~25 s CPU.
SMALL = ["sketch.height=224", "sketch.width=384"]


@pytest.fixture(scope="module")
def t2v_small():
    return trace_render(load_config("wan2.1-t2v-1.3b-4k", SMALL), KNOWN["Wan2.1-1.3B"], 448, 768, 9, steps=1, layers=1)


def test_the_planner_follows_the_trace_stage_by_stage(t2v_small):
    # What each stage holds beyond the weights (its transient), traced and estimated, within 15 % (the
    # weights alone would make any estimate look close); the weights themselves exactly.
    assert t2v_small.plan.weights == t2v_small.resident
    for stage in ("sketch", "upscale", "refine", "decode"):
        traced = t2v_small.stages[stage].transient  # the most live bytes beyond the weights
        planned = t2v_small.plan.memory[f"stage.{stage}"]
        assert abs(planned - traced) <= 0.15 * traced, f"{stage}: planned {planned}, traced {traced}\n{format_trace(t2v_small)}"


@pytest.fixture(scope="module")
def held_out_14b_t2v():
    """A render no memory term was fitted to (docs/planner.md, "Out of sample"): Wan2.1-14B text-to-video
    (the fits used its I2V sibling and one of its blocks), portrait, 17 frames; ~6 s CPU."""
    cfg = load_config("wan2.1-i2v-14b-2k", ["sketch.height=384", "sketch.width=224"])
    return trace_render(cfg, KNOWN["Wan2.1-14B"], 768, 448, 17, steps=1, layers=1)


def test_the_planner_transients_hold_out_of_sample(held_out_14b_t2v):
    result = held_out_14b_t2v
    for stage in ("sketch", "upscale", "refine", "decode"):
        traced, planned = result.stages[stage].transient, result.plan.memory[f"stage.{stage}"]
        assert abs(planned - traced) <= 0.15 * traced, f"{stage}: planned {planned}, traced {traced}\n{format_trace(result)}"


def test_a_host_read_in_the_refinement_step_fails_the_trace():
    # teacache reads its per-tile estimate on the host every step (float(...)): the dry run says so.
    cfg = load_config("tiny", ["cache.enabled=true", "cache.policy=teacache"])
    with pytest.raises(DataDependentOutputException):
        trace_render(cfg, KNOWN["tiny"], 96, 192, 9, steps=3)


def test_tiny_trace_has_no_host_copy_and_names_its_stages():
    result = trace_render(load_config("tiny"), KNOWN["tiny"], 96, 192, 9, steps=3)
    assert list(result.stages) == ["setup", "sketch", "upscale", "refine", "decode"]
    # Blend weights and rotary tables are preloaded before the first step: a step copies nothing.
    assert result.host_copies == [], result.host_copies
    assert all(stage.peak >= result.resident for stage in result.stages.values())


def test_the_traces_vectorised_blend_equals_diffusers_row_by_row():
    from diffusers import AutoencoderKLWan

    from supergen.trace import vectorised_blend

    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)
    a, b = torch.rand(1, 3, 5, 20, 24), torch.rand(1, 3, 5, 20, 24)
    for dim, theirs in ((-2, vae.blend_v), (-1, vae.blend_h)):
        assert torch.equal(vectorised_blend(dim)(a, b.clone(), 8), theirs(a, b.clone(), 8))


def test_the_plain_pipeline_trace_holds_every_weight_throughout():
    # diffusers' own WanPipeline.__call__ (the reference of the 1.3x target): nothing parked, untiled decode.
    cfg = load_config("tiny")
    baseline = trace_pipeline(cfg, KNOWN["tiny"], 96, 192, 9, steps=1)
    assert list(baseline.stages) == ["setup", "denoise", "decode"]
    assert baseline.resident >= estimate(cfg, KNOWN["tiny"], height=96, width=192, num_frames=9).weights  # (+ the rope's buffers)
    assert all(stage.peak_weights == baseline.resident for stage in baseline.stages.values())
    assert baseline.stages["decode"].largest >= 3 * 9 * 96 * 192 * 4  # the whole decoded video, float32
    assert baseline.peak_stage == "decode"


def test_the_trace_refuses_an_offload_it_does_not_model():
    with pytest.raises(SuperGenError, match="the trace models model.offload=none or group .* got 'model'"):
        trace_render(load_config("tiny", ["model.offload=model"]), KNOWN["tiny"], 96, 192, 9)


def test_group_offload_trace_counts_only_the_onloaded_groups():
    cfg = load_config("tiny", ["model.offload=group"])
    result = trace_render(cfg, KNOWN["tiny"], 96, 192, 9, steps=1)
    assert result.offload == "group" and "block-level hooks" in result.notes[-1]
    per_block, outside = KNOWN["tiny"].block_parameters()
    # A refinement step: the running block, the one the stream prefetches, the layers outside the
    # blocks (the rope's buffers besides: within 3 %); no encoder, no VAE.
    two_blocks = (2 * per_block + outside) * 4  # the tiny preset is float32
    assert two_blocks <= result.stages["refine"].peak_weights <= 1.03 * two_blocks
    # The setup encodes the prompt: the whole text encoder is one group (UMT5 has no block list of its own).
    assert result.stages["setup"].peak_weights == result.added["text_encoder"]
    # Never every weight at once (the plain trace holds them all in every stage).
    assert all(stage.peak_weights < result.plan.weights for stage in result.stages.values())
