"""The region-aware tile cache: reuse a tile's residual while its output is predicted to barely change.

The estimator (per tile window ``W``, statistics float32, averaged over channels, and over frames
unless the clip is refined in time windows, stored per element of the canvas, per frame too with
time windows, so they survive grid shifts in space and time):

* input drift: ``D = Σ_W Σ_steps |x_s − x_{s−1}|`` accumulated since each element was last computed;
* gain: ``k = Σ_W |Δoutput| / Σ_W |Δinput|`` between the element's last two *computed* steps only.
  Reused steps never enter the history (writing reconstructed outputs would pin ``k`` at 1.0, the
  reference implementation's fault, which causes long runs of skips);
* predicted relative output change ``k · D / Σ_W |output|``; the tile is reused while it stays
  strictly under the tile's threshold (so threshold 0 reuses nothing).

Region rule (per tile): ``threshold = base · clamp((v_median / v) ** strength, min_scale, max_scale)``
where ``v`` is the tile's volatility, the relative change of its model output between its last two
computations, and ``v_median`` the median over this step's tiles. Quiet regions (sky, walls) so reuse
for longer and busy regions are recomputed sooner, at the same base threshold.

Cost weighting (per tile): the threshold is also multiplied by ``(window area / owned area) ** cost``
(with time windows, volumes: frames × rows × columns).
Every forward costs a whole window, but a reused tile's error lands only on the part it writes; with
the clamp boundary a shifted grid has edge tiles that write a strip of a few rows (at 4× a shifted
step runs 9 forwards for the canvas an unshifted step covers with 4). Without the weighting the rule
spent its budget recomputing strips and, to reach half the compute, reused whole stretches of steps;
uniform step skipping then beat it (docs/cache.md, "What made the difference").

The consecutive cap defaults to 2: at low compute the rule sits near the floor the cap sets, and runs
of three reuses cost more than the skipping they buy (measured, docs/cache.md).

Classifier-free guidance: the adapter returns the guided prediction ``uncond + s·(cond − uncond)``
and the cache decides on that one combined residual, so both passes are computed or reused
together: the scheduler only consumes the combination, so the threshold bounds the error of exactly
what it consumes; deciding the branches apart would mix a fresh branch with a stale one, and the
guidance scale would multiply their mismatch by ``s``.

Every decision depends only on the canvas latent, the step, the tiles and state derived from the
blended predictions, which every rank holds identically: under tile parallelism every rank takes
every decision itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import CacheConfig
from ..tiling import Tile
from .reuse import _EPS, TileReuse, owned_share


_DEFAULT = CacheConfig()


@dataclass
class RegionCacheConfig:
    """Settings of :class:`RegionCache`: ``cache.region.*``, ``cache.warmup_steps`` and
    ``cache.max_consecutive``, whose defaults (and meanings) are the config's (:mod:`supergen.config`)."""

    #: ``cache.region.change_threshold``: the base threshold on the predicted relative change of a tile's output.
    threshold: float = _DEFAULT.region.change_threshold
    warmup_steps: int = _DEFAULT.warmup_steps
    max_consecutive: int = _DEFAULT.max_consecutive
    #: ``cache.region.strength``: the region rule; strength 0 gives every tile ``threshold``.
    region_strength: float = _DEFAULT.region.strength
    min_scale: float = _DEFAULT.region.min_scale
    max_scale: float = _DEFAULT.region.max_scale
    cost: float = _DEFAULT.region.cost

    @classmethod
    def from_config(cls, cache: CacheConfig) -> "RegionCacheConfig":
        """The settings a ``cache`` config section asks for."""
        region = cache.region
        return cls(region.change_threshold, cache.warmup_steps, cache.max_consecutive, region.strength, region.min_scale,
                   region.max_scale, region.cost)


@dataclass
class TileEstimate:
    """What :class:`RegionCache` estimated for one tile at one step (for reports and tests)."""

    #: ``|Δoutput| / |Δinput|`` over the window from its last two computed steps (None: not known yet).
    gain: float | None
    #: Predicted relative change of the tile's output since its last computation.
    change: float | None
    threshold: float


