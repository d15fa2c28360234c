"""Geometry, in one place: the size rules of a model and every size a render derives from them.

Everything here is arithmetic on sizes (no weights, no tensors), shared by a loaded model
(:class:`~supergen.adapters.ModelAdapter`) and the planner's weight-free
:class:`~supergen.cost.Architecture`, so the pipeline and ``supergen plan`` cannot disagree.
Pixel sizes are ``(height, width)``; latent sizes are in latent units.
"""

from __future__ import annotations

import math

from .config import SketchConfig, TilingConfig
from .errors import SuperGenError


class SizeRules:
    """Derives the size rules from ``vae_scale`` ``(t, h, w)``, ``patch`` ``(t, h, w)`` and
    ``latent_channels``, which subclasses provide."""

    vae_scale: tuple[int, int, int]
    patch: tuple[int, int, int]
    latent_channels: int
    #: The resolution the model was trained at, in pixels, when known.
    native_size: tuple[int, int] | None = None
    #: The clip length the model was trained at, in video frames, when known (the default time window).
    native_frames: int | None = None
    #: Positions per axis (in patches) of the rotary table the model numbers its own forwards with
    #: (Wan: ``rope_max_seq_len``); None: tables computed for any length (CogVideoX, HunyuanVideo, LTX).
    position_limit: int | None = None

    @property
    def pixel_multiple(self) -> int:
        """Height and width must be multiples of this (VAE scale × patch)."""
        return self.vae_scale[1] * self.patch[1]

    def snap_frames(self, num_frames: int) -> int:
        """The nearest frame count a causal VAE accepts, rounded down: ``k·t + 1`` (Wan: ``4k + 1``).

        Raises:
            SuperGenError: fewer than one frame (not rounded up to one: 0 or -3 is a mistake).
        """
        t = self.vae_scale[0]
        if num_frames < 1:
            raise SuperGenError(f"num_frames={num_frames}: must be at least 1 (this VAE takes {t}k+1 frames: 1, {t + 1}, {2 * t + 1}, ...)")
        return (num_frames - 1) // t * t + 1

    def extra_latent_frames(self, num_frames: int) -> int:
        """Leading latent frames the transformer denoises beyond the ``(num_frames - 1) / t + 1`` the video needs."""
        return 0

    def time_window_blocker(self) -> str:
        """Why this model's forwards cannot be windows in time of a longer clip (a condition the
        transformer ties to the first frame of every forward); ``""`` when they can."""
        return ""

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
        """Shape ``(1, C, F, H, W)`` of the canvas latent for a video of ``num_frames × height × width`` pixels."""
        t, s_h, s_w = self.vae_scale
        frames = (num_frames - 1) // t + 1 + self.extra_latent_frames(num_frames)
        return (1, self.latent_channels, frames, height // s_h, width // s_w)


class FromRules(SizeRules):
    """:class:`SizeRules` answered by ``self.rules``, one model's rules computed from its configs
    (:class:`~supergen.families.ModelRules`): what a loaded model's adapter and the planner's
    :class:`~supergen.architectures.Architecture` share, written once."""

    rules: SizeRules

    @property
    def vae_scale(self) -> tuple[int, int, int]:
        """VAE compression ``(temporal, height, width)``."""
        return self.rules.vae_scale

    @property
    def patch(self) -> tuple[int, int, int]:
        """Transformer patch ``(temporal, height, width)`` in latent units."""
        return self.rules.patch

    @property
    def latent_channels(self) -> int:
        """Channels ``C`` of the canvas latent (what the scheduler steps, not the transformer's input)."""
        return self.rules.latent_channels

    @property
    def pixel_multiple(self) -> int:
        return self.rules.pixel_multiple

    @property
    def native_frames(self) -> int | None:
        """The family's native clip length in video frames (the default time window)."""
        return self.rules.native_frames

    @property
    def position_limit(self) -> int | None:
        return self.rules.position_limit

    def extra_latent_frames(self, num_frames: int) -> int:
        return self.rules.extra_latent_frames(num_frames)

    def time_window_blocker(self) -> str:
        return self.rules.time_window_blocker()


def snap_size(rules: SizeRules, height: int, width: int) -> tuple[int, int]:
    """The canvas: a requested size rounded up to the pixel multiple (the output is cropped back)."""
    multiple = rules.pixel_multiple
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < multiple:
            raise SuperGenError(f"{name}={value!r}: must be an integer of at least {multiple} pixels (this model's VAE × patch)")
    return (math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple)


def sketch_size(cfg: SketchConfig, rules: SizeRules, height: int, width: int) -> tuple[int, int]:
    """The sketch's pixel size for a (snapped) canvas ``height × width``; also the default tile size.

    The base size is ``sketch.height × sketch.width``, else the model's native size. With
    ``sketch.aspect=follow`` a base whose aspect does not match the canvas is replaced by its
    orientation-swapped size when that matches, else by the canvas's aspect at the base's area:
    a sketch is never stretched. Without any base, the canvas's aspect at ``sketch.native_area``.
    """
    multiple = rules.pixel_multiple

    def snapped(size: tuple[float, float]) -> tuple[int, int]:
        # Never sketch larger than the canvas; always something the VAE and patch accept.
        return tuple(max(multiple, round(min(s, t) / multiple) * multiple) for s, t in zip(size, (height, width)))  # type: ignore[return-value]

    base = (cfg.height, cfg.width) if cfg.height is not None else rules.native_size
    area = cfg.native_area if base is None else base[0] * base[1]
    scale = math.sqrt(area / (height * width))
    follow = snapped((height * scale, width * scale))  # the canvas's aspect at the base's area
    if base is None:
        return follow
    if cfg.aspect == "fixed":
        return snapped(base)
    for candidate in (base, base[::-1]):
        # "Matches" = the canvas-aspect size is within one pixel multiple of it on both axes.
        if all(abs(c - f) <= multiple for c, f in zip(snapped(candidate), follow)):
            return snapped(candidate)
    return follow


def tile_pixels(cfg: TilingConfig, rules: SizeRules, sketch: tuple[int, int]) -> tuple[int, int]:
    """The tile size in pixels: ``tiling.tile_height × tile_width``, else the sketch size."""
    size = (cfg.tile_height, cfg.tile_width) if cfg.tile_height is not None else sketch
    for name, value in zip(("tile_height", "tile_width"), size):
        if value % rules.pixel_multiple:
            raise SuperGenError(f"tiling.{name}={value} must be a multiple of {rules.pixel_multiple} (VAE × patch)")
    return size


def overlap_pixels(cfg: TilingConfig, rules: SizeRules, tile: tuple[int, int]) -> int:
    """``tiling.overlap``, checked: less than half the tile's shorter side (else tiles would cover
    most of the canvas several times a step); null means a quarter of it, on the pixel multiple."""
    multiple, short = rules.pixel_multiple, min(tile)
    if cfg.overlap is None:
        return short // 4 // multiple * multiple
    if 2 * cfg.overlap >= short:
        largest = (short - 1) // 2 // multiple * multiple
        raise SuperGenError(
            f"tiling.overlap={cfg.overlap} px is not less than half the {tile[0]}x{tile[1]} px tile (height x width): "
            f"neighbouring tiles would recompute most of the canvas every step; use at most {largest}"
        )
    return cfg.overlap


def frame_window(cfg: TilingConfig, rules: SizeRules, num_frames: int) -> int | None:
    """Latent frames of a tile's time window for a clip of ``num_frames`` video frames (snapped), or
    None when one window spans the clip: ``tiling.frames``, else the model's native length, snapped
    to a frame count the VAE takes; no known length means no time windows."""
    frames = cfg.frames if cfg.frames is not None else rules.native_frames
    if frames is None:
        return None
    multiple = rules.pixel_multiple
    window = rules.latent_shape(rules.snap_frames(frames), multiple, multiple)[2]
    canvas = rules.latent_shape(rules.snap_frames(num_frames), multiple, multiple)[2]
    if window % rules.patch[0]:
        raise SuperGenError(f"tiling.frames={frames} gives {window} latent frames; this model needs a multiple of {rules.patch[0]}")
    if window >= canvas:
        return None
    blocker = rules.time_window_blocker()
    if blocker:
        raise SuperGenError(f"num_frames={num_frames} is longer than a time window (tiling.frames={frames}): {blocker}")
    return window


def check_positions(cfg: TilingConfig, rules: SizeRules, num_frames: int, sketch: tuple[int, int] | None,
                    tile: tuple[int, int, int]) -> None:
    """Refuse a forward that the model numbers with its own rotary table (:attr:`SizeRules.position_limit`)
    when it is longer than the table on some axis: diffusers would fail inside the transformer, after
    the model load, with a shape error. Those forwards are the sketch (``sketch``: its pixel size, None
    when no sketch runs) and, with ``tiling.positions=local``, every tile (``tile``: its latent
    ``(F, H, W)``); canvas positions (global, ntk) are computed for any length.
    """
    limit = rules.position_limit
    if limit is None:
        return
    # (what, the config keys of its size, its latent (F, H, W))
    forwards = [("the sketch", "sketch.", rules.latent_shape(num_frames, *sketch)[2:])] if sketch is not None else []
    if cfg.positions == "local":
        forwards.append(("a tile (tiling.positions=local)", "tiling.tile_", tile))
    table = f"this model's rotary position table holds {limit} per axis (rope_max_seq_len)"
    for what, keys, latent in forwards:
        frames, height, width = (n // p for n, p in zip(latent, rules.patch))
        if frames > limit:
            most = (limit * rules.patch[0] - 1) * rules.vae_scale[0] + 1
            also = ", or tiling.positions=global (positions computed for any length)" if keys == "tiling.tile_" else ""
            raise SuperGenError(f"num_frames={num_frames}: {what} would number {frames} latent frames and {table}; "
                                f"use at most {most} frames{also}")
        for name, positions in (("height", height), ("width", width)):
            if positions > limit:
                raise SuperGenError(f"{what} is {positions * rules.pixel_multiple} px in {name} ({positions} positions) and {table}; "
                                    f"use {keys}{name} of at most {limit * rules.pixel_multiple} px")
