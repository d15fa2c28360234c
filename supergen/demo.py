"""The Gradio preview app (``supergen demo``): one page to render one video at a time.

The page shows, before anything runs, the plan of the render (tiles, steps, estimated peak memory, from
:mod:`supergen.cost`); while it runs, a progress bar with the stage and the time left; the sketch
video as soon as stage 1 ends (the preview), then the final video. User errors (a bad size, a missing
image for an image-to-video model, a size the memory check of ``supergen render`` refuses) become a
message in the status box, never a traceback. The image upload shows only for image-to-video models.

Jobs run one at a time (Gradio queue concurrency 1): the model is loaded once and shared. The pipeline
runs in a worker thread so that the page can be updated from its stage callbacks while it runs.

With a cache policy that has a threshold (:data:`supergen.config.THRESHOLDS`: ``region``,
``teacache``, ``fbc``, ``magcache``), the page has a control for it (0 = off) and shows the cache map (:func:`supergen.cache.cache_map`: computed and reused tiles per step) under
the video.

Several ranks (``torchrun --nproc_per_node=N -m supergen demo``): rank 0 serves the page; every job is
sent to all ranks of the world (one render group: ``parallel.group_size`` must be unset) over a gloo
group of its own that waits without a time limit, since a page may sit idle for hours; then all ranks
render it together through :mod:`supergen.parallel`.
"""

from __future__ import annotations

import datetime
import logging
import operator
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .config import THRESHOLDS, SuperGenConfig, load_config
from .errors import SuperGenError, install_hint
from .cache.picture import COLOURS as CACHE_COLOURS
from .cost import Architecture, ResourcePlan, estimate, rows

logger = logging.getLogger("supergen")

#: Target size presets, ``(height, width)``; "custom" uses the height and width fields.
SIZE_PRESETS: dict[str, tuple[int, int] | None] = {
    "720p (1280x720)": (720, 1280),
    "1080p (1920x1080)": (1080, 1920),
    "2K (2560x1440)": (1440, 2560),
    "4K (3840x2160)": (2160, 3840),
    "custom": None,
}
#: Tiling choices shown in the page → config overrides.
TILING_MODES: dict[str, dict[str, str]] = {
    "shift, clamp at edges": {"tiling.mode": "shift", "tiling.boundary": "clamp"},
    "shift, wrap around (paper)": {"tiling.mode": "shift", "tiling.boundary": "wrap"},
    "overlap, feathered": {"tiling.mode": "overlap"},
    "attention: one canvas forward, tile + halo": {"tiling.mode": "attention"},
}


@dataclass
class Job:
    """One request from the page."""

    prompt: str
    negative_prompt: str
    image: Any
    preset: str
    height: float | None
    width: float | None
    num_frames: float | None
    seed: float | None
    steps: float | None
    strength: float
    tiling: str
    #: The threshold of the config's cache policy; None when it has none (no control on the page); 0 turns the cache off.
    cache_threshold: float | None = None

    def config(self, base: SuperGenConfig) -> SuperGenConfig:
        """``base`` with this job's values; a malformed field is a :class:`SuperGenError`."""
        size = SIZE_PRESETS.get(self.preset)
        height, width = size if size is not None else (self.height, self.width)
        fields = {"height": height, "width": width, "num_frames": self.num_frames, "seed": self.seed, "steps": self.steps}
        for name, value in fields.items():
            if value is None or float(value) != int(value):
                raise SuperGenError(f"{name} must be a whole number; got {value!r}")
        if self.tiling not in TILING_MODES:
            raise SuperGenError(f"tiling mode {self.tiling!r}; valid: {', '.join(TILING_MODES)}")
        overrides: dict[str, Any] = {
            "job.height": int(height), "job.width": int(width), "job.num_frames": int(self.num_frames),
            "job.seed": int(self.seed), "refine.num_inference_steps": int(self.steps), "refine.strength": float(self.strength),
            **TILING_MODES[self.tiling],
        }
        if self.cache_threshold is not None:
            overrides.update({"cache.enabled": self.cache_threshold > 0, THRESHOLDS[base.cache.policy]: float(self.cache_threshold)})
        # Range checks (e.g. height >= 16) are the config's; the pipeline adds the model's own limits.
        return load_config(base, overrides)


