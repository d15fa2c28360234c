"""Pinned references of small renders: a refactor must not change these videos.

Each case renders a preset on the tiny (or toy) model at a small size and compares the uint8 video
with a stored reference, ``tests/data/pinned.npz``: every 8th pixel of every 8th row, all frames and
channels (4,320 values of a tiny case). Not a checksum: float32 kernels differ in their last bits
between CPUs (vector width, MKL's and oneDNN's code path per vendor), and a checksum pinned on one x86
CPU failed on another (issue #28). The tolerance below is 3× what those differences measured and
far under what a real change costs (:func:`test_the_tolerance_catches_a_real_change`).

If a change is *meant* to alter the output, re-record the references in the same commit and say why:
``python tests/test_pinned.py`` (it renders every case and rewrites ``tests/data/pinned.npz``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from supergen import SuperGenPipeline
from supergen.builtin import load_pipeline

# (case, model, preset, overrides, call)
SMALL = {"sketch": {"num_inference_steps": 3}, "refine": {"num_inference_steps": 4}}
#: tiny: a 48×96 sketch on a 96×192 canvas (2×2 native tiles); toy: its 128×128 sketch on 192×192.
TINY_SKETCH = {"height": 48, "width": 96}
CASES = {
    "tiny-shift-clamp": ("tiny", "tiny", {}, {}),
    "tiny-shift-wrap-local": ("tiny", "tiny", {"tiling": {"boundary": "wrap", "positions": "local"}}, {}),
    "tiny-overlap-ntk": ("tiny", "tiny", {"tiling": {"mode": "overlap", "overlap": 16, "positions": "ntk"}}, {}),
    "tiny-attention": ("tiny", "tiny", {"tiling": {"mode": "attention", "halo": 16}}, {}),
    # Windows that never move (shift_every past the 2 refinement steps): attention mode before it shifted.
    "tiny-attention-fixed": ("tiny", "tiny", {"tiling": {"mode": "attention", "halo": 16, "shift_every": 100}}, {}),
    "tiny-region-cache": ("tiny", "tiny", {"cache": {"enabled": True, "threshold": 0.5}, "refine": {"num_inference_steps": 12}}, {}),
    # The region rule before cost weighting and the cap of 2 (issue #16).
    "tiny-region-cache-nocost": ("tiny", "tiny", {"cache": {"enabled": True, "threshold": 0.5, "max_consecutive": 3, "region": {"cost": 0.0}},
                                                  "refine": {"num_inference_steps": 12}}, {}),
    "tiny-strength-1": ("tiny", "tiny", {"refine": {"strength": 1.0, "num_inference_steps": 3}}, {}),
    "tiny-i2v": ("tiny-i2v", "tiny", {}, {"image": "image"}),
    "toy": ("toy", "toy", {}, {}),
}

REFERENCE = Path(__file__).parent / "data" / "pinned.npz"
#: The reference keeps every STRIDE-th row and column.
STRIDE = 8
#: Allowed difference of any kept value from the reference, in uint8 levels. Measured between CPU code
#: paths on one machine (torch 2.13, 2 threads; ATEN_CPU_CAPABILITY=avx512 / avx2 / default, and default
#: with MKL_ENABLE_INSTRUCTIONS=SSE4_2 DNNL_MAX_CPU_ISA=SSE41): a few pixels per video moved by 1 level,
#: none by more. A real change moves kept values by 5 to 18 levels (the test below).
TOLERANCE = 3


def _render(model: str, preset: str, overrides: dict, call: dict, seed: int = 7, **changes) -> np.ndarray:
    """The case's video, uint8 ``(F, H, W, 3)``; ``changes`` (``section={key: value}``) alter the case."""
    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    sections = {k: dict(v) for k, v in SMALL.items()}
    if preset == "tiny":
        sections["sketch"].update(TINY_SKETCH)
    for section, values in [*overrides.items(), *changes.items()]:
        sections.setdefault(section, {}).update(values)
    sg = SuperGenPipeline.from_pipe(pipe, preset, **sections)
    size = dict(height=96, width=192) if preset == "tiny" else dict(height=192, width=192)
    out = sg(prompt="a red disk moving right", **size, num_frames=5, generator=torch.Generator().manual_seed(seed), output_type="np", **call)
    return (np.clip(out.frames[0], 0, 1) * 255).round().astype(np.uint8)


def sample(video: np.ndarray) -> np.ndarray:
    """The part of ``video`` ``(F, H, W, C)`` uint8 the reference keeps: ``(F, H/STRIDE, W/STRIDE, C)``."""
    return video[:, ::STRIDE, ::STRIDE]


def distance(video: np.ndarray, reference: np.ndarray) -> int:
    """The largest difference of a kept value of ``video`` from ``reference``, in uint8 levels."""
    return int(np.abs(sample(video).astype(np.int16) - reference).max())


@pytest.fixture
def two_threads():
    """Renders with 2 torch threads, as the references were: CPU kernels split reductions by thread
    count, and a small difference in the low bits may flip a region-cache decision."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def references() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as data:
        return dict(data)


@pytest.mark.parametrize("case", sorted(CASES))
def test_render_matches_the_pinned_reference(request, case, two_threads, references):
    model, preset, overrides, call = CASES[case]
    video = _render(model, preset, overrides, {k: request.getfixturevalue(v) for k, v in call.items()})
    assert distance(video, references[case]) <= TOLERANCE, f"{case}: a pixel is {distance(video, references[case])} levels off"


@pytest.mark.parametrize("case,change", [
    ("tiny-shift-clamp", {"seed": 8}),
    ("tiny-shift-clamp", {"refine": {"strength": 0.45}}),  # the preset's 0.5
    ("tiny-shift-clamp", {"tiling": {"shift_divisor": 2}}),  # the preset's 4
    ("tiny-region-cache", {"cache": {"threshold": 0.2}}),  # reuses fewer tiles than 0.5
])
def test_the_tolerance_catches_a_real_change(case, change, two_threads, references):
    assert distance(_render(*CASES[case], **change), references[case]) > TOLERANCE


if __name__ == "__main__":  # re-record the references (see the module docstring)
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import image  # the i2v case's conditioning image

    fixtures = {"image": image.__wrapped__}
    torch.set_num_threads(2)
    REFERENCE.parent.mkdir(exist_ok=True)
    kept = {}
    for case, (model, preset, overrides, call) in sorted(CASES.items()):
        kept[case] = sample(_render(model, preset, overrides, {k: fixtures[v]() for k, v in call.items()}))
        print(case, kept[case].shape)
    np.savez_compressed(REFERENCE, **kept)
