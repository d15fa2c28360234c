"""The tile policy protocol the refinement loop calls, and its default: every tile computed.

They live here, beside the caches that implement the protocol, below the loop
(:class:`~supergen.refine.TileRefiner`) that calls it: no import, not even a type-only one, goes up.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Protocol

import torch

from ..tiling import Tile


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


class ComputeAll:
    """The policy without a cache: every tile is computed at every step."""

    def start(self, num_steps):
        pass

    def scope(self, step, tiles):
        return contextlib.nullcontext()

    def decide(self, step, timestep, latents, tiles):
        return [True] * len(tiles)

    def predictions(self, step, latents, tiles, computed):
        return computed

    def observe(self, step, latents, prediction):
        pass
