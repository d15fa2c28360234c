"""The tracer against a real execution (issue 32 item 3).

``supergen plan --trace`` measures memory on fake tensors and stands in for what it does not run (the
text encoder's forward, VAE windows of an already traced shape, diffusers' row-by-row VAE blend).
Here the same render runs for real on the tiny random Wan (real weights, real tensors, VAE tiled in
two windows, the transformer in tiles) under the tracer's own bookkeeping (``measure_render``: every
tensor counted), and its per-stage transient — the most live bytes beyond the weights — is held next
to the fake trace's. Larger models (the medium random Wan at 512x896x17, a Wan2.1-1.3B-shaped model)
are in ``scripts/bench_planner.py --reality`` and docs/planner.md.
"""

from __future__ import annotations

import pytest

from supergen.builtin import tiny_wan_pipeline
from supergen.config import load_config
from supergen.cost import Architecture, human
from supergen.trace import STAGES, measure_render, trace_render

#: The trace's transient may differ from the real one by this much per stage (measured: under 0.1 %;
#: the bound leaves room for the vectorised VAE blend's wider temporaries, see supergen/trace.py).
BOUND = 0.05


#: The render's uint8 output video, 9 frames of 128x320 RGB.
OUTPUT_VIDEO_BYTES = 9 * 128 * 320 * 3


@pytest.fixture(scope="module")
def runs():
    # A 128x320x9 canvas (two VAE windows of 256 px across) from a 64x160 sketch: 9 s of CPU for both.
    cfg = load_config("tiny", ["sketch.height=64", "sketch.width=160"])
    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    real = measure_render(pipe, cfg, 128, 320, 9, steps=1)
    fake = trace_render(cfg, Architecture.from_pipeline(pipe), 128, 320, 9, steps=1, layers=None)
    return real, fake


def test_the_real_run_passes_every_stage_and_holds_the_weights(runs):
    real, fake = runs
    assert list(real.stages) == list(fake.stages) == list(STAGES)
    # The real pipeline's weights (its text encoder's too) are what the trace builds plus what it adds.
    assert real.resident == fake.resident
    assert all(stage.transient > 0 for stage in real.stages.values())


def test_the_traced_transient_of_every_stage_is_the_real_one_within_the_bound(runs):
    real, fake = runs
    # Not the setup: the trace stubs the text encoder (its forward does not run on fake tensors).
    for stage in ("sketch", "upscale", "refine", "decode"):
        measured, traced = real.stages[stage].transient, fake.stages[stage].transient
        if stage == "decode":
            # The uint8 output video is host memory (the decode streams finished strips to the host):
            # the trace books it apart, while on the CPU the real run holds it among everything else.
            measured -= OUTPUT_VIDEO_BYTES
        assert abs(traced - measured) <= BOUND * measured, f"{stage}: real {human(measured)}, traced {human(traced)}"
