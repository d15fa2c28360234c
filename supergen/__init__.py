"""supergen: 2K/4K video from diffusers video models trained at 480p/720p, without training.

A native-resolution sketch, upscaled in pixel space, re-noised, then refined in native-size tiles
whose grid shifts every step.
"""

from .config import SuperGenConfig, load_config
from .errors import ConfigError, SuperGenError
from .pipeline import RenderStats, SuperGenPipeline, SuperGenPipelineOutput
from .tiling import Tile, TilePlan

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "RenderStats",
    "SuperGenConfig",
    "SuperGenError",
    "SuperGenPipeline",
    "SuperGenPipelineOutput",
    "Tile",
    "TilePlan",
    "load_config",
]
