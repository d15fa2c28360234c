"""Tile geometry: which windows of the canvas latent the model sees at each refinement step.

Everything here is in latent units and knows nothing about models or ranks. A tile is a window in
(frames, height, width): on the two spatial axes always, and along time when the canvas has more
latent frames than the model's native length (``TilePlan(frames=...)``); a clip at or under that
length has one window in time, and its tiles span all frames (``Tile.frames`` is None). A
:class:`TilePlan` is computed, never looked up, so any canvas size works: at every step every latent
element is covered and the blend weights of the tiles covering it sum to one
(``tests/test_tiling.py`` and ``tests/test_tiling_temporal.py`` check this over many shapes).

The time axis follows the same schedule as the spatial ones (its own cycle, ``shift_divisor``,
``shift_every``) but always with the ``clamp`` boundary: wrapping would put a clip's last frames
before its first ones in one window. In ``overlap`` mode neighbouring time windows overlap by a
quarter of the window and are feathered like the spatial tiles. In ``shift`` mode the borders of the
last refinement step are not shifted away by any later step: optionally (``TilePlan(feather_step=...)``,
``tiling.feather_last``) neighbouring time windows blend linearly there over a quarter window across
each border instead of cutting, with no more windows than a cutting step on a 241-frame clip in 81-frame windows.

Time windows are in latent frames and cut only the transformer's work: the VAE encodes and decodes
the whole clip (``supergen.parallel.vae`` tiles it in space only), so a causal VAE's first-frame rule
(video frame 0 coded alone, then groups of the temporal factor) holds as for any render. What a window
changes is what the transformer sees: a window that starts past latent frame 0 begins with a latent of
several video frames,
where the clips it was trained on began with one of a single frame.

Two modes:

``shift`` (the paper)
    Non-overlapping ownership: the canvas is cut into segments whose cut lines move by
    ``tile / shift_divisor`` every ``shift_every`` steps, so a border at one step is interior at the
    next. Each axis cycles on its own (the authors' single shared modulus left a band that borders
    never crossed when the two axes had different tile/stride ratios). At the canvas edge:

    - ``wrap``: the canvas is a torus; segments have (near-)equal sizes that sum to the axis length
      and windows may wrap around, putting opposite edges side by side in one tile.
    - ``clamp``: every window is a full-size tile clamped inside the canvas; a tile only writes the
      segment it owns, the rest of its window is context. No wrap-around, one extra tile per axis.

``overlap``
    A fixed grid of overlapping tiles with linear feathering in the overlaps (MultiDiffusion-style),
    weights normalised so they sum to one everywhere.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Iterable

import torch

from .errors import SuperGenError


@dataclass(frozen=True)
class Window:
    """``size`` consecutive elements of an axis of length ``canvas`` from ``start``, wrapping past the end."""

    start: int
    size: int
    canvas: int

    @property
    def wraps(self) -> bool:
        return self.start + self.size > self.canvas

    def pieces(self) -> list[tuple[slice, slice]]:
        """``(canvas_slice, window_slice)`` pairs: one, or two when the window wraps."""
        if not self.wraps:
            return [(slice(self.start, self.start + self.size), slice(0, self.size))]
        head = self.canvas - self.start
        return [
            (slice(self.start, self.canvas), slice(0, head)),
            (slice(0, self.size - head), slice(head, self.size)),
        ]

    def positions(self) -> torch.Tensor:
        """Canvas coordinate of every element of the window, shape ``(size,)``, int64."""
        return (torch.arange(self.size) + self.start) % self.canvas


@dataclass(frozen=True)
class Tile:
    """One transformer call's window on the canvas, and how its prediction is blended back.

    ``weight`` has shape ``(rows.size, cols.size)``, or ``(frames.size, rows.size, cols.size)`` when
    the tile has a time window (float32), or is ``None`` when it is all ones; ``owned`` is the part
    of the window where it is non-zero, ``(rows, cols)`` slices of the window (``owned_frames`` along
    time), known from the plan's arithmetic (so no one needs to read the weights back on the host).
    ``frames`` is the window in latent frames, or ``None`` when the tile spans every frame.
    """

    index: int
    rows: Window
    cols: Window
    weight: torch.Tensor | None = None
    owned: tuple[slice, slice] = (slice(None), slice(None))
    frames: Window | None = None
    owned_frames: slice = field(default_factory=lambda: slice(None))

    @property
    def shape(self) -> tuple[int, int]:
        """Spatial ``(h, w)`` of the window (every tile of a plan has the same number of frames)."""
        return (self.rows.size, self.cols.size)

    @property
    def origin(self) -> tuple[int, int]:
        return (self.rows.start, self.cols.start)

    def axes(self) -> list[tuple[int, Window]]:
        """``(dim, window)`` of each windowed axis of a canvas-shaped tensor ``(..., F, H, W)``."""
        spatial = [(-2, self.rows), (-1, self.cols)]
        return spatial if self.frames is None else [(-3, self.frames), *spatial]

    def region(self) -> tuple[Window, ...]:
        """The canvas region the window covers: ``(rows, cols)``, with ``frames`` first when it has one."""
        return tuple(window for _, window in self.axes())


@dataclass(frozen=True)
class _AxisSegment:
    window: Window
    #: 1-D blend weights over the window, or None for all ones.
    weight: torch.Tensor | None
    #: Where ``weight`` is non-zero (a clamped window writes only the segment it owns).
    owned: slice = field(default_factory=lambda: slice(None))


class AxisSchedule:
    """The tiling of one axis: its windows at a given offset and the cycle of offsets it visits.

    Args:
        length: axis length in latent units (a multiple of ``patch``).
        tile: tile length in latent units (a multiple of ``patch``); clipped to ``length``.
        patch: the transformer's patch size on this axis: every window edge lies on it.
        mode: ``shift`` or ``overlap``.
        boundary: ``wrap`` or ``clamp`` (shift mode).
        stride: how far the cut lines move per shift (shift mode), a multiple of ``patch``.
        overlap: minimum overlap between neighbours (overlap mode).
    """

    def __init__(self, length: int, tile: int, patch: int, mode: str, boundary: str, stride: int, overlap: int):
        for name, value in (("length", length), ("tile", tile), ("stride", stride)):
            if value % patch or value <= 0:
                raise SuperGenError(f"axis {name}={value} must be a positive multiple of the patch size {patch}")
        self.length, self.tile, self.patch = length, min(tile, length), patch
        self.mode, self.boundary = mode, boundary
        self.stride = stride
        self.overlap = max(0, min(overlap, self.tile - patch)) // patch * patch
        self.period = self._period()

    @property
    def single(self) -> bool:
        """The tile covers the whole axis: one window, nothing to shift."""
        return self.tile >= self.length

    # ---- shift mode -------------------------------------------------------------------------
    def _wrap_sizes(self) -> list[int]:
        # n near-equal sizes (in whole patches) that sum to the axis length; each <= tile.
        n = math.ceil(self.length / self.tile)
        units = self.length // self.patch
        base, extra = divmod(units, n)
        return [(base + (i < extra)) * self.patch for i in range(n)]

    def cuts(self, offset: int) -> list[int]:
        """Positions in [0, length) where a segment starts (shift mode); ``[0]`` when the tile spans the axis."""
        if self.single:
            return [0]
        if self.boundary == "wrap":
            starts, pos = [], offset
            for size in self._wrap_sizes():
                starts.append(pos % self.length)
                pos += size
            return sorted(starts)
        first = offset % self.tile
        return sorted({0} | set(range(first, self.length, self.tile)))

    def _period(self) -> int:
        """Smallest offset after which the cut pattern repeats (0 when the axis is not shifted)."""
        if self.single or self.mode != "shift":
            return 0
        if self.boundary == "clamp":
            return self.tile
        # The wrap sizes are a run of (base + 1)-patch segments, then one of base-patch segments
        # (_wrap_sizes): only a full turn maps that pattern onto itself, unless all are equal.
        # Arithmetic, not a search over shifts: planning costs the same at any canvas size.
        base, extra = divmod(self.length // self.patch, self.count(0))
        return base * self.patch if extra == 0 else self.length

    def offset(self, shift_index: int) -> int:
        """Offset of the cut pattern after ``shift_index`` shifts: its own cycle on this axis."""
        return 0 if self.period == 0 else (shift_index * self.stride) % self.period

    def cycle(self) -> list[int]:
        """Every offset this axis visits, in order, before repeating."""
        if self.period == 0:
            return [0]
        return [self.offset(k) for k in range(self.period // math.gcd(self.stride, self.period))]

    def count(self, offset: int) -> int:
        """``len(self.segments(offset))``, by arithmetic: no window is built (planning any size costs the same)."""
        if self.single:
            return 1
        if self.mode == "overlap":
            return max(2, math.ceil((self.length - self.overlap) / (self.tile - self.overlap)))
        if self.boundary == "wrap":
            return math.ceil(self.length / self.tile)
        first = offset % self.tile
        return len(range(first, self.length, self.tile)) + (first != 0)

    def segments(self, offset: int) -> list[_AxisSegment]:
        if self.single:
            return [_AxisSegment(Window(0, self.length, self.length), None)]
        if self.mode == "overlap":
            return self._overlap_segments
        cuts = self.cuts(offset)
        if self.boundary == "wrap":
            ends = cuts[1:] + [cuts[0] + self.length]
            return [_AxisSegment(Window(a, b - a, self.length), None) for a, b in zip(cuts, ends)]
        segments = []
        for a, b in zip(cuts, cuts[1:] + [self.length]):
            start = min(a, self.length - self.tile)
            weight = torch.zeros(self.tile)
            weight[a - start : b - start] = 1.0  # the window only writes the segment it owns
            segments.append(_AxisSegment(Window(start, self.tile, self.length), weight, slice(a - start, b - start)))
        return segments

    # ---- shift mode, feathered (the time axis at the last refinement step) ------------------
    def feather_margin(self) -> int:
        """Elements blended across each border by :meth:`feathered_segments`: a quarter window (at
        least one patch); 0 when the window is too short to own a segment as long as the margin."""
        margin = max(self.patch, self.tile // 4 // self.patch * self.patch)
        return 0 if self.single or self.tile - margin < margin else margin

    def _feathered_cuts(self, offset: int) -> tuple[list[int], int]:
        """The cut lines of :meth:`feathered_segments` and how far before a cut its ramp starts."""
        margin = self.feather_margin()
        stride = self.tile - margin
        # Half the margin before each cut, rounded down to the patch (window starts lie on it).
        return sorted({0} | set(range(offset % stride, self.length, stride))), margin // 2 // self.patch * self.patch

    def feathered_count(self, offset: int) -> int:
        """``len(self.feathered_segments(offset))``, from the cut lines: no weight is built."""
        if self.feather_margin() == 0:
            return self.count(offset)
        cuts, half = self._feathered_cuts(offset)
        return len({min(max(0, a - half), self.length - self.tile) for a in cuts})

    def feathered_segments(self, offset: int) -> list[_AxisSegment]:
        """Clamped windows whose borders blend instead of cut: segments of ``tile - m`` elements
        (``m`` = :meth:`feather_margin`), cut lines at ``offset`` modulo that, and across each cut
        a linear ramp over ``m`` elements centred on it (to the patch), so the two neighbours'
        weights sum to one there and no element switches from one window's prediction to the next
        at once. Each window holds its segment and the ramps on both sides (``tile`` elements at most)."""
        margin = self.feather_margin()
        if margin == 0:
            return self.segments(offset)
        cuts, half = self._feathered_cuts(offset)
        position = torch.arange(self.length, dtype=torch.float32) + 0.5
        segments = []
        for a, b in zip(cuts, cuts[1:] + [self.length]):
            # Ramps start ``half`` before the cut; none at the canvas edges. Segments are at
            # least ``margin`` long between two cuts, so a segment's two ramps never meet.
            up = ((position - (a - half)) / margin).clamp(0.0, 1.0) if a > 0 else torch.ones(self.length)
            down = (1.0 - (position - (b - half)) / margin).clamp(0.0, 1.0) if b < self.length else torch.ones(self.length)
            lo, hi = max(0, a - half), min(self.length, b - half + margin) if b < self.length else self.length
            start = min(lo, self.length - self.tile)
            weight = (up * down)[start : start + self.tile]
            if segments and segments[-1].window.start == start:
                # A short first or last segment clamped onto its neighbour's window: one forward, both weights.
                previous = segments.pop()
                weight, lo = weight + previous.weight, start + previous.owned.start
            segments.append(_AxisSegment(Window(start, self.tile, self.length), weight, slice(lo - start, hi - start)))
        return segments

    # ---- overlap mode -----------------------------------------------------------------------
    @cached_property
    def _overlap_segments(self) -> list[_AxisSegment]:
        step = self.tile - self.overlap
        n = max(2, math.ceil((self.length - self.overlap) / step))
        span_units = (self.length - self.tile) // self.patch
        starts = [round(span_units * i / (n - 1)) * self.patch for i in range(n)]
        segments = []
        for i, start in enumerate(starts):
            # Linear ramps over the actual overlap with each neighbour; none at the canvas edges.
            left = starts[i - 1] + self.tile - start if i > 0 else 0
            right = start + self.tile - starts[i + 1] if i + 1 < n else 0
            j = torch.arange(self.tile, dtype=torch.float32) + 0.5
            weight = torch.ones(self.tile)
            if left > 0:
                weight = weight * (j / left).clamp(max=1.0)
            if right > 0:
                weight = weight * ((self.tile - j) / right).clamp(max=1.0)
            segments.append(_AxisSegment(Window(start, self.tile, self.length), weight))
        return segments


def shift_stride(tile: int, patch: int, shift_divisor: int) -> int:
    """How far the cut lines of an axis move per shift: ``tile / shift_divisor`` rounded to the patch,
    at least one patch (the one rule, shared by :class:`TilePlan` and the sparse-attention layouts)."""
    return max(patch, round(tile / shift_divisor / patch) * patch)


class TilePlan:
    """Tiles of the canvas latent at every refinement step.

    Args:
        canvas: ``(height, width)`` of the canvas latent.
        tile: ``(height, width)`` of a tile in latent units (typically the sketch's latent size).
        patch: the transformer's spatial patch ``(ph, pw)``; all window edges lie on it.
        mode: ``shift`` or ``overlap``.
        boundary: ``wrap`` or ``clamp`` (shift mode, spatial axes; time always clamps).
        shift_divisor: the grid moves by ``tile / shift_divisor`` (rounded to the patch, at least one).
        shift_every: refinement steps between two moves.
        overlap: minimum overlap in latent units (overlap mode).
        frames: ``(canvas frames, window frames)`` in latent frames: windows along time too when the
            canvas is longer than the window; None (or a window at least the canvas) spans all frames.
        frame_patch: the transformer's temporal patch; time window edges lie on it.
        feather_step: shift mode with time windows: from this refinement step on (the last one, as
            planned), neighbouring time windows blend across their borders over a quarter window
            (:meth:`AxisSchedule.feathered_segments`) instead of cutting. None: every step cuts.
    """

    def __init__(
        self,
        canvas: tuple[int, int],
        tile: tuple[int, int],
        patch: tuple[int, int] = (1, 1),
        mode: str = "shift",
        boundary: str = "clamp",
        shift_divisor: int = 16,
        shift_every: int = 1,
        overlap: int = 0,
        frames: tuple[int, int] | None = None,
        frame_patch: int = 1,
        feather_step: int | None = None,
    ):
        if mode not in ("shift", "overlap"):
            raise SuperGenError(f"tiling mode {mode!r} is not one of: shift, overlap")
        if boundary not in ("wrap", "clamp"):
            raise SuperGenError(f"tiling boundary {boundary!r} is not one of: wrap, clamp")
        self.canvas, self.patch, self.mode, self.boundary = tuple(canvas), tuple(patch), mode, boundary
        self.shift_every = shift_every
        self.axes = []
        for length, size, p in zip(canvas, tile, patch):
            size = min(size, length)
            self.axes.append(AxisSchedule(length, size, p, mode, boundary, shift_stride(size, p, shift_divisor), overlap))
        self.tile = tuple(axis.tile for axis in self.axes)
        #: The time axis when the canvas has more latent frames than a window, else None (tiles span all frames).
        self.time: AxisSchedule | None = None
        if frames is not None and frames[1] < frames[0]:
            length, size = frames
            # Time always clamps (see the module docstring); overlap mode feathers a quarter window.
            self.time = AxisSchedule(length, size, frame_patch, mode, "clamp", shift_stride(size, frame_patch, shift_divisor), size // 4)
        self.feather_step = feather_step if mode == "shift" else None

    @property
    def frames(self) -> int | None:
        """Latent frames of a time window, or None when every tile spans all frames."""
        return None if self.time is None else self.time.tile

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the canvas the weights cover: ``(H, W)``, or ``(F, H, W)`` with time windows."""
        return self.canvas if self.time is None else (self.time.length, *self.canvas)

    def offsets(self, step: int) -> tuple[int, int]:
        """Grid offset ``(dy, dx)`` at refinement step ``step``."""
        shift_index = step // self.shift_every
        return (self.axes[0].offset(shift_index), self.axes[1].offset(shift_index))

    def frame_offset(self, step: int) -> int:
        """Offset of the time windows' cut lines at refinement step ``step`` (0 without time windows)."""
        return 0 if self.time is None else self.time.offset(step // self.shift_every)

    def feathered(self, step: int) -> bool:
        """Whether the time windows of step ``step`` blend across their borders (see ``feather_step``)."""
        return self.time is not None and self.feather_step is not None and step >= self.feather_step

    def tiles_unnormalised(self, step: int) -> list[Tile]:
        dy, dx = self.offsets(step)
        if self.time is None:
            times = [None]
        elif self.feathered(step):
            times = self.time.feathered_segments(self.frame_offset(step))
        else:
            times = self.time.segments(self.frame_offset(step))
        tiles = []
        for time in times:
            for row in self.axes[0].segments(dy):
                for col in self.axes[1].segments(dx):
                    tiles.append(self._tile(len(tiles), time, row, col))
        return tiles

    @staticmethod
    def _tile(index: int, time: _AxisSegment | None, row: _AxisSegment, col: _AxisSegment) -> Tile:
        if time is None:
            weight = None
            if row.weight is not None or col.weight is not None:
                wr = row.weight if row.weight is not None else torch.ones(row.window.size)
                wc = col.weight if col.weight is not None else torch.ones(col.window.size)
                weight = torch.outer(wr, wc)
            return Tile(index, row.window, col.window, weight, (row.owned, col.owned))
        segments = (time, row, col)
        weight = None
        if any(seg.weight is not None for seg in segments):
            wt, wr, wc = (seg.weight if seg.weight is not None else torch.ones(seg.window.size) for seg in segments)
            weight = wt[:, None, None] * torch.outer(wr, wc)
        return Tile(index, row.window, col.window, weight, (row.owned, col.owned), time.window, time.owned)

    def count(self, step: int) -> int:
        """``len(self.tiles(step))``, by arithmetic: no tile or weight is built."""
        dy, dx = self.offsets(step)
        if self.time is None:
            windows = 1
        elif self.feathered(step):
            windows = self.time.feathered_count(self.frame_offset(step))
        else:
            windows = self.time.count(self.frame_offset(step))
        return windows * self.axes[0].count(dy) * self.axes[1].count(dx)

    @cached_property
    def _normaliser(self) -> torch.Tensor | None:
        # Overlap mode's canvas-sized weight sum: made by the first render that asks for tiles, never by planning.
        return self._weight_sum(self.tiles_unnormalised(0)) if self.mode == "overlap" else None

    def tiles(self, step: int) -> list[Tile]:
        """The tiles of step ``step``, time-major then row-major; their weights sum to one everywhere."""
        tiles = self.tiles_unnormalised(step)
        if self._normaliser is None:
            return tiles
        return [t if t.weight is None else replace(t, weight=t.weight / crop(self._normaliser, t)) for t in tiles]

    def _weight_sum(self, tiles: list[Tile]) -> torch.Tensor:
        total = torch.zeros(self.shape)
        for t in tiles:
            accumulate(total, t, torch.ones(window_shape(t)), weighted=True)
        return total

    def windows(self) -> int:
        """Time windows per step at offset 0 (1 when tiles span all frames)."""
        return 1 if self.time is None else self.time.count(0)

    def describe(self) -> str:
        grid = "x".join(str(axis.count(0)) for axis in self.axes)
        text = f"{self.mode} {grid} tiles of {self.tile[0]}x{self.tile[1]} latent on {self.canvas[0]}x{self.canvas[1]}"
        if self.time is not None:
            text += f", {self.windows()} windows of {self.time.tile} latent frames on {self.time.length}"
        return text


def window_shape(tile: Tile) -> tuple[int, ...]:
    """``(h, w)`` of the tile's window, or ``(f, h, w)`` when it has a time window (its weight's shape)."""
    return tuple(window.size for window in tile.region())


def _cut(x: torch.Tensor, dim: int, window: Window) -> torch.Tensor:
    parts = [x[(Ellipsis, cs) + (slice(None),) * (-dim - 1)] for cs, _ in window.pieces()]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def crop(x: torch.Tensor, tile: Tile) -> torch.Tensor:
    """The tile's window of ``x`` (shape ``(..., H, W)`` on the canvas, ``(..., F, H, W)`` when the
    tile has a time window) → ``(..., h, w)`` (``(..., f, h, w)``)."""
    for dim, window in tile.axes():
        x = _cut(x, dim, window)
    return x


def accumulate(out: torch.Tensor, tile: Tile, value: torch.Tensor, weighted: bool = True) -> None:
    """``out[window] += weight * value`` in place; ``out`` is ``(..., H, W)``, ``value`` ``(..., h, w)``
    (with a time window: ``(..., F, H, W)`` and ``(..., f, h, w)``)."""
    weight = tile.weight.to(value.device, value.dtype) if (weighted and tile.weight is not None) else None
    pieces = [window.pieces() for _, window in tile.axes()]
    for parts in itertools.product(*pieces):
        canvas_index = (Ellipsis, *(c for c, _ in parts))
        window_index = tuple(w for _, w in parts)
        part = value[(Ellipsis, *window_index)]
        out[canvas_index] += part if weight is None else weight[window_index] * part


def tile_batches(tiles: list[Tile], batch_size: int) -> Iterable[list[Tile]]:
    """Group tiles of equal shape into batches of at most ``batch_size``, keeping plan order within a shape."""
    by_shape: dict[tuple[int, ...], list[Tile]] = {}
    for tile in tiles:
        by_shape.setdefault(window_shape(tile), []).append(tile)
    for group in by_shape.values():
        for i in range(0, len(group), batch_size):
            yield group[i : i + batch_size]


@dataclass(frozen=True)
class Unit:
    """One piece of refinement work: a tile, whole (``branch`` None) or one guidance branch of it.

    With classifier-free guidance a tile is two transformer forwards; splitting them into two units
    lets two processes share one tile (CFG parallelism). ``branch`` is only a label here (the model
    families name the branches).
    """

    tile: Tile
    branch: str | None = None

    @property
    def key(self) -> tuple[int, str | None]:
        return (self.tile.index, self.branch)


def unit_batches(units: list[Unit], batch_size: int) -> Iterable[list[Unit]]:
    """Group units of equal branch and tile shape into batches of at most ``batch_size`` (:func:`tile_batches` per branch)."""
    by_branch: dict[str | None, list[Unit]] = {}
    for unit in units:
        by_branch.setdefault(unit.branch, []).append(unit)
    for branch, group in by_branch.items():
        by_index = {unit.tile.index: unit for unit in group}
        for batch in tile_batches([unit.tile for unit in group], batch_size):
            yield [by_index[tile.index] for tile in batch]
