"""The render plan: everything decided before any compute, by one pure function.

:func:`plan_render` takes the method config, a model's size rules and the call's arguments and
returns a :class:`RenderPlan` — sizes, latent shapes, the schedule split, guidance, the VAE-tiling
decision, the tile plan and (attention mode) the attention layouts of every step. It needs no weights and no
tensors, so the pipeline, ``supergen plan`` and the demo's plan table all read the same decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import MethodConfig, TilingConfig
from .errors import SuperGenError
from .geometry import SizeRules, check_positions, frame_window, overlap_pixels, sketch_size, snap_size, tile_pixels
from .tiling import TilePlan

#: The stages of a render, in order (``setup``: the prompt embeddings and the image condition).
STAGES = ("setup", "sketch", "upscale", "refine", "decode")

#: ``encoders.park``: per encoder (pipeline component name), the first stage that runs without it on
#: the device. The text encoders leave once the prompts are encoded, within the setup (the sketch and
#: the tiles take the embeddings; the image condition gets the room); the image encoder after the
#: sketch (the wrapped pipeline encodes the image itself there). The pipeline parks them and the
#: cost estimate counts them by this one table.
PARKED_FROM = {"text_encoder": "setup", "text_encoder_2": "setup", "image_encoder": "upscale"}


def parked_in(stage: str) -> tuple[str, ...]:
    """The encoders parked when ``stage`` begins (the text encoders: once the setup has encoded the prompts)."""
    return tuple(name for name, first in PARKED_FROM.items() if first == stage)


def parked_during(stage: str) -> tuple[str, ...]:
    """The encoders off the device for ``stage``'s transient (parked in it or an earlier stage)."""
    return tuple(name for name, first in PARKED_FROM.items() if STAGES.index(first) <= STAGES.index(stage))


@dataclass(frozen=True)
class RenderPlan:
    """One render's decisions. Pixel sizes are ``(height, width)``; latent shapes ``(1, C, F, H, W)``."""

    #: The requested output size, and the canvas actually rendered (rounded up to the pixel
    #: multiple; the output is cropped back to ``size``).
    size: tuple[int, int]
    canvas: tuple[int, int]
    num_frames: int
    #: The sketch size (also the default tile): the model's stage-1 size, or the sketch video's.
    sketch: tuple[int, int]
    #: Whether stage 1 runs: False when ``strength=1`` starts from pure noise (no sketch needed)
    #: or a sketch video replaces it.
    run_sketch: bool
    #: Whether the refinement starts from an upscaled sketch (model or video), else from noise.
    from_sketch: bool
    latent_shape: tuple[int, int, int, int, int]
    #: The latent one transformer call sees (a native tile, or the canvas when one tile covers it):
    #: the schedule is the family's schedule for this sequence length.
    tile_latent_shape: tuple[int, int, int, int, int]
    sketch_steps: int
    sketch_guidance_scale: float
    sketch_guidance_scale_2: float | None
    #: Refinement: enter an N-step schedule at index ``start_index = N - k``, ``k = strength · N``.
    num_inference_steps: int
    strength: float
    refine_steps: int
    guidance_scale: float
    guidance_scale_2: float | None
    #: Tiled VAE at the canvas size: the upscaled sketch's encode, the I2V condition's encode and
    #: the final decode (the sketch-size decode is never tiled).
    vae_tiling: bool
    tiles: TilePlan
    #: ``tiling.mode=attention``: a ``supergen_kernels.LayoutCycle``; ``layout[step]`` is the
    #: ``TileLayout`` of refinement step ``step``'s canvas-wide forward (windows move as shift-mode tiles do).
    layout: Any = None

    @property
    def start_index(self) -> int:
        return self.num_inference_steps - self.refine_steps

    @property
    def do_guidance(self) -> bool:
        return self.guidance_scale > 1.0

    def describe_tiling(self) -> str:
        """The tiling in a phrase (the render summary's): the tile plan's, in latent units, or attention
        mode's canvas forward and its tiles, in tokens (its tile plan is one tile per time window: the canvas)."""
        if self.layout is None:
            return self.tiles.describe()
        (rows, cols), (tile_h, tile_w), (_, canvas_h, canvas_w) = self.layout[0].grid, self.layout.tile, self.layout.canvas
        text = f"attention {rows}x{cols} tiles of {tile_h}x{tile_w} tokens + {self.layout.halo} halo "
        if self.tiles.time is None:
            return text + f"in one forward on {canvas_h}x{canvas_w} tokens"
        return (text + f"in one forward per time window on {canvas_h}x{canvas_w} tokens, "
                f"{self.tiles.windows()} windows of {self.tiles.frames} latent frames on {self.tiles.time.length}")

    @property
    def text_guidance_scale(self) -> float:
        """The larger of the two stages' scales: whether negative embeddings are needed at all."""
        return max(self.guidance_scale, self.sketch_guidance_scale)


