"""Full-size dry runs (``supergen.trace``): the real pipeline on fake tensors, no weights, no GPU.

The 4K × 81 trace of Wan2.1-I2V-14B (one sketch step, one refinement step, one transformer block per
expert, the other blocks' weights added; a few minutes on one core) checks: no host-to-device copy
inside a refinement step but position vectors (host synchronisations raise under fake tensors, so a
completed trace has none but the declared ones), the largest single allocation, the 60 GiB target and
the planner's estimate within 15% of the traced peak. It covers what a Wan2.1-1.3B 4K trace would
(the same refinement step, larger), so that one is not traced here.
"""

from __future__ import annotations

import pytest
from torch._subclasses.fake_tensor import DataDependentOutputException

from supergen.config import load_config
from supergen.planner import KNOWN
from supergen.trace import estimated, format_trace, trace_render

GiB = 2**30


@pytest.fixture(scope="module")
def i2v_4k():
    return trace_render(load_config("wan2.1-i2v-14b-4k"), KNOWN["Wan2.1-I2V-14B"], 2160, 3840, 81, steps=1, layers=1)


def test_wan_i2v_14b_at_4k_fits_the_60_gib_target(i2v_4k):
    assert i2v_4k.peak <= 60 * GiB, format_trace(i2v_4k)


def test_the_image_condition_is_encoded_in_vae_windows(i2v_4k):
    # The setup stage encodes the 4K x 81 condition: were it one tensor, it would be 8 GB in float32.
    assert i2v_4k.stages["setup"].largest < GiB, format_trace(i2v_4k)


@pytest.mark.xfail(strict=True, reason="the decoded and the upscaled 4K video are each one float32 tensor (7.5 GiB) "
                   "until decode/upscale are chunked (branch memory); remove this mark then")
def test_no_single_allocation_above_4_gib(i2v_4k):
    size, what = i2v_4k.largest
    assert size <= 4 * GiB, f"{what}\n{format_trace(i2v_4k)}"


def test_refinement_steps_copy_only_position_vectors_from_the_host(i2v_4k):
    # 90 x 160 latent tiles, patch 2: position vectors of at most 80 tokens per axis (21 frames).
    assert all(int(c.split("(")[1].split(",")[0]) <= 80 for c in i2v_4k.host_copies), format_trace(i2v_4k)


def test_the_planner_is_within_15_percent_of_the_traced_peak(i2v_4k):
    planned = estimated(i2v_4k, i2v_4k.plan.peak_stage)
    assert abs(planned - i2v_4k.peak) <= 0.15 * i2v_4k.peak, format_trace(i2v_4k)


def test_the_weights_not_built_are_added_exactly(i2v_4k):
    counts = KNOWN["Wan2.1-I2V-14B"].parameters()
    assert i2v_4k.added["text_encoder"] == counts["text_encoder"] * 2
    built = i2v_4k.resident - sum(i2v_4k.added.values())
    # bf16 transformer (all blocks, built or added) + float32 VAE and image encoder, nothing else
    assert built + i2v_4k.added["transformer blocks"] == counts["transformer"] * 2 + (counts["vae"] + counts["image_encoder"]) * 4


def test_the_encoders_leave_the_device_after_the_sketch(i2v_4k):
    counts = KNOWN["Wan2.1-I2V-14B"].parameters()
    parked = counts["text_encoder"] * 2 + counts["image_encoder"] * 4
    assert any("parked on the host" in n for n in i2v_4k.notes)
    # The canvas stages peak below the weights the render loaded.
    assert i2v_4k.stages["refine"].peak < i2v_4k.resident - parked + 10 * GiB, format_trace(i2v_4k)


def test_a_host_read_in_the_refinement_step_fails_the_trace():
    # teacache reads its per-tile estimate on the host every step (float(...)): the dry run says so.
    cfg = load_config("tiny", ["cache.enabled=true", "cache.policy=teacache"])
    with pytest.raises(DataDependentOutputException):
        trace_render(cfg, KNOWN["tiny"], 96, 192, 9, steps=3)


def test_tiny_trace_has_no_host_copy_and_names_its_stages():
    result = trace_render(load_config("tiny"), KNOWN["tiny"], 96, 192, 9, steps=3)
    assert list(result.stages) == ["setup", "sketch", "upscale", "refine", "decode"]
    # Only rotary position vectors (one per tile axis, on the first use of a window in a render;
    # cached on the device after that) come from the host: no blend weights, no canvas data.
    assert all("(" in c and "used with device data" in c for c in result.host_copies)
    assert all(int(c.split("(")[1].split(",")[0]) <= 12 for c in result.host_copies), result.host_copies
    assert all(stage.peak >= result.resident for stage in result.stages.values())
