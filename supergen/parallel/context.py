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

Ulysses changes the order of some sums (attention is computed per head group after an all-to-all),
so the sketch matches one process to a tolerance, not bit for bit; each rank count is deterministic.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from diffusers import ContextParallelConfig
from diffusers.hooks.context_parallel import remove_context_parallel
from torch import nn

from .launch import TileGroup


def ulysses_blocker(models: list[nn.Module], ranks: int, plans: list[dict | None] | None = None) -> str:
    """Why Ulysses cannot run ``models`` on ``ranks`` ranks, or ``""`` when it can.

    Args:
        plans: per model, a context-parallel plan supplied by its adapter (None: diffusers' own ``_cp_plan``).
    """
    for model, plan in zip(models, plans or [None] * len(models)):
        if plan is None and getattr(model, "_cp_plan", None) is None:
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


@contextlib.contextmanager
def ulysses(models: list[nn.Module], group: TileGroup, plans: list[dict | None] | None = None, uneven: bool = False) -> Iterator[None]:
    """Inside the block, ``models`` run with their token sequence split over the group (Ulysses, the
    degree = the group's size); the hooks, the processors' parallel config and the model's are removed on exit.

    Args:
        plans: per model, the context-parallel plan to apply (None: the model's own ``_cp_plan``);
            the adapters of families diffusers ships without one supply it
            (:attr:`~supergen.adapters.ModelAdapter.cp_plan`).
        uneven: split sequences that do not divide over the ranks too (diffusers' ``ulysses_anything``:
            unequal shards, padded heads), for plans written for it (:attr:`~supergen.adapters.ModelAdapter.cp_uneven`).
    """
    enabled = []
    try:
        for model, plan in zip(models, plans or [None] * len(models)):
            plan = plan if plan is not None else model._cp_plan
            config = ContextParallelConfig(ulysses_degree=group.size, mesh=group.seq_mesh, ulysses_anything=uneven)
            with _one_device_per_cpu_rank(group.device):
                model.enable_parallelism(config=config, cp_plan=plan)
            enabled.append((model, plan))
        yield
    finally:
        for model, plan in enabled:
            remove_context_parallel(model, plan)
            for module in model.modules():
                if hasattr(getattr(module, "processor", None), "_parallel_config"):
                    module.processor._parallel_config = None
            model._parallel_config = None