class Progress:
    """Fraction done and time left, from transformer FLOPs (the plan) and the throughput measured so far.

    The work is the sketch steps plus the refinement steps, each weighted by its planned FLOPs. The
    throughput (FLOP/s) is measured on the finished steps of this job; before any step has finished it
    is the previous job's, and the first job says "estimating". VAE time is not in the estimate.
    Without a plan (a model family the planner does not know) there is no estimate.
    """

    def __init__(self, plan: ResourcePlan | None, previous_rate: float | None):
        self.plan = plan
        self.total = 0 if plan is None else plan.sketch_steps * plan.sketch_flops_per_step + plan.refine_steps * plan.flops_per_step
        self.done = 0.0
        self.rate = previous_rate
        self.busy = 0.0  # seconds spent on the work counted in `done`

    def finished(self, flops: float, seconds: float) -> None:
        self.done += flops
        self.busy += seconds
        if self.busy > 0 and self.done > 0:
            self.rate = self.done / self.busy

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def eta(self) -> str:
        if self.total == 0:
            return "time left unknown"
        if self.rate is None:
            return "estimating time left"
        return f"about {max(0.0, (self.total - self.done) / self.rate):.0f} s left"


class DemoApp:
    """The model, its base config and the page's job handler (separate from Gradio so it can be read alone).

    Args:
        dispatch: with several ranks, the process group jobs are broadcast over (see :func:`serve`).
    """

    def __init__(self, pipe, config: SuperGenConfig, output_dir: str | os.PathLike | None = None, dispatch=None, group=None,
                 device=None):
        from .pipeline import SuperGenPipeline
        from .preflight import resolve_device

        self.pipe = pipe
        self.config = config
        self.group = group
        #: Where the model runs (the memory check's device): the runtime's, else the config's.
        self.device = device if device is not None else resolve_device(config.model.device)
        try:
            self.arch: Architecture | None = Architecture.from_pipeline(pipe, name=config.model.name)
            self.no_plan = ""
        except SuperGenError as exc:  # a family the planner does not know: render without a plan
            self.arch, self.no_plan = None, str(exc)
        # Check that the adapter accepts this pipeline now, not on the first job.
        self.takes_image = SuperGenPipeline(pipe, config).adapter.requires_image
        #: A folder of our own (removed by :meth:`cleanup`) unless the caller gave one.
        self.temporary = output_dir is None
        self.output_dir = Path(output_dir or tempfile.mkdtemp(prefix="supergen-demo-"))
        self.rate: float | None = None  # FLOP/s of the last job, for the next job's first ETA
        self.dispatch = dispatch
        #: The key of the cache threshold the page offers: the config's cache policy's, None when it has none (steps, none).
        self.cache_key = THRESHOLDS.get(config.cache.policy)
        self.has_cache = self.cache_key is not None

    def cleanup(self) -> None:
        """Remove the videos of this session when the folder is the demo's own temporary one."""
        if self.temporary:
            shutil.rmtree(self.output_dir, ignore_errors=True)

    def plan(self, cfg: SuperGenConfig) -> ResourcePlan:
        if self.arch is None:
            raise SuperGenError(self.no_plan)
        return estimate(cfg, self.arch)

    def plan_markdown(self, *fields: Any) -> str:
        """The plan table for the page's current fields, or the reason there is none."""
        try:
            return plan_table(self.plan(Job(*fields).config(self.config)))
        except SuperGenError as exc:
            return f"**No plan:** {exc}"

    def render(self, job: Job, cfg: SuperGenConfig, on_stage=None, on_step=None):
        """The pipeline call of one job; every rank makes exactly this call."""
        from .pipeline import SuperGenPipeline

        from .runtime import call_arguments, seeded_generator

        # An upload (alpha, a palette, 16 bits) is made 8-bit RGB by the pipeline (supergen.videoio.load_image).
        return SuperGenPipeline(self.pipe, cfg, self.group)(
            **call_arguments(cfg.job) | {"prompt": job.prompt, "negative_prompt": job.negative_prompt, "image": job.image},
            generator=seeded_generator(cfg.job.seed)[0], output_type="uint8",
            callback_on_stage=on_stage, callback_on_step_end=on_step,
        )

    def follow(self) -> None:
        """Ranks other than 0: render every job rank 0 sends until it sends None (the page closed)."""
        import torch.distributed as dist

        while True:
            box: list[Job | None] = [None]
            dist.broadcast_object_list(box, src=0, group=self.dispatch)
            if box[0] is None:
                return
            try:
                self.render(box[0], box[0].config(self.config))
            except SuperGenError:
                pass  # the same user error stops rank 0, which reports it in the page

    def stop_followers(self) -> None:
        if self.dispatch is not None:
            import torch.distributed as dist

            dist.broadcast_object_list([None], src=0, group=self.dispatch)

    def run(self, *fields: Any, progress=None) -> Iterator[tuple[str, str, Any, Any, Any]]:
        """Render one job; yields ``(status, plan, sketch video, final video, cache map)`` for the page."""
        from .runtime import uint8_chunks
        from .videoio import write_video

        from .runtime import check_memory

        try:
            job = Job(*fields)
            cfg = job.config(self.config)
        except SuperGenError as exc:
            yield f"**Error:** {exc}", "", None, None, None
            return
        try:
            plan: ResourcePlan | None = self.plan(cfg)
            table = plan_table(plan)
        except SuperGenError as exc:  # the pipeline raises the same size errors, or renders without a plan
            plan, table = None, f"**No plan:** {exc}"
        try:
            check_memory(cfg, self.device, loaded=True)  # as supergen render does, before anything is sent to the ranks
        except SuperGenError as exc:
            yield f"**Error:** {exc}", table, None, None, None
            return
        stem = f"job-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{threading.get_ident() % 10000}"
        yield "Starting…", table, None, None, None
        if self.dispatch is not None:
            import torch.distributed as dist

            dist.broadcast_object_list([job], src=0, group=self.dispatch)

        events: queue.Queue = queue.Queue()

        def on_step(pipe, step, t, tensors):
            events.put(("step", step))
            return {}

        def work():
            try:
                events.put(("done", self.render(job, cfg, lambda stage, info: events.put(("stage", stage, info)), on_step)))
            except SuperGenError as exc:
                events.put(("error", exc))
            except BaseException as exc:  # a bug: report it in the page, keep the traceback in the log
                logger.exception("demo job failed")
                events.put(("error", RuntimeError(f"internal error ({type(exc).__name__}); see the server log")))

        track = Progress(plan, self.rate)
        stage_start = time.perf_counter()
        sketch_path = None
        refine_steps = 0  # set by the "refine" stage, which comes before any step
        threading.Thread(target=work, name="supergen-demo-job", daemon=True).start()
        while True:
            kind, *payload = events.get()
            now = time.perf_counter()
            if kind == "stage":
                stage, info = payload
                if stage == "upscale":  # the sketch is finished: show it, count its steps
                    track.finished(plan.sketch_steps * plan.sketch_flops_per_step if plan else 0, now - stage_start)
                    sketch_path = str(write_video(self.output_dir / f"{stem}.sketch.mp4", info["sketch"], fps=cfg.output.fps))
                if stage == "refine":
                    refine_steps = info["steps"]
                label = STAGE_LABELS[stage]
                if progress is not None:
                    progress(track.fraction, desc=f"{label} — {track.eta()}")
                yield f"{label} — {track.eta()}", table, sketch_path, None, None
                stage_start = now
            elif kind == "step":
                track.finished(plan.flops_per_step if plan else 0, now - stage_start)
                stage_start = now
                if progress is not None:
                    progress(track.fraction, desc=f"{STAGE_LABELS['refine']} step {payload[0] + 1}/{refine_steps} — {track.eta()}")
            elif kind == "error":
                yield f"**Error:** {payload[0]}", table, sketch_path, None, None
                return
            else:
                out = payload[0]
                self.rate = track.rate
                video = out.frames[0]  # (F, H, W, 3) uint8, written a chunk of frames at a time
                final = str(write_video(self.output_dir / f"{stem}.mp4", uint8_chunks(video), fps=cfg.output.fps))
                picture = None
                report = getattr(out, "cache_report", None)
                if report is not None:
                    from .cache import cache_map

                    # The map draws latent frame 0's tiles (with time windows each frame has its own), so the first frame goes under them.
                    picture = cache_map(report, thumbnail=video[0].cpu().numpy())
                stats = out.stats
                seconds = ", ".join(f"{k} {v:.1f} s" for k, v in stats.seconds.items())
                ranks = getattr(stats, "parallel", {}).get("ranks", 1)
                where = f" on {ranks} ranks" if ranks > 1 else ""
                status = f"Done: {stats.size[0]}x{stats.size[1]}x{stats.num_frames} (height x width x frames), {stats.tiling}, {stats.tile_forwards} tile forwards{where} ({seconds})."
                yield status, table, sketch_path, final, picture
                return


