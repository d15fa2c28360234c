"""Stage 2: denoise the canvas latent tile by tile, one scheduler step on the whole canvas per step.

This loop is the only place the method's step order lives, and it is family-agnostic. Each step:

1. the :class:`~supergen.tiling.TilePlan` gives this step's tiles (and ``on_step`` hears the step,
   e.g. attention mode moves its windows);
2. the :class:`TilePolicy` decides which tiles are computed (a cache may reuse the rest);
3. the :class:`TileRunner` cuts the computed tiles into units of work (whole tiles, or with
   classifier-free guidance one unit per tile and branch, when that spreads better over processes),
   picks this process' share and brings every unit's prediction to every process (one process: all
   of them, nothing moves);
4. meanwhile the adapter predicts this process' units, in batches of equal branch and shape;
5. branch predictions are combined (float32, identically everywhere); the policy turns computed and
   reused tiles into predictions, blended into one canvas prediction;
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

from .adapters import BRANCHES, Conditioning, ModelAdapter, Stepper, combine_guidance
from .cache import ComputeAll, TilePolicy
from .tiling import Tile, TilePlan, Unit, accumulate, crop, unit_batches


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


class TileRunner(Protocol):
    """Which process computes which unit of work, and how the predictions reach every process.

    The runner drives the computation (rather than being handed the results afterwards) so that it
    can move one unit's prediction while the next is being computed.
    """

    def units(self, tiles: list[Tile], branches: tuple[str, ...]) -> list[Unit]:
        """This step's units for the computed ``tiles``: whole tiles, or one per tile and guidance
        branch (``branches`` is empty when only one branch runs). The same answer on every process."""

    def run(
        self,
        step: int,
        units: list[Unit],
        costs: list[float],
        predict: Callable[[list[Unit]], dict[tuple, torch.Tensor]],
    ) -> dict[tuple, torch.Tensor]:
        """Predictions ``(1, C, F, h, w)`` float32 of all ``units`` by :attr:`~supergen.tiling.Unit.key`.

        Args:
            costs: relative cost of each unit, for balancing the work across processes.
            predict: computes the predictions of a list of units on this process.
        """

    def finish(self, report):
        """The cache report of the run completed with what only the runner knows (e.g. counts summed over ranks)."""

    def stats(self) -> dict:
        """What the runner did, for :attr:`~supergen.pipeline.RenderStats.parallel` (empty in one process)."""


class SingleProcess:
    """One process computes every tile, whole (guided in the adapter); nothing moves."""

    def units(self, tiles, branches):
        return [Unit(tile) for tile in tiles]

    def run(self, step, units, costs, predict):
        return predict(units)

    def finish(self, report):
        return report

    def stats(self) -> dict:
        return {}


def tile_cost(tile: Tile) -> float:
    """Relative cost of one forward of ``tile``: its token count (all tiles of a plan have windows of the same frames)."""
    return float(tile.shape[0] * tile.shape[1])


def unit_cost(unit: Unit, branches: int) -> float:
    """Relative cost of ``unit``: a whole tile runs all ``branches`` (at least one) forwards, a branch unit one."""
    return tile_cost(unit.tile) * (max(branches, 1) if unit.branch is None else 1)


@dataclass
class TileRefiner:
    """Runs the refinement steps on a canvas; collaborators as described in the module docstring.

    Attributes:
        positions: ``local`` | ``global`` | ``ntk`` (see :class:`~supergen.config.TilingConfig`).
        batch_tiles: tiles of equal shape per transformer call.
        on_step: called with each step's index before its tiles are predicted (attention mode's
            :class:`~supergen.attention.StepLayouts`: per-step state the adapter's processors read).
        step_scope: entered around each step's predictions and blend, not the scheduler's step
            (the pipeline's stage observers, e.g. the trace watching host copies).
        step_done: called with each step's index once the step is done (scheduler step and step
            callback included): the pipeline's stage observers (the progress bar).
    """

    plan: TilePlan
    adapter: ModelAdapter
    cond: Conditioning
    positions: str = "global"
    batch_tiles: int = 1
    policy: TilePolicy = field(default_factory=ComputeAll)
    runner: TileRunner = field(default_factory=SingleProcess)
    on_step: Callable[[int], None] | None = None
    step_scope: Callable[[int], ContextManager[None]] | None = None
    step_done: Callable[[int], None] | None = None
    _device_weights: dict = field(default_factory=dict, init=False, repr=False)

    def _on_device(self, tile: Tile, like: torch.Tensor) -> Tile:
        """``tile`` with its blend weight on ``like``'s device and dtype, copied there once per render: the
        grid cycles through a few offsets, so the same windows come back (policies keep the host tiles)."""
        if tile.weight is None:
            return tile
        # Two clamped tiles can share a window and own different parts of it: key on the weight too.
        key = (tile.region(), tile.weight.numpy().tobytes())
        if key not in self._device_weights:
            # A copy even where the device is the CPU: the device tables never alias the plan's host data.
            self._device_weights[key] = torch.empty(tile.weight.shape, dtype=like.dtype, device=like.device).copy_(tile.weight)
        return replace(tile, weight=self._device_weights[key])

    def preload(self, num_steps: int, like: torch.Tensor) -> None:
        """Put on ``like``'s device, before the first step, what a step would otherwise copy from the
        host: the blend weight of every tile and the adapter's position tables of every window, over
        the grid offsets of ``num_steps`` steps (a short cycle). A step then uses device data only."""
        windows: dict[tuple, Tile] = {}
        for step in range(num_steps):
            for tile in self.plan.tiles(step):
                self._on_device(tile, like)
                windows.setdefault(tile.region(), tile)
        self.adapter.preload_positions(list(windows.values()), self.plan.canvas, self.positions, like.shape[2], like.device)

    def predict_units(self, step: int, latents: torch.Tensor, timestep: torch.Tensor, units: list[Unit]) -> dict[tuple, torch.Tensor]:
        """Model predictions ``(1, C, F, h, w)`` float32 of ``units`` (guided for whole tiles, one
        branch's output for branch units) by unit key."""
        out: dict[tuple, torch.Tensor] = {}
        for batch in unit_batches(units, self.batch_tiles):
            tiles, branch = [unit.tile for unit in batch], batch[0].branch
            x = torch.cat([crop(latents, tile) for tile in tiles])
            with self.policy.scope(step, tiles):
                pred = self.adapter.predict(x, timestep, self.cond.for_tiles(tiles), tiles, self.plan.canvas, self.positions, branch)
            out.update({unit.key: pred[j : j + 1] for j, unit in enumerate(batch)})
        return out

    @staticmethod
    def combined(shared: dict[tuple, torch.Tensor], tiles: list[Tile], scale: float | None) -> dict[int, torch.Tensor]:
        """Each tile's guided prediction from the exchanged units: whole tiles as they are, branch units
        combined here (float32, in the same order on every process)."""
        out = {}
        for tile in tiles:
            whole = shared.get((tile.index, None))
            out[tile.index] = whole if whole is not None else combine_guidance(shared[(tile.index, "cond")], shared[(tile.index, "uncond")], scale)
        return out

    def step(self, step: int, timestep: torch.Tensor, latents: torch.Tensor) -> tuple[torch.Tensor, StepStats]:
        """One refinement step. ``latents`` is the canvas ``(1, C, F, H, W)`` float32; returns the prediction."""
        start = time.perf_counter()
        if self.on_step is not None:
            self.on_step(step)
        tiles = self.plan.tiles(step)
        decisions = self.policy.decide(step, timestep, latents, tiles)
        computed = [tile for tile, compute in zip(tiles, decisions) if compute]
        scale = self.adapter.cfg_scale(timestep, self.cond)
        branches = tuple(BRANCHES) if scale is not None else ()
        units = self.runner.units(computed, branches)
        shared = self.runner.run(
            step, units, [unit_cost(unit, len(branches)) for unit in units], lambda mine: self.predict_units(step, latents, timestep, mine)
        )
        predictions = self.policy.predictions(step, latents, tiles, self.combined(shared, computed, scale))
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
        self.preload(len(timesteps), latents)
        self.policy.start(len(timesteps))
        for i, t in enumerate(timesteps):
            with self.step_scope(i) if self.step_scope is not None else contextlib.nullcontext():
                prediction, step_stats = self.step(i, t, latents)
            latents = stepper(prediction, t, latents)
            if callback is not None:
                latents = callback(i, t, latents)
            stats.append(step_stats)
            if self.step_done is not None:
                self.step_done(i)
        return latents, stats
