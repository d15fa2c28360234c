"""Whether a render fits its device: the memory-fit policy over the cost estimate.

:func:`check_fits` refuses, before anything loads, a render whose estimate exceeds what the device
can still allocate, naming what would make it fit. It reads the render's plan as given (the runtime
hands the same plan to the pipeline) and plans again only for its frame-count hint, a different render.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import torch

from ..config import SuperGenConfig
from ..errors import SuperGenError
from ..plan import STAGES, RenderPlan, plan_render
from ..architectures import Architecture
from .estimate import ResourcePlan, estimate
from .report import human

logger = logging.getLogger("supergen")


def available_memory(device: torch.device) -> int:
    """Bytes a render can still allocate on ``device``: free CUDA memory, or the host's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:  # MemAvailable counts reclaimable page cache, unlike the free-pages count below
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def device_need(cost: ResourcePlan, offload: str) -> tuple[int, int]:
    """``(weights, transient)`` bytes a planned render holds on its device at its peak: with
    ``model`` offload only the largest component is resident at a time, with ``group`` two
    transformer blocks and what lies outside them (:attr:`~supergen.cost.estimate.ResourcePlan.group_offload_weights`;
    in the setup the whole text encoder, :meth:`~supergen.cost.estimate.ResourcePlan.group_offload_peak`),
    with ``sequential`` one layer's parameters (counted as nothing)."""
    if offload == "none":
        return cost.weights, cost.peak - cost.weights
    if offload == "group":  # per stage, with the text encoder onloaded whole while it encodes
        return cost.group_offload_weights, max(map(cost.group_offload_peak, STAGES)) - cost.group_offload_weights
    # Offload hooks manage the encoders (nothing is parked): the largest transient of any stage.
    largest = max(cost.memory[f"weights.{k}"] for k in cost.parameters)
    return {"model": largest}.get(offload, 0), cost.transient


def check_fits(cfg: SuperGenConfig, arch: Architecture, render: RenderPlan, device: torch.device, loaded: bool = False) -> ResourcePlan:
    """Refuse the planned render ``render`` when its estimate says it cannot fit on ``device``, with what would
    make it fit; returns the estimate.

    Args:
        loaded: the model's weights are already resident (they count as available then).
    """
    if device.type == "cpu":  # the encoders are parked on the host, which is this device
        cfg = replace(cfg, encoders=replace(cfg.encoders, park=False))
    cost = estimate(cfg, arch, render)
    weights, transient = device_need(cost, cfg.model.offload)
    available = available_memory(device) + (weights if loaded else 0)
    if weights + transient <= available:
        return cost
    offload = cfg.model.offload
    hints = []
    # Every stage's memory is a maximum of terms affine in the latent frame count, so the need is
    # convex in it and the chord from 1 frame to this render's count never underestimates it: the
    # frame count the chord allows is sure to fit (one more plan, of a 1-frame render, not a search).
    step = arch.vae_scale[0]
    one = sum(device_need(estimate(cfg, arch, plan_render(cfg, arch, *render.size, 1)), offload))
    if one <= available and render.num_frames > step:
        per_step = (weights + transient - one) / ((render.num_frames - 1) // step)
        hints.append(f"--num-frames {1 + step * int((available - one) // per_step)}")
    if cost.memory["block_cache"]:
        # The block cache is config, not geometry: the same plan, estimated without it.
        uncached = replace(cfg, cache=replace(cfg.cache, block=replace(cfg.cache.block, enabled=False)))
        if sum(device_need(estimate(uncached, arch, render), offload)) <= available:
            hints.append(f"cache.block.enabled=false (its state is {human(cost.memory['block_cache'])})")
    if device.type == "cuda":
        for saver in ("model", "sequential"):
            if offload == "none" and sum(device_need(cost, saver)) <= available:
                hints.append(f"model.offload={saver}")
                break
        hints.append("more ranks (torchrun: tiles and VAE tiles are split across GPUs)")
    raise SuperGenError(
        f"{render.size[0]}x{render.size[1]}x{render.num_frames} (height x width x frames) needs about "
        f"{human(weights + transient)} on {device} (planner estimate: {human(weights)} weights + "
        f"{human(transient)} for the {cost.peak_stage} stage); {human(available)} is available. "
        f"It fits with {' or '.join(hints) if hints else 'a smaller size'}; --no-memory-check "
        f"(model.memory_check=false) tries anyway"
    )