STRENGTH_INFO = ("How much of the refinement schedule is re-run on the upscaled sketch: low keeps the sketch's "
                 "layout and only adds detail, 1 renders from noise (no sketch).")
CACHE_INFO = ("A tile is reused from the previous step while its change, as the cache policy measures it, stays under "
              "this; higher reuses more (faster, less exact), 0 computes every tile.")


def _swatch(rgb) -> str:
    red, green, blue = (int(v) for v in rgb)
    return f'<span style="display:inline-block;width:1em;height:1em;background:rgb({red},{green},{blue});vertical-align:middle"></span>'


#: Under the cache map: what its colours mean (the colours are the picture's own, supergen.cache.picture).
CACHE_LEGEND = (f"{_swatch(CACHE_COLOURS['computed'])} computed &nbsp; {_swatch(CACHE_COLOURS['reused'])} reused from the "
                "previous step &nbsp; in between: computed, with that share of its blocks skipped (block cache); "
                "one panel per step, left to right, the step's computed/total tiles above it")

STAGE_LABELS = {
    "sketch": "Stage 1/4: sketch at native size",
    "upscale": "Stage 2/4: upscale and re-noise",
    "refine": "Stage 3/4: tiled refinement",
    "decode": "Stage 4/4: decoding",
}


def plan_table(plan: ResourcePlan) -> str:
    """The plan as a Markdown table (the same rows ``supergen plan`` prints)."""
    lines = ["| plan | estimate |", "|---|---|"]
    lines += [f"| {name} | {value.replace('|', '/')} |" for name, value in rows(plan)]
    return "\n".join(lines)


