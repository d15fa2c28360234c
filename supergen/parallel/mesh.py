"""The parallel context of one render: the group's ranks as a named device mesh, and how each stage uses it.

The mesh of a render group has two named dimensions, fixed once when the group is made
(:func:`mesh_shape`, from the rank count alone, so it never needs re-creating between jobs):

``cfg``
    the two classifier-free guidance branches: the sketch's conditional forward runs on ``cfg``
    coordinate 0 and its unconditional forward on coordinate 1 (size 1 with an odd rank count);
``tile``
    the rest: ranks that share a guidance branch of the sketch.

The refinement uses the flattened mesh (every rank of the group): its units of work are whole tiles
or (tile, guidance branch) pairs spread over all ranks (:class:`~supergen.parallel.TileExchanger`),
which balances at least as well as a fixed ``cfg × tile`` split. When the ranks outnumber the units,
the group is read as ``tile × seq`` instead: :func:`sequence_split` picks ``seq``, and each unit runs
on a sub-group of ``seq`` consecutive ranks with Ulysses (:meth:`~supergen.parallel.TileGroup.sub`).
In ``tiling.mode=attention`` the one canvas forward is split over the whole group
(:mod:`supergen.parallel.canvas`). The VAE spreads its tiles over all ranks. :func:`plan_parallel` decides, per render, what each stage does on the mesh; the result is
printed in the render summary and kept in ``out.stats.parallel``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

#: Names of the render group's mesh dimensions, outermost first.
MESH_DIMS = ("cfg", "tile")


def mesh_shape(ranks: int) -> tuple[int, int]:
    """``(cfg, tile)`` sizes for ``ranks`` ranks: the two guidance branches side by side when the rank
    count is even, else a ``cfg`` dimension of 1."""
    return (2, ranks // 2) if ranks % 2 == 0 else (1, ranks)


@dataclass(frozen=True)
class ParallelPlan:
    """What each stage of one render does on the group's mesh.

    Attributes:
        ranks: ranks in the group.
        mesh: sizes of :data:`MESH_DIMS`.
        sketch: ``single`` (one rank) | ``replicated`` (every rank computes it whole) | ``cfg`` (guidance
            branches on the ``cfg`` dimension, replicated along ``tile``) | ``ulysses`` (diffusers'
            context parallelism over all ranks).
        sketch_reason: why the sketch is not split as asked (empty when it is, or with one rank).
        refine: ``single`` | ``tiles`` (whole tiles) | ``auto`` ((tile, branch) units on the steps where
            they balance better) | ``branches`` ((tile, branch) units every step) | ``ulysses``
            (``tiling.mode=attention``: every canvas forward split over all ranks, tokens outside
            attention and heads inside the tile attention, :mod:`supergen.parallel.canvas`).
        refine_reason: in ``tiling.mode=attention``, why the canvas forward is not split over the ranks
            (it then runs as one tile, or one unit per guidance branch); empty otherwise.
        units: units of work of the refinement's first step (tiles, or (tile, branch) pairs).
        seq: ranks per unit that :func:`sequence_split` chooses when the ranks outnumber the units:
            each unit runs on a sub-group of ``seq`` ranks with Ulysses (families whose adapter allows it,
            :attr:`~supergen.families.FamilySpec.tile_context_parallel`); 1 otherwise.
    """

    ranks: int
    mesh: tuple[int, int]
    sketch: str
    sketch_reason: str
    refine: str
    refine_reason: str = ""
    units: int = 0
    seq: int = 1

    def describe(self) -> str:
        """One line for the render summary."""
        if self.ranks == 1:
            return "1 rank"
        mesh = " × ".join(f"{name}={size}" for name, size in zip(MESH_DIMS, self.mesh))
        sketch = self.sketch + (f" ({self.sketch_reason})" if self.sketch_reason else "")
        units = {"tiles": "whole tiles", "auto": "(tile, branch) units where they balance better", "branches": "(tile, branch) units",
                 "ulysses": "the canvas forward split by tokens and attention heads"}
        refine = units[self.refine] + " over all ranks" + (f" (attention mode unsplit: {self.refine_reason})" if self.refine_reason else "")
        if self.seq > 1:
            refine += f"; {self.units} units < {self.ranks} ranks: each unit on {self.seq} ranks with Ulysses (tile={self.ranks // self.seq} × seq={self.seq})"
        return f"{self.ranks} ranks, mesh {mesh}; sketch: {sketch}; refine: {refine}"

    def as_dict(self) -> dict:
        """For ``out.stats.parallel["plan"]``: the fields, the mesh by dimension name, and ``summary`` (:meth:`describe`)."""
        return asdict(self) | {"mesh": dict(zip(MESH_DIMS, self.mesh)), "summary": self.describe()}


def stage_summary(stages: dict[str, dict]) -> str:
    """``sketch 1.2 s 3.4 MB, refine ...``: seconds and bytes sent (all ranks) per stage, from ``out.stats.parallel["stages"]``."""
    return ", ".join(f"{name} {s['seconds']:.1f} s {s['bytes'] / 1e6:.1f} MB" for name, s in stages.items())


def sequence_split(ranks: int, units: int, heads: int, tokens: int) -> int:
    """Ranks per unit of work when ``ranks`` outnumber ``units`` (e.g. 4 tiles of HunyuanVideo at 2K on 8 GPUs).

    Each unit would run on a sub-group of ``k`` ranks with Ulysses (its tokens split outside attention,
    its ``heads`` inside), so ``ranks / k`` units run at once. ``k`` divides ``ranks``, ``heads`` and the
    unit's ``tokens``; among those the one with the least busiest-rank load ``ceil(units / (ranks / k)) / k``
    (a unit's cost split evenly over its ``k`` ranks) wins, ties going to the smaller ``k`` (fewer bytes
    moved). 1 when the units already occupy every rank.
    """
    if units <= 0 or ranks <= units:
        return 1
    best, best_load = 1, float(-(-units // ranks))
    for k in range(2, ranks + 1):
        if ranks % k or heads % k or tokens % k:
            continue
        load = -(-units // (ranks // k)) / k
        if load < best_load:
            best, best_load = k, load
    return best


def plan_parallel(
    ranks: int, guidance: bool, sketch_guidance: bool, separate_branches: bool, cfg: str, sketch: str = "cfg", ulysses_blocker: str = "",
    canvas: bool = False, canvas_blocker: str = "", units: int = 0, seq: int = 1,
) -> ParallelPlan:
    """How one render uses a group of ``ranks``.

    Args:
        guidance: the refinement runs classifier-free guidance (two branches per tile).
        sketch_guidance: the sketch does.
        separate_branches: the family's pipeline runs the sketch's branches as separate transformer
            calls (:attr:`~supergen.families.FamilySpec.sketch_branches_separate`), which can be split;
            one batched call on both is not.
        cfg: ``parallel.cfg`` (``auto`` | ``on`` | ``off``).
        sketch: ``parallel.sketch`` (``cfg`` | ``ulysses``).
        ulysses_blocker: why the transformer cannot run Ulysses on ``ranks`` ranks (``""``: it can).
        canvas: the refinement is one canvas forward per step (``tiling.mode=attention``).
        canvas_blocker: why that forward cannot be split over ``ranks`` ranks (``""``: it can).
        units: the refinement's units of work at its first step; seq: :func:`sequence_split` for them.
    """
    shape = mesh_shape(ranks)
    if ranks == 1:
        return ParallelPlan(1, shape, "single", "", "single")
    refine = "tiles" if cfg == "off" or not guidance else {"auto": "auto", "on": "branches"}[cfg]
    refine_reason = canvas_blocker if canvas else ""
    if canvas and not canvas_blocker:
        refine = "ulysses"
    if refine == "ulysses":
        seq = 1  # the canvas forward already spans every rank
    if sketch == "ulysses" and not ulysses_blocker:
        return ParallelPlan(ranks, shape, "ulysses", "", refine, refine_reason, units, seq)
    reason = f"no Ulysses: {ulysses_blocker}; " if sketch == "ulysses" else ""
    split = ""
    if cfg == "off":
        split = "parallel.cfg=off"
    elif not sketch_guidance:
        split = "no classifier-free guidance in the sketch"
    elif not separate_branches:
        split = "the family's pipeline runs both guidance branches in one batched forward"
    elif shape[0] == 1:
        split = f"{ranks} ranks: the cfg dimension needs an even rank count"
    return ParallelPlan(ranks, shape, "replicated" if split else "cfg", reason + split if split else reason.removesuffix("; "), refine,
                        refine_reason, units, seq)
