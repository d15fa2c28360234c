"""What every tile-level cache shares: a residual canvas, and the rules no decision may break.

A reused tile's prediction is its current input plus the residual (model output − input) last
computed under its *current* window, whichever tile computed it: the residual is kept as a canvas
``(1, C, F, H, W)``, so it stays valid when the tile grid shifts. Per canvas element the state also
counts computations and the steps since the last one (``streak``).

The rules (:meth:`TileReuse.may_reuse`): the first ``warmup_steps`` and the last step are always
computed, an element is never reused before it has been computed once, and never more than
``max_consecutive`` steps in a row.
"""

from __future__ import annotations

import contextlib

import torch

from ..tiling import Tile, accumulate, crop

_EPS = 1e-12


class TileReuse:
    """Base of the tile-level policies (:class:`~supergen.refine.TilePolicy`); subclasses implement
    :meth:`decide` with :meth:`may_reuse` and end it with :meth:`_remember`."""

    def __init__(self, warmup_steps: int = 2, max_consecutive: int = 3):
        self.warmup_steps, self.max_consecutive = warmup_steps, max_consecutive
        self.num_steps = 0
        self._state: dict[str, torch.Tensor] = {}
        self._fresh: torch.Tensor | None = None

    def start(self, num_steps: int) -> None:
        self.num_steps = num_steps
        self._state = {}

    def scope(self, step, tiles):
        return contextlib.nullcontext()

    def _init_state(self, x: torch.Tensor) -> None:
        """Called with the first step's float32 canvas; subclasses add their own maps."""
        h, w = x.shape[-2:]
        self._state = {
            "residual": torch.zeros_like(x),
            "count": torch.zeros(h, w, dtype=torch.int64, device=x.device),
            "streak": torch.zeros(h, w, dtype=torch.int64, device=x.device),
        }

    def _owned(self, tile: Tile, name: str) -> torch.Tensor:
        """The values of the ``(H, W)`` map ``name`` on the part of the window the tile writes (flat)."""
        values = crop(self._state[name], tile)
        return values.flatten() if tile.weight is None else values[(tile.weight > 0).to(values.device)]

    def forced(self, step: int) -> bool:
        return step < self.warmup_steps or step >= self.num_steps - 1

    def may_reuse(self, step: int, tile: Tile) -> bool:
        """Whether the rules allow reusing ``tile`` at ``step`` (the policy's own test comes on top)."""
        return (not self.forced(step) and int(self._owned(tile, "count").min()) >= 1
                and int(self._owned(tile, "streak").max()) < self.max_consecutive)

    def _remember(self, x: torch.Tensor, tiles: list[Tile], decisions: list[bool]) -> None:
        # Elements written only by computed tiles take this step's output in observe(); an element a
        # reused tile writes keeps its old residual (a blend of fresh and reused is not an output).
        reused_cover = torch.zeros(x.shape[-2:], device=x.device)
        for tile, compute in zip(tiles, decisions):
            if not compute:
                accumulate(reused_cover, tile, torch.ones(tile.shape, device=x.device))
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
