"""What a cache did in one render: per step, every tile's region, whether it ran, and the blocks it ran.

:class:`Reported` wraps any :class:`~supergen.cache.TilePolicy`: it records the policy's decisions,
gives every tile its canvas-region key (:class:`~supergen.cache.windows.WindowKeys`) and makes the
batch in progress visible to hooks while it runs. :class:`BlockCounter` counts the transformer block
forwards that really ran; it is installed only when the caller wants block counts.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from .. import compat
from ..tiling import Tile, Window
from .protocol import TilePolicy
from .windows import Batch, WindowKeys, active_batch, current_batch



@dataclass
class TileRecord:
    """One tile at one step: where it wrote on the canvas and what it cost."""

    #: The canvas rows/columns the tile writes (its owned part of the window), latent units.
    rows: Window
    cols: Window
    computed: bool
    #: Transformer block forwards actually run for this tile (all guidance branches); 0 when not counted.
    blocks: int = 0
    #: The latent frames the tile writes when the plan has time windows; None: all frames.
    frames: Window | None = None


@dataclass
class StepReport:
    """What the cache did at one refinement step."""

    step: int
    tiles: list[TileRecord]
    #: Block forwards of one uncached tile (blocks × guidance branches); 0 when not counted.
    blocks_per_tile: int = 0

    @property
    def computed(self) -> int:
        return sum(t.computed for t in self.tiles)


@dataclass
class CacheReport:
    """Per-step cache decisions of one render (``out.cache_report``)."""

    canvas: tuple[int, int]
    steps: list[StepReport] = field(default_factory=list)

    @property
    def tile_steps(self) -> int:
        return sum(len(s.tiles) for s in self.steps)

    @property
    def tiles_skipped(self) -> int:
        return sum(len(s.tiles) - s.computed for s in self.steps)

    @property
    def block_share_skipped(self) -> float:
        """Fraction of all block forwards an uncached run would do that were skipped (tile and block
        level); 0 when blocks were not counted."""
        total = sum(s.blocks_per_tile * len(s.tiles) for s in self.steps)
        done = sum(t.blocks for s in self.steps for t in s.tiles)
        return 0.0 if total == 0 else 1.0 - done / total


def _owned(window: Window, owned: slice) -> Window:
    """The part of ``window`` with non-zero blend weight (clamp tiles only write their own segment)."""
    first, stop, _ = owned.indices(window.size)
    return Window((window.start + first) % window.canvas, stop - first, window.canvas)


def _record(tile: Tile, computed: bool) -> TileRecord:
    frames = None if tile.frames is None else _owned(tile.frames, tile.owned_frames)
    return TileRecord(_owned(tile.rows, tile.owned[0]), _owned(tile.cols, tile.owned[1]), computed, frames=frames)


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's transformer blocks, found by the same names diffusers' own cache hooks use."""
    blocks = []
    for name, child in model.named_children():
        if name in compat.TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(child, torch.nn.ModuleList):
            blocks.extend(child)
    return blocks


class BlockCounter:
    """Counts, per tile of the active batch, the transformer block forwards whose body really ran.

    A block counts when any of its sub-modules runs between the block's entry and exit. That is
    measured with plain ``torch`` module hooks, beside diffusers' hook chain rather than in it: a
    diffusers hook that skips a block (FBC, MagCache, supergen's block cache) never reaches the
    block's sub-modules, wherever it sits in the chain and whenever it was registered, and hooks that
    only move weights (group offloading) change nothing in what runs.
    """

    def __init__(self, models: list[torch.nn.Module]):
        self.counts: dict[int, int] = {}
        self._ran = False
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for model in models:
            for block in transformer_blocks(model):
                self._handles.append(block.register_forward_pre_hook(self._enter))
                self._handles.append(block.register_forward_hook(self._exit))
                for child in block.children():
                    self._handles.append(child.register_forward_pre_hook(self._body))

    def _enter(self, module, args) -> None:
        self._ran = False

    def _body(self, module, args) -> None:
        self._ran = True

    def _exit(self, module, args, output) -> None:
        batch = current_batch()
        if self._ran and batch is not None:
            for tile in batch.tiles:
                self.counts[tile.index] = self.counts.get(tile.index, 0) + 1

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class Reported:
    """Wraps any :class:`TilePolicy`: records per step which tiles were computed (and how many blocks
    ran, when a :class:`BlockCounter` is given), and names each tile's canvas region for hooks.

    Args:
        canvas: canvas latent ``(H, W)``.
        counter: counts block forwards, or None (the report's ``blocks`` stay 0).
        blocks_per_tile: block forwards of one uncached tile (0 when not counting).
    """

    def __init__(self, policy: TilePolicy, canvas: tuple[int, int], counter: BlockCounter | None = None, blocks_per_tile: int = 0):
        self.policy, self.counter = policy, counter
        self.report = CacheReport(canvas)
        self.blocks_per_tile = blocks_per_tile if counter is not None else 0
        self.windows = WindowKeys()
        self._keys: dict[int, str] = {}

    def start(self, num_steps):
        self.report.steps = []
        self.windows = WindowKeys()
        self.policy.start(num_steps)

    @contextlib.contextmanager
    def scope(self, step, tiles):
        batch = Batch(step, tuple(tiles), tuple(self._keys[t.index] for t in tiles))
        with active_batch(batch), self.policy.scope(step, tiles):
            yield

    def decide(self, step, timestep, latents, tiles):
        # Every tile of the step gets its region key, computed or not, so regions follow the grid.
        self._keys = dict(zip((t.index for t in tiles), self.windows.assign(tiles)))
        if self.counter is not None:
            self.counter.counts.clear()
        decisions = self.policy.decide(step, timestep, latents, tiles)
        self.report.steps.append(StepReport(step, [_record(t, c) for t, c in zip(tiles, decisions)], self.blocks_per_tile))
        return decisions

    def predictions(self, step, latents, tiles, computed):
        return self.policy.predictions(step, latents, tiles, computed)

    def observe(self, step, latents, prediction):
        if self.counter is not None:
            # Records are in plan order, and a tile's index is its place in the plan.
            for index, record in enumerate(self.report.steps[-1].tiles):
                record.blocks = self.counter.counts.get(index, 0)
        self.policy.observe(step, latents, prediction)
