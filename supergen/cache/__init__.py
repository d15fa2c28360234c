"""Feature caches for the tiled refinement: reuse what barely changes (docs/cache.md).

One module per concern, each technique shaped like diffusers' hooks (config → state → hook/policy →
``apply_…``):

* :mod:`.report` — what was skipped (:class:`CacheReport`), the block-forward counter, the wrapper
  every policy runs in;
* :mod:`.region` — the region-aware tile cache (``cache.policy=region``);
* :mod:`.block` — block-level reuse inside computed tiles (``cache.block``);
* :mod:`.baselines` — uniform step skipping, a TeaCache-style rule, diffusers' hooks per canvas region;
* :mod:`.windows` — canvas-region keys and cache-context names;
* :mod:`.picture` — the cache map;
* :mod:`.policy` — :func:`cache_policy`, which builds the policy a config asks for.
"""

from .baselines import StepSkip, StepSkipConfig, TeaCache, TeaCacheConfig, apply_diffusers_cache, apply_step_skip, apply_teacache, step_schedule
from .block import BlockCacheConfig, BlockCacheHook, BlockState, apply_block_cache
from .picture import cache_map, write_cache_map
from .policy import cache_policy
from .protocol import ComputeAll, TilePolicy
from .region import RegionCache, RegionCacheConfig, TileEstimate, apply_region_cache
from .report import BlockCounter, CacheReport, Reported, StepReport, TileRecord, transformer_blocks
from .reuse import TileReuse
from .windows import KeyedStates, WindowKeys, context_name, current_batch

__all__ = [
    "BlockCacheConfig", "BlockCacheHook", "BlockCounter", "BlockState", "CacheReport", "ComputeAll", "TilePolicy", "KeyedStates", "RegionCache",
    "RegionCacheConfig", "Reported", "StepReport", "StepSkip", "StepSkipConfig", "TeaCache", "TeaCacheConfig",
    "TileEstimate", "TileRecord", "TileReuse", "WindowKeys", "apply_block_cache", "apply_diffusers_cache",
    "apply_region_cache", "apply_step_skip", "apply_teacache", "cache_map", "cache_policy", "context_name",
    "current_batch", "step_schedule", "transformer_blocks", "write_cache_map",
]
