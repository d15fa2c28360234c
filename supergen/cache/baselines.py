"""Baselines for the region cache: uniform step skipping, a TeaCache-style rule, diffusers' own hooks.

* :class:`StepSkip` (``cache.policy=steps``): every tile reuses its residual on the same steps, a
  fixed schedule spread evenly over the run so that ``fraction`` of the steps are computed.
* :class:`TeaCache` (``cache.policy=teacache``): the relative L1 change of the model's timestep
  embedding between consecutive steps (optionally through a rescale polynomial) is accumulated per
  canvas element since the element was last computed; a tile is reused while the largest
  accumulation under it stays below the threshold. Diffusers has no TeaCache; this follows its rule
  (arXiv 2411.19108) on the embedding every diffusers video transformer computes.
* :func:`apply_diffusers_cache` (``cache.policy=fbc`` / ``magcache``, or any diffusers cache config
  passed as ``cache_policy(..., diffusers_config=...)``): diffusers' block hooks with their state
  keyed per guidance branch and **canvas region** (:mod:`supergen.cache.windows`), so a shifted tile
  meets the state of the region it now covers. Their cached tensors are in the tile's token layout:
  after a shift they are applied a shift away from where they were computed, which is one reason a
  per-tile hook is a baseline and not the method.

Every tile-level baseline shares :class:`~supergen.cache.reuse.TileReuse`'s residual canvas and
rules, so the comparison is between decision rules alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers.models.embeddings import get_timestep_embedding

from .. import compat
from ..config import CacheConfig
from .reuse import _EPS, TileReuse
from .windows import KeyedStates, region_name


_DEFAULT = CacheConfig()


# ---- uniform step skipping ------------------------------------------------------------------------
@dataclass
class StepSkipConfig:
    """Settings of :class:`StepSkip`: ``cache.steps.fraction`` and ``cache.warmup_steps``, whose
    defaults (and meanings) are the config's (:mod:`supergen.config`)."""

    #: Target share of steps computed (the first ``warmup_steps`` and the last step included).
    fraction: float = _DEFAULT.steps.fraction
    warmup_steps: int = _DEFAULT.warmup_steps

    @classmethod
    def from_config(cls, cache: CacheConfig) -> "StepSkipConfig":
        """The settings a ``cache`` config section asks for."""
        return cls(cache.steps.fraction, cache.warmup_steps)


def step_schedule(num_steps: int, fraction: float, warmup_steps: int) -> list[bool]:
    """Which steps are computed: ``round(fraction · num_steps)`` of them (at least the forced ones),
    the first ``warmup_steps`` and the last, the rest spread evenly over the steps between."""
    forced = set(range(min(warmup_steps, num_steps))) | {num_steps - 1}
    middle = [s for s in range(num_steps) if s not in forced]
    budget = min(len(middle), max(0, round(fraction * num_steps) - len(forced)))
    # The centre of each of `budget` equal parts of the middle: no two computed steps bunch up.
    chosen = {middle[math.floor((j + 0.5) * len(middle) / budget)] for j in range(budget)}
    return [s in forced or s in chosen for s in range(num_steps)]


class StepSkip(TileReuse):
    """Whole steps reused on a fixed schedule (:func:`step_schedule`); no per-tile decision."""

    def __init__(self, config: StepSkipConfig):
        # The schedule alone decides; no consecutive cap beyond its own spacing.
        super().__init__(config.warmup_steps, max_consecutive=1 << 30)
        self.fraction = config.fraction
        self.schedule: list[bool] = []

    def start(self, num_steps):
        super().start(num_steps)
        self.schedule = step_schedule(num_steps, self.fraction, self.warmup_steps)

    def decide(self, step, timestep, latents, tiles):
        x = self._prepare(latents, tiles)
        decisions = [self.schedule[step] or not self.may_reuse(step, tile) for tile in tiles]
        self._remember(x, tiles, decisions)
        return decisions


def apply_step_skip(config: StepSkipConfig) -> StepSkip:
    return StepSkip(config)


