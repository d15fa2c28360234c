"""One render's parallelism as a recipe: every dimension applied from the :class:`ParallelPlan`, in one place.

:func:`parallelize` decides the render's :class:`ParallelPlan` once (torchtitan's ``parallelize``:
the choices are made outside the model and the stages, from the mesh and the plan) and returns a
:class:`Parallelism` that the pipeline's stages ask for what to run with. Its methods are the
dimensions, in the order a render applies them:

1. the sketch (:meth:`Parallelism.sketch`): its guidance branches over the mesh's ``cfg`` dimension,
   or its tokens over the group with diffusers' Ulysses, or replicated;
2. the refinement's tiles (:meth:`Parallelism.tiles`): (tile, branch) units spread over the ranks by
   the exchanger, or attention mode's canvas forward split by heads (:class:`HeadExchange`, which
   the attention processors take), or one process;
3. the refinement's tokens (:meth:`Parallelism.tokens`), innermost: diffusers' Ulysses hooks over the
   whole group (attention mode) or over sub-groups (more ranks than units). They attach to the canvas
   position modules, so they are entered after the adapter installs those;
4. the VAE (:meth:`Parallelism.vae`): tiled encodes and decodes with their windows split over the ranks.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any, ContextManager, Iterator

from ..adapters import ModelAdapter
from ..config import MethodConfig
from ..plan import RenderPlan
from .canvas import CanvasRunner, HeadExchange, canvas_blocker, split_tokens
from .context import ulysses, ulysses_blocker
from .exchanger import TileExchanger, refuse_per_rank_caches
from .launch import TileGroup
from .mesh import ParallelPlan, plan_parallel, sequence_split
from .sketch import split_guidance
from .vae import TiledVAE

logger = logging.getLogger("supergen")


def plan_for(adapter: ModelAdapter, group: TileGroup | None, config: MethodConfig, plan: RenderPlan) -> ParallelPlan:
    """What each stage of the render ``plan`` does on ``group`` (one rank without one)."""
    ranks, parallel = 1 if group is None else group.size, config.parallel
    canvas, guidance = plan.layout is not None, adapter.runs_branches(plan.guidance_scale)
    # Units of the first step if (tile, branch) units are allowed: the most the refinement can spread.
    units = plan.tiles.count(0) * (2 if guidance and parallel.cfg != "off" else 1)
    tokens = math.prod(n // p for n, p in zip(plan.tile_latent_shape[2:], adapter.patch))
    heads = adapter.transformers[0].config.num_attention_heads
    seq = sequence_split(ranks, units, heads, tokens) if adapter.spec.tile_context_parallel else 1
    if seq > 1 and ulysses_blocker(adapter.transformers, seq, adapter.cp_plans):
        seq = 1
    return plan_parallel(ranks, guidance, adapter.runs_branches(plan.sketch_guidance_scale),
                         adapter.spec.sketch_branches_separate, parallel.cfg, parallel.sketch,
                         ulysses_blocker(adapter.transformers, ranks, adapter.cp_plans) or adapter.context_parallel_blocker(ranks), canvas,
                         canvas_blocker(adapter.transformers, ranks, plan.layout[0].seq_len, adapter.cp_plans) if canvas else "",
                         units, seq)


@dataclass
class Parallelism:
    """One render's parallel dimensions, applied from :attr:`split` (see the module docstring for the order)."""

    split: ParallelPlan
    adapter: ModelAdapter
    group: TileGroup | None
    config: MethodConfig
    plan: RenderPlan

    # 1. the sketch -----------------------------------------------------------------------------
    def sketch(self) -> ContextManager[None]:
        """Entered around the wrapped pipeline's sketch: its branches or tokens over the ranks, or nothing."""
        split = self.split
        if split.sketch_reason:
            logger.info("sketch %s: %s", "computed whole on every rank" if split.sketch == "replicated" else "split by guidance branch",
                        split.sketch_reason)
        if split.sketch == "cfg":
            return split_guidance(self.adapter.transformers, self.group)
        if split.sketch == "ulysses":
            return self._context_parallel()
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _context_parallel(self) -> Iterator[None]:
        # The family's plan, its attention through diffusers' dispatcher.
        adapter = self.adapter
        with adapter.context_parallel_extras(self.group.size), \
                ulysses(adapter.transformers, self.group, adapter.cp_plans, adapter.spec.cp_uneven):
            yield

    # 2. the refinement's tiles -------------------------------------------------------------------
    def tiles(self):
        """``(runner, heads)``: the :class:`~supergen.refine.TileRunner` of the refinement (None: one process)
        and, in attention mode split over the group, the :class:`HeadExchange` its processors use."""
        split, group = self.split, self.group
        if split.refine_reason and group is not None:
            logger.info("attention mode not split over the ranks: %s", split.refine_reason)
        if split.seq > 1:
            logger.info("%d units of work for %d ranks: each unit on a sub-group of %d ranks with Ulysses (tile=%d × seq=%d)",
                        split.units, split.ranks, split.seq, split.ranks // split.seq, split.seq)
        if group is not None and split.refine == "ulysses":
            refuse_per_rank_caches(self.config.cache)
            return CanvasRunner(group), HeadExchange(group)
        if group is None or split.ranks == 1:
            return None, None
        return TileExchanger.for_render(group, self.config, self.plan.latent_shape[1:3], split.seq), None

    # 3. the refinement's tokens ------------------------------------------------------------------
    def tokens(self) -> ContextManager[None]:
        """Ulysses over the ranks that split each forward's tokens: the group (attention mode), a sub-group
        (``seq`` > 1), or nothing. Enter it after the canvas position modules are installed."""
        split, group, adapter = self.split, self.group, self.adapter
        over = None
        if group is not None and split.refine == "ulysses":
            over = group
        elif group is not None and split.ranks > 1 and split.seq > 1:
            over = group.sub(split.seq)
        return split_tokens(adapter.transformers, over, adapter.cp_plans) if over is not None else contextlib.nullcontext()

    # 4. the VAE ----------------------------------------------------------------------------------
    def vae(self) -> TiledVAE:
        """The tiled VAE with its windows split over the ranks (the same tiles and blend on any rank count)."""
        return TiledVAE(self.adapter, self.group)

    def stats(self) -> dict[str, Any]:
        """``{"plan": ...}`` for ``out.stats.parallel`` with a group; empty without one."""
        return {} if self.group is None else {"plan": self.split.as_dict()}


def parallelize(adapter: ModelAdapter, group: TileGroup | None, config: MethodConfig, plan: RenderPlan) -> Parallelism:
    """The render's :class:`Parallelism`: its :class:`ParallelPlan` decided once, each dimension applied from it."""
    return Parallelism(plan_for(adapter, group, config, plan), adapter, group, config, plan)
