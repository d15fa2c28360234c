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

Two more checks (issue 32), each printing one JSON line per case and a table:

``--reality``: the tracer against a real execution. The same render (random weights, real diffusers
classes) is run for real under :func:`supergen.trace.measure_render` (live tensor bytes counted on
real tensors) and traced on fake tensors by :func:`supergen.trace.trace_render`; per stage, the
transient (most live bytes beyond the weights) of both and the trace's error.

``--held-out``: the planner out of sample. :data:`HELD_OUT` are renders not used to fit the per-family
memory terms (:data:`FITTED`); each is traced (``supergen plan --trace``, one block per block list,
one step) and the planner's transient per stage compared with the traced one.

    python scripts/bench_planner.py --reality            # medium random Wan and a 1.3B-shaped one at 256x448x9
    python scripts/bench_planner.py --held-out [--case N ...]
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
from supergen.trace import measure_render, trace_render

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


#: The renders whose traces the per-family memory terms (FamilyMemory, the Wan VAE's k, the
#: float32-residual copies) were fitted to: each preset at its size and frame count
#: (docs/benchmarks.md, "Every family at 2K and 4K"), and one Wan-14B block at a 720p x 81 tile.
FITTED = (
    ("wan2.1-t2v-1.3b-2k / -4k", "Wan2.1-1.3B", "1440x2560 and 2160x3840, 81 frames"),
    ("wan2.1-i2v-14b-2k / -4k", "Wan2.1-I2V-14B", "1440x2560 and 2160x3840, 81 frames"),
    ("wan2.1-i2v-14b-2k / -4k", "Wan2.2-T2V-A14B", "1440x2560 and 2160x3840, 81 frames"),
    ("cogvideox1.5-5b-i2v-2k / -4k", "CogVideoX1.5-5B-I2V", "1440x2560 and 2160x3840, 81 frames"),
    ("hunyuanvideo-i2v-2k / -4k", "HunyuanVideo-I2V", "1440x2560 and 2160x3840, 125 frames"),
    ("wan2.1-t2v-1.3b-2k / -4k + sketch 512x704", "LTX-Video", "1440x2560 and 2160x3840, 81 frames"),
    ("(one block)", "Wan2.1-14B", "one 720x1280x81 tile, the float32 residual update"),
)

#: Held-out renders (config, model, height, width, frames): other sizes, aspect ratios and frame
#: counts than the fitted ones, and Wan2.1-14B text-to-video, which no fit used.
HELD_OUT = (
    ("wan2.1-t2v-1.3b-2k", "Wan2.1-1.3B", 1080, 1920, 49),
    ("wan2.1-t2v-1.3b-2k", "Wan2.1-1.3B", 2560, 1440, 81),  # portrait
    ("wan2.1-t2v-1.3b-4k", "Wan2.1-1.3B", 2160, 2160, 121),  # square 4K
    ("wan2.1-i2v-14b-2k", "Wan2.1-14B", 1080, 1920, 81),
    ("wan2.1-i2v-14b-2k", "Wan2.2-T2V-A14B", 1440, 2560, 49),
    ("cogvideox1.5-5b-i2v-2k", "CogVideoX1.5-5B-I2V", 1080, 1920, 49),
    ("hunyuanvideo-i2v-2k", "HunyuanVideo-I2V", 1080, 1920, 61),
    ("wan2.1-i2v-14b-4k", "Wan2.1-I2V-14B", 2160, 3840, 49),
)


def compared_stages(plan, stages) -> list[str]:
    """Stages whose transient the planner models: all but the setup, which it models for I2V only
    (the image condition; a text-to-video setup holds only the prompt embeddings)."""
    return [s for s in stages if s != "setup" or plan.memory.get("stage.setup")]


