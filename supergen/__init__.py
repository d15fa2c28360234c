"""supergen: 2K/4K video from diffusers video models trained at 480p/720p, without training.

A native-resolution sketch, upscaled in pixel space, re-noised, then refined in native-size tiles
whose grid shifts every step.

Names are imported lazily (PEP 562), so ``import supergen.eval.metrics`` or ``supergen --help``
does not pay for importing diffusers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name → the module that defines it.
_EXPORTS = {
    "ConfigError": "errors",
    "SuperGenError": "errors",
    "SuperGenConfig": "config",
    "MethodConfig": "config",
    "load_config": "config",
    "RenderPlan": "plan",
    "plan_render": "plan",
    "RenderStats": "pipeline",
    "SuperGenPipeline": "pipeline",
    "SuperGenPipelineOutput": "pipeline",
    "Tile": "tiling",
    "TilePlan": "tiling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'supergen' has no attribute {name!r}")


if TYPE_CHECKING:  # for type checkers and IDEs
    from .config import MethodConfig, SuperGenConfig, load_config
    from .errors import ConfigError, SuperGenError
    from .pipeline import RenderStats, SuperGenPipeline, SuperGenPipelineOutput
    from .plan import RenderPlan, plan_render
    from .tiling import Tile, TilePlan
