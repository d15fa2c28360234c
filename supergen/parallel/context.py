"""Context parallelism for the sketch on diffusers' own engine (``parallel.sketch=ulysses``).

diffusers (≥ 0.36) splits a transformer's token sequence over ranks with hooks it installs from the
model's ``_cp_plan`` (Wan and LTX ship one) and runs attention with Ulysses all-to-alls over heads.
:func:`ulysses` enables that for the sketch only and removes every hook and setting it made on exit,
so the refinement (tile parallelism, canvas position modules, tile attention processors) finds the
transformer exactly as before.

Two workarounds make it run on CPU ranks (gloo), both scoped to :func:`ulysses`: diffusers picks the
device as ``rank % torch.accelerator.device_count()``, which is 0 on CPU (so it is made to report 1
while the config is resolved), and it would build a mesh over the whole world, so the group's own
``ring × ulysses`` mesh is passed in. Ring attention needs a backend that returns the log-sum-exp (a
CUDA op): only Ulysses is used.

Bytes: what diffusers sends for the group is counted on it (:meth:`~supergen.parallel.TileGroup.count_bytes`,
and so on the parent group of a sub-group): every all-to-all of its attention dispatcher (Ulysses: the
query, key and value token shards out to head shards, the output back), this rank's share of the
attention masks it all-gathers (LTX's split text mask) and of every output its plan gathers. Not
counted: ``ulysses_anything``'s exchange of the shard lengths (one integer per rank and all-to-all).

Ulysses changes the order of some sums (attention is computed per head group after an all-to-all),
so the sketch matches one process to a tolerance, not bit for bit; each rank count is deterministic.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch
from diffusers import ContextParallelConfig
from torch import nn

from .. import compat
from .launch import TileGroup

logger = logging.getLogger("supergen")


def ulysses_blocker(models: list[nn.Module], ranks: int, plans: list[dict | None] | None = None) -> str:
    """Why Ulysses cannot run ``models`` on ``ranks`` ranks, or ``""`` when it can.

    Args:
        plans: per model, a context-parallel plan supplied by its adapter (None: diffusers' own ``_cp_plan``).
    """
    for model, plan in zip(models, plans or [None] * len(models)):
        if plan is None and compat.context_parallel_plan(model) is None:
            return f"{type(model).__name__} has no context-parallel plan in diffusers"
        heads = model.config.num_attention_heads
        if heads % ranks:
            return f"{heads} attention heads do not split over {ranks} ranks"
    return ""


@contextlib.contextmanager
def _one_device_per_cpu_rank(device: torch.device) -> Iterator[None]:
    """diffusers' ``rank % torch.accelerator.device_count()`` on CPU ranks (where the count is 0)."""
    if device.type != "cpu":
        yield
        return
    count = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = count


class _Counted:
    """A module of collectives as diffusers' attention dispatcher sees it (a name in its namespace),
    passing everything through; subclasses count what one function sends on ``group``."""

    def __init__(self, module, group: TileGroup):
        self._module = module
        self._group = group

    def __getattr__(self, name: str):
        return getattr(self._module, name)


class _CountedFunctional(_Counted):
    """The dispatcher's ``funcol``: all of its Ulysses all-to-alls go through ``all_to_all_single`` (the
    even path's ``_all_to_all_single`` and ``ulysses_anything``'s padded, unequal ones), so this counts
    what is sent on the wire, padding included: the send buffer minus the rows this rank keeps (as
    :class:`~supergen.parallel.HeadExchange` counts its own)."""

    def all_to_all_single(self, x: torch.Tensor, output_split_sizes, input_split_sizes, group, tag: str = ""):
        # Rows along dim 0 go to the ranks in order; without split sizes, in equal parts. The
        # dispatcher's group is this group's ``ulysses`` mesh dimension, where this rank's index is its group rank.
        kept = x.shape[0] // self._group.size if input_split_sizes is None else input_split_sizes[self._group.rank]
        self._group.count_bytes(x.nbytes - kept * (x.nbytes // max(x.shape[0], 1)))
        return self._module.all_to_all_single(x, output_split_sizes, input_split_sizes, group, tag)


class _CountedDistributed(_Counted):
    """The dispatcher's ``torch.distributed``: its only ``all_gather`` is of a per-rank attention mask
    (keys split with the tokens), counted as this rank's contribution (as every all-gather here)."""

    def all_gather(self, tensor_list, tensor: torch.Tensor, *args, **kwargs):
        self._group.count_bytes(tensor.nbytes)
        return self._module.all_gather(tensor_list, tensor, *args, **kwargs)


def _gathered_outputs(model: nn.Module, plan: dict, group: TileGroup) -> list:
    """Forward hooks counting this rank's shard of each output ``plan`` gathers at a module (the hook
    sees the gathered tensor; the shards are diffusers' ``tensor_split``, equal when the length divides)."""

    def count(entry):
        def hook(module, args, output):
            outputs = output if isinstance(output, (tuple, list)) else (output,)
            for spec, tensor in zip(entry if isinstance(entry, (tuple, list)) else (entry,), outputs):
                if spec is not None:
                    group.count_bytes(tensor.tensor_split(group.size, dim=spec.gather_dim)[group.rank].nbytes)
        return hook

    return [model.get_submodule(name).register_forward_hook(count(entry)) for name, entry in plan.items() if not isinstance(entry, dict)]


@contextlib.contextmanager
def ulysses(models: list[nn.Module], group: TileGroup, plans: list[dict | None] | None = None, uneven: bool = False) -> Iterator[None]:
    """Inside the block, ``models`` run with their token sequence split over the group (Ulysses, the
    degree = the group's size); the hooks, the processors' parallel config and the model's are removed on exit.
    The bytes diffusers sends (attention all-to-alls, gathered masks and outputs) are counted on ``group``.

    Args:
        plans: per model, the context-parallel plan to apply (None: the model's own ``_cp_plan``);
            the adapters of families diffusers ships without one supply it
            (:attr:`~supergen.families.FamilySpec.cp_plan`).
        uneven: split sequences that do not divide over the ranks too (diffusers' ``ulysses_anything``:
            unequal shards, padded heads), for plans written for it (:attr:`~supergen.families.FamilySpec.cp_uneven`).
    """
    enabled, counters = [], []
    # If a release renames the dispatcher's collectives, the render still runs, only these bytes go uncounted.
    collectives = compat.dispatcher_collectives()
    try:
        for model, plan in zip(models, plans or [None] * len(models)):
            plan = plan if plan is not None else compat.context_parallel_plan(model)
            config = ContextParallelConfig(ulysses_degree=group.size, mesh=group.seq_mesh, ulysses_anything=uneven)
            with _one_device_per_cpu_rank(group.device):
                model.enable_parallelism(config=config, cp_plan=plan)
            enabled.append((model, plan))
            counters += _gathered_outputs(model, plan, group)
        if collectives is not None:
            functional, distributed = collectives
            compat.set_dispatcher_collectives(_CountedFunctional(functional, group), _CountedDistributed(distributed, group))
        else:
            logger.debug("diffusers' attention dispatcher has no funcol/dist names: its all-to-all bytes are not counted")
        yield
    finally:
        if collectives is not None:
            compat.set_dispatcher_collectives(*collectives)
        for handle in counters:
            handle.remove()
        for model, plan in enabled:
            compat.remove_context_parallel(model, plan)
            compat.forget_parallel_config(model)
