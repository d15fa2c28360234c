"""CFG parallelism for the sketch: the wrapped pipeline's two guidance branches on two ranks.

The sketch is the wrapped diffusers pipeline's own loop, which supergen does not rewrite. Pipelines
that call the transformer once per branch (``cache_context("cond")``, then ``"uncond"``) get a
diffusers :class:`~diffusers.hooks.ModelHook` on each transformer for the sketch's duration:

- on the ``cfg`` coordinate that owns the branch, the forward runs; on the other it returns an empty
  buffer of the output's shape instead;
- after the ``uncond`` call (the pipeline has not yet combined the two), the ranks of the ``cfg``
  dimension all-gather their branch outputs into those buffers: the conditional prediction the
  pipeline already holds is filled in place, and the unconditional one is returned.

The pipeline then combines exactly the numbers one process would have, so the sketch is identical to
a one-process sketch (bit for bit where the forward is deterministic). Ranks along ``tile`` repeat
the same work (the sketch is replicated there).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.distributed as dist
from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

from .. import compat
from ..compat import BaseState, StateManager
from .launch import TileGroup

#: The ``cfg`` mesh coordinate that computes each branch, by the pipelines' cache-context names.
BRANCH_OWNER = {"cond": 0, "uncond": 1}

HOOK_NAME = "supergen_cfg_split"


class GuidanceSplitHook(ModelHook):
    """Runs one of the two guidance branches of every denoising call on this rank (see the module)."""

    # Stateful, so that diffusers hands it the pipeline's cache context (the branch name) per call.
    _is_stateful = True

    def __init__(self, group: TileGroup):
        super().__init__()
        self.group = group
        self.pg = group.mesh.get_group("cfg")
        self.coordinate = group.mesh.get_local_rank("cfg")
        self.context = StateManager(BaseState)
        self.cond: torch.Tensor | None = None  # the conditional output returned, until the exchange fills it

    def new_forward(self, module: nn.Module, *args, **kwargs):
        context = compat.current_context(self.context)
        branch = context.name if context is not None else None
        if branch not in BRANCH_OWNER or kwargs.get("return_dict", True) or args:
            return self.fn_ref.original_forward(*args, **kwargs)
        if BRANCH_OWNER[branch] == self.coordinate:
            out = self.fn_ref.original_forward(*args, **kwargs)[0].contiguous()
        else:
            hidden = kwargs["hidden_states"]
            channels = module.config.out_channels or module.config.in_channels
            out = torch.empty((hidden.shape[0], channels, *hidden.shape[2:]), dtype=hidden.dtype, device=hidden.device)
        if branch == "cond":
            self.cond = out
            return (out,)
        outputs = [self.cond, out]
        mine = outputs[self.coordinate].clone()
        # Bytes, not elements: gloo and NCCL move uint8 whatever the model's dtype.
        dist.all_gather([o.view(torch.uint8) for o in outputs], mine.view(torch.uint8), group=self.pg)
        self.group.count_bytes(mine.nbytes)
        self.cond = None
        return (out,)

    def reset_state(self, module: nn.Module) -> nn.Module:
        self.context.reset()
        self.cond = None
        return module


@contextlib.contextmanager
def split_guidance(models: list[nn.Module], group: TileGroup) -> Iterator[None]:
    """Inside the block, the guidance branches of ``models``' denoising calls run on the two ``cfg``
    coordinates of ``group``'s mesh; the hooks are removed on exit, also when the block raises."""
    registries = [HookRegistry.check_if_exists_or_initialize(model) for model in models]
    try:
        for registry in registries:
            registry.register_hook(GuidanceSplitHook(group), HOOK_NAME)
        yield
    finally:
        for registry in registries:
            registry.remove_hook(HOOK_NAME, recurse=False)