def plan_render(
    config: MethodConfig,
    rules: SizeRules,
    height: int,
    width: int,
    num_frames: int,
    strength: float | None = None,
    num_inference_steps: int | None = None,
    sketch_video_size: tuple[int, int] | None = None,
) -> RenderPlan:
    """Decide one render. ``strength`` and ``num_inference_steps`` default to ``config.refine``.

    Raises:
        SuperGenError: a size the model cannot take, a strength outside ``(0, 1]``, a schedule that
            leaves no refinement step, a tile or overlap that does not fit.
    """
    canvas = snap_size(rules, height, width)
    frames = rules.snap_frames(num_frames)
    strength = config.refine.strength if strength is None else strength
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 < strength <= 1.0:
        raise SuperGenError(f"strength={strength!r}: must lie in (0, 1]")
    total = config.refine.num_inference_steps if num_inference_steps is None else num_inference_steps
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise SuperGenError(f"num_inference_steps={total!r}: must be a positive integer")
    k = min(int(total * strength), total)
    if k == 0:
        raise SuperGenError(f"strength={strength} × num_inference_steps={total} leaves no refinement step; raise either")
    native = sketch_size(config.sketch, rules, *canvas)
    sketch = tuple(sketch_video_size) if sketch_video_size is not None else native
    from_sketch = sketch_video_size is not None or k < total
    tile = tile_pixels(config.tiling, rules, native)
    latent_shape = rules.latent_shape(frames, *canvas)
    window = frame_window(config.tiling, rules, frames)
    tiles = tile_plan(config.tiling, rules, latent_shape[-2:], tile, (latent_shape[2], window) if window else None, k)
    one_tile = rules.latent_shape(frames, min(tile[0], canvas[0]), min(tile[1], canvas[1]))
    # Before any load: the forwards the model numbers with its own position table must fit it.
    check_positions(config.tiling, rules, frames, sketch if from_sketch and sketch_video_size is None else None,
                    (tiles.frames or latent_shape[2], *(min(t, c) for t, c in zip(tiles.tile, latent_shape[-2:]))))
    # Attention mode's forward covers one time window (all frames without time windows): its layout spans the window's frames.
    layout = (attention_layouts(config.tiling, rules, (tiles.frames or latent_shape[2], *latent_shape[3:]), tile)
              if config.tiling.mode == "attention" else None)
    refine, sketch_cfg = config.refine, config.sketch
    vae = config.vae.tiling
    return RenderPlan(
        size=(height, width),
        canvas=canvas,
        num_frames=frames,
        sketch=sketch,  # type: ignore[arg-type]
        run_sketch=from_sketch and sketch_video_size is None,
        from_sketch=from_sketch,
        latent_shape=latent_shape,
        tile_latent_shape=(*one_tile[:2], tiles.frames or one_tile[2], *one_tile[3:]),
        sketch_steps=sketch_cfg.num_inference_steps,
        sketch_guidance_scale=sketch_cfg.guidance_scale,
        sketch_guidance_scale_2=sketch_cfg.guidance_scale_2,
        num_inference_steps=total,
        strength=strength,
        refine_steps=k,
        guidance_scale=refine.guidance_scale if refine.guidance_scale is not None else sketch_cfg.guidance_scale,
        guidance_scale_2=refine.guidance_scale_2 if refine.guidance_scale_2 is not None else sketch_cfg.guidance_scale_2,
        # Compared with the sketch size the model decodes untiled anyway, whether or not stage 1 runs.
        vae_tiling=vae == "on" or (vae == "auto" and canvas[0] * canvas[1] > sketch[0] * sketch[1]),
        tiles=tiles,
        layout=layout,
    )


def tile_plan(
    cfg: TilingConfig, rules: SizeRules, canvas: tuple[int, int], tile: tuple[int, int], frames: tuple[int, int] | None = None,
    steps: int | None = None,
) -> TilePlan:
    """The tile plan in latent units on a canvas latent ``(H, W)`` for a tile of ``tile`` pixels;
    ``frames``: ``(canvas, window)`` latent frames when the clip is refined in time windows;
    ``steps``: refinement steps (the last one's time borders blend when ``cfg.feather_last``)."""
    feather_step = steps - 1 if steps is not None and cfg.feather_last else None
    if cfg.mode == "attention":
        # One forward over the whole canvas per time window (one window: the whole clip); the spatial
        # tiles live in the attention layout instead. The time windows shift as shift mode's do.
        return TilePlan(canvas=canvas, tile=canvas, patch=rules.patch[1:], shift_divisor=cfg.shift_divisor,
                        shift_every=cfg.shift_every, frames=frames, frame_patch=rules.patch[0], feather_step=feather_step)
    scale = rules.vae_scale[1]
    overlap = overlap_pixels(cfg, rules, tile) if cfg.mode == "overlap" else 0
    return TilePlan(
        canvas=canvas,
        tile=(tile[0] // scale, tile[1] // scale),
        patch=rules.patch[1:],
        mode=cfg.mode,
        boundary=cfg.boundary,
        shift_divisor=cfg.shift_divisor,
        shift_every=cfg.shift_every,
        overlap=overlap // scale,
        frames=frames,
        frame_patch=rules.patch[0],
        feather_step=feather_step,
    )


def attention_layouts(cfg: TilingConfig, rules: SizeRules, latent: tuple[int, int, int], tile: tuple[int, int]):
    """The ``supergen_kernels.LayoutCycle`` (in tokens) of ``tiling.mode=attention`` on a canvas latent ``(F, H, W)``.

    The windows move with shift mode's schedule (``shift_divisor``, ``shift_every``, ``boundary``):
    a window border that stayed put for the whole refinement would print a seam there, which is
    what shifting exists to prevent. ``shift_every`` at least the step count keeps them fixed.
    """
    from supergen_kernels import LayoutCycle

    multiple = rules.pixel_multiple
    if cfg.halo % multiple:
        raise SuperGenError(f"tiling.halo={cfg.halo} must be a multiple of {multiple} (VAE × patch)")
    p_t, p_h, p_w = rules.patch
    return LayoutCycle(
        canvas=(latent[0] // p_t, latent[1] // p_h, latent[2] // p_w),
        tile=(tile[0] // multiple, tile[1] // multiple),
        halo=cfg.halo // multiple,
        shift_divisor=cfg.shift_divisor,
        shift_every=cfg.shift_every,
        boundary=cfg.boundary,
    )
