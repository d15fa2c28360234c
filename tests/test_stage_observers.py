"""The render's observers and injection points (issue 29): the refinement's progress bar is a stage
observer, and the trace's changes come in through ``SuperGenPipeline(adapter=...)``."""

from __future__ import annotations

import io

import pytest
import torch

from supergen.adapters import ModelAdapter, adapter_for
from supergen.builtin import tiny_wan_pipeline
from supergen.errors import SuperGenError
from supergen.pipeline import StageObserver, SuperGenPipeline
from supergen.trace import TracedAdapter

SIZE = dict(height=32, width=64, num_frames=5)


def test_the_refinement_bar_counts_every_step_and_honours_the_pipelines_settings():
    pipe = tiny_wan_pipeline()
    sg = SuperGenPipeline.from_pipe(pipe, "tiny", sketch={"num_inference_steps": 2}, refine={"num_inference_steps": 6, "strength": 0.5})
    out = io.StringIO()
    pipe.set_progress_bar_config(file=out)
    stats = sg(prompt="a red car", **SIZE, generator=torch.Generator().manual_seed(0), output_type="latent").stats
    assert len(stats.steps) == 3 and "refine: 100%" in out.getvalue() and "3/3" in out.getvalue()
    quiet = io.StringIO()
    pipe.set_progress_bar_config(disable=True, file=quiet)
    sg(prompt="a red car", **SIZE, generator=torch.Generator().manual_seed(0), output_type="latent")
    assert quiet.getvalue() == ""


class Ends(StageObserver):
    """How each stage ended: ``("ended", stage)`` or ``("failed", stage, error)``."""

    def __init__(self):
        self.ends = []

    def ended(self, stage, seconds, sent):
        self.ends.append(("ended", stage))

    def failed(self, stage, error):
        self.ends.append(("failed", stage, error))


def test_a_render_stopped_mid_refinement_closes_the_bar_and_tells_the_observers():
    pipe = tiny_wan_pipeline()
    sg = SuperGenPipeline.from_pipe(pipe, "tiny", sketch={"num_inference_steps": 2}, refine={"num_inference_steps": 6, "strength": 0.5})
    out = io.StringIO()
    pipe.set_progress_bar_config(file=out)
    stop = KeyboardInterrupt("stopped at refinement step 1")

    def callback(pipe, step, t, tensors):
        if step == 1:
            raise stop

    observer = Ends()
    with pytest.raises(KeyboardInterrupt) as caught:
        sg(prompt="a red car", **SIZE, generator=torch.Generator().manual_seed(0), output_type="latent",
           callback_on_step_end=callback, observers=[observer])
    assert caught.value is stop  # unchanged, and the traceback (kept by ``caught``) keeps the bar alive
    assert observer.ends == [("ended", "setup"), ("ended", "sketch"), ("ended", "upscale"), ("failed", "refine", stop)]
    # The bar's last state (tqdm redraws it after a carriage return) is closed: finished by its newline.
    bar = out.getvalue().split("\r")[-1]
    assert bar.startswith("refine:") and " 1/3 " in bar and bar.endswith("\n"), repr(bar)


def test_an_adapter_of_another_pipeline_is_refused_in_one_line():
    pipe, other = tiny_wan_pipeline(), tiny_wan_pipeline()
    with pytest.raises(SuperGenError, match=r"^adapter=WanAdapter: must be a WanAdapter \(or a subclass\) made on this pipeline$"):
        SuperGenPipeline(pipe, SuperGenPipeline.from_pipe(pipe, "tiny").config, adapter=adapter_for(other))
    assert SuperGenPipeline(pipe, SuperGenPipeline.from_pipe(pipe, "tiny").config, adapter=adapter_for(pipe)).adapter.pipe is pipe


def test_the_traced_adapter_overrides_only_documented_adapter_methods():
    for name in TracedAdapter.OVERRIDES:
        assert callable(getattr(ModelAdapter, name)) and name in vars(TracedAdapter)
    assert not {name for name in vars(TracedAdapter) if callable(vars(TracedAdapter)[name]) and not name.startswith("_")} - set(TracedAdapter.OVERRIDES)
