"""Stage 2: denoise the canvas latent tile by tile, one scheduler step on the whole canvas per step.

This loop is the only place the method's step order lives, and it is family-agnostic. Each step:

1. the :class:`~supergen.tiling.TilePlan` gives this step's tiles (and ``on_step`` hears the step,
   e.g. attention mode moves its windows);
2. the :class:`TilePolicy` decides which tiles are computed (a cache may reuse the rest);
3. the :class:`TileRunner` picks this process' share of the computed tiles and brings every computed
   tile's prediction to every process (one process: all of them, nothing moves);
4. meanwhile the adapter predicts this process' tiles, in batches of equal shape;
5. the policy turns computed and reused tiles into predictions, blended into one canvas prediction;
6. the scheduler takes one step on the whole canvas.

Policies and runners see only data every process holds identically (canvas latent, timestep,
tiles), so with several processes each one takes the same decisions without messages.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from typing import Callable, ContextManager, Protocol

import torch

from .adapters import Conditioning, ModelAdapter, Stepper
from .cache import ComputeAll
from .tiling import Tile, TilePlan, accumulate, crop, tile_batches


@dataclass
class StepStats:
    """What one refinement step did."""

    step: int
    timestep: float
    #: Tiles covering the canvas at this step.
    tiles: int
    #: Tiles that went through the transformer (with guidance each is two forwards).
    tiles_computed: int
    seconds: float


class TilePolicy(Protocol):
    """Decides which tiles are computed and supplies the prediction of those that are not.

    Call order per run: :meth:`start` once, then per step :meth:`decide`, :meth:`scope` around every
    transformer call of a computed batch, :meth:`predictions`, and :meth:`observe` with the blended result.
    """

    def start(self, num_steps: int) -> None:
        """A run of ``num_steps`` refinement steps begins: forget the previous run (a cache needs the last step)."""

    def scope(self, step: int, tiles: list[Tile]) -> ContextManager[None]:
        """Entered around the adapter call that computes ``tiles`` (block-level caches key their state on it)."""

    def decide(self, step: int, timestep: torch.Tensor, latents: torch.Tensor, tiles: list[Tile]) -> list[bool]:
        """``True`` for each tile that must go through the transformer at this step."""

    def predictions(
        self, step: int, latents: torch.Tensor, tiles: list[Tile], computed: dict[int, torch.Tensor]
    ) -> dict[int, torch.Tensor]:
        """Every tile's prediction ``(1, C, F, h, w)`` by tile index, given the computed ones."""

    def observe(self, step: int, latents: torch.Tensor, prediction: torch.Tensor) -> None:
        """The blended canvas prediction ``(1, C, F, H, W)`` of this step, for ``latents`` of the same shape."""


class TileRunner(Protocol):
    """Which process computes which tile, and how the predictions reach every process.

    The runner drives the computation (rather than being handed the results afterwards) so that it
    can move one tile's prediction while the next tile is being computed.
    """

    def run(
        self,
        step: int,
        tiles: list[Tile],
        costs: list[float],
        predict: Callable[[list[Tile]], dict[int, torch.Tensor]],
    ) -> dict[int, torch.Tensor]:
        """Predictions ``(1, C, F, h, w)`` float32 of all ``tiles`` (those computed this step) by index.

        Args:
            costs: relative cost of each tile, for balancing the work across processes.
            predict: computes the predictions of a list of tiles on this process.
        """

    def finish(self, report):
        """The cache report of the run completed with what only the runner knows (e.g. counts summed over ranks)."""

    def stats(self) -> dict:
        """What the runner did, for :attr:`~supergen.pipeline.RenderStats.parallel` (empty in one process)."""


class SingleProcess:
    """One process computes every tile; nothing moves."""

    def run(self, step, tiles, costs, predict):
        return predict(tiles)

    def finish(self, report):
        return report

    def stats(self) -> dict:
        return {}


def tile_cost(tile: Tile) -> float:
    """Relative cost of computing ``tile``: its token count (all tiles of a plan span the same frames)."""
    return float(tile.shape[0] * tile.shape[1])


