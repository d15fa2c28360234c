"""``SuperGenPipeline``: a diffusers video pipeline made to render at 2K/4K, in two stages.

Read top to bottom, :meth:`SuperGenPipeline.__call__` is the method. It validates the call, decides
everything with :func:`~supergen.plan.plan_render`, then runs the stages, each taking the plan:

1. ``_sketch``: the wrapped pipeline at its native size, all steps, decoded to pixels;
2. ``_upscale``: resize the frames in pixel space, encode at the canvas size, re-noise to
   ``strength`` with the scheduler's own method and the user's generator;
3. ``_refine``: the remaining steps on the canvas, in tiles (:mod:`supergen.refine`);
4. ``_decode``: tiled VAE decode, cropped to exactly the requested size.

The wrapped pipeline is left as it was found: VAE tiling, attention processors and position
modules changed for a render are restored when the call returns or raises.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ContextManager, Iterator

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from . import compat
from .adapters import CanvasEncoder, Conditioning, ModelAdapter, Request, adapter_class, adapter_for
from .attention import check_backend, dense_backend
from .builtin import load_pipeline, model_preset
from .cache import CacheReport, cache_policy
from .config import MethodConfig, load_config
from .errors import SuperGenError
from .parallel import HeadExchange, TiledVAE, TileGroup
from .parallel.recipe import Parallelism, parallelize
from .output import PIXEL_TYPES, VideoOutput
from .plan import RenderPlan, parked_in, plan_render
from .refine import SingleProcess, StepStats, TileRefiner
from .upscale import UpscaledVideo

logger = logging.getLogger("supergen")

OUTPUT_TYPES = (*PIXEL_TYPES, "latent")

#: Attributes and methods of the wrapped diffusers pipeline that :class:`SuperGenPipeline` forwards
#: (placement, memory savers, progress bars, LoRA), so code written for diffusers keeps working.
#: VAE tiling is not among them: the render plan decides it per call (``vae.tiling``).
FORWARDED = frozenset({
    "device", "dtype", "components", "set_progress_bar_config", "enable_model_cpu_offload",
    "enable_sequential_cpu_offload", "enable_group_offload", "maybe_free_model_hooks", "remove_all_hooks",
    "load_lora_weights", "fuse_lora", "unfuse_lora", "set_adapters", "unload_lora_weights",
})


@dataclass
class RenderStats:
    """Sizes and timings of one render (all sizes ``(height, width)``)."""

    size: tuple[int, int]
    canvas: tuple[int, int]
    sketch: tuple[int, int] | None
    num_frames: int
    tile: tuple[int, int]
    tiling: str
    strength: float
    seconds: dict[str, float] = field(default_factory=dict)
    steps: list[StepStats] = field(default_factory=list)
    #: With several ranks: ``plan`` (the mesh and what each stage did on it,
    #: :meth:`~supergen.parallel.ParallelPlan.as_dict`), ``stages`` (per stage ``seconds`` and the
    #: ``bytes`` all ranks sent), ``ranks``, and per refinement step this rank's ``bytes_sent``,
    #: ``tiles_computed`` (units) and ``split`` (units were (tile, branch) pairs).
    parallel: dict[str, Any] = field(default_factory=dict)

    @property
    def tile_forwards(self) -> int:
        return sum(s.tiles_computed for s in self.steps)


@dataclass
class SuperGenPipelineOutput(BaseOutput):
    """Like diffusers' video outputs, plus the sketch and what the render did.

    Attributes:
        frames: the video in ``output_type`` (``np``: ``(1, F, H, W, 3)`` in [0, 1]; ``pt``:
            ``(1, F, 3, H, W)``; ``uint8``: ``(1, F, H, W, 3)`` uint8 on the host; ``pil``: a list of
            lists of images; ``latent``: ``(1, C, f, h, w)``; see :class:`~supergen.output.VideoOutput`).
            With several ranks, pixel outputs are None on all but the group's leader (rank 0 of the group).
        sketch: the stage-1 video at sketch size in the same format, or None when ``strength=1``
            skipped the sketch (with ``output_type="latent"``: ``(1, 3, F, h, w)`` pixels in [-1, 1]).
        stats: sizes, per-stage seconds and per-step statistics.
        cache_report: per refinement step, which tiles were computed or reused and how many
            transformer blocks ran in each (:class:`~supergen.cache.CacheReport`).
    """

    frames: Any
    sketch: Any
    stats: RenderStats
    cache_report: CacheReport | None = None


class SuperGenPipeline:
    """Wraps a diffusers pipeline; ``__call__`` renders at any size with the two-stage method.

    Build with :meth:`from_pipe` (an already loaded pipeline) or :meth:`from_pretrained`.

    Args:
        pipe: a supported diffusers pipeline (:func:`~supergen.adapters.supported_pipelines`).
        config: the method (:class:`~supergen.config.MethodConfig`; a full
            :class:`~supergen.config.SuperGenConfig` works too, only its method sections are read).
        group: the ranks rendering each video together (:func:`supergen.parallel.init`), or None
            for this process alone.
        adapter: the family adapter to render with, on ``pipe`` (default: :func:`~supergen.adapters.adapter_for`).
            The injection point for a caller that changes what a render calls through the adapter's
            documented methods (an instance of a subclass of the family's adapter): the fake-tensor
            trace's :class:`~supergen.trace.TracedAdapter`.
    """

    def __init__(self, pipe: DiffusionPipeline, config: MethodConfig, group: TileGroup | None = None,
                 adapter: ModelAdapter | None = None):
        self.pipe = pipe
        self.config = config
        self.group = group
        if adapter is not None and (adapter.pipe is not pipe or not isinstance(adapter, adapter_class(pipe))):
            raise SuperGenError(f"adapter={type(adapter).__name__}: must be a {adapter_class(pipe).__name__} "
                                "(or a subclass) made on this pipeline")
        self.adapter: ModelAdapter = adapter if adapter is not None else adapter_for(pipe)

    @classmethod
    def from_pipe(
        cls, pipe: DiffusionPipeline, config: str | MethodConfig | dict | None = None, group: TileGroup | None = None, **overrides: Any
    ) -> "SuperGenPipeline":
        """Wrap ``pipe``.

        Args:
            pipe: a supported diffusers pipeline (:func:`~supergen.adapters.supported_pipelines`).
            config: a preset name, a YAML path, a config object or a nested dict.
            group: see the class.
            overrides: per section, e.g. ``tiling={"mode": "overlap"}, refine={"strength": 0.6}``.
        """
        flat: dict[str, Any] = {}
        for section, values in overrides.items():
            if not isinstance(values, dict):
                raise SuperGenError(f"override {section}={values!r}: pass a dict per config section, e.g. tiling={{'mode': 'overlap'}}")
            flat.update({f"{section}.{key}": value for key, value in values.items()})
        return cls(pipe, load_config(config, flat), group)

    @classmethod
    def from_pretrained(
        cls, path_or_id: str, torch_dtype: torch.dtype | None = None, config: str | MethodConfig | dict | None = None,
        group: TileGroup | None = None, **kwargs: Any,
    ) -> "SuperGenPipeline":
        """Load a model as ``DiffusionPipeline.from_pretrained`` does (it picks the pipeline class) and wrap it.

        Args:
            path_or_id: a diffusers model folder, a Hugging Face id, or a built-in model: ``tiny``,
                ``tiny-i2v`` (random, built in code) or ``toy`` (the small trained model shipped with supergen).
            torch_dtype: the weights' dtype (default float32).
            config, group: see :meth:`from_pipe`; without ``config``, the preset made for the model
                (:func:`~supergen.builtin.model_preset`: ``tiny``'s, ``toy``'s, the one a local folder's
                configs match), else the default settings.
            kwargs: a method config section as a dict (``tiling={"mode": "overlap"}``) overrides the config;
                every other keyword (``variant``, ``revision``, ``local_files_only``, ``cache_dir``,
                ``token``, ...) goes to ``DiffusionPipeline.from_pretrained``.
        """
        sections = {f.name for f in fields(MethodConfig)}
        overrides = {key: kwargs.pop(key) for key in list(kwargs) if key in sections}
        dtype = torch_dtype or kwargs.pop("dtype", None) or torch.float32  # diffusers' newer name for torch_dtype
        pipe = load_pipeline(path_or_id, dtype, "cpu", **kwargs)
        if config is None:  # the preset made for the model (a built-in one brings its own), else the defaults
            config = model_preset(path_or_id)[0]
        return cls.from_pipe(pipe, config, group, **overrides)

    # ---- the wrapped pipeline's placement and helpers -------------------------------------------
    def to(self, *args: Any, **kwargs: Any) -> "SuperGenPipeline":
        """Move the wrapped pipeline (diffusers' ``DiffusionPipeline.to``); returns this wrapper."""
        self.pipe.to(*args, **kwargs)
        return self

    def __getattr__(self, name: str) -> Any:
        # Only the documented list (FORWARDED): anything else is a plain AttributeError, not a
        # silent reach into the wrapped pipeline.
        if name in FORWARDED:
            return getattr(self.__dict__["pipe"], name)
        raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")

    def plan(
        self, height: int, width: int, num_frames: int, strength: float | None = None,
        num_inference_steps: int | None = None, sketch_video_size: tuple[int, int] | None = None,
    ) -> RenderPlan:
        """What a call with these arguments will do (:func:`~supergen.plan.plan_render` for this model)."""
        return plan_render(self.config, self.adapter, height, width, num_frames, strength, num_inference_steps, sketch_video_size)

    # ---- the method -------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str = "",
        negative_prompt: str = "",
        image: Any | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int = 81,
        strength: float | None = None,
        num_inference_steps: int | None = None,
        sketch_video: np.ndarray | torch.Tensor | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        callback_on_stage: Callable[[str, dict], None] | None = None,
        callback_on_sketch_step_end: Callable[[Any, int, torch.Tensor, dict], dict] | None = None,
        guidance_scale: float | None = None,
        num_videos_per_prompt: int | None = 1,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        max_sequence_length: int | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        plan: RenderPlan | None = None,
        observers: list[StageObserver] = (),
    ) -> SuperGenPipelineOutput | tuple:
        """Render one video.

        Args:
            image: PIL image (or path) for image-to-video pipelines.
            height, width: output size in pixels (required); sizes the model cannot take are rendered at the next
                multiple of ``adapter.pixel_multiple`` and cropped back, so the output is exactly this size.
            num_frames: snapped to what the VAE accepts (``4k + 1`` for 4× temporal compression) with a warning, as diffusers does.
            strength: fraction of the refinement schedule re-run on the upscaled sketch (default ``refine.strength``).
            num_inference_steps: refinement schedule length N (default ``refine.num_inference_steps``).
            sketch_video: a low-resolution video ``(F, h, w, 3)`` (uint8, or float in [0, 1]) used instead of
                stage 1: supergen as a training-free video upscaler.
            generator: every random draw (sketch noise, re-noise, posterior samples) comes from it; a list
                of one generator (one per video, as diffusers takes them) works too.
            callback_on_step_end: diffusers-style ``callback(pipe, step, timestep, {"latents": ...})``
                after every refinement step (``step`` counts from 0 within the refinement); it may
                return ``{"latents": new}``. The sketch's steps go to ``callback_on_sketch_step_end``.
            callback_on_sketch_step_end: the same callback after every sketch step, called by the wrapped
                pipeline itself (its own latent layout, its ``pipe``); with both callbacks a caller
                sees every step of the render, sketch first.
            guidance_scale: classifier-free guidance of both stages (default: ``sketch.guidance_scale``
                and ``refine.guidance_scale``).
            num_videos_per_prompt: 1 (supergen renders one video per call; call again with another
                generator, or use batch rendering, for more).
            prompt_embeds, negative_prompt_embeds: precomputed text embeddings used instead of encoding
                ``prompt`` / ``negative_prompt`` (families whose adapter lists them in ``prompt_options``).
            max_sequence_length: text tokens the encoder reads (default: the family's own).
            attention_kwargs: None or empty: supergen runs the transformer itself, per tile, and passes
                no extra attention arguments (fuse a LoRA with ``fuse_lora`` instead of scaling it here).
            callback_on_stage: ``callback(stage, info)`` when a stage begins, for previews and progress
                (the demo uses it): ``"sketch"`` ``{"steps"}``; ``"upscale"`` ``{"sketch"}``, the finished
                sketch as ``(F, h, w, 3)`` float numpy in [0, 1] (so a preview can show it before
                refinement); ``"refine"`` ``{"steps", "tiles"}`` (tiles at the first step); ``"decode"`` ``{}``.
                ``"sketch"`` and ``"upscale"`` are skipped when ``strength=1`` skips the sketch.
            observers: :class:`StageObserver` s told when each stage starts and ends (with its seconds and
                bytes sent) and when encoders are parked; ``callback_on_stage`` is one.
            plan: this call's :class:`~supergen.plan.RenderPlan`, already made (:meth:`plan`; the runtime
                plans once, checks it against the device and hands it down); None: planned here. It
                must be the plan of this call's size and frame count.
        """
        if output_type not in OUTPUT_TYPES:
            raise SuperGenError(f"output_type {output_type!r}; valid: {', '.join(OUTPUT_TYPES)}")
        if num_videos_per_prompt not in (None, 1):
            raise SuperGenError(f"num_videos_per_prompt={num_videos_per_prompt!r}: supergen renders one video per call; "
                                "call again with another generator, or use batch rendering")
        if attention_kwargs:
            raise SuperGenError(f"attention_kwargs={attention_kwargs!r}: supergen runs the transformer per tile and passes no "
                                "attention arguments; fuse a LoRA (fuse_lora) instead of scaling it per call")
        if isinstance(generator, (list, tuple)):
            if len(generator) != 1:
                raise SuperGenError(f"{len(generator)} generators: one video per call takes one (or a list of one)")
            generator = generator[0]
        height, width, num_frames = (_integer(n, v) for n, v in (("height", height), ("width", width), ("num_frames", num_frames)))
        num_inference_steps = _integer("num_inference_steps", num_inference_steps)
        sketch_pixels = None if sketch_video is None else _video_to_tensor(sketch_video, self.adapter.snap_frames(num_frames))
        text = {"prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_prompt_embeds, "max_sequence_length": max_sequence_length}
        request, plan = self._prepare(prompt, negative_prompt, image, height, width, num_frames, strength,
                                      num_inference_steps, None if sketch_pixels is None else tuple(sketch_pixels.shape[-2:]),
                                      guidance_scale, {k: v for k, v in text.items() if v is not None}, plan)
        clock = StageClock(self.group, skip=("decode",) if output_type == "latent" else ())  # a latent output decodes nothing
        stages = Stages(self.adapter.device, self.group, [clock, ProgressBar(self.pipe), *observers]
                        + ([CallbackObserver(callback_on_stage)] if callback_on_stage else []))
        with self._borrowed_pipeline() as borrowed:
            parallel = parallelize(self.adapter, self.group, self.config, plan)  # every parallel choice, from one plan
            with stages.run("setup"):
                embeds = self.adapter.encode_prompt(request, plan.text_guidance_scale)
                self._park_encoders(borrowed, stages, parked_in("setup"))  # the sketch and the tiles take the embeddings
                scheduler = type(self.adapter.scheduler).from_config(self.adapter.scheduler.config)
                timesteps = self.adapter.schedule(scheduler, plan.num_inference_steps, plan.start_index, plan.tile_latent_shape)
                # Image conditioning before any noise: the pipelines encode (and may sample) the image first.
                # A canvas-sized condition video (an image followed by zero frames) goes through the same encoder as the upscaled
                # sketch (tiled and split across ranks when planned); families that encode one image frame
                # with the pipeline's own code get the plan's VAE tiling.
                self.adapter.set_vae_tiling(plan.vae_tiling)
                spatial = self.adapter.spatial_conditioning(request, *plan.canvas, generator, encode=self._canvas_encoder(plan, parallel.vae()))
                cond = Conditioning(embeds, spatial, plan.guidance_scale, plan.guidance_scale_2)
            if plan.run_sketch:
                with stages.run("sketch", {"steps": plan.sketch_steps}):
                    sketch_pixels = self._sketch(request, embeds, plan, parallel, generator, callback_on_sketch_step_end)
            self._park_encoders(borrowed, stages, parked_in("upscale"))  # the canvas stages need the room
            if plan.from_sketch:
                # The preview is a device-to-host copy of the sketch: only when an observer asks for it.
                preview = (lambda: self.adapter.pipe.video_processor.postprocess_video(sketch_pixels, output_type="np")[0])
                with stages.run("upscale", {"sketch": preview}):
                    latents = self._upscale(sketch_pixels.to(self.adapter.device), plan, parallel, scheduler, timesteps, spatial, generator)
            else:  # strength 1: the plain pipeline's start from noise (the exactness test)
                latents = self.adapter.initial_latents(plan.latent_shape, spatial, generator)
            with stages.run("refine", {"steps": len(timesteps), "tiles": plan.tiles.count(0)}):
                latents, step_stats, report, parallel_stats = self._refine(
                    latents, plan, parallel, cond, scheduler, timesteps, generator,
                    _step_callback(self, callback_on_step_end, callback_on_step_end_tensor_inputs), stages)
            with stages.run("decode"):
                video, sketch_out = self._decode(latents, sketch_pixels, plan, parallel, output_type)
        stats = RenderStats(
            size=plan.size, canvas=plan.canvas, sketch=plan.sketch if plan.from_sketch else None, num_frames=plan.num_frames,
            tile=tuple(s * self.adapter.vae_scale[1] for s in plan.tiles.tile), tiling=plan.describe_tiling(),
            strength=plan.strength, seconds=clock.seconds, steps=step_stats, parallel=parallel_stats | clock.traffic(),
        )
        if not return_dict:
            return (video,)
        return SuperGenPipelineOutput(frames=video, sketch=sketch_out, stats=stats, cache_report=report)

    # ---- validation and plan ----------------------------------------------------------------
    def _prepare(self, prompt, negative_prompt, image, height, width, num_frames, strength, num_inference_steps,
                 sketch_size, guidance_scale=None, text: dict[str, Any] | None = None,
                 plan: RenderPlan | None = None) -> tuple[Request, RenderPlan]:
        """Check the call's arguments and plan the render (unless ``plan`` is given); every error here is
        raised before any compute.

        Args:
            text: the optional :class:`~supergen.adapters.Request` text fields the call gives.
        """
        adapter, text = self.adapter, text or {}
        refused = sorted(set(text) - adapter.spec.prompt_options)
        if refused:
            raise SuperGenError(f"{', '.join(refused)}: not supported for {type(self.pipe).__name__} "
                                f"(supported: {', '.join(sorted(adapter.spec.prompt_options)) or 'none'})")
        for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if not isinstance(value, str):
                raise SuperGenError(f"{name} must be one string (one video per call; use batch rendering for many); got {type(value).__name__}")
        if height is None or width is None:
            raise SuperGenError("pass height= and width= (the output size in pixels)")
        frames = adapter.snap_frames(num_frames)
        if frames != num_frames:
            logger.warning("num_frames=%d: this VAE takes %dk+1; rendering %d frames", num_frames, adapter.vae_scale[0], frames)
        if adapter.requires_image and image is None:
            raise SuperGenError(f"{type(self.pipe).__name__} is image-to-video: pass image= (or job.image / --image)")
        if image is not None:
            if not adapter.requires_image:  # it would be ignored: the video is the same without it
                from .preflight import image_refused

                raise image_refused(type(self.pipe).__name__)
            from PIL import Image

            from .videoio import load_image

            if isinstance(image, (str, os.PathLike, Image.Image)):  # arrays and tensors go to diffusers as given
                image = load_image(image)  # 8-bit RGB by its bit depth
        config = self.config
        if plan is None:
            if guidance_scale is not None:  # this call's guidance, for both stages
                config = load_config(config, {"sketch.guidance_scale": guidance_scale, "refine.guidance_scale": guidance_scale})
            plan = plan_render(config, adapter, height, width, frames, strength, num_inference_steps, sketch_size)
        elif (plan.size, plan.num_frames, plan.sketch if sketch_size else None) != ((height, width), frames, sketch_size) \
                or guidance_scale is not None or strength is not None or num_inference_steps is not None:
            raise SuperGenError(f"plan= is of a {plan.size[0]}x{plan.size[1]}x{plan.num_frames} render (height x width x frames); "
                                f"this call asks for {height}x{width}x{frames}: pass the plan of these arguments (pipe.plan(...)), "
                                "and set strength, steps and guidance in it, not beside it")
        check_backend(config.attention.backend, adapter.device, plan.layout is not None,
                      None if plan.layout is None else plan.layout[0].seq_len)
        if plan.canvas != plan.size:
            logger.info("%dx%d (height x width) is not a multiple of %d; rendering %dx%d and cropping",
                        *plan.size, adapter.pixel_multiple, *plan.canvas)
        if "prompt_embeds" not in text:
            unknown = adapter.unknown_prompt_words(prompt)
            if unknown:
                more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
                logger.warning("words unknown to this model's tokenizer (it will not see them): %s%s", ", ".join(unknown[:5]), more)
            limit = text.get("max_sequence_length", adapter.spec.max_sequence_length)
            if limit is not None and adapter.prompt_tokens(prompt) > limit:
                logger.warning("the prompt is %d tokens; the text encoder reads the first %d (the rest is cut)",
                               adapter.prompt_tokens(prompt), limit)
        return Request(prompt=prompt, negative_prompt=negative_prompt, num_frames=frames, image=image, **text), plan

    # ---- stages -----------------------------------------------------------------------------
    def _sketch(self, request: Request, embeds: dict, plan: RenderPlan, parallel: Parallelism, generator: torch.Generator | None,
                callback: Callable | None = None) -> torch.Tensor:
        """Stage 1: the wrapped pipeline at sketch size; returns pixels ``(1, 3, F, h, w)`` in [-1, 1]."""
        self.adapter.set_vae_tiling(False)  # sketch-size VAE work is never tiled
        pipe = self.adapter.pipe
        # The wrapped pipeline draws its own step bar: label it for this stage.
        with compat.progress_bar_label(pipe, "sketch"), parallel.sketch():
            latents = self.adapter.sketch(request, embeds, *plan.sketch, plan.sketch_steps, plan.sketch_guidance_scale,
                                          plan.sketch_guidance_scale_2, generator, callback)
        if self.group is not None:
            # Every rank ran the same sketch loop (so every rank's generator is in the same state for the
            # re-noise); the leader's copy makes them bit-identical where GPU kernels are not deterministic.
            self.group.broadcast_from_leader(latents)
        pixels = self.adapter.decode(latents, plan.num_frames)
        self.adapter.set_vae_tiling(plan.vae_tiling)
        return pixels

    def _upscale(self, sketch: torch.Tensor, plan: RenderPlan, parallel: Parallelism, scheduler, timesteps: torch.Tensor, spatial: dict,
                 generator: torch.Generator | None) -> torch.Tensor:
        """Resize the sketch to the canvas in pixel space, encode it, re-noise it to the first refinement step."""
        upscaled = UpscaledVideo(sketch, *plan.canvas, self.config.sketch.upscale)
        if not self.config.sketch.sample_posterior:
            # Tiled, it is resized a band of rows at a time: the whole upscaled video (4K × 81) is never made.
            x0 = self._canvas_encoder(plan, parallel.vae())(upscaled)
        else:  # a posterior sample is drawn over the whole latent, identically on every rank
            x0 = self.adapter.encode(upscaled[...], generator)
        return self.adapter.renoise(scheduler, x0.to(self.adapter.device), timesteps[:1], spatial, generator)

    def _canvas_encoder(self, plan: RenderPlan, vae: TiledVAE | None = None) -> CanvasEncoder:
        """Posterior-mode encoder of canvas-sized videos: :class:`TiledVAE` when the plan tiles the VAE
        (windows split across ranks; the same tiles and blend in one process, so any rank count gives
        the same latent), else the adapter's untiled encode (on every rank)."""
        if plan.vae_tiling:
            return (vae or TiledVAE(self.adapter, self.group)).encode
        return lambda video: self.adapter.encode(video if isinstance(video, torch.Tensor) else video[...], None)

    def _refine(self, latents, plan: RenderPlan, parallel: Parallelism, cond: Conditioning, scheduler, timesteps, generator, callback,
                stages: "Stages"):
        """Stage 2: the tiled refinement; returns the latent, per-step stats, the cache report and parallel stats."""
        cfg, adapter = self.config, self.adapter
        runner, heads = parallel.tiles()
        runner = runner or SingleProcess()
        # The token split goes innermost: its hooks attach to the canvas position modules installed just before.
        with self._attention(plan, heads) as attention, adapter.positions(cfg.tiling.positions), parallel.tokens(), \
                cache_policy(cfg.cache, adapter.transformers, plan.latent_shape[2:], adapter.patch, len(timesteps), plan.do_guidance) as policy:
            refiner = TileRefiner(plan.tiles, adapter, cond, cfg.tiling.positions, cfg.tiling.batch_tiles, policy=policy, runner=runner,
                                  on_step=attention, step_scope=stages.refinement_step, step_done=stages.step_done)
            latents, steps = refiner.run(latents, adapter.stepper(scheduler, cond.spatial, generator), timesteps, callback)
        return latents, steps, runner.finish(policy.report), parallel.stats() | runner.stats()

    def _decode(self, latents: torch.Tensor, sketch: torch.Tensor | None, plan: RenderPlan, parallel: Parallelism, output_type: str):
        """Decode the canvas (tiled and split across ranks when planned) into ``output_type``, cropped to
        the requested size; returns ``(video, sketch)``. Tiled, each finished strip of rows is converted
        as it comes (:class:`~supergen.output.VideoOutput`): no whole float video at the canvas size."""
        if output_type == "latent":
            return latents, sketch
        adapter, group = self.adapter, self.group
        processor = adapter.pipe.video_processor
        video = VideoOutput(processor, output_type, plan.num_frames, plan.size)
        if plan.vae_tiling:
            for top, strip in parallel.vae().decode_strips(latents, plan.num_frames):
                video.write(top, strip)
                del strip  # converted: not held while the next row of tiles is decoded
        elif group is None or group.is_leader:  # only the leader writes the video, so only it decodes
            video.write(0, adapter.decode(latents, plan.num_frames))
        if sketch is not None:
            sketch_out = VideoOutput(processor, output_type, sketch.shape[2], tuple(sketch.shape[-2:]))
            sketch_out.write(0, sketch)
            sketch = sketch_out.result()
        # None on the group's other ranks
        return (video.result() if group is None or group.is_leader else None), sketch

    # ---- the wrapped pipeline, borrowed for one call ------------------------------------------
    @contextlib.contextmanager
    def _borrowed_pipeline(self) -> Iterator[contextlib.ExitStack]:
        """Leave the wrapped pipeline as it was found: VAE tiling restored (attention processors and
        position modules restore themselves), parked encoders moved back, model offload hooks reset,
        also when the call raises. Yields the stack that undoes the call's other changes on exit."""
        tiling = self.adapter.vae_tiling_enabled()
        try:
            with contextlib.ExitStack() as borrowed:
                yield borrowed
        finally:
            self.adapter.set_vae_tiling(tiling)
            self.adapter.pipe.maybe_free_model_hooks()

    def _park_encoders(self, borrowed: contextlib.ExitStack, stages: "Stages", names: tuple[str, ...]) -> None:
        """``encoders.park``: move the pipeline's components ``names`` to the host for the rest of this
        call (they go back on ``borrowed``'s exit), and tell the observers. Only those whose weights sit
        on a GPU and that no offload hook of diffusers or accelerate manages (those leave the device by
        themselves) are moved."""
        if not self.config.encoders.park or not names:
            return
        for name in names:
            module = getattr(self.pipe, name, None)
            if not isinstance(module, torch.nn.Module) or compat.accelerate_hooked(module) or compat.diffusers_hooked(module):
                continue
            weights = next(module.parameters(), None)
            if weights is None or weights.device.type in ("cpu", "meta"):
                continue
            logger.debug("parking %s on the host for the rest of the call", name)
            borrowed.callback(module.to, weights.device)
            module.to("cpu")
        stages.parked(names)

    def _attention(self, plan: RenderPlan, heads: HeadExchange | None = None):
        """The attention backend for the refinement; in ``attention`` mode, tile(+halo) attention on the canvas
        (yields its per-step layouts), with ``heads`` when the group splits the canvas forward."""
        backend = self.config.attention.backend  # checked by _prepare
        if plan.layout is None:
            return dense_backend(backend)
        return self.adapter.tile_attention(plan.layout, backend, heads)


class StageObserver:
    """Told what a render's stages do, from the one place they run (:class:`Stages`). Subclass and
    override what you need; every method does nothing by default."""

    def started(self, stage: str, info: dict[str, Any]) -> None:
        """``stage`` (one of :data:`~supergen.plan.STAGES`) begins; ``info`` as ``callback_on_stage`` documents
        (values that are callables are computed on request: the upscale's sketch preview)."""

    def ended(self, stage: str, seconds: float, sent: int) -> None:
        """``stage`` is done after ``seconds`` (the device synchronised on CUDA), this rank having sent ``sent`` bytes."""

    def failed(self, stage: str, error: BaseException) -> None:
        """``stage`` stopped on ``error`` (a callback's exception, Ctrl-C...), which goes on to the caller unchanged:
        release what :meth:`started` opened. :meth:`ended` is not called (the stage has no seconds)."""

    def parked(self, names: tuple[str, ...]) -> None:
        """``encoders.park`` moved the encoders ``names`` off the device for the rest of the call (those it
        manages: see :meth:`SuperGenPipeline._park_encoders`)."""

    def refinement_step(self, step: int) -> ContextManager[None]:
        """Entered around refinement step ``step``'s tile predictions and blend (not the scheduler's step)."""
        return contextlib.nullcontext()

    def step_done(self, step: int) -> None:
        """Refinement step ``step`` is done (its scheduler step and ``callback_on_step_end`` included)."""


class Stages:
    """Runs a render's stages through one place: ``with stages.run(name, info):`` tells every observer
    that the stage starts and, when it ends, its seconds and the bytes this rank sent. On CUDA the
    device is synchronised at each boundary, so a stage's time is its work, not its launch (one sync
    per stage, never per step)."""

    def __init__(self, device: torch.device, group: TileGroup | None, observers: list[StageObserver]):
        self.device, self.group, self.observers = device, group, observers

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @contextlib.contextmanager
    def run(self, stage: str, info: dict[str, Any] | None = None) -> Iterator[None]:
        for observer in self.observers:
            observer.started(stage, info or {})
        start, sent = self._now(), 0 if self.group is None else self.group.bytes_sent
        try:
            yield
        except BaseException as error:  # KeyboardInterrupt too: a bar left open stays on the terminal
            for observer in self.observers:
                observer.failed(stage, error)
            raise
        seconds, sent = self._now() - start, 0 if self.group is None else self.group.bytes_sent - sent
        for observer in self.observers:
            observer.ended(stage, seconds, sent)

    def parked(self, names: tuple[str, ...]) -> None:
        for observer in self.observers:
            observer.parked(names)

    @contextlib.contextmanager
    def refinement_step(self, step: int) -> Iterator[None]:
        with contextlib.ExitStack() as scopes:
            for observer in self.observers:
                scopes.enter_context(observer.refinement_step(step))
            yield

    def step_done(self, step: int) -> None:
        for observer in self.observers:
            observer.step_done(step)


class CallbackObserver(StageObserver):
    """``callback_on_stage(stage, info)`` as an observer: called when each stage begins, except the setup."""

    def __init__(self, callback: Callable[[str, dict], None]):
        self.callback = callback

    def started(self, stage: str, info: dict[str, Any]) -> None:
        if stage != "setup":
            self.callback(stage, {k: v() if callable(v) else v for k, v in info.items()})


class ProgressBar(StageObserver):
    """The refinement's step bar, labelled ``refine``: diffusers' ``pipe.progress_bar``, so the
    pipeline's ``set_progress_bar_config`` (``disable=True``...) applies to it as to the sketch's."""

    def __init__(self, pipe: DiffusionPipeline):
        self.pipe, self.bar = pipe, None

    def started(self, stage: str, info: dict[str, Any]) -> None:
        if stage == "refine":
            self.bar = self.pipe.progress_bar(total=info["steps"])
            self.bar.set_description("refine")

    def step_done(self, step: int) -> None:
        self.bar.update()

    def ended(self, stage: str, seconds: float, sent: int) -> None:
        self._close(stage)

    def failed(self, stage: str, error: BaseException) -> None:
        self._close(stage)  # a render stopped mid-refinement: else only garbage collection would close the bar

    def _close(self, stage: str) -> None:
        if stage == "refine":
            self.bar.close()


class StageClock(StageObserver):
    """Seconds (and with a group, bytes this rank sent) per stage, for ``out.stats``."""

    def __init__(self, group: TileGroup | None = None, skip: tuple[str, ...] = ()):
        self.group, self.skip = group, skip
        self.seconds: dict[str, float] = {}
        self.bytes: dict[str, int] = {}

    def ended(self, stage: str, seconds: float, sent: int) -> None:
        if stage in self.skip:
            return
        self.seconds[stage] = seconds
        if self.group is not None:
            self.bytes[stage] = sent

    def traffic(self) -> dict[str, Any]:
        """``{"stages": {name: {"seconds", "bytes"}}}`` with the bytes every rank of the group sent
        (one collective: call on every rank); empty without a group."""
        if self.group is None:
            return {}
        sent = self.group.sum_over_ranks(list(self.bytes.values()))
        return {"stages": {name: {"seconds": self.seconds[name], "bytes": b} for name, b in zip(self.bytes, sent)}}


def _step_callback(pipe, callback_on_step_end, tensor_inputs):
    """diffusers' ``callback_on_step_end(pipe, step, timestep, tensors)`` as the refiner's ``(step, t, latents) -> latents``."""
    if callback_on_step_end is None:
        return None

    def callback(step: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        tensors = {"latents": latents} if "latents" in tensor_inputs else {}
        result = callback_on_step_end(pipe, step, t, tensors) or {}
        return result.get("latents", latents)

    return callback


def _integer(name: str, value: Any) -> Any:
    """``value`` as a Python int when it is an integer of any kind (numpy's too); None stays None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SuperGenError(f"{name}={value!r}: must be an integer, got {type(value).__name__}")
    return int(value)


def _video_to_tensor(video: np.ndarray | torch.Tensor, frames: int) -> torch.Tensor:
    """``(F, h, w, 3)`` uint8 or float in [0, 1] → ``(1, 3, F, h, w)`` float32 in [-1, 1]."""
    array = torch.as_tensor(np.asarray(video))
    if array.ndim != 4 or array.shape[-1] != 3:
        raise SuperGenError(f"sketch_video must have shape (frames, height, width, 3); got {tuple(array.shape)}")
    if array.shape[0] != frames:
        raise SuperGenError(f"sketch_video has {array.shape[0]} frames; this render needs {frames}")
    if array.dtype == torch.uint8:
        array = array.float() / 255.0
    else:  # a float video in 0-255 would be read as white (and NaN fails both comparisons)
        array = array.float()
        low, high = array.min().item(), array.max().item()
        if not (0.0 <= low and high <= 1.0):
            raise SuperGenError(f"sketch_video ({str(video.dtype).removeprefix('torch.')}) has values from {low:g} to {high:g}: "
                                "pass uint8 in [0, 255] or floats in [0, 1]")
    return (array * 2.0 - 1.0).permute(3, 0, 1, 2).unsqueeze(0)