# ---- TeaCache-style rule ------------------------------------------------------------------------
@dataclass
class TeaCacheConfig:
    """Settings of :class:`TeaCache`: ``cache.teacache.*``, ``cache.warmup_steps`` and
    ``cache.max_consecutive``, whose defaults (and meanings) are the config's (:mod:`supergen.config`)."""

    #: ``cache.teacache.rel_l1_threshold``: on the accumulated (rescaled) relative change of the timestep embedding.
    threshold: float = _DEFAULT.teacache.rel_l1_threshold
    warmup_steps: int = _DEFAULT.warmup_steps
    max_consecutive: int = _DEFAULT.max_consecutive
    #: Rescale polynomial, highest power first (TeaCache fits one per model); None: identity.
    coefficients: tuple[float, ...] | None = None

    @classmethod
    def from_config(cls, cache: CacheConfig) -> "TeaCacheConfig":
        """The settings a ``cache`` config section asks for."""
        coefficients = cache.teacache.coefficients
        return cls(cache.teacache.rel_l1_threshold, cache.warmup_steps, cache.max_consecutive,
                   None if coefficients is None else tuple(coefficients))


def timestep_embedding(model: torch.nn.Module | None, timestep: torch.Tensor) -> torch.Tensor:
    """The model's timestep embedding of ``timestep`` ``(D,)`` float32: Wan-style transformers'
    ``condition_embedder`` when there is one, else the 256-wide sinusoidal projection they start from."""
    t = timestep.reshape(1).float()
    embedder = getattr(model, "condition_embedder", None)
    if embedder is not None and hasattr(embedder, "timesteps_proj") and hasattr(embedder, "time_embedder"):
        with torch.no_grad():
            projected = embedder.timesteps_proj(t.to(next(model.parameters()).device))
            weight = next(embedder.time_embedder.parameters())
            return embedder.time_embedder(projected.to(weight.dtype)).float().flatten()
    return get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0).flatten()


class TeaCache(TileReuse):
    """Per tile, reuse while the accumulated relative change of the timestep embedding stays small."""

    def __init__(self, config: TeaCacheConfig, model: torch.nn.Module | None):
        super().__init__(config.warmup_steps, config.max_consecutive)
        self.model, self.threshold, self.coefficients = model, config.threshold, config.coefficients
        self._previous: torch.Tensor | None = None

    def start(self, num_steps):
        super().start(num_steps)
        self._previous = None

    def _init_state(self, x):
        super()._init_state(x)
        self._state["accumulated"] = self._zeros(x)

    def decide(self, step, timestep, latents, tiles):
        x = self._prepare(latents, tiles)
        embedding = timestep_embedding(self.model, timestep)
        if self._previous is not None:
            change = float((embedding - self._previous).abs().mean() / self._previous.abs().mean().clamp_min(_EPS))
            if self.coefficients is not None:
                change = abs(sum(c * change**p for p, c in enumerate(reversed(self.coefficients))))
            self._state["accumulated"] += change
        self._previous = embedding
        decisions = [not (self.may_reuse(step, tile) and float(self._owned(tile, "accumulated").max()) < self.threshold)
                     for tile in tiles]
        self._remember(x, tiles, decisions)
        return decisions

    def _observe_fresh(self, x, output, fresh):
        self._state["accumulated"] = torch.where(fresh, torch.zeros_like(self._state["accumulated"]), self._state["accumulated"])


def apply_teacache(config: TeaCacheConfig, model: torch.nn.Module | None) -> TeaCache:
    return TeaCache(config, model)


# ---- diffusers' hooks, one state per canvas region ------------------------------------------------
def apply_diffusers_cache(model: torch.nn.Module, config) -> None:
    """``model.enable_cache(config)`` with every hook it adds keyed per guidance branch and canvas region.

    ``config`` is any config ``enable_cache`` takes (``FirstBlockCacheConfig``, ``MagCacheConfig``,
    ``TaylorSeerCacheConfig``, …). The hooks it installs get a :class:`~supergen.cache.windows.KeyedStates`
    in place of their ``StateManager`` (hooks sharing one manager share the replacement), so the
    state a hook reads is that of the region under the tile in progress; hooks the user installed
    before are left as they are. Undo with ``model.disable_cache()``.
    """
    before = {(id(registry), name) for registry in compat.hook_registries(model) for name in registry.hooks}
    model.enable_cache(config)
    replaced: dict[int, KeyedStates] = {}
    for registry in compat.hook_registries(model):
        for name, hook in registry.hooks.items():
            if (id(registry), name) in before:
                continue
            for attr, value in list(vars(hook).items()):
                if isinstance(value, compat.StateManager) and not isinstance(value, KeyedStates):
                    if id(value) not in replaced:
                        state_cls, init_args, init_kwargs = compat.state_manager_args(value)
                        replaced[id(value)] = KeyedStates(state_cls, region_name, init_args, init_kwargs)
                    setattr(hook, attr, replaced[id(value)])