def held_out(cases: list[int]) -> None:
    import json

    from supergen.config import load_config as load

    print("fitted (not evaluated here): " + "; ".join(f"{m} {c} {s}" for c, m, s in FITTED))
    print("| model | config | size (h x w) | frames | stage | planner transient | traced transient | error | trace s |")
    print("|---|---|---|---|---|---:|---:|---:|---:|")
    for i in cases:
        config, model, height, width, frames = HELD_OUT[i]
        start = time.perf_counter()
        result = trace_render(load(config), KNOWN[model], height, width, frames, steps=1, layers=1)
        seconds = time.perf_counter() - start
        rows = {}
        for stage in compared_stages(result.plan, result.stages):
            planned, traced = result.plan.memory.get(f"stage.{stage}", 0), result.stages[stage].transient
            rows[stage] = (planned, traced)
            print(f"| {model} | {config} | {height}x{width} | {result.num_frames} | {stage} | {human(planned)} | "
                  f"{human(traced)} | {(planned - traced) / traced:+.1%} | {seconds:.0f} |", flush=True)
        print("JSON " + json.dumps({"case": i, "config": config, "model": model, "size": [height, width],
                                    "frames": result.num_frames, "transients": rows, "seconds": round(seconds)}), flush=True)


#: Reality check renders: (architecture, height, width, frames, sketch height, sketch width).
REALITY = {
    "wan-medium-random": (256, 448, 9, 128, 224),
    "wan-1.3b-2-blocks": (256, 448, 9, 128, 224),
}


def reality_pipeline(name: str) -> WanPipeline:
    """The random pipeline of ``name``: the medium random Wan, or Wan2.1-1.3B's transformer (2 of its
    30 blocks) and VAE with a small text encoder of the same output width (its stage is not compared)."""
    if name in KNOWN:
        return random_pipeline(KNOWN[name])
    base = KNOWN["Wan2.1-1.3B"]
    text = dict(vocab_size=256, d_model=base.transformer["text_dim"], d_ff=64, d_kv=8, num_layers=1, num_heads=2,
                relative_attention_num_buckets=32)
    return random_pipeline(Architecture(name, transformer=dict(base.transformer, num_layers=2), vae=base.vae,
                                        text_encoder=text))


def reality(names: list[str]) -> None:
    import json

    from supergen.config import load_config as load

    print("| model | size (h x w x frames) | stage | real (live tensors) | traced (fake tensors) | trace error |")
    print("|---|---|---|---:|---:|---:|")
    for name in names:
        height, width, frames, sh, sw = REALITY[name]
        cfg = load("tiny", [f"sketch.height={sh}", f"sketch.width={sw}"])
        pipe = reality_pipeline(name)
        pipe.set_progress_bar_config(disable=True)
        start = time.perf_counter()
        real = measure_render(pipe, cfg, height, width, frames, steps=1)
        real_s = time.perf_counter() - start
        fake = trace_render(cfg, Architecture.from_pipeline(pipe), height, width, frames, steps=1, layers=None)
        rows = {}
        for stage, measured in real.stages.items():
            traced = fake.stages[stage].transient
            rows[stage] = (measured.transient, traced)
            print(f"| {name} | {height}x{width}x{fake.num_frames} | {stage} | {human(measured.transient)} | {human(traced)} | "
                  f"{(traced - measured.transient) / measured.transient:+.1%} |", flush=True)
        print("JSON " + json.dumps({"model": name, "size": [height, width, fake.num_frames], "transients": rows,
                                    "real_s": round(real_s), "trace_s": round(fake.seconds)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", choices=sorted(SETTINGS), help="default: all")
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--frames", type=int)
    parser.add_argument("--reality", action="append", nargs="?", const="all", choices=[*REALITY, "all"],
                        help="the tracer against a real execution (default: every REALITY model)")
    parser.add_argument("--held-out", action="store_true", help="the planner's transients on the HELD_OUT renders")
    parser.add_argument("--case", type=int, action="append", help="with --held-out: these HELD_OUT indices (default: all)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.reality:
        return reality(list(REALITY) if "all" in args.reality else args.reality)
    if args.held_out:
        return held_out(args.case or list(range(len(HELD_OUT))))
    for name in args.arch or list(SETTINGS):
        s = SETTINGS[name]
        measure(name, args.height or s["height"], args.width or s["width"], args.frames or s["frames"])


if __name__ == "__main__":
    main()
