"""Stage 2: denoise the canvas latent tile by tile, one scheduler step on the whole canvas per step.

This loop is the only place the method's step order lives, and it is family-agnostic: the adapter
computes a tile's prediction, the :class:`~supergen.tiling.TilePlan` says where tiles are, and the
scheduler steps the whole canvas once per step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from .adapters import Conditioning, ModelAdapter
from .tiling import Tile, TilePlan, accumulate, crop


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


def tile_batches(tiles: list[Tile], batch_size: int) -> Iterable[list[Tile]]:
    """Group tiles of equal shape into batches of at most ``batch_size``, keeping plan order within a shape."""
    by_shape: dict[tuple[int, int], list[Tile]] = {}
    for tile in tiles:
        by_shape.setdefault(tile.shape, []).append(tile)
    for group in by_shape.values():
        for i in range(0, len(group), batch_size):
            yield group[i : i + batch_size]


def predict_canvas(
    latents: torch.Tensor,
    timestep: torch.Tensor,
    tiles: list[Tile],
    adapter: ModelAdapter,
    cond: Conditioning,
    canvas: tuple[int, int],
    positions: str,
    batch_tiles: int,
) -> torch.Tensor:
    """The model's prediction for the whole canvas: every tile's prediction blended by its weights.

    Args:
        latents: canvas latent ``(1, C, F, H, W)`` float32.

    Returns:
        ``(1, C, F, H, W)`` float32; every element is the weighted sum of the tiles covering it.
    """
    prediction = torch.zeros_like(latents)
    for batch in tile_batches(tiles, batch_tiles):
        x = torch.cat([crop(latents, tile) for tile in batch])
        pred = adapter.predict(x, timestep, cond.for_tiles(batch), batch, canvas, positions)
        for j, tile in enumerate(batch):
            accumulate(prediction, tile, pred[j : j + 1])
    return prediction


def refine(
    latents: torch.Tensor,
    scheduler,
    timesteps: torch.Tensor,
    plan: TilePlan,
    adapter: ModelAdapter,
    cond: Conditioning,
    positions: str,
    batch_tiles: int = 1,
    progress_bar=None,
    callback: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[StepStats]]:
    """Run the remaining ``timesteps`` on the canvas.

    Args:
        latents: the re-noised canvas latent ``(1, C, F, H, W)`` float32.
        scheduler: a diffusers scheduler whose timesteps (and begin index) are already set.
        callback: ``callback(step, timestep, latents) -> latents`` after every scheduler step.

    Returns:
        The denoised canvas latent and one :class:`StepStats` per step.
    """
    stats = []
    for i, t in enumerate(timesteps):
        start = time.perf_counter()
        tiles = plan.tiles(i)
        prediction = predict_canvas(latents, t, tiles, adapter, cond, plan.canvas, positions, batch_tiles)
        latents = scheduler.step(prediction, t, latents, return_dict=False)[0]
        if callback is not None:
            latents = callback(i, t, latents)
        stats.append(StepStats(i, float(t), len(tiles), len(tiles), time.perf_counter() - start))
        if progress_bar is not None:
            progress_bar.update()
    return latents, stats
