"""Which canvas region a transformer call covers, and the cache-context names derived from it.

diffusers' cache hooks keep one state per *cache context name*. Naming a context after a tile index
would give the tile at grid position 3 the state of whatever tile had index 3 at the previous step,
a different region once the grid has shifted. Here the cache names contexts after **regions of the
canvas** instead: :class:`WindowKeys` gives every tile of a step the key of the region its window
overlaps most (so a shifted tile meets the state of the region it now covers), and the tile policy's
``scope`` makes the batch in progress visible to hooks through :func:`active_batch`.

Two consumers read it:

* :func:`context_name`, for whoever opens diffusers' ``model.cache_context(...)`` around a tile
  batch (the adapter), so that hooks a user applied outside supergen are region-keyed too;
* :class:`KeyedStates`, the :class:`~diffusers.hooks.hooks.StateManager` of the hooks supergen
  installs, which derives its state key from the context name and the active batch, so those hooks
  are region-keyed whatever the caller named its context (only the guidance branch, the name's
  prefix before ``/``, is taken from it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from contextvars import ContextVar
from typing import Callable, Iterator


from ..compat import BaseState, CacheContext, StateManager
from ..tiling import Tile, Window


@dataclasses.dataclass(frozen=True)
class Batch:
    """The tiles of the transformer call in progress and the region key of each."""

    step: int
    tiles: tuple[Tile, ...]
    keys: tuple[str, ...]

    @property
    def name(self) -> str:
        """One context name for the batch: its tiles' region keys (one key with the default batch of 1)."""
        return "+".join(self.keys)


_ACTIVE: ContextVar[Batch | None] = ContextVar("supergen_cache_batch", default=None)


@contextlib.contextmanager
def active_batch(batch: Batch) -> Iterator[None]:
    """Make ``batch`` the one hooks and :func:`context_name` see while the block runs."""
    token = _ACTIVE.set(batch)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def current_batch() -> Batch | None:
    """The batch a tile policy's ``scope`` is running, or None outside any."""
    return _ACTIVE.get()


def context_name(tiles: list[Tile]) -> str:
    """The cache-context name (without the guidance branch) for a transformer call on ``tiles``.

    Inside a cache policy's ``scope`` for these tiles it is their region keys; elsewhere (no supergen
    cache in use) the tiles' indices, which still separates the tiles of one step.
    """
    batch = _ACTIVE.get()
    if batch is not None and [t.index for t in batch.tiles] == [t.index for t in tiles]:
        return batch.name
    return "tile" + "-".join(str(t.index) for t in tiles)


def branch_of(name: str) -> str:
    """The guidance branch of a context name: ``cond/…`` → ``cond`` (the whole name when it has no ``/``)."""
    return name.split("/", 1)[0]


def region_name(name: str) -> str:
    """``branch/region keys`` of the active batch; ``name`` itself outside a policy's scope."""
    batch = _ACTIVE.get()
    return name if batch is None else f"{branch_of(name)}/{batch.name}"


def _overlap(a: Window, b: Window) -> int:
    """Elements two windows of the same axis share (wrap-around aware)."""
    return len(set(a.positions().tolist()) & set(b.positions().tolist()))


class WindowKeys:
    """Assigns every tile of a step the key of the canvas region it covers.

    A region is remembered by the last window that used its key: rows and columns, and frames first
    when the plan has time windows (so two tiles of one step at the same place in different time
    windows are different regions). Each step, tiles and known regions are matched greedily by shared
    area, a volume with time windows (largest first, ties by tile and key order, so every rank
    assigns the same keys); a tile gets a region only if they share at least ``min_overlap`` of the
    tile's area and no other tile of the step took it first, otherwise a new key. So with the grid
    moving by ``tile / 16`` per step a tile keeps its region's key, while two tiles of one step never
    share a key (a hook's state would otherwise compare one tile with another).

    Args:
        min_overlap: least shared fraction of a tile's area for it to take over a region's key.
    """

    def __init__(self, min_overlap: float = 0.5):
        self.min_overlap = min_overlap
        self.regions: dict[str, tuple[Window, ...]] = {}

    def assign(self, tiles: list[Tile]) -> list[str]:
        """Region key of each tile, in order; remembers the tiles' windows under those keys."""
        pairs = []
        for i, tile in enumerate(tiles):
            region = tile.region()
            area = math.prod(window.size for window in region)
            for key, known in self.regions.items():
                shared = math.prod(_overlap(a, b) for a, b in zip(region, known))
                if shared >= self.min_overlap * area:
                    pairs.append((-shared, i, key))
        keys: list[str | None] = [None] * len(tiles)
        taken: set[str] = set()
        for _, i, key in sorted(pairs, key=lambda p: (p[0], p[1], _order(p[2]))):
            if keys[i] is None and key not in taken:
                keys[i] = key
                taken.add(key)
        for i, tile in enumerate(tiles):
            if keys[i] is None:
                keys[i] = f"r{len(self.regions)}"
            self.regions[keys[i]] = tile.region()
        return keys  # type: ignore[return-value]


def _order(key: str) -> int:
    return int(key[1:])


class KeyedStates(StateManager):
    """A diffusers ``StateManager`` whose state key is ``key(context name)`` instead of the name itself.

    With ``key=region_name`` a hook keeps one state per guidance branch and canvas region; with
    ``key=branch_of`` one per branch (the block cache, whose state is already a canvas map).
    """

    def __init__(self, state_cls: type[BaseState], key: Callable[[str], str], init_args=None, init_kwargs=None):
        super().__init__(state_cls, init_args, init_kwargs)
        self._key = key

    def set_context(self, context: CacheContext | None) -> None:
        if context is not None:
            context = dataclasses.replace(context, name=self._key(context.name))
        super().set_context(context)
