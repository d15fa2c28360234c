"""The tile exchanger: a :class:`~supergen.refine.TileRunner` that spreads tiles across a group of ranks.

Every rank holds the whole canvas latent and takes the same scheduler step, so the only thing that
has to move is the prediction of each tile computed this step, from the rank that computed it to
all the others. Per step:

1. :func:`balance` assigns the computed tiles to ranks (the same answer on every rank: it sees only
   the tile list and costs, which every rank derives from replicated data; no messages);
2. each rank computes its tiles batch by batch; after each batch it starts (asynchronously) the
   broadcasts of every prediction due so far in the group-wide order, so its own predictions travel
   while it computes the next batch;
3. one 4-byte all-reduce says whether any rank failed; if one did, every rank raises the same
   :class:`RankFailure` with the failed rank's message, and the group stays usable for the next job.

A unit of work is a whole tile or, with classifier-free guidance, one guidance branch of a tile
(``parallel.cfg``): then a tile's two forwards can run on two ranks, and every rank combines the
exchanged branches itself. Only the part of a prediction that the blend uses travels: a clamped shift tile writes just the
segment it owns (its blend weight is zero elsewhere), so with shift tiling the predictions moved per
step add up to at most one canvas. Predictions travel in ``parallel.exchange_dtype``; the owner also
uses the rounded, cropped value, so all ranks add identical numbers and stay bit-identical. Tiles a
cache reuses are not in the list and cost nothing. The latent itself never moves.
"""

from __future__ import annotations

import time
import traceback
from typing import Callable

import torch
import torch.distributed as dist

from ..errors import SuperGenError
from ..tiling import Tile, Unit, unit_batches, window_shape
from .launch import TileGroup, mark_broken

#: ``parallel.exchange_dtype`` → torch dtype.
TRANSPORT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class RankFailure(RuntimeError):
    """A rank of the group failed while rendering.

    ``recoverable`` is True when every rank of the group agreed on the failure (a rank raised and
    told the others): the group can go on with another job. False when the group's communication
    itself broke (a rank died or timed out): the process group is unusable and the process must end.
    """

    def __init__(self, message: str, recoverable: bool):
        super().__init__(message)
        self.recoverable = recoverable


def refuse_per_rank_caches(cache) -> None:
    """Raise when ``cache`` (a :class:`~supergen.config.CacheConfig`) keeps state on the rank that ran a
    tile (block-level caches, diffusers' hooks), which would let ranks diverge."""
    if cache.enabled and (cache.block.enabled or cache.policy in ("fbc", "magcache")):
        raise SuperGenError(
            "with several ranks only the tile-level cache (cache.policy=region, cache.block.enabled=false) "
            "keeps ranks identical; block-level caches keep per-rank state"
        )


def owned(tile: Tile) -> tuple[slice, ...]:
    """Rows and columns (frames first, for a tile with a time window) of ``tile``'s window where its
    blend weight is non-zero (all of it when unweighted)."""
    return tile.owned if tile.frames is None else (tile.owned_frames, *tile.owned)


def busiest(costs: list[float], ranks: int) -> float:
    """The busiest rank's total cost when :func:`balance` spreads ``costs`` over ``ranks``."""
    load = [0.0] * ranks
    for cost, owner in zip(costs, balance(costs, ranks)):
        load[owner] += cost
    return max(load, default=0.0)


def balance(costs: list[float], ranks: int) -> list[int]:
    """Owner rank of each tile, minimising the busiest rank's total cost (greedy longest-first).

    Deterministic: ties go to the lower tile index and the less loaded, then lower, rank — every
    rank computes the same assignment from the same costs.
    """
    load = [0.0] * ranks
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(ranks), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += costs[i]
    return owner


