"""The context-parallel sketch (``parallel.sketch=ulysses``) of CogVideoX, HunyuanVideo and LTX on two
ranks (gloo, started by torchrun from the test) against one process: diffusers' context parallelism
with the plans supergen's adapters write for CogVideoX and HunyuanVideo and the plan LTX ships."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from supergen.adapters import adapter_for
from supergen.adapters.hunyuan import mask_in_rank_order
from supergen.pipeline import SuperGenPipeline

from ranks import parallel_leftovers, run_ranks, single_thread
from test_families import SKETCH, tiny_cogvideox, tiny_hunyuan, tiny_ltx

TIMEOUT = 300
FRAMES = {"cogvideox": 9, "hunyuan": 5, "ltx": 5}


def padded_text(prompt, device=None, **kwargs):
    """HunyuanVideo's encoders stand-in with a padded prompt: 8 tokens, the last 3 masked (the mask the
    context-parallel sketch must reorder), embeddings fixed per prompt."""
    g = torch.Generator().manual_seed(sum(map(ord, prompt or "")))
    mask = torch.ones(1, 8)
    mask[:, 5:] = 0
    return torch.randn(1, 8, 16, generator=g), torch.randn(1, 8, generator=g), mask


def family(name: str):
    """The tiny pipeline of ``name`` (weights fixed by seed)."""
    if name == "cogvideox":
        pipe = tiny_cogvideox(False)
    elif name == "hunyuan":
        pipe = tiny_hunyuan(None)
        pipe.encode_prompt = padded_text
    else:
        pipe = tiny_ltx(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sketch_of(name: str, pipe, group=None, sketch: str = "cfg"):
    """The sketch (pixels ``(1, 3, F, h, w)``) and the parallel stats of a render at the native size."""
    height, width = SKETCH[name]
    sg = SuperGenPipeline.from_pipe(pipe, "tiny", group, sketch={"height": height, "width": width, "num_inference_steps": 2,
                                                                  "guidance_scale": 5.0},
                                    refine={"num_inference_steps": 2, "strength": 0.5}, parallel={"sketch": sketch, "timeout_s": 60},
                                    cache={"enabled": False})
    # CogVideoX with 15 text tokens (and 12 video tokens): unequal shards over 2 ranks (ulysses_anything).
    text = {"max_sequence_length": 15} if name == "cogvideox" else {}
    out = sg(prompt="a red car", negative_prompt="blurry", height=height, width=width, num_frames=FRAMES[name],
             generator=torch.Generator().manual_seed(5), output_type="latent", **text)
    return out.sketch, out.stats.parallel


def worker(out_dir: Path) -> None:
    from supergen import parallel
    from supergen.config import load_config

    group = parallel.init(load_config("tiny", ["parallel.timeout_s=60"]))
    seen = {}
    for name in FRAMES:
        pipe = family(name)
        sketch, stats = sketch_of(name, pipe, group, "ulysses")
        again, _ = sketch_of(name, pipe, group, "ulysses")
        model = pipe.transformer
        left = parallel_leftovers(model)
        seen[name] = {"sketch": sketch, "again": again, "plan": stats["plan"], "left": left, "bytes": stats["stages"]["sketch"]["bytes"]}
    torch.save(seen, out_dir / f"rank{group.global_rank}.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("families2")
    return run_ranks(__file__, 2, out_dir, TIMEOUT)  # the worker imports test_families: the script's folder is on its path


@pytest.fixture(scope="module")
def single():
    with single_thread():  # as each rank
        return {name: sketch_of(name, family(name))[0] for name in FRAMES}


@pytest.mark.parametrize("name", list(FRAMES))
def test_the_context_parallel_sketch_equals_one_process(name, single, two_ranks):
    """Ulysses runs attention per head group after an all-to-all and the projections on half the
    tokens, which may reorder sums: the sketch equals one process within 1e-4 (pixels in [-1, 1]); each
    rank count is deterministic (a second render repeats the first), and nothing is left installed."""
    for seen in two_ranks:
        result = seen[name]
        assert result["plan"]["sketch"] == "ulysses" and result["plan"]["sketch_reason"] == ""
        torch.testing.assert_close(result["sketch"], single[name], atol=1e-4, rtol=0)
        assert torch.equal(result["again"], result["sketch"])
        assert result["left"] == []
    assert torch.equal(two_ranks[0][name]["sketch"], two_ranks[1][name]["sketch"])
    assert two_ranks[0][name]["bytes"] > 0  # at least the leader's broadcast of the sketch latent


def test_hunyuan_mask_follows_the_ranks_token_order():
    mask = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0], dtype=torch.bool).view(1, 1, 1, 8)  # 4 video tokens, 4 text (2 padded)
    assert mask_in_rank_order(mask, 4, 2).flatten().tolist() == [1, 1, 1, 1, 1, 1, 0, 0][:2] + [1, 1] + [1, 1] + [1, 1, 0, 0][2:]


def test_where_the_plans_cannot_split_the_sketch_says_why():
    assert "token_replace" in adapter_for(tiny_hunyuan("token_replace")).context_parallel_blocker(2)
    assert adapter_for(family("hunyuan")).context_parallel_blocker(2) == ""
    assert adapter_for(family("cogvideox")).spec.cp_uneven  # 226 text tokens on 8 ranks: unequal shards, not a fallback


if __name__ == "__main__":
    torch.set_num_threads(1)
    worker(Path(sys.argv[1]))
