"""``supergen plan --trace`` beyond Wan: the released architectures of CogVideoX 1.5 (image-to-video,
a padding latent frame, joint text-video attention) and HunyuanVideo-I2V (two text encoders, the
LLaVA embedding with its image tokens, dual- and single-stream blocks, an image latent frame) are
built from their real diffusers classes and full-size configs on fake tensors and rendered by the
real pipeline at a size none of the planner's memory terms was fitted to (480x832x17; the fits used
the 2K and 4K presets, docs/planner.md "Out of sample"), one block per block list, one step (about
15 s of CPU each).

A completed trace proves the family's render has no host synchronisation but the declared ones;
the planner must count the same weights and estimate each stage's transient (its live bytes beyond
the weights) within 15 %, except the stages listed in KNOWN_OFF (strict xfails). Wan 2.2 A14B
and LTX-Video trace through the same code; their 2K/4K traces, and these families', take minutes
each and are in docs/benchmarks.md ("Full size (traced)").
"""

from __future__ import annotations

import pytest

from supergen.config import load_config
from supergen.cost import KNOWN
from supergen.trace import STAGES, format_trace, trace_render

MiB = 2**20

#: architecture → its 2K preset (the method), rendered at 480 x 832 x 17 from a 240 x 416 sketch.
CASES = {
    "CogVideoX1.5-5B-I2V": "cogvideox1.5-5b-i2v-2k",
    "HunyuanVideo-I2V": "hunyuanvideo-i2v-2k",
}


@pytest.fixture(scope="module", params=list(CASES))
def traced(request):
    config = load_config(CASES[request.param], ["sketch.height=240", "sketch.width=416"])
    return trace_render(config, KNOWN[request.param], 480, 832, 17, steps=1, layers=1)


def test_the_family_renders_on_fake_tensors_with_every_stage(traced):
    assert list(traced.stages) == list(STAGES), format_trace(traced)


def test_the_planner_counts_the_weights_the_trace_holds(traced):
    # Built (one block per list, VAE, image encoder) plus added (text encoders, the other blocks):
    # the planner's parameter counts in their dtypes, to the modules' few buffers.
    assert abs(traced.resident - traced.plan.weights) < MiB, format_trace(traced)
    arch = KNOWN[traced.name]
    assert set(traced.added) == {*arch.encoder_configs(), "transformer blocks"} - {"image_encoder"}


#: Stages whose planned transient is more than 15 % off at this held-out size (docs/planner.md, "Out
#: of sample"): the one-frame image-condition encode (CogVideoX -50 %, HunyuanVideo -21 %): a single
#: frame's causal padding makes the encoder's working set per frame larger than in the frame batches
#: the encode term is counted on.
KNOWN_OFF = {("CogVideoX1.5-5B-I2V", "setup"), ("HunyuanVideo-I2V", "setup")}


@pytest.mark.parametrize("stage", STAGES)
def test_the_planner_is_within_15_percent_of_every_traced_transient(traced, stage, request):
    if (traced.name, stage) in KNOWN_OFF:
        request.applymarker(pytest.mark.xfail(strict=True, reason="a known gap of the planner, see KNOWN_OFF"))
    planned, measured = traced.plan.memory[f"stage.{stage}"], traced.stages[stage].transient
    assert abs(planned - measured) <= 0.15 * measured, f"{stage}: planned {planned}, traced {measured}\n{format_trace(traced)}"