def build_app(app: DemoApp):
    """The Gradio page for ``app``."""
    import gradio as gr

    job = app.config.job
    with gr.Blocks(title="supergen") as page:
        gr.Markdown(f"# supergen — {app.config.model.name}\nSketch at the model's native size, then refine in shifted tiles.")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", value=job.prompt, lines=2, elem_id="prompt")
                # Right under the prompt: on the first screen of a laptop (1000 px high) with every field below it.
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
                negative = gr.Textbox(label="Negative prompt", value=job.negative_prompt, elem_id="negative-prompt")
                # Text-to-video models take no image (the pipeline refuses one): no upload box for them.
                # image_mode=None: the upload as it is (Gradio's default "RGB" clips a 16-bit image to white);
                # the pipeline converts it by bit depth (supergen.videoio.load_image).
                image = gr.Image(label="Image (first frame)", type="pil", image_mode=None, elem_id="image", visible=app.takes_image)
                preset = gr.Dropdown(list(SIZE_PRESETS), value="custom", label="Size", elem_id="preset")
                with gr.Row():
                    height = gr.Number(label="Height", value=job.height, precision=0, elem_id="height")
                    width = gr.Number(label="Width", value=job.width, precision=0, elem_id="width")
                with gr.Row():
                    frames = gr.Number(label="Frames", value=job.num_frames, precision=0, elem_id="frames")
                    seed = gr.Number(label="Seed", value=job.seed, precision=0, elem_id="seed")
                    steps = gr.Number(label="Steps (refinement schedule)", value=app.config.refine.num_inference_steps, precision=0, elem_id="steps")
                strength = gr.Slider(0.05, 1.0, value=app.config.refine.strength, step=0.05, label="Strength", elem_id="strength",
                                     info=STRENGTH_INFO)
                tiling = gr.Dropdown(list(TILING_MODES), value=_tiling_choice(app.config), label="Tiling", elem_id="tiling")
                cache = []
                if app.has_cache:
                    start = operator.attrgetter(app.cache_key)(app.config) if app.config.cache.enabled else 0.0
                    cache = [gr.Slider(0.0, 1.0, value=start, step=0.01, label=f"Cache threshold, {app.cache_key} (0 = off)", elem_id="cache-threshold",
                                       info=CACHE_INFO)]
            with gr.Column():
                status = gr.Markdown("Ready.", elem_id="status")
                sketch = gr.Video(label="Sketch (stage 1)", elem_id="sketch", interactive=False)
                final = gr.Video(label="Final video", elem_id="final", interactive=False)
                cache_picture = gr.Image(label="Cache map: the canvas's tiles at each refinement step", elem_id="cache-map",
                                         interactive=False, visible=app.has_cache)
                gr.HTML(CACHE_LEGEND, elem_id="cache-legend", visible=app.has_cache)
                plan = gr.Markdown(elem_id="plan")
        fields = [prompt, negative, image, preset, height, width, frames, seed, steps, strength, tiling, *cache]

        def preset_sizes(name):
            size = SIZE_PRESETS.get(name)
            return (gr.update(), gr.update()) if size is None else size

        def run(*values, progress=gr.Progress()):
            yield from app.run(*values, progress=progress)

        preset.change(preset_sizes, preset, [height, width], queue=False)
        for field in (preset, height, width, frames, steps, strength, tiling):
            field.change(app.plan_markdown, fields, plan, queue=False)
        page.load(app.plan_markdown, fields, plan, queue=False)
        generate.click(run, fields, [status, plan, sketch, final, cache_picture], concurrency_limit=1)
    page.queue(default_concurrency_limit=1)
    return page


