"""``supergen`` command line: ``supergen render ...``, ``supergen plan ...``, ``supergen demo ...``.

User errors (:class:`~supergen.errors.SuperGenError`) print one ``error:`` line and exit with status 2,
without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Sequence

import torch

from . import parallel
from .config import SuperGenConfig, load_config
from .errors import SuperGenError

logger = logging.getLogger("supergen")

#: CLI flags that are shorthands for config keys.
FLAG_TO_KEY = {
    "model": "model.name",
    "dtype": "model.dtype",
    "device": "model.device",
    "prompt": "job.prompt",
    "negative_prompt": "job.negative_prompt",
    "image": "job.image",
    "sketch_video": "job.sketch_video",
    "height": "job.height",
    "width": "job.width",
    "num_frames": "job.num_frames",
    "seed": "job.seed",
    "steps": "refine.num_inference_steps",
    "strength": "refine.strength",
    "output": "output.path",
    "fps": "output.fps",
}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that choose and place a loadable model (render and demo)."""
    parser.add_argument("--model", help="tiny | tiny-i2v | toy | a diffusers folder or Hugging Face id")
    parser.add_argument("--dtype", help="float32 | bfloat16 | float16")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="supergen", description="2K/4K video from diffusers video models, without training.")
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser(
        "render",
        help="render one video",
        description="Render one video. Trailing key=value arguments override any config key (e.g. tiling.mode=overlap).",
    )
    render.add_argument("--config", help="preset name (tiny) or YAML file; default: tiny")
    add_model_arguments(render)
    render.add_argument("--prompt")
    render.add_argument("--negative-prompt")
    render.add_argument("--image", help="conditioning image for image-to-video models")
    render.add_argument("--sketch-video", help="use this low-resolution video as the sketch (upscaling)")
    render.add_argument("--height", type=int)
    render.add_argument("--width", type=int)
    render.add_argument("--num-frames", type=int)
    render.add_argument("--seed", type=int)
    render.add_argument("--steps", type=int, help="refinement schedule length (refine.num_inference_steps)")
    render.add_argument("--strength", type=float, help="fraction of the schedule re-run on the upscaled sketch")
    render.add_argument("--output", "-o", help="output video path (.mp4)")
    render.add_argument("--fps", type=int)
    render.add_argument("--save-sketch", action="store_true", help="also write the sketch as <output>.sketch.mp4")
    render.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    render.add_argument("--jobs", help="batch: a .jsonl or .csv file of jobs, one video a row (see supergen.jobs)")
    render.add_argument("--output-dir", help="batch: folder for the videos, their sidecar JSON and results.jsonl")
    render.add_argument("--dry-run", action="store_true", help="batch: validate every row of --jobs, render nothing")
    render.add_argument("--cache-map", metavar="PNG", help="write a picture of the tiles computed/reused at every step")
    render.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")

    plan = sub.add_parser(
        "plan",
        help="print what a render costs (tiles, FLOPs, memory) without loading weights",
        description="Print the sketch size, tile grid, steps, tokens per tile, transformer FLOPs per step and "
        "estimated peak memory of one render (docs/planner.md). Trailing key=value arguments override config keys.",
    )
    plan.add_argument("--config", help="preset name or YAML file; default: the library defaults (50 steps, strength 0.5)")
    plan.add_argument("--model", help="Wan2.1-1.3B | Wan2.1-14B | Wan2.1-I2V-14B | tiny | wan-medium-random | a Hugging Face id of those | a local model folder")
    plan.add_argument("--dtype", help="float32 | bfloat16 | float16")
    plan.add_argument("--height", type=int)
    plan.add_argument("--width", type=int)
    plan.add_argument("--num-frames", type=int)
    plan.add_argument("--steps", type=int, help="refinement schedule length (refine.num_inference_steps)")
    plan.add_argument("--strength", type=float)
    plan.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")

    demo = sub.add_parser(
        "demo",
        help="serve the Gradio preview app (needs: pip install supergen[demo])",
        description="A web page to render one video at a time: the sketch appears when stage 1 ends, then the final video.",
    )
    demo.add_argument("--config", help="preset name or YAML file; default: tiny")
    add_model_arguments(demo)
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    demo.add_argument("--port", type=int, default=7860)
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def config_from_args(args: argparse.Namespace, default_preset: str | None = "tiny") -> SuperGenConfig:
    overrides = [f"{key}={_quote(getattr(args, flag))}" for flag, key in FLAG_TO_KEY.items() if getattr(args, flag, None) is not None]
    if getattr(args, "save_sketch", False):
        overrides.append("output.save_sketch=true")
    # Explicit key=value arguments come last so they win over the shorthand flags.
    return load_config(args.config or default_preset, overrides + list(args.overrides))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SuperGenError(f"model.device={name!r} but no CUDA device is available; valid here: auto, cpu")
    return device


