"""What every tile-level cache shares: a residual canvas, and the rules no decision may break.

A reused tile's prediction is its current input plus the residual (model output − input) last
computed under its *current* window, whichever tile computed it: the residual is kept as a canvas
``(1, C, F, H, W)``, so it stays valid when the tile grid shifts. Per canvas element the state also
counts computations and the steps since the last one (``streak``).

The per-element maps have one entry per element the plan's windows cut: ``(H, W)`` when every tile
spans all frames, ``(F, H, W)`` when the clip is refined in time windows (tiles with ``frames``),
whose borders shift along time as the spatial ones do. One rule for both (:attr:`TileReuse.map_dims`):
with one time window the maps stay ``(H, W)`` and the statistics averaged over frames, so that path
computes exactly what it did before time windows existed.

The rules (:meth:`TileReuse.may_reuse`): the first ``warmup_steps`` and the last step are always
computed, an element is never reused before it has been computed once, and never more than
``max_consecutive`` steps in a row.
"""

from __future__ import annotations

import contextlib
import math

import torch

from ..tiling import Tile, accumulate, crop, window_shape

_EPS = 1e-12


def owned_spans(tile: Tile) -> tuple[tuple[int, int], ...]:
    """``((r0, r1), (c0, c1))``, with ``(f0, f1)`` first when the tile has a time window: the box of
    ``tile``'s window where its blend weight is positive (shift: the owned segment; overlap: the whole
    window), from the plan's arithmetic: no device work."""
    owned = tile.owned if tile.frames is None else (tile.owned_frames, *tile.owned)
    return tuple(s.indices(size)[:2] for s, size in zip(owned, window_shape(tile)))


def owned_share(tile: Tile) -> float:
    """The share of ``tile``'s window (frames × rows × columns) that it writes."""
    return math.prod(b - a for a, b in owned_spans(tile)) / math.prod(window_shape(tile))


class TileReuse:
    """Base of the tile-level policies (:class:`~supergen.cache.TilePolicy`); subclasses implement
    :meth:`decide` with :meth:`may_reuse` and end it with :meth:`_remember`."""

    def __init__(self, warmup_steps: int, max_consecutive: int):
        self.warmup_steps, self.max_consecutive = warmup_steps, max_consecutive
        self.num_steps = 0
        self._state: dict[str, torch.Tensor] = {}
        self._fresh: torch.Tensor | None = None
        #: Trailing canvas dims the per-element maps keep: 2 ``(H, W)``, or 3 ``(F, H, W)`` with time windows.
        self.map_dims = 2

    def start(self, num_steps: int) -> None:
        self.num_steps = num_steps
        self._state = {}

    def scope(self, step, tiles):
        return contextlib.nullcontext()

    def _prepare(self, latents: torch.Tensor, tiles: list[Tile]) -> torch.Tensor:
        """The float32 canvas of a step; at the first step of a run, the maps are made, per frame too
        when the plan has time windows (every tile of such a plan has one)."""
        x = latents.float()
        if not self._state:
            self.map_dims = 2 if tiles[0].frames is None else 3
            self._init_state(x)
        return x

    def _zeros(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A per-element map of the canvas ``x`` (``(H, W)`` or ``(F, H, W)``, see :attr:`map_dims`)."""
        return torch.zeros(x.shape[-self.map_dims :], dtype=dtype, device=x.device)

    def _per_element(self, t: torch.Tensor) -> torch.Tensor:
        """A canvas-shaped ``(1, C, F, H, W)`` tensor averaged into a per-element map: over batch and
        channels, and over frames too unless the maps keep them."""
        return t.mean(dim=(0, 1, 2)[: 5 - self.map_dims])

    def _init_state(self, x: torch.Tensor) -> None:
        """Called with the first step's float32 canvas; subclasses add their own maps."""
        self._state = {"residual": torch.zeros_like(x), "count": self._zeros(x, torch.int64), "streak": self._zeros(x, torch.int64)}

    def _owned(self, tile: Tile, name: str) -> torch.Tensor:
        """The values of the map ``name`` on the part of the window the tile writes (flat, row-major:
        the order boolean-mask indexing gives). A slice, so no host synchronisation."""
        values = crop(self._state[name], tile)
        if tile.weight is None:
            return values.flatten()
        return values[tuple(slice(a, b) for a, b in owned_spans(tile))].flatten()

    @staticmethod
    def _fetch(values: list[list[torch.Tensor]]) -> list[list[float]]:
        """Per tile, scalar device tensors → Python numbers in one device-to-host transfer (float64 holds
        the int64 counts and the float32 statistics exactly)."""
        if not values:
            return []
        return torch.stack([torch.stack([v.to(torch.float64) for v in row]) for row in values]).tolist()

    def _rule_values(self, tile: Tile) -> list[torch.Tensor]:
        """What :meth:`allowed` needs of one tile, still on the device."""
        return [self._owned(tile, "count").min(), self._owned(tile, "streak").max()]

    def forced(self, step: int) -> bool:
        return step < self.warmup_steps or step >= self.num_steps - 1

    def allowed(self, step: int, count_min: float, streak_max: float) -> bool:
        """Whether the rules allow reusing a tile at ``step`` whose owned elements were computed at
        least ``count_min`` times and reused at most ``streak_max`` steps in a row."""
        return not self.forced(step) and count_min >= 1 and streak_max < self.max_consecutive

    def may_reuse(self, step: int, tile: Tile) -> bool:
        """:meth:`allowed` for one tile (one host read; policies deciding many tiles use :meth:`_fetch`)."""
        count_min, streak_max = self._fetch([self._rule_values(tile)])[0]
        return self.allowed(step, count_min, streak_max)

    def _remember(self, x: torch.Tensor, tiles: list[Tile], decisions: list[bool]) -> None:
        # Elements written only by computed tiles take this step's output in observe(); an element a
        # reused tile writes keeps its old residual (a blend of fresh and reused is not an output).
        reused_cover = self._zeros(x)
        for tile, compute in zip(tiles, decisions):
            if not compute:
                accumulate(reused_cover, tile, torch.ones(window_shape(tile), device=x.device))
        self._fresh = reused_cover == 0

    def predictions(self, step, latents, tiles, computed):
        out = dict(computed)
        for tile in tiles:
            if tile.index not in out:
                out[tile.index] = crop(latents, tile).float() + crop(self._state["residual"], tile)
        return out

    def observe(self, step, latents, prediction):
        state, fresh = self._state, self._fresh
        x, output = latents.float(), prediction.float()
        self._observe_fresh(x, output, fresh)
        state["residual"] = torch.where(fresh, output - x, state["residual"])
        state["count"] = torch.where(fresh, state["count"] + 1, state["count"])
        state["streak"] = torch.where(fresh, torch.zeros_like(state["streak"]), state["streak"] + 1)

    def _observe_fresh(self, x: torch.Tensor, output: torch.Tensor, fresh: torch.Tensor) -> None:
        """Subclass statistics from this step's output where ``fresh``, before the residual is replaced."""