def _tiling_choice(config: SuperGenConfig) -> str:
    for name, overrides in TILING_MODES.items():
        if all(str(getattr(config.tiling, key.split(".")[1])) == value for key, value in overrides.items()):
            return name
    return next(iter(TILING_MODES))


def serve(config: SuperGenConfig, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Load the model once and serve the page until interrupted (``supergen demo``); see the module docstring for ranks."""
    # The page is local; it must not report usage to Gradio's servers.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SuperGenError(f"the demo needs Gradio: {install_hint('demo')}") from None
    from .preflight import check_one_group

    check_one_group(config, "the demo renders each job on all ranks: leave parallel.group_size unset")
    from .runtime import Runtime

    runtime = Runtime.start(config, quiet=True, load=False)
    group = runtime.group  # None without a launcher
    if group is None or group.global_rank == 0:
        check_port(host, port)  # before the model load
    dispatch = None
    if group is not None:
        import torch.distributed as dist

        # Created on every rank in the same order (torch.distributed's rule). No time limit: the followers
        # wait here for the next job for as long as the page is idle.
        dispatch = dist.new_group(backend="gloo", timeout=datetime.timedelta(days=365))
    runtime.load(quiet=True)
    app = DemoApp(runtime.pipe, config, dispatch=dispatch, group=group, device=runtime.device)
    if group is not None and group.global_rank != 0:
        app.follow()
        return
    try:
        build_app(app).launch(server_name=host, server_port=port, show_error=False, footer_links=[])
    except OSError as exc:  # the port was taken since check_port; Gradio's message names its environment variable
        raise SuperGenError(f"cannot serve on {host}:{port}: {str(exc).splitlines()[0]}; pick another port with --port") from None
    finally:
        app.stop_followers()
        app.cleanup()


def check_port(host: str, port: int) -> None:
    """Refuse a ``--port`` that cannot be served on ``host`` (in use, or not allowed) before the model loads."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server (uvicorn) binds: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SuperGenError(f"cannot serve on {host}:{port} ({exc.strerror}); pick another port with --port") from None
