"""``SuperGenPipeline``: a diffusers video pipeline made to render at 2K/4K, in two stages.

Read top to bottom, :meth:`SuperGenPipeline.__call__` is the method:

1. sketch: the wrapped pipeline at its native size, all steps, latent output;
2. upscale: decode, resize the frames in pixel space, encode at the target size;
3. re-noise: to ``strength`` with the scheduler's own method and the user's generator;
4. refine: the remaining steps on the canvas, in tiles (:mod:`supergen.refine`);
5. decode: tiled VAE decode, cropped to exactly the requested size.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from .adapters import Conditioning, ModelAdapter, Request, adapter_for
from .cache import CacheReport, cache_policy
from .config import SuperGenConfig, load_config
from .errors import SuperGenError
from .parallel import TiledVAE, TileExchanger, active_group
from .attention import check_backend, dense_backend, tile_attention
from .refine import SingleProcess, StepStats, TileRefiner
from .tiling import TilePlan
from .upscale import resize_video

logger = logging.getLogger("supergen")

OUTPUT_TYPES = ("np", "pil", "pt", "latent")


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
    #: With several ranks: ``ranks``, and per step this rank's ``bytes_sent`` and ``tiles_computed``.
    parallel: dict[str, Any] = field(default_factory=dict)

    @property
    def tile_forwards(self) -> int:
        return sum(s.tiles_computed for s in self.steps)


@dataclass
class SuperGenPipelineOutput(BaseOutput):
    """Like diffusers' video outputs, plus the sketch and what the render did.

    Attributes:
        frames: the video in ``output_type`` (``np``: ``(1, F, H, W, 3)`` in [0, 1]; ``pt``:
            ``(1, F, 3, H, W)``; ``pil``: a list of lists of images; ``latent``: ``(1, C, f, h, w)``).
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
    """

    def __init__(self, pipe: DiffusionPipeline, config: SuperGenConfig):
        self.pipe = pipe
        self.config = config
        self.adapter: ModelAdapter = adapter_for(pipe)

    @classmethod
    def from_pipe(cls, pipe: DiffusionPipeline, config: str | SuperGenConfig | dict | None = None, **overrides: Any) -> "SuperGenPipeline":
        """Wrap ``pipe``.

        Args:
            pipe: a supported diffusers pipeline (:func:`~supergen.adapters.supported_pipelines`).
            config: a preset name, a YAML path, a :class:`SuperGenConfig` or a nested dict.
            overrides: per section, e.g. ``tiling={"mode": "overlap"}, refine={"strength": 0.6}``.
        """
        flat: dict[str, Any] = {}
        for section, values in overrides.items():
            if not isinstance(values, dict):
                raise SuperGenError(f"override {section}={values!r}: pass a dict per config section, e.g. tiling={{'mode': 'overlap'}}")
            flat.update({f"{section}.{key}": value for key, value in values.items()})
        return cls(pipe, load_config(config, flat))

    @classmethod
    def from_pretrained(cls, path_or_id: str, torch_dtype: torch.dtype | None = None, config=None, **overrides: Any) -> "SuperGenPipeline":
        """Load a diffusers model folder or Hugging Face id; diffusers picks the pipeline class from it."""
        pipe = DiffusionPipeline.from_pretrained(path_or_id, torch_dtype=torch_dtype)
        return cls.from_pipe(pipe, config, **overrides)

    # ---- sizes ------------------------------------------------------------------------------
    def _snap(self, value: int, what: str) -> int:
        """Round a pixel size up to what the VAE and patch accept (the output is cropped back)."""
        multiple = self.adapter.pixel_multiple
        snapped = math.ceil(value / multiple) * multiple
        if snapped != value:
            logger.info("%s %d is not a multiple of %d; rendering at %d and cropping to %d", what, value, multiple, snapped, value)
        return snapped

    def _sketch_size(self, height: int, width: int) -> tuple[int, int]:
        return sketch_size(self.config, self.adapter, height, width)

    # ---- the method -------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        image: Any | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        strength: float | None = None,
        num_inference_steps: int | None = None,
        sketch_video: np.ndarray | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        callback_on_stage: Callable[[str, dict], None] | None = None,
    ) -> SuperGenPipelineOutput | tuple:
        """Render one video. Arguments left as None take the config's values (``config.job`` etc.).

        Args:
            image: PIL image (or path) for image-to-video pipelines.
            height, width: output size in pixels; sizes the model cannot take are rendered at the next
                multiple of ``adapter.pixel_multiple`` and cropped back, so the output is exactly this size.
            num_frames: snapped to what the VAE accepts (``4k + 1`` for 4× temporal compression) with a warning, as diffusers does.
            strength: fraction of the refinement schedule re-run on the upscaled sketch (``refine.strength``).
            num_inference_steps: refinement schedule length N (``refine.num_inference_steps``).
            sketch_video: a low-resolution video ``(F, h, w, 3)`` (uint8, or float in [0, 1]) used instead of
                stage 1: supergen as a training-free video upscaler.
            generator: every random draw (sketch noise, re-noise, posterior samples) comes from it.
            callback_on_step_end: diffusers-style ``callback(pipe, step, timestep, {"latents": ...})``
                after every refinement step; it may return ``{"latents": new}``.
            callback_on_stage: ``callback(stage, info)`` when a stage begins, for previews and progress
                (the demo uses it): ``"sketch"`` ``{"steps"}``; ``"upscale"`` ``{"sketch"}``, the finished
                sketch as ``(F, h, w, 3)`` float numpy in [0, 1] (so a preview can show it before
                refinement); ``"refine"`` ``{"steps", "tiles"}`` (tiles at the first step); ``"decode"`` ``{}``.
                ``"sketch"`` and ``"upscale"`` are skipped when ``strength=1`` skips the sketch.
        """
        cfg, adapter = self.config, self.adapter
        if output_type not in OUTPUT_TYPES:
            raise SuperGenError(f"output_type {output_type!r}; valid: {', '.join(OUTPUT_TYPES)}")
        if prompt is not None and not isinstance(prompt, str):
            raise SuperGenError("prompt must be one string (one video per call; use batch rendering for many)")
        req_height = height if height is not None else cfg.job.height
        req_width = width if width is not None else cfg.job.width
        for name, value in (("height", req_height), ("width", req_width)):
            if not isinstance(value, int) or value < adapter.pixel_multiple:
                raise SuperGenError(f"{name}={value!r}: must be an integer of at least {adapter.pixel_multiple} pixels")
        frames_asked = num_frames if num_frames is not None else cfg.job.num_frames
        frames = adapter.snap_frames(frames_asked)
        if frames != frames_asked:
            logger.warning("num_frames=%d: this VAE takes %dk+1; rendering %d frames", frames_asked, adapter.vae_scale[0], frames)
        if image is None and cfg.job.image is not None:
            image = cfg.job.image
        if adapter.requires_image and image is None:
            raise SuperGenError(f"{type(self.pipe).__name__} is image-to-video: pass image= (or job.image / --image)")
        if isinstance(image, str):
            from diffusers.utils import load_image

            image = load_image(image)
        strength = cfg.refine.strength if strength is None else strength
        if not 0.0 < strength <= 1.0:
            raise SuperGenError(f"strength={strength}: must lie in (0, 1]")
        total_steps = num_inference_steps or cfg.refine.num_inference_steps

        request = Request(
            prompt=prompt if prompt is not None else cfg.job.prompt,
            negative_prompt=negative_prompt if negative_prompt is not None else cfg.job.negative_prompt,
            num_frames=frames,
            image=image,
        )
        unknown = adapter.unknown_prompt_words(request.prompt)
        if unknown:
            logger.warning("prompt words unknown to this model's tokenizer (the model will not see them): %s",
                           ", ".join(unknown))
        height, width = self._snap(req_height, "height"), self._snap(req_width, "width")
        native = self._sketch_size(height, width)  # the sketch's size, and the default tile
        sketch_size: tuple[int, int] | None = native
        device = adapter.device
        # With a launcher: the ranks rendering this video together (supergen.parallel); else None.
        group = active_group()
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        # ---- conditioning, shared by both stages ----
        guidance = cfg.refine.guidance_scale if cfg.refine.guidance_scale is not None else cfg.sketch.guidance_scale
        guidance_2 = cfg.refine.guidance_scale_2 if cfg.refine.guidance_scale_2 is not None else cfg.sketch.guidance_scale_2
        embeds = adapter.encode_prompt(request, max(guidance, cfg.sketch.guidance_scale))

        # ---- schedule of stage 2: enter an N-step schedule at N - k, k = strength * N (as img2img) ----
        k = min(int(total_steps * strength), total_steps)
        if k == 0:
            raise SuperGenError(f"strength={strength} × num_inference_steps={total_steps} leaves no refinement step; raise either")
        t_start = total_steps - k
        latent_shape = adapter.latent_shape(frames, height, width)
        # The family's schedule for the sequence a transformer call sees (a native tile, or the whole
        # canvas when one tile covers it: then exactly the plain pipeline's schedule).
        scheduler = type(adapter.scheduler).from_config(adapter.scheduler.config)
        tile_latent = adapter.latent_shape(frames, min(native[0], height), min(native[1], width))
        timesteps = adapter.schedule(scheduler, total_steps, t_start, tile_latent)
        # Image conditioning before any noise: the pipelines encode (and may sample) the image first.
        spatial = adapter.spatial_conditioning(request, height, width, generator)

        sketch_frames = None
        if k == total_steps and sketch_video is None:
            # strength 1: the schedule starts from pure noise, the sketch would be discarded; skip it.
            # (This is also exactly the plain pipeline at the target size: the exactness test.)
            sketch_size = None
            latents = adapter.initial_latents(latent_shape, spatial, generator)
        else:
            # ---- stage 1: sketch ----
            if sketch_video is not None:
                sketch_pixels = _video_to_tensor(sketch_video, frames).to(device)
                sketch_size = tuple(sketch_pixels.shape[-2:])
            else:
                if callback_on_stage is not None:
                    callback_on_stage("sketch", {"steps": cfg.sketch.num_inference_steps})
                self._set_vae_tiling(False)
                sketch_latents = adapter.sketch(
                    request, embeds, sketch_size[0], sketch_size[1], cfg.sketch.num_inference_steps,
                    cfg.sketch.guidance_scale, cfg.sketch.guidance_scale_2, generator,
                )
                if group is not None:
                    # Every rank ran the same sketch (so every rank's generator is in the same state for
                    # the re-noise); the leader's copy makes them bit-identical even where GPU kernels
                    # are not deterministic.
                    group.broadcast_from_leader(sketch_latents)
                timings["sketch"] = time.perf_counter() - clock
                clock = time.perf_counter()
                sketch_pixels = adapter.decode(sketch_latents, frames)
            sketch_frames = sketch_pixels
            if callback_on_stage is not None:
                preview = adapter.pipe.video_processor.postprocess_video(sketch_pixels, output_type="np")[0]
                callback_on_stage("upscale", {"sketch": preview})
            # ---- upscale in pixel space, encode at the canvas size ----
            tiled = self._set_vae_tiling(height * width > sketch_size[0] * sketch_size[1])
            upscaled = resize_video(sketch_pixels, height, width, cfg.sketch.upscale)
            if tiled and not cfg.sketch.sample_posterior:
                # Split across ranks; the same tiles and blend in one process, so any rank count matches.
                x0 = TiledVAE(adapter, group).encode(upscaled)
            else:  # a posterior sample is drawn over the whole latent, identically on every rank
                x0 = adapter.encode(upscaled, generator if cfg.sketch.sample_posterior else None)
            del upscaled  # the largest tensor of the render (4K × 81 frames): not held through refinement
            # ---- re-noise with the scheduler's own forward process and the user's generator ----
            latents = adapter.renoise(scheduler, x0.to(device), timesteps[:1], spatial, generator)
            timings["upscale"] = time.perf_counter() - clock
            clock = time.perf_counter()

        # ---- stage 2: tiled refinement ----
        tiled = self._set_vae_tiling(sketch_size is not None and height * width > sketch_size[0] * sketch_size[1])
        cond = Conditioning(
            embeds=embeds,
            spatial=spatial,
            guidance_scale=guidance,
            guidance_scale_2=guidance_2,
        )
        plan = self._plan(latent_shape[-2:], native)
        callback = None
        if callback_on_step_end is not None:
            def callback(step: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
                tensors = {"latents": latents} if "latents" in callback_on_step_end_tensor_inputs else {}
                result = callback_on_step_end(self, step, t, tensors) or {}
                return result.get("latents", latents)

        runner = SingleProcess()
        if group is not None and group.size > 1:
            if cfg.cache.enabled and (cfg.cache.block.enabled or cfg.cache.policy in ("fbc", "magcache")):
                # Their state lives in hooks on the rank that ran a tile; ranks would diverge.
                raise SuperGenError(
                    "with several ranks only the tile-level cache (cache.policy=region, cache.block.enabled=false) "
                    "keeps ranks identical; block-level caches keep per-rank state"
                )
            runner = TileExchanger(group, latent_shape[1:3], cfg.parallel.exchange_dtype, cfg.tiling.batch_tiles)
        if callback_on_stage is not None:
            callback_on_stage("refine", {"steps": len(timesteps), "tiles": len(plan.tiles(0))})
        with self._attention(latent_shape, native), \
                cache_policy(cfg.cache, adapter.pipe, latent_shape[2:], adapter.patch, len(timesteps), cond.do_guidance) as policy:
            refiner = TileRefiner(plan, adapter, cond, cfg.tiling.positions, cfg.tiling.batch_tiles, policy=policy, runner=runner)
            with adapter.pipe.progress_bar(total=len(timesteps)) as progress:
                latents, step_stats = refiner.run(latents, adapter.stepper(scheduler, spatial, generator), timesteps, progress, callback)
        if isinstance(runner, TileExchanger):
            # Block forwards are counted on the rank that ran each tile: add them up so every rank reports all.
            records = [record for step in policy.report.steps for record in step.tiles]
            for record, blocks in zip(records, group.sum_over_ranks([r.blocks for r in records])):
                record.blocks = blocks
        timings["refine"] = time.perf_counter() - clock
        clock = time.perf_counter()

        # ---- decode, crop to the exact requested size ----
        if callback_on_stage is not None:
            callback_on_stage("decode", {})
        if output_type == "latent":
            video, sketch_out = latents, sketch_frames
        else:
            if tiled:
                video = TiledVAE(adapter, group).decode(latents, frames)
            else:  # only the leader writes the video, so only it decodes
                video = adapter.decode(latents, frames) if group is None or group.is_leader else None
            if video is not None:  # None on the group's other ranks
                video = adapter.pipe.video_processor.postprocess_video(video[..., :req_height, :req_width], output_type=output_type)
            sketch_out = None
            if sketch_frames is not None:
                sketch_out = adapter.pipe.video_processor.postprocess_video(sketch_frames, output_type=output_type)
            timings["decode"] = time.perf_counter() - clock
        stats = RenderStats(
            size=(req_height, req_width), canvas=(height, width), sketch=sketch_size, num_frames=frames,
            tile=tuple(s * adapter.vae_scale[1] for s in plan.tile), tiling=plan.describe(), strength=strength,
            seconds=timings, steps=step_stats,
        )
        if isinstance(runner, TileExchanger):
            stats.parallel = {"ranks": group.size, "bytes_sent": runner.bytes_sent, "tiles_computed": runner.tiles_computed}
        adapter.pipe.maybe_free_model_hooks()
        if not return_dict:
            return (video,)
        return SuperGenPipelineOutput(frames=video, sketch=sketch_out, stats=stats, cache_report=policy.report)

    def _set_vae_tiling(self, large: bool) -> bool:
        """Turn VAE tiling on or off as ``output.vae_tiling`` says for this size; returns whether it is on."""
        mode = self.config.output.vae_tiling
        enabled = mode == "on" or (mode == "auto" and large)
        self.adapter.set_vae_tiling(enabled)
        return enabled

    def _attention(self, latent_shape: tuple[int, ...], tile_pixels: tuple[int, int]):
        """The attention backend for the refinement; in ``attention`` mode, tile(+halo) attention on the canvas."""
        cfg, adapter = self.config, self.adapter
        sparse = cfg.tiling.mode == "attention"
        check_backend(cfg.attention.backend, adapter.device, sparse)
        if not sparse:
            return dense_backend(cfg.attention.backend)
        layout = attention_layout(cfg, adapter, latent_shape[2:], tile_pixels)
        experts = [m for m in (adapter.pipe.transformer, getattr(adapter.pipe, "transformer_2", None)) if m is not None]
        return tile_attention(experts, layout, cfg.attention.backend)

    def _plan(self, canvas: tuple[int, int], tile_pixels: tuple[int, int]) -> TilePlan:
        return tile_plan(self.config, self.adapter, canvas, tile_pixels)


class Geometry(Protocol):
    """What the size rules need of a model: a :class:`ModelAdapter`, or the planner's weight-free stand-in."""

    vae_scale: tuple[int, int, int]
    patch: tuple[int, int, int]
    native_size: tuple[int, int] | None
    pixel_multiple: int


