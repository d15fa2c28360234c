"""Check the planner's memory estimate against a measured render on CPU (docs/benchmarks.md, "Planner").

For each architecture (default: ``tiny`` and ``wan-medium-random``) this builds a random-weight Wan
pipeline from the planner's own table (real diffusers/transformers classes), renders one video with
the stage callback marking stage boundaries, and prints, per stage, the planner's estimated transient
next to the measured one.

Measurement: process resident set size (RSS, ``/proc/self/statm``) sampled every millisecond by a
thread, minus the RSS just before the render (weights loaded, one warm-up render done so that lazily
created buffers and thread pools are already there). ``malloc_trim`` runs at every stage boundary so
that memory freed by an earlier stage is returned to the OS and not counted against a later one. RSS
counts allocator slack and everything else the process touches, so it is an upper bound on what the
planner estimates (live tensor bytes); the sampler can miss a spike shorter than a millisecond.

    python scripts/bench_planner.py                       # tiny and the medium random model
    python scripts/bench_planner.py --arch tiny --height 256 --width 448 --frames 9
"""

from __future__ import annotations

import argparse
import ctypes
import os
import threading
import time

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from transformers import UMT5Config, UMT5EncoderModel

from supergen.builtin import char_tokenizer
from supergen.config import load_config
from supergen.pipeline import SuperGenPipeline
from supergen.cost import KNOWN, Architecture, human, estimate

#: Render sizes per architecture: 2x the native size on each axis, a few frames and steps.
SETTINGS = {
    "tiny": dict(height=256, width=448, frames=9),
    "wan-medium-random": dict(height=512, width=896, frames=9),
}
PAGE = os.sysconf("SC_PAGE_SIZE")
STAGES = ("sketch", "upscale", "refine", "decode")


def random_pipeline(arch: Architecture, seed: int = 0) -> WanPipeline:
    """A text-to-video Wan pipeline with random weights built from ``arch``'s configs (character tokenizer)."""
    torch.manual_seed(seed)
    text = UMT5EncoderModel(UMT5Config(**arch.text_encoder, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    return WanPipeline(
        tokenizer=char_tokenizer(), text_encoder=text.eval(),
        transformer=WanTransformer3DModel.from_config(arch.transformer).eval(),
        vae=AutoencoderKLWan.from_config(arch.vae).eval(),
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
    )


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Sampler(threading.Thread):
    """Max RSS per stage; the stage callback moves it from one stage to the next."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stage = "prompt"
        self.peaks: dict[str, int] = {}
        self.running = True
        self.libc = ctypes.CDLL("libc.so.6")

    def run(self):
        while self.running:
            value = rss()
            self.peaks[self.stage] = max(self.peaks.get(self.stage, 0), value)
            time.sleep(0.001)

    def enter(self, stage: str, info: dict) -> None:
        self.libc.malloc_trim(0)
        self.stage = stage


def measure(name: str, height: int, width: int, frames: int) -> None:
    arch = KNOWN[name]
    native = arch.native_size
    cfg = load_config("tiny", {
        "model.name": name, "job.height": height, "job.width": width, "job.num_frames": frames,
        "sketch.height": native[0], "sketch.width": native[1], "sketch.num_inference_steps": 4,
        "refine.num_inference_steps": 8, "refine.strength": 0.5,
    })
    plan = estimate(cfg, arch)
    pipe = random_pipeline(arch)
    pipe.set_progress_bar_config(disable=True)
    sg = SuperGenPipeline.from_pipe(pipe, cfg)
    # Warm-up at the sketch size (cheap): thread pools and lazily created buffers exist before the baseline.
    sg(height=native[0], width=native[1], generator=torch.Generator().manual_seed(0))
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = rss()
    sampler = Sampler()
    sampler.start()
    start = time.perf_counter()
    sg(generator=torch.Generator().manual_seed(0), callback_on_stage=sampler.enter)
    seconds = time.perf_counter() - start
    sampler.enter("done", {})
    time.sleep(0.01)
    sampler.running = False

    print(f"\n{name}: {width}x{height}x{plan.num_frames} from {native[1]}x{native[0]}, {plan.plan.describe()}, "
          f"{plan.refine_steps} refine steps, {seconds:.1f} s; weights {human(plan.weights)} (estimated, exact counts)")
    print(f"| stage | estimated transient | measured RSS above baseline | measured / estimated |")
    print(f"|---|---:|---:|---:|")
    for stage in STAGES:
        est = plan.memory[f"stage.{stage}"]
        got = sampler.peaks.get(stage, base) - base
        print(f"| {stage} | {human(est)} | {human(got)} | {got / est:.2f} |")
    transient = plan.peak - plan.weights
    whole = max(sampler.peaks.values()) - base
    print(f"| whole render | {human(transient)} ({plan.peak_stage}) | {human(whole)} | {whole / transient:.2f} |")
    print(f"(text encoder stage, not estimated: {human(sampler.peaks.get('prompt', base) - base)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", choices=sorted(SETTINGS), help="default: all")
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--frames", type=int)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in args.arch or list(SETTINGS):
        s = SETTINGS[name]
        measure(name, args.height or s["height"], args.width or s["width"], args.frames or s["frames"])


if __name__ == "__main__":
    main()
