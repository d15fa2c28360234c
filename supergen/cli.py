"""``supergen`` command line: ``supergen render ...``, ``supergen plan ...``, ``supergen demo ...``.

User errors (:class:`~supergen.errors.SuperGenError`) print one ``error:`` line and exit with status 2,
without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from . import __version__
from .config import CONFIG_DIR, SHORTHANDS, SuperGenConfig, choices_of, load_config
from .errors import SuperGenError

logger = logging.getLogger("supergen")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that choose and place a loadable model (render and demo)."""
    parser.add_argument("--model", help="tiny | tiny-i2v | toy | a diffusers folder or Hugging Face id")
    parser.add_argument("--dtype", help="float32 | bfloat16 | float16")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--offload", choices=choices_of("model.offload"),
                        help="diffusers' memory savers (model.offload): model (enable_model_cpu_offload), sequential "
                             "(enable_sequential_cpu_offload), group (enable_group_offload, block level); default none")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="supergen", description="2K/4K video from diffusers video models, without training.")
    parser.add_argument("--version", action="version", version=f"supergen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser(
        "render",
        help="render one video",
        description="Render one video. Trailing key=value arguments override any config key (e.g. tiling.mode=overlap).",
    )
    render.add_argument("--config", help=f"preset name or YAML file; presets: {', '.join(presets())}; default: tiny "
                        "(or, with --model, the preset of that model)")
    add_model_arguments(render)
    render.add_argument("--prompt", help="what to render (job.prompt)")
    render.add_argument("--negative-prompt", help="what to steer away from (job.negative_prompt)")
    render.add_argument("--image", help="conditioning image for image-to-video models")
    render.add_argument("--sketch-video", help="use this low-resolution video as the sketch (upscaling)")
    render.add_argument("--height", type=int, help="output height in pixels (job.height)")
    render.add_argument("--width", type=int, help="output width in pixels (job.width)")
    render.add_argument("--num-frames", type=int, help="frames; snapped to what the VAE takes, e.g. 4k+1 (job.num_frames)")
    render.add_argument("--seed", type=int, help="random seed; -1 draws one and reports it (job.seed)")
    render.add_argument("--steps", type=int, help="refinement schedule length (refine.num_inference_steps)")
    render.add_argument("--strength", type=float, help="fraction of the schedule re-run on the upscaled sketch")
    render.add_argument("--output", "-o", help="output video path (.mp4)")
    render.add_argument("--fps", type=int, help="frames per second of the written video (output.fps)")
    render.add_argument("--overwrite", action="store_true", help="replace an existing output file (default: refuse)")
    render.add_argument("--save-sketch", action="store_true", help="also write the sketch as <output>.sketch.mp4")
    render.add_argument("--no-memory-check", action="store_true",
                        help="render even when the planner estimates it will not fit in memory (model.memory_check=false)")
    render.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    render.add_argument("--jobs", help="batch: a .jsonl or .csv file of jobs, one video a row (see supergen.jobs)")
    render.add_argument("--output-dir", help="batch: folder for the videos, their sidecar JSON and results.jsonl")
    render.add_argument("--dry-run", action="store_true", help="batch: validate every row of --jobs, render nothing")
    render.add_argument("--ray", nargs="?", const="", metavar="auto|ADDRESS",
                        help="batch: render on a Ray cluster, groups of parallel.group_size actors pulling jobs (docs/farm.md); "
                             "alone: RAY_ADDRESS or a local Ray; auto: the cluster this machine is in; or the head's address")
    render.add_argument("--cache-map", metavar="PNG", help="write a picture of the tiles computed/reused at every step")
    render.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")

    upscale = sub.add_parser(
        "upscale",
        help="upscale an existing video (any length and frame rate) to 2K/4K",
        description="Upscale a video: its frames are the sketch, refined in shifted tiles (and time windows of the "
        "model's native length). Same frame count and fps out, audio copied. Trailing key=value arguments override "
        "config keys (e.g. refine.strength=0.4).",
    )
    upscale.add_argument("input", help="the video to upscale (mp4, webm, mov, gif, ...)")
    # Filled in main(): argparse cannot take positionals both before and after the options.
    upscale.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    upscale.add_argument("--output", "-o", required=True, help="output video path (.mp4)")
    upscale.add_argument("--scale", type=int, choices=(2, 3, 4), help="output size as a multiple of the input's (aspect kept)")
    upscale.add_argument("--height", type=int, help="output height in pixels (with --width, or alone: aspect kept)")
    upscale.add_argument("--width", type=int, help="output width in pixels (with --height, or alone: aspect kept)")
    upscale.add_argument("--prompt", help="what the video shows (default empty: the refinement follows the video alone)")
    upscale.add_argument("--config", help=f"preset name or YAML file; presets: {', '.join(presets())}; default: tiny "
                         "(or, with --model, the preset of that model)")
    add_model_arguments(upscale)
    upscale.add_argument("--seed", type=int, help="random seed (job.seed)")
    upscale.add_argument("--steps", type=int, help="refinement schedule length (refine.num_inference_steps)")
    upscale.add_argument("--strength", type=float, help="fraction of the schedule re-run on the upscaled input")
    upscale.add_argument("--overwrite", action="store_true", help="replace an existing output file (default: refuse)")
    upscale.add_argument("--quiet", "-q", action="store_true", help="no progress bars")

    plan = sub.add_parser(
        "plan",
        help="print what a render costs (tiles, FLOPs, memory) without loading weights",
        description="Print the sketch size, tile grid, steps, tokens per tile, transformer FLOPs per step and "
        "estimated peak memory of one render (docs/planner.md). Trailing key=value arguments override config keys.",
    )
    plan.add_argument("--config", help="preset name or YAML file; default: the library defaults (50 steps, strength 0.5)")
    plan.add_argument("--model", help="Wan2.1-1.3B | Wan2.1-14B | Wan2.1-I2V-14B | Wan2.2-T2V-A14B | CogVideoX1.5-5B-I2V | "
                      "HunyuanVideo-I2V | LTX-Video | tiny | wan-medium-random | a Hugging Face id of those | a local Wan model folder")
    plan.add_argument("--dtype", help="float32 | bfloat16 | float16")
    plan.add_argument("--height", type=int, help="output height in pixels")
    plan.add_argument("--width", type=int, help="output width in pixels")
    plan.add_argument("--num-frames", type=int, help="frames")
    plan.add_argument("--input", metavar="VIDEO", help="plan the upscale of this video: its frame count, and with --scale its size")
    plan.add_argument("--scale", type=int, choices=(2, 3, 4), help="with --input: the output size as a multiple of the input's")
    plan.add_argument("--steps", type=int, help="refinement schedule length (refine.num_inference_steps)")
    plan.add_argument("--strength", type=float)
    plan.add_argument("--trace", action="store_true",
                      help="also dry-run the real pipeline on fake tensors (no weights, no GPU) and print traced memory next to the estimate")
    plan.add_argument("--trace-steps", type=int, default=2, help="sketch and refinement steps traced (default 2; peaks do not depend on it)")
    plan.add_argument("--trace-layers", type=int, default=2,
                      help="transformer blocks built per block list and expert (default 2; the rest are counted from the config); 0: all")
    plan.add_argument("--trace-baseline", action="store_true",
                      help="with --trace: also trace the plain diffusers pipeline (WanPipeline.__call__) at the model's native size "
                           "and the same frame count, and print supergen's traced peak as a multiple of its peak")
    plan.add_argument("--offload", choices=choices_of("model.offload"),
                      help="plan (and with --trace, trace) under one of diffusers' memory savers (model.offload); "
                           "the trace models group only: block-level group offloading, counting the onloaded groups")
    plan.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")

    demo = sub.add_parser(
        "demo",
        help="serve the Gradio preview app (needs the demo extra: pip install \"supergen[demo]\")",
        description="A web page to render one video at a time: the sketch appears when stage 1 ends, then the final video.",
    )
    demo.add_argument("--config", help=f"preset name or YAML file; presets: {', '.join(presets())}; default: tiny")
    add_model_arguments(demo)
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    demo.add_argument("--port", type=int, default=7860)
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def default_preset(model: str | None) -> str | None:
    """``tiny`` without ``--model``; else the preset made for that model (a local folder: recognised
    from its configs, said on stderr; None: the default settings), or a clear error."""
    if model is None:
        return "tiny"
    from .builtin import model_preset

    preset, how = model_preset(model)
    if Path(model).is_dir():
        print(f"supergen: {how}", file=sys.stderr)
    elif preset is None:
        raise SuperGenError(f"no preset is made for --model {model!r}; pass --config with a preset ({', '.join(presets())}) or a YAML file")
    return preset