def sketch_size(config: SuperGenConfig, geometry: Geometry, height: int, width: int) -> tuple[int, int]:
    """The sketch's pixel size for a (snapped) target ``height × width``; also the default tile size."""
    cfg = config.sketch
    multiple = geometry.pixel_multiple
    if cfg.height is not None:
        size = (cfg.height, cfg.width)
    elif geometry.native_size is not None:
        size = geometry.native_size
    else:  # unknown native size: the target's aspect at the native area
        scale = math.sqrt(cfg.native_area / (height * width))
        size = (height * scale, width * scale)
    # Never sketch larger than the target; always something the VAE and patch accept.
    return tuple(max(multiple, round(min(s, t) / multiple) * multiple) for s, t in zip(size, (height, width)))  # type: ignore[return-value]


def tile_plan(config: SuperGenConfig, geometry: Geometry, canvas: tuple[int, int], tile_pixels: tuple[int, int]) -> TilePlan:
    """The tile plan in latent units; the tile defaults to the sketch size (the trained sequence length)."""
    cfg = config.tiling
    if cfg.mode == "attention":
        # One forward over the whole canvas; the tiles live in the attention layout instead.
        return TilePlan(canvas=canvas, tile=canvas, patch=geometry.patch[1:])
    if cfg.tile_height is not None:
        tile_pixels = (cfg.tile_height, cfg.tile_width)
    multiple = geometry.pixel_multiple
    for name, value in zip(("tile_height", "tile_width"), tile_pixels):
        if value % multiple:
            raise SuperGenError(f"tiling.{name}={value} must be a multiple of {multiple} (VAE × patch)")
    scale = geometry.vae_scale[1]
    return TilePlan(
        canvas=canvas,
        tile=(tile_pixels[0] // scale, tile_pixels[1] // scale),
        patch=geometry.patch[1:],
        mode=cfg.mode,
        boundary=cfg.boundary,
        shift_divisor=cfg.shift_divisor,
        shift_every=cfg.shift_every,
        overlap=cfg.overlap // scale,
    )


def attention_layout(config: SuperGenConfig, geometry: Geometry, latent: tuple[int, int, int], tile_pixels: tuple[int, int]):
    """The ``supergen_kernels.TileLayout`` (in tokens) of ``tiling.mode=attention`` on a canvas latent ``(F, H, W)``.

    The tile defaults to ``tile_pixels`` (the sketch size); ``tiling.halo`` is in pixels.
    """
    from supergen_kernels import TileLayout

    cfg = config.tiling
    if cfg.tile_height is not None:
        tile_pixels = (cfg.tile_height, cfg.tile_width)
    multiple = geometry.pixel_multiple
    for name, value in (("tile_height", tile_pixels[0]), ("tile_width", tile_pixels[1]), ("halo", cfg.halo)):
        if value % multiple:
            raise SuperGenError(f"tiling.{name}={value} must be a multiple of {multiple} (VAE × patch)")
    p_t, p_h, p_w = geometry.patch
    return TileLayout(
        canvas=(latent[0] // p_t, latent[1] // p_h, latent[2] // p_w),
        tile=(tile_pixels[0] // multiple, tile_pixels[1] // multiple),
        halo=cfg.halo // multiple,
    )


def _video_to_tensor(video: np.ndarray | torch.Tensor, frames: int) -> torch.Tensor:
    """``(F, h, w, 3)`` uint8 or float in [0, 1] → ``(1, 3, F, h, w)`` float32 in [-1, 1]."""
    array = torch.as_tensor(np.asarray(video))
    if array.ndim != 4 or array.shape[-1] != 3:
        raise SuperGenError(f"sketch_video must have shape (frames, height, width, 3); got {tuple(array.shape)}")
    if array.shape[0] != frames:
        raise SuperGenError(f"sketch_video has {array.shape[0]} frames; this render needs {frames}")
    array = array.float() / 255.0 if array.dtype == torch.uint8 else array.float()
    return (array * 2.0 - 1.0).permute(3, 0, 1, 2).unsqueeze(0)
