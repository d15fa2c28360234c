"""``cache_policy``: the tile policy a ``cache`` config asks for, with its hooks installed while in use."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from diffusers.hooks import FirstBlockCacheConfig, HookRegistry, MagCacheConfig

from ..config import CacheConfig
from ..errors import SuperGenError
from .baselines import StepSkipConfig, TeaCacheConfig, apply_diffusers_cache, apply_step_skip, apply_teacache
from .block import BlockCacheConfig, apply_block_cache
from .region import RegionCacheConfig, apply_region_cache
from .protocol import ComputeAll, TilePolicy
from .report import BlockCounter, Reported, transformer_blocks



@contextlib.contextmanager
def cache_policy(cfg: CacheConfig, models: list[torch.nn.Module], canvas: tuple[int, int, int], patch: tuple[int, int, int], num_steps: int,
                 guidance: bool, *, count_blocks: bool = True, diffusers_config: Any = None) -> Iterator[Reported]:
    """The tile policy ``cfg`` asks for, with its hooks installed on the transformer(s) while in use.

    Args:
        cfg: the ``cache`` config section.
        models: the pipeline's transformers (:attr:`~supergen.adapters.ModelAdapter.transformers`).
        canvas: canvas latent ``(frames, H, W)``; patch: the transformer's ``(pt, ph, pw)``.
        num_steps: refinement steps of this render (MagCache interpolates its ratios to it).
        guidance: whether each tile runs a conditional and an unconditional forward.
        count_blocks: count the transformer block forwards that run (the report's ``blocks`` and
            ``block_share_skipped``); without it nothing is installed for the report and those stay 0.
        diffusers_config: a diffusers cache config (``FirstBlockCacheConfig``, ``MagCacheConfig``,
            ``TaylorSeerCacheConfig``, …) applied with one state per guidance branch and canvas region
            (:func:`~supergen.cache.baselines.apply_diffusers_cache`), on top of the tile policy. Used
            whenever given, even with ``cfg.enabled`` false; ``cache.policy=fbc``/``magcache`` build one
            from ``cfg``.

    Yields:
        A :class:`Reported` policy; its ``report`` is complete when the refinement has run.
    """
    name = cfg.policy if cfg.enabled else "none"
    if diffusers_config is None and name in ("fbc", "magcache"):
        diffusers_config = _baseline_config(cfg, name, num_steps, models)
    policy: TilePolicy = ComputeAll()
    if name == "region":
        policy = apply_region_cache(RegionCacheConfig.from_config(cfg))
    elif name == "steps":
        policy = apply_step_skip(StepSkipConfig.from_config(cfg))
    elif name == "teacache":
        policy = apply_teacache(TeaCacheConfig.from_config(cfg), models[0] if models else None)
    installed: list[tuple[HookRegistry, str]] = []
    enabled: list[torch.nn.Module] = []
    counter = None
    try:
        if name == "region" and cfg.block.enabled:
            installed = apply_block_cache(models, BlockCacheConfig.from_config(cfg, canvas, patch))
        if diffusers_config is not None:
            for model in models:
                apply_diffusers_cache(model, diffusers_config)
                enabled.append(model)
        if count_blocks:
            counter = BlockCounter(models)
        _refresh_contexts(models)
        blocks_per_tile = len(transformer_blocks(models[0])) * (2 if guidance else 1) if models and count_blocks else 0
        yield Reported(policy, canvas[1:], counter, blocks_per_tile)
    finally:
        if counter is not None:
            counter.remove()
        for model in enabled:
            model.disable_cache()
        for registry, hook_name in reversed(installed):
            registry.remove_hook(hook_name, recurse=False)
        _refresh_contexts(models)


def _refresh_contexts(models: list[torch.nn.Module]) -> None:
    # cache_context reaches block hooks through a list of registries cached on first use (e.g. by the
    # sketch's own cache_context calls); adding or removing block hooks makes it stale.
    for model in models:
        HookRegistry.check_if_exists_or_initialize(model).invalidate_child_registries_cache()


def _baseline_config(cfg: CacheConfig, name: str, num_steps: int, models: list[torch.nn.Module]):
    """diffusers' own hook config from ``cache.fbc`` / ``cache.magcache`` and the shared rules (warmup, max consecutive skips)."""
    if name == "fbc":
        for model in models:
            if len(transformer_blocks(model)) < 2:
                # diffusers' FBC splits the blocks into a first and a tail: it needs two.
                raise SuperGenError(f"cache.policy=fbc needs a transformer with at least 2 blocks; {type(model).__name__} has 1")
        return FirstBlockCacheConfig(threshold=cfg.fbc.threshold)
    if cfg.magcache.mag_ratios is None:
        # diffusers' calibration mode: skips nothing and logs the ratios to put in cache.magcache.mag_ratios.
        return MagCacheConfig(calibrate=True, num_inference_steps=num_steps)
    return MagCacheConfig(
        threshold=cfg.magcache.threshold, max_skip_steps=cfg.max_consecutive, retention_ratio=cfg.warmup_steps / num_steps,
        num_inference_steps=num_steps, mag_ratios=list(cfg.magcache.mag_ratios),
    )