def config_from_args(args: argparse.Namespace, default: str | None = "tiny") -> SuperGenConfig:
    overrides = [f"{key}={_quote(getattr(args, flag))}" for flag, key in SHORTHANDS.items() if getattr(args, flag, None) is not None]
    if getattr(args, "save_sketch", False):
        overrides.append("output.save_sketch=true")
    if getattr(args, "no_memory_check", False):
        overrides.append("model.memory_check=false")
    preset = args.config or (default_preset(getattr(args, "model", None)) if default == "tiny" else default)
    # Explicit key=value arguments come last so they win over the shorthand flags.
    return load_config(preset, overrides + list(args.overrides))


def render(args: argparse.Namespace) -> int:
    from . import preflight

    if args.jobs is None:
        for flag, given in (("--dry-run", args.dry_run), ("--output-dir", args.output_dir is not None), ("--ray", args.ray is not None)):
            if given:
                raise SuperGenError(f"{flag} is for batch rendering: use it with --jobs FILE")
    elif args.output is not None:
        raise SuperGenError("-o/--output names one video; with --jobs the videos go to --output-dir")
    elif args.cache_map is not None:
        raise SuperGenError("--cache-map draws one render; with --jobs each job's cache statistics are in its sidecar "
                            "(<output-dir>/<name>.json, \"cache\")")
    cfg = config_from_args(args)
    if not args.dry_run:  # a model will load
        if args.quiet:
            hide_loading_bars()
        cpu_float16_note(cfg)
    if args.jobs is not None:
        from .jobs import render_jobs

        elsewhere = None
        if args.ray is not None:
            from .farm import farm_renderer

            elsewhere = farm_renderer(cfg, args.ray, quiet=args.quiet)
        return render_jobs(cfg, args.jobs, args.output_dir, dry_run=args.dry_run, quiet=args.quiet, overwrite=args.overwrite,
                           elsewhere=elsewhere)
    # Everything a typo could break is checked before the (multi-GB) model load.
    output = preflight.check_output_path(cfg.output.path, overwrite=args.overwrite)
    sketch_output = output.with_suffix(".sketch" + output.suffix) if cfg.output.save_sketch else None
    if sketch_output is not None:
        preflight.check_output_path(sketch_output, overwrite=args.overwrite)
    if args.cache_map:
        preflight.check_cache_map_path(args.cache_map)
    preflight.check_job(cfg)
    preflight.check_one_group(cfg, "parallel.group_size splits the ranks between jobs: use it with --jobs")
    from .runtime import Runtime

    runtime = Runtime.start(cfg, quiet=args.quiet)
    start = time.perf_counter()
    done = runtime.render(cfg, output, sketch_output)
    if not runtime.leader:
        return 0
    out, stats = done.output, done.output.stats
    if cfg.output.save_sketch and out.sketch is None:
        print("supergen: no sketch to save (strength 1 renders from noise)", file=sys.stderr)
    print(
        f"supergen: {stats.size[0]}x{stats.size[1]}x{stats.num_frames} (height x width x frames) from a "
        f"{'%dx%d' % stats.sketch if stats.sketch else 'noise (strength 1)'} sketch, {stats.tiling}, "
        f"{len(stats.steps)} steps, {stats.tile_forwards} tile-forwards"
        f" ({out.cache_report.tiles_skipped} skipped, {out.cache_report.block_share_skipped:.0%} of block forwards),"
        f" seed {done.seed}, {time.perf_counter() - start:.1f} s -> {output}"
    )
    if "plan" in stats.parallel:
        from .parallel.mesh import stage_summary

        print(f"supergen: {stats.parallel['plan']['summary']}; per stage (time, bytes sent): {stage_summary(stats.parallel['stages'])}")
    if args.cache_map:
        from .cache import write_cache_map

        write_cache_map(args.cache_map, out.cache_report, out.frames[0][0].cpu().numpy())
    return 0