@dataclass
class TileRefiner:
    """Runs the refinement steps on a canvas; collaborators as described in the module docstring.

    Attributes:
        positions: ``local`` | ``global`` | ``ntk`` (see :class:`~supergen.config.TilingConfig`).
        batch_tiles: tiles of equal shape per transformer call.
        on_step: called with each step's index before its tiles are predicted (attention mode's
            :class:`~supergen.attention.StepLayouts`: per-step state the adapter's processors read).
    """

    plan: TilePlan
    adapter: ModelAdapter
    cond: Conditioning
    positions: str = "global"
    batch_tiles: int = 1
    policy: TilePolicy = field(default_factory=ComputeAll)
    runner: TileRunner = field(default_factory=SingleProcess)
    on_step: Callable[[int], None] | None = None
    _device_weights: dict = field(default_factory=dict, init=False, repr=False)

    def _on_device(self, tile: Tile, like: torch.Tensor) -> Tile:
        """``tile`` with its blend weight on ``like``'s device and dtype, copied there once per render: the
        grid cycles through a few offsets, so the same windows come back (policies keep the host tiles)."""
        if tile.weight is None:
            return tile
        # Two clamped tiles can share a window and own different parts of it: key on the weight too.
        key = (tile.rows, tile.cols, tile.weight.numpy().tobytes())
        if key not in self._device_weights:
            self._device_weights[key] = tile.weight.to(like.device, like.dtype)
        return replace(tile, weight=self._device_weights[key])

    def predict_tiles(self, step: int, latents: torch.Tensor, timestep: torch.Tensor, tiles: list[Tile]) -> dict[int, torch.Tensor]:
        """Model predictions ``(1, C, F, h, w)`` float32 of ``tiles`` by tile index."""
        out: dict[int, torch.Tensor] = {}
        for batch in tile_batches(tiles, self.batch_tiles):
            x = torch.cat([crop(latents, tile) for tile in batch])
            with self.policy.scope(step, batch):
                pred = self.adapter.predict(x, timestep, self.cond.for_tiles(batch), batch, self.plan.canvas, self.positions)
            out.update({tile.index: pred[j : j + 1] for j, tile in enumerate(batch)})
        return out

    def step(self, step: int, timestep: torch.Tensor, latents: torch.Tensor) -> tuple[torch.Tensor, StepStats]:
        """One refinement step. ``latents`` is the canvas ``(1, C, F, H, W)`` float32; returns the prediction."""
        start = time.perf_counter()
        if self.on_step is not None:
            self.on_step(step)
        tiles = self.plan.tiles(step)
        decisions = self.policy.decide(step, timestep, latents, tiles)
        computed = [tile for tile, compute in zip(tiles, decisions) if compute]
        shared = self.runner.run(
            step, computed, [tile_cost(tile) for tile in computed], lambda mine: self.predict_tiles(step, latents, timestep, mine)
        )
        predictions = self.policy.predictions(step, latents, tiles, shared)
        prediction = torch.zeros_like(latents)
        for tile in tiles:
            accumulate(prediction, self._on_device(tile, prediction), predictions[tile.index])
        self.policy.observe(step, latents, prediction)
        stats = StepStats(step, float(timestep), len(tiles), len(computed), time.perf_counter() - start)
        return prediction, stats

    def run(
        self,
        latents: torch.Tensor,
        stepper: Stepper,
        timesteps: torch.Tensor,
        progress_bar=None,
        callback: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[StepStats]]:
        """Run the remaining ``timesteps`` on the canvas.

        Args:
            latents: the re-noised canvas latent ``(1, C, F, H, W)`` float32.
            stepper: ``stepper(prediction, t, latents) -> latents``, the scheduler's step on the canvas
                (:meth:`ModelAdapter.stepper`: the family's step, e.g. a multistep state or held frames).
            callback: ``callback(step, timestep, latents) -> latents`` after every scheduler step.

        Returns:
            The denoised canvas latent and one :class:`StepStats` per step.
        """
        stats = []
        self.policy.start(len(timesteps))
        for i, t in enumerate(timesteps):
            prediction, step_stats = self.step(i, t, latents)
            latents = stepper(prediction, t, latents)
            if callback is not None:
                latents = callback(i, t, latents)
            stats.append(step_stats)
            if progress_bar is not None:
                progress_bar.update()
        return latents, stats
