"""``tiling.mode=attention`` on several ranks: the one canvas forward split Ulysses-style; and the
token split (:func:`split_tokens`) that also runs a tile on a sub-group when ranks outnumber units.

Attention mode runs the whole canvas through the transformer in one forward whose self-attention
is the sparse tile(+halo) kernel. On a group of ``P`` ranks every forward is computed by all of
them together:

- outside attention the token sequence is split: diffusers' own context-parallel hooks, installed
  from the model's ``_cp_plan`` by :func:`~supergen.parallel.context.ulysses`, hand each rank
  ``N / P`` tokens (and their rotary table) at the first block and all-gather the output at
  ``proj_out``, so projections, norms, cross-attention and feed-forward layers run on a share of
  the tokens;
- inside the tile attention :class:`HeadExchange` trades tokens for heads with one all-to-all: each
  rank then holds *all* ``N`` tokens of ``H / P`` heads, runs the sparse kernel on them over the whole
  canvas (the windows need every token of a window, which may sit on any rank), and a second
  all-to-all returns its tokens with every head.

Every rank computes the same units in the same order (:class:`CanvasRunner`: nothing to balance),
and the gathered prediction is the same tensor on every rank, so the ranks take identical steps.
Attention of one head does not depend on the others, but the projections run on fewer rows per
matrix product, which may change the summation order of CPU/GPU GEMM kernels: the result equals one
process to float tolerance, and is deterministic for a given rank count.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from ..tiling import Tile, Unit
from .context import ulysses, ulysses_blocker
from .launch import TileGroup


class HeadExchange:
    """All-to-all between a token shard with every head and every token of a head shard (Ulysses).

    Rank ``r`` of the group holds tokens ``r·n .. (r+1)·n − 1`` (diffusers' equal split of the
    sequence) and, after :meth:`to_heads`, heads ``r·h .. (r+1)·h − 1``. Buffers are contiguous and
    on the group's device, as NCCL requires.
    """

    def __init__(self, group: TileGroup):
        self.group = group

    @property
    def size(self) -> int:
        return self.group.size

    def _exchange(self, chunks: torch.Tensor) -> torch.Tensor:
        """``chunks`` ``(P, ...)``: chunk ``p`` goes to rank ``p``; returns ``(P, ...)`` with rank ``p``'s chunk at ``p``."""
        send = chunks.to(self.group.device).contiguous()
        received = torch.empty_like(send)
        dist.all_to_all_single(received, send, group=self.group.pg)
        # What leaves this rank: every chunk but its own.
        self.group.count_bytes(send.nbytes - send[0].nbytes)
        return received

    def to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., n, H, D)`` (this rank's tokens, all heads) → ``(..., P·n, H / P, D)`` (all tokens, this rank's heads)."""
        *lead, n, heads, dim = x.shape
        if heads % self.size:
            raise ValueError(f"{heads} heads do not split over {self.size} ranks")
        chunks = x.reshape(*lead, n, self.size, heads // self.size, dim).movedim(-3, 0)
        received = self._exchange(chunks)  # (P, ..., n, H/P, D): rank p's tokens of my heads
        return received.movedim(0, -4).reshape(*lead, self.size * n, heads // self.size, dim)

    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., N, h, D)`` (all tokens, this rank's heads) → ``(..., N / P, P·h, D)`` (this rank's tokens, all heads)."""
        *lead, tokens, heads, dim = x.shape
        chunks = x.reshape(*lead, self.size, tokens // self.size, heads, dim).movedim(-4, 0)
        received = self._exchange(chunks)  # (P, ..., n, h, D): my tokens of rank p's heads
        return received.movedim(0, -3).reshape(*lead, tokens // self.size, self.size * heads, dim)


def canvas_blocker(models: list[nn.Module], ranks: int, tokens: int, plans: list[dict | None] | None = None) -> str:
    """Why attention mode cannot split its canvas forward of ``tokens`` tokens over ``ranks`` ranks, or ``""`` when it can.

    Args:
        plans: per model, the adapter's context-parallel plan (None: diffusers' own), as :func:`ulysses` takes them.
    """
    blocker = ulysses_blocker(models, ranks, plans)
    if not blocker and tokens % ranks:
        blocker = f"{tokens} canvas tokens do not split evenly over {ranks} ranks"
    return blocker


class CanvasRunner:
    """The :class:`~supergen.refine.TileRunner` of attention mode on a group: every rank takes part in
    every forward (the split is inside the model), so every rank computes every unit, whole.

    Attributes:
        bytes_sent: per step, bytes this rank sent (the all-to-alls of every tile attention and its
            token shard of every gathered output).
        tiles_computed: per step, the units this rank took part in.
    """

    def __init__(self, group: TileGroup):
        self.group = group
        self.bytes_sent: list[int] = []
        self.tiles_computed: list[int] = []

    def units(self, tiles: list[Tile], branches: tuple[str, ...]) -> list[Unit]:
        """Whole tiles (guided in the adapter): there is nothing to spread, every rank runs every forward."""
        return [Unit(tile) for tile in tiles]

    def run(self, step: int, units: list[Unit], costs: list[float], predict: Callable[[list[Unit]], dict[tuple, torch.Tensor]]) -> dict[tuple, torch.Tensor]:
        before = self.group.bytes_sent
        out = predict(units)
        self.bytes_sent.append(self.group.bytes_sent - before)
        self.tiles_computed.append(len(units))
        return out

    def finish(self, report):
        return report  # every rank ran every tile: its block counts are already complete

    def stats(self) -> dict:
        """``ranks``, and per step this rank's ``bytes_sent`` and ``tiles_computed``; ``split`` is all False."""
        return {"ranks": self.group.size, "bytes_sent": self.bytes_sent, "tiles_computed": self.tiles_computed,
                "split": [False] * len(self.tiles_computed)}


@contextlib.contextmanager
def split_tokens(models: list[nn.Module], group: TileGroup, plans: list[dict | None] | None = None) -> Iterator[None]:
    """Inside the block, ``models``' token sequence is split over the group outside attention
    (:func:`~supergen.parallel.context.ulysses`, with each model's context-parallel plan, ``plans``
    overriding it; it counts the bytes of every output gathered back on the group)."""
    with ulysses(models, group, plans):
        yield