def upscale(args: argparse.Namespace) -> int:
    from .upscale_video import upscale as upscale_video

    # The target size, frame count, fps and prompt come from the input (supergen.upscale_video), not the preset's job.
    size, args.height, args.width = (args.height, args.width), None, None
    prompt, args.prompt = args.prompt, None
    start = time.perf_counter()
    path, source, out = upscale_video(config_from_args(args), args.input, args.output, scale=args.scale, height=size[0],
                                      width=size[1], prompt=prompt, overwrite=args.overwrite, quiet=args.quiet)
    print(f"supergen: {source.size[0]}x{source.size[1]} -> {out[0]}x{out[1]} (height x width), {source.frames} frames at "
          f"{source.fps:g} fps{', audio copied' if source.has_audio else ''}, {time.perf_counter() - start:.1f} s -> {path}")
    return 0


def hide_loading_bars() -> None:
    """``-q``: the progress bars diffusers, transformers and the Hub draw while loading (pipeline
    components, checkpoint shards, downloads), which no log level hides."""
    import diffusers.utils.logging
    import huggingface_hub.utils
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


def cpu_float16_note(cfg: SuperGenConfig) -> None:
    """One line in place of diffusers' warning, five times over, that float16 on the CPU will fail
    (:data:`KNOWN_NOISE`): torch runs it."""
    from .preflight import resolve_device

    if cfg.model.dtype == "float16" and resolve_device(cfg.model.device).type == "cpu":
        logger.info("model.dtype=float16 on the CPU: it runs (diffusers' warning that it cannot is out of date), "
                    "though float32 is the usual precision there")