class TileExchanger:
    """Tile parallelism within one :class:`~supergen.parallel.launch.TileGroup`.

    Args:
        group: the ranks rendering this video.
        latent_dims: ``(C, F)`` of the canvas latent: with a tile's ``(h, w)`` they give the shape
            ``(1, C, F, h, w)`` of the prediction a rank receives.
        exchange_dtype: ``fp32`` | ``bf16`` | ``fp16``.
        batch_tiles: tiles of equal shape per transformer call (as :class:`~supergen.refine.TileRefiner`).
        cfg: ``parallel.cfg``: when a tile's guidance branches become separate units that may run on
            different ranks — ``auto`` when that lowers the busiest rank's load (ties keep whole tiles,
            which move half the bytes), ``on`` whenever the family runs classifier-free guidance, ``off`` never.
        seq: ranks per unit (:func:`~supergen.parallel.mesh.sequence_split`): the group's ranks form
            ``size / seq`` slots of ``seq`` consecutive ranks; units are balanced over the slots, every
            rank of a slot takes part in its units' forwards (the caller runs them context-parallel on
            :meth:`~supergen.parallel.launch.TileGroup.sub`), and the slot's first rank sends the predictions.

    Attributes:
        bytes_sent: per step, the prediction bytes this rank sent (summed over the group: the
            :func:`owned` area of every computed unit × ``C·F`` × the dtype's size).
        tiles_computed: per step, how many units this rank computed (whole tiles, or tile branches
            on the steps listed in ``split``).
        split: per step, whether the units were (tile, branch) pairs.
        wait_seconds: per step, how long this rank waited for predictions after computing its own
            (transfer not hidden behind compute, plus waiting for slower ranks).
    """

    def __init__(self, group: TileGroup, latent_dims: tuple[int, int], exchange_dtype: str = "fp32", batch_tiles: int = 1, cfg: str = "auto",
                 seq: int = 1):
        if group.size % seq:
            raise ValueError(f"seq={seq} does not divide the group's {group.size} ranks")
        self.group = group
        self.seq = seq
        self.slots = group.size // seq
        self.latent_dims = latent_dims
        self.dtype = TRANSPORT_DTYPES[exchange_dtype]
        self.batch_tiles = batch_tiles
        self.cfg = cfg
        self.bytes_sent: list[int] = []
        self.tiles_computed: list[int] = []
        self.split: list[bool] = []
        self.wait_seconds: list[float] = []

    @classmethod
    def for_render(cls, group: TileGroup, config, latent_dims: tuple[int, int], seq: int = 1) -> "TileExchanger":
        """The exchanger of one render with ``config`` (a :class:`~supergen.config.MethodConfig`) and ``seq`` ranks per unit.

        Raises:
            SuperGenError: a cache whose state lives on the rank that ran a tile (block-level caches,
                diffusers' hooks): ranks would diverge.
        """
        refuse_per_rank_caches(config.cache)
        return cls(group, latent_dims, config.parallel.exchange_dtype, config.tiling.batch_tiles, config.parallel.cfg, seq)

    def units(self, tiles: list[Tile], branches: tuple[str, ...]) -> list[Unit]:
        """See :meth:`supergen.refine.TileRunner.units`: decided from the tile sizes, the branches and
        the rank count only, so every rank decides the same."""
        whole = [Unit(tile) for tile in tiles]
        if not branches or self.cfg == "off":
            return whole
        split = [Unit(tile, branch) for tile in tiles for branch in branches]
        if self.cfg == "on":
            return split
        area = [float(tile.shape[0] * tile.shape[1]) for tile in tiles]
        if busiest([a for a in area for _ in branches], self.slots) < busiest([a * len(branches) for a in area], self.slots):
            return split
        return whole

    def finish(self, report):
        """The cache report with block forwards summed over the group (each rank counted only the
        tiles it ran), so every rank reports all of them."""
        records = [record for step in report.steps for record in step.tiles]
        for record, blocks in zip(records, self.group.sum_over_ranks([r.blocks for r in records])):
            record.blocks = blocks
        return report

    def stats(self) -> dict:
        """``ranks``, and per step this rank's ``bytes_sent``, ``tiles_computed`` (units) and ``split``."""
        return {"ranks": self.group.size, "bytes_sent": self.bytes_sent, "tiles_computed": self.tiles_computed, "split": self.split}

    def _schedule(self, units: list[Unit], costs: list[float]) -> tuple[list[list[list[Unit]]], list[tuple[int, Unit]]]:
        """Every slot's batches, and the group-wide order of ``(owner slot, unit)`` broadcasts.

        The order interleaves slots batch by batch (round k: slot 0's k-th batch, slot 1's, ...), so
        every slot can issue its own k-th batch's sends soon after computing it.
        """
        owner = balance(costs, self.slots)
        batches = [list(unit_batches([u for u, o in zip(units, owner) if o == r], self.batch_tiles)) for r in range(self.slots)]
        order = []
        for k in range(max(map(len, batches), default=0)):
            for r in range(self.slots):
                if k < len(batches[r]):
                    order += [(r, unit) for unit in batches[r][k]]
        return batches, order

    def run(self, step: int, units: list[Unit], costs: list[float], predict: Callable[[list[Unit]], dict[tuple, torch.Tensor]]) -> dict[tuple, torch.Tensor]:
        """See :meth:`supergen.refine.TileRunner.run`; every rank returns the same predictions."""
        me, device = self.group.rank // self.seq, self.group.device  # this rank's slot
        sender = self.group.rank % self.seq == 0  # the slot's first rank sends what the slot computed
        batches, order = self._schedule(units, costs)
        buffers: dict[tuple, torch.Tensor] = {}
        works = []
        issued = 0
        sent = 0
        error: str | None = None

        def issue(upto: int) -> None:
            # Start the broadcasts of order[issued:upto]; receive buffers for other ranks' tiles.
            nonlocal issued, sent
            for owner, unit in order[issued:upto]:
                if owner != me or not sender:
                    buffers[unit.key] = torch.empty(self._owned_shape(unit.tile), dtype=self.dtype, device=device)
                else:
                    sent += buffers[unit.key].nbytes
                # Bytes, not elements: every backend moves uint8, whatever the transport dtype.
                payload = buffers[unit.key].view(torch.uint8)
                works.append(dist.broadcast(payload, src=self.group.global_of(owner * self.seq), group=self.group.pg, async_op=True))
            issued = max(issued, upto)

        try:
            for batch in batches[me]:
                if error is None:
                    try:
                        predictions = predict(batch)
                    except Exception as exc:  # reported to the whole group below, then raised everywhere
                        error = f"rank {self.group.global_rank} failed at step {step}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}"
                for unit in batch:
                    if error is None:
                        buffers[unit.key] = predictions[unit.key][(..., *owned(unit.tile))].to(self.dtype).contiguous()
                    else:  # keep the group's collectives in step: placeholders for the remaining units
                        buffers[unit.key] = torch.zeros(self._owned_shape(unit.tile), dtype=self.dtype, device=device)
                last = batch[-1].key
                issue(next(i for i, (o, u) in enumerate(order) if o == me and u.key == last) + 1)
            issue(len(order))
            waited = time.perf_counter()
            for work in works:
                work.wait()
            status = torch.tensor([self.group.rank + 1 if error else 0], dtype=torch.int32, device=device)
            dist.all_reduce(status, op=dist.ReduceOp.MAX, group=self.group.pg)
            failed = int(status.item()) - 1
            if failed >= 0:
                message = [error]
                dist.broadcast_object_list(message, src=self.group.global_of(failed), group=self.group.pg)
        except Exception as exc:  # the backend's error (peer closed the connection, timeout): the group is gone
            mark_broken()  # so this process exits at once and its peers blocked on it see it close
            raise RankFailure(
                f"rank {self.group.global_rank}: the tile exchange at step {step} failed ({type(exc).__name__}: {exc}); "
                "another rank died or did not answer within parallel.timeout_s",
                recoverable=False,
            ) from exc
        if failed >= 0:
            raise RankFailure(message[0], recoverable=True)
        self.bytes_sent.append(sent)
        self.group.count_bytes(sent)
        self.tiles_computed.append(sum(len(b) for b in batches[me]))
        self.split.append(any(unit.branch is not None for unit in units))
        self.wait_seconds.append(time.perf_counter() - waited)
        return {unit.key: self._full(unit.tile, buffers[unit.key]) for unit in units}

    def _window_shape(self, tile: Tile) -> tuple[int, ...]:
        """``(1, C, F, h, w)`` of the tile's prediction (``F``: its time window's frames when it has one)."""
        return (1, *self.latent_dims[: 1 if tile.frames is not None else 2], *window_shape(tile))

    def _owned_shape(self, tile: Tile) -> tuple[int, ...]:
        full = self._window_shape(tile)
        axes = len(owned(tile))
        return (*full[:-axes], *(len(range(*s.indices(n))) for s, n in zip(owned(tile), full[-axes:])))

    def _full(self, tile: Tile, part: torch.Tensor) -> torch.Tensor:
        """The tile's prediction ``(1, C, F, h, w)`` float32 from its owned part; zero where the blend weight is."""
        shape = self._window_shape(tile)
        if part.shape == shape:
            return part.float()
        full = torch.zeros(shape, dtype=torch.float32, device=part.device)
        full[(..., *owned(tile))] = part.float()
        return full
