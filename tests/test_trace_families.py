"""``supergen plan --trace`` beyond Wan: the released architectures of CogVideoX 1.5 (image-to-video,
a padding latent frame, joint text-video attention) and HunyuanVideo-I2V (two text encoders, the
LLaVA embedding with its image tokens, dual- and single-stream blocks, an image latent frame) are
built from their real diffusers classes and full-size configs on fake tensors and rendered by the
real pipeline at a small size, one block per block list, one step (about 12 s of CPU each).

A completed trace proves the family's render has no host synchronisation but the declared ones;
the planner must count the same weights and stay within 15 % of every traced stage. Wan 2.2 A14B
and LTX-Video trace through the same code; their 2K/4K traces, and these families', take minutes
each and are in docs/benchmarks.md ("Full size (traced)").
"""

from __future__ import annotations

import pytest

from supergen.config import load_config
from supergen.cost import KNOWN
from supergen.trace import STAGES, format_trace, trace_render

MiB = 2**20

#: architecture → its 2K preset (the method); small sizes: a 64 x 128 sketch on a 128 x 256 canvas,
#: 9 frames (CogVideoX: 3 latent frames padded to 4; HunyuanVideo-I2V: 3 and the image frame).
CASES = {
    "CogVideoX1.5-5B-I2V": "cogvideox1.5-5b-i2v-2k",
    "HunyuanVideo-I2V": "hunyuanvideo-i2v-2k",
}


@pytest.fixture(scope="module", params=list(CASES))
def traced(request):
    config = load_config(CASES[request.param], ["sketch.height=64", "sketch.width=128"])
    return trace_render(config, KNOWN[request.param], 128, 256, 9, steps=1, layers=1)


def test_the_family_renders_on_fake_tensors_with_every_stage(traced):
    assert list(traced.stages) == list(STAGES), format_trace(traced)


def test_the_planner_counts_the_weights_the_trace_holds(traced):
    # Built (one block per list, VAE, image encoder) plus added (text encoders, the other blocks):
    # the planner's parameter counts in their dtypes, to the modules' few buffers.
    assert abs(traced.resident - traced.plan.weights) < MiB, format_trace(traced)
    arch = KNOWN[traced.name]
    assert set(traced.added) == {*arch.encoder_configs(), "transformer blocks"} - {"image_encoder"}


def test_the_planner_is_within_15_percent_of_every_traced_stage(traced):
    for stage, measured in traced.stages.items():
        planned = traced.plan.stage_peak(stage)
        assert abs(planned - measured.peak) <= 0.15 * measured.peak, f"{stage}\n{format_trace(traced)}"