def render(args: argparse.Namespace) -> int:
    from .builtin import load_pipeline
    from .videoio import check_output_path, write_video
    from .pipeline import SuperGenPipeline

    cfg = config_from_args(args)
    if args.jobs is not None:
        from .jobs import render_jobs

        return render_jobs(cfg, args.jobs, args.output_dir, dry_run=args.dry_run, quiet=args.quiet)
    group = parallel.init(cfg)  # None without a launcher (torchrun / accelerate launch)
    if group is not None and group.count > 1:
        raise SuperGenError("parallel.group_size splits the ranks between jobs: use it with --jobs")
    leader = group is None or group.is_leader  # the one rank that writes the video and speaks
    output = check_output_path(cfg.output.path)
    device = resolve_device(cfg.model.device)
    pipe = load_pipeline(cfg.model.name, getattr(torch, cfg.model.dtype), device)
    if args.quiet or not leader:
        pipe.set_progress_bar_config(disable=True)
    sg = SuperGenPipeline.from_pipe(pipe, cfg)
    sketch_video = None
    if cfg.job.sketch_video is not None:
        from .videoio import read_video

        sketch_video = read_video(cfg.job.sketch_video)
    start = time.perf_counter()
    # A CPU generator gives the same noise on every device (and every rank).
    generator = torch.Generator("cpu").manual_seed(cfg.job.seed)
    out = sg(generator=generator, sketch_video=sketch_video, output_type="np")
    if not leader:
        return 0
    write_video(output, out.frames[0], fps=cfg.output.fps, quality=cfg.output.quality)
    if cfg.output.save_sketch and out.sketch is not None:
        write_video(output.with_suffix(".sketch" + output.suffix), out.sketch[0], fps=cfg.output.fps, quality=cfg.output.quality)
    stats = out.stats
    print(
        f"supergen: {stats.size[1]}x{stats.size[0]}x{stats.num_frames} from a "
        f"{'%dx%d' % stats.sketch[::-1] if stats.sketch else 'noise (strength 1)'} sketch, {stats.tiling}, "
        f"{len(stats.steps)} steps, {stats.tile_forwards} tile-forwards"
        f" ({out.cache_report.tiles_skipped} skipped, {out.cache_report.block_share_skipped:.0%} of block forwards),"
        f" {time.perf_counter() - start:.1f} s -> {output}"
    )
    if args.cache_map:
        from .cache import write_cache_map

        write_cache_map(args.cache_map, out.cache_report, (out.frames[0][0] * 255).round().astype("uint8"))
    return 0


def plan(args: argparse.Namespace) -> int:
    from .planner import architecture, format_plan, make_plan, with_native_sketch

    cfg = config_from_args(args, default_preset=None)
    arch = architecture(cfg.model.name)
    planned = with_native_sketch(cfg, arch)
    print(format_plan(make_plan(planned, arch)))
    if planned is not cfg:
        print(
            f"sketch: {arch.name}'s native size; to render exactly this plan pass "
            f"sketch.height={planned.sketch.height} sketch.width={planned.sketch.width}"
        )
    return 0


def demo(args: argparse.Namespace) -> int:
    from .demo import serve

    serve(config_from_args(args), host=args.host, port=args.port)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "render":
            return render(args)
        if args.command == "plan":
            return plan(args)
        if args.command == "demo":
            return demo(args)
    except SuperGenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except parallel.RankFailure as exc:
        # A failure every rank agreed on carries the same message everywhere: rank 0 prints it.
        group = parallel.active_group()
        if not exc.recoverable or group is None or group.global_rank == 0:
            print(f"error: {exc}", file=sys.stderr)
        return 1
    return 1


def _quote(value: object) -> str:
    # omegaconf's dotlist parses values as YAML: quote strings so prompts like "yes" or "a: b" stay strings.
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
