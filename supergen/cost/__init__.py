"""What a render costs, before loading any weights, and whether it fits (``supergen plan``, the memory check).

- :mod:`~supergen.architectures` (below, re-exported): a model's numbers without its weights
  (:class:`Architecture`, the known ones in :data:`KNOWN`; :func:`architecture` finds one by name,
  Hugging Face id or folder);
- :mod:`~supergen.cost.estimate`: FLOPs and memory per stage of one planned render (:func:`estimate`
  → :class:`ResourcePlan`), the formulas in its docstring and ``docs/planner.md``;
- :mod:`~supergen.cost.fit`: the policy refusing a render that cannot fit its device (:func:`check_fits`);
- :mod:`~supergen.cost.report`: the estimate as the table ``supergen plan`` prints (:func:`format_plan`).

The decisions themselves (sizes, tiles, steps) are the render's :class:`~supergen.plan.RenderPlan`;
this package only prices them.
"""

from ..architectures import ALIASES, KNOWN, Architecture, architecture, with_native_sketch
from .estimate import DTYPE_BYTES, ResourcePlan, attended_pairs, block_bytes_per_token, component_dtype, estimate, transformer_flops
from .fit import available_memory, check_fits, device_need
from .report import count, flops, format_plan, human, rows

__all__ = [
    "ALIASES", "KNOWN", "Architecture", "architecture", "with_native_sketch", "DTYPE_BYTES", "ResourcePlan", "attended_pairs",
    "block_bytes_per_token", "component_dtype", "estimate", "transformer_flops", "available_memory", "check_fits", "device_need",
    "count", "flops", "format_plan", "human", "rows",
]