def plan(args: argparse.Namespace) -> int:
    if args.trace_baseline and not args.trace:
        raise SuperGenError("--trace-baseline compares with the supergen trace: add --trace")
    if args.input is not None:  # the upscale of a video: its length (and with --scale its size) from the file
        from .upscale_video import probe, target_size

        source = probe(args.input)
        args.num_frames = source.frames
        if args.scale is not None:
            args.height, args.width = target_size(source.size, None, None, args.scale)
    cfg = config_from_args(args, default=None)  # before the imports below (torch, diffusers): a typo costs no wait
    from .cost import architecture, estimate, format_plan, with_native_sketch

    arch = architecture(cfg.model.name)
    planned = with_native_sketch(cfg, arch)
    resource = estimate(planned, arch)
    print(format_plan(resource))
    if args.trace:
        from .trace import format_pipeline_trace, format_trace, trace_pipeline, trace_render

        traced = trace_render(planned, arch, *resource.size, resource.num_frames, steps=args.trace_steps,
                              layers=args.trace_layers or None)
        print(format_trace(traced))
        if args.trace_baseline:
            baseline = trace_pipeline(planned, arch, num_frames=resource.num_frames, steps=args.trace_steps,
                                      layers=args.trace_layers or None)
            print(format_pipeline_trace(baseline, traced))
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


#: Warnings the libraries print on every command that ask nothing of a supergen user, by logger.
KNOWN_NOISE = {
    # transformers without torchvision: diffusers' import touches CLIPImageProcessor, which then
    # falls back to the PIL processor (what supergen's image-to-video models use anyway).
    "transformers.utils.import_utils": "requires torchvision (not installed); falling back to",
    # diffusers on any dtype cast of a model with no float32-pinned modules (the list is empty).
    "diffusers.models.modeling_utils": "that should be kept in float32: []",
    # diffusers on every component moved to the CPU in float16 (five times for Wan): "running them will
    # fail". They run (torch has the CPU kernels); render says so in one line (cpu_float16_note).
    "diffusers.pipelines.pipeline_utils": "cannot run with `cpu` device",
}


def quiet_known_noise() -> None:
    """Drop exactly the :data:`KNOWN_NOISE` messages; every other warning still shows."""
    for name, text in KNOWN_NOISE.items():
        logging.getLogger(name).addFilter(lambda record, text=text: text not in record.getMessage())


def interrupt_on_sigterm() -> None:
    """Handle SIGTERM (what ``kill`` and job schedulers send) as Ctrl-C: a ``KeyboardInterrupt`` in the
    main thread, so the same cleanup runs (temporary files removed, the video encoder killed, the demo's
    folder removed) and one line is printed. Without it, Python dies at once and leaves them behind."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with ``key=value`` overrides anywhere among the flags: argparse takes only the
    first run of positionals as ``overrides`` and calls a later run (``key=val --output x key2=val2``) unrecognised."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and all("=" in item and not item.startswith("-") for item in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    interrupt_on_sigterm()
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO, format="%(name)s: %(message)s")
    quiet_known_noise()
    try:
        if args.command == "render":
            return render(args)
        if args.command == "upscale":
            return upscale(args)
        if args.command == "plan":
            return plan(args)
        if args.command == "demo":
            return demo(args)
    except SuperGenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Outputs are written under a temporary name and renamed when complete: nothing partial is left.
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from .parallel import RankFailure, active_group

        if not isinstance(exc, RankFailure):
            raise
        # A failure every rank agreed on carries the same message everywhere: rank 0 prints it.
        group = active_group()
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