class RegionCache(TileReuse):
    """Tile-level region-aware cache (see the module docstring for the rule).

    State (float32 per-element maps over the canvas latent, ``(H, W)`` or with time windows
    ``(F, H, W)``, besides :class:`TileReuse`'s): ``inputs`` (``(1, C, F, H, W)``, the input at the
    last computation), ``previous`` (last step's latent), and the means over C (and F without time
    windows) ``drift``, ``out_mag``, ``d_out``, ``d_in``.
    """

    def __init__(self, config: RegionCacheConfig):
        super().__init__(config.warmup_steps, config.max_consecutive)
        self.config = config
        self.estimates: list[list[TileEstimate]] = []

    def start(self, num_steps: int) -> None:
        super().start(num_steps)
        self.estimates = []

    def _init_state(self, x: torch.Tensor) -> None:
        super()._init_state(x)
        maps = {name: self._zeros(x) for name in ("drift", "out_mag", "d_out", "d_in")}
        self._state.update(inputs=torch.zeros_like(x), previous=x.clone(), **maps)

    def decide(self, step, timestep, latents, tiles):
        x = self._prepare(latents, tiles)
        state = self._state
        state["drift"] += self._per_element((x - state["previous"]).abs())
        state["previous"] = x.clone()

        # Every tile's statistics are reduced on the device and read in one transfer per step.
        rows = []
        for tile in tiles:
            s = {name: self._owned(tile, name).sum() for name in ("drift", "out_mag", "d_out", "d_in")}
            gain = s["d_out"] / s["d_in"].clamp_min(_EPS)
            rows.append([s["d_out"] / s["out_mag"].clamp_min(_EPS), gain, gain * s["drift"] / s["out_mag"].clamp_min(_EPS),
                         *self._rule_values(tile)])
        values = self._fetch(rows)
        known = [count_min >= 2 for *_, count_min, _ in values]
        volatility = [v for v, *_ in values]
        reference = float(np.median([v for v, k in zip(volatility, known) if k])) if any(known) else 0.0
        decisions, estimates = [], []
        for tile, (v, gain, change, count_min, streak_max), is_known in zip(tiles, values, known):
            threshold = self.config.threshold * self._region_scale(v, reference) * self._cost_scale(tile)
            if not is_known:
                estimates.append(TileEstimate(None, None, threshold))
                decisions.append(True)
                continue
            estimates.append(TileEstimate(gain, change, threshold))
            decisions.append(not (self.allowed(step, count_min, streak_max) and change < threshold))
        self.estimates.append(estimates)
        self._remember(x, tiles, decisions)
        return decisions

    def _region_scale(self, volatility: float, reference: float) -> float:
        strength = self.config.region_strength
        if strength == 0 or reference <= 0:
            return 1.0
        ratio = (reference / max(volatility, _EPS)) ** strength
        return min(self.config.max_scale, max(self.config.min_scale, ratio))

    def _cost_scale(self, tile: Tile) -> float:
        # A forward costs the same whatever share of its window the tile writes, while the error of
        # reusing it spreads only over what it writes: reuse is worth it while
        # change × owned area < λ × (one forward), i.e. change < threshold × window / owned area.
        return owned_share(tile) ** -self.config.cost

    def _observe_fresh(self, x, output, fresh):
        state = self._state
        # Gain history from computed steps only: |Δoutput| and |Δinput| against the last computation.
        had_one = fresh & (state["count"] >= 1)
        d_out = self._per_element((output - (state["inputs"] + state["residual"])).abs())
        d_in = self._per_element((x - state["inputs"]).abs())
        state["d_out"] = torch.where(had_one, d_out, state["d_out"])
        state["d_in"] = torch.where(had_one, d_in, state["d_in"])
        state["inputs"] = torch.where(fresh, x, state["inputs"])
        state["out_mag"] = torch.where(fresh, self._per_element(output.abs()), state["out_mag"])
        state["drift"] = torch.where(fresh, torch.zeros_like(state["drift"]), state["drift"])


def apply_region_cache(config: RegionCacheConfig) -> RegionCache:
    """The tile policy for ``config`` (a tile policy needs no hooks: the refiner calls it)."""
    return RegionCache(config)
