"""Canvas positions for families whose transformer computes its rotary table in a ``rope`` submodule.

diffusers' rotary modules number a tile's tokens ``0..n-1``, so every tile "believes" it is the
top-left of the scene (which duplicates objects at 4K). A :class:`CanvasPositions` module replaces
``transformer.rope`` once per render (:func:`installed`) and is told each forward's tiles in place
(:meth:`CanvasPositions.set_tiles`): the model code stays diffusers', and the module object stays
the same for the whole render (what ``torch.compile`` needs to cache a graph).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn


class DeviceTables:
    """Position tables kept on the device for one render, by key (the positions, factors and device).

    A tile grid shifts through a short cycle of offsets, so once every window's table is built (before
    the first refinement step: the adapter's ``preload_positions``) no step builds a table on the host
    or copies one to the device.
    """

    def __init__(self):
        self._tables: dict[tuple, Any] = {}

    def get(self, key: tuple, build: Callable[[], Any]) -> Any:
        """``build()`` the first time ``key`` is asked for, the same object afterwards."""
        if key not in self._tables:
            self._tables[key] = build()
        return self._tables[key]


class InputTables:
    """Position tables a family's transformer takes as a call *input* (CogVideoX's rotary table, LTX's
    ``video_coords``), kept on the device for one render: :meth:`render` opens the render's
    :class:`DeviceTables`; outside it :meth:`get` builds every time (the sketch, a plain call)."""

    def __init__(self):
        self._tables: DeviceTables | None = None

    @contextlib.contextmanager
    def render(self) -> Iterator[None]:
        """One render's tables; re-entrant (an inner ``with`` keeps the outer render's tables)."""
        if self._tables is not None:
            yield
            return
        self._tables = DeviceTables()
        try:
            yield
        finally:
            self._tables = None

    def get(self, key: tuple, build: Callable[[], Any]) -> Any:
        """The render's table for ``key`` (built once), or ``build()`` outside a render."""
        return build() if self._tables is None else self._tables.get(key, build)


def on_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A copy of ``host`` on ``device``, a copy even where the device is the CPU: a cached table never
    aliases host data (and a trace sees device data, not a host tensor used in the step)."""
    return torch.empty(host.shape, dtype=host.dtype, device=device).copy_(host)


def position_key(positions: torch.Tensor) -> tuple[int, ...]:
    """Host ``positions`` (token rows or columns, on the CPU: no device read) as a table key."""
    return tuple(positions.tolist())


class CanvasPositions(nn.Module):
    """Base of a family's canvas-numbered rotary module; subclasses implement :meth:`canvas_table`.

    While no tiles are set (``positions=local``) it is the model's own module.
    """

    def __init__(self, original: nn.Module):
        super().__init__()
        self.original = original
        self.rows: list[torch.Tensor] | None = None
        self.cols: list[torch.Tensor] | None = None
        #: Canvas positions (in patches) of each tile's latent frames; None numbers them from 0.
        self.frames: list[torch.Tensor] | None = None
        self.ntk: tuple[float, float] = (1.0, 1.0)
        # Tables already on the device: lives as long as the install (one render).
        self._tables = DeviceTables()

    def cached(self, key: tuple, build: Callable[[], Any]) -> Any:
        """``build()`` the first time ``key`` is asked for in this render, the same object afterwards."""
        return self._tables.get(key, build)

    def set_tiles(
        self, rows: list[torch.Tensor] | None, cols: list[torch.Tensor] | None, ntk: tuple[float, float] = (1.0, 1.0),
        frames: list[torch.Tensor] | None = None,
    ) -> None:
        """Canvas positions (in patches) of the next forward's token rows and columns (and frames, for
        tiles with a time window), one tensor per tile of the batch; None returns to the model's own numbering."""
        self.rows, self.cols, self.ntk, self.frames = rows, cols, ntk, frames

    def forward(self, hidden_states: torch.Tensor):
        if self.rows is None:
            return self.original(hidden_states)
        return self.canvas_table(hidden_states)

    def canvas_table(self, hidden_states: torch.Tensor):
        raise NotImplementedError

    def axis_dims(self) -> tuple[int, int]:
        """Rotary dimensions of the (height, width) axes (for the ``ntk`` factors)."""
        raise NotImplementedError

    def preload(self, frames: int, device: torch.device) -> None:
        """Build (and cache, :meth:`cached`) on ``device`` the tables of the tiles set now, for a canvas
        of ``frames`` latent frames; modules that build their tables per call do nothing."""


@contextlib.contextmanager
def installed(models: list[nn.Module], module_type: type[CanvasPositions]) -> Iterator[None]:
    """``model.rope`` of every model replaced by a ``module_type`` wrapping it, restored on exit.

    Re-entrant: a model whose ``rope`` already is one is left alone (the outer install restores it).
    """
    replaced = []
    for model in models:
        if not isinstance(model.rope, module_type):
            replaced.append((model, model.rope))
            model.rope = module_type(model.rope)
    try:
        yield
    finally:
        for model, original in replaced:
            model.rope = original
