"""Model families. Each adapter is one file; :func:`adapter_for` picks one for a diffusers pipeline."""

from __future__ import annotations

from diffusers import DiffusionPipeline

from ..errors import SuperGenError
from .base import BRANCHES, FIRST_FRAME, CanvasEncoder, Conditioning, FamilyMemory, FamilyModules, FirstFrameVideo, ModelAdapter, Request, Stepper, combine_guidance
from .cogvideox import CogVideoXAdapter
from .hunyuan import HunyuanVideoAdapter
from .ltx import LTXAdapter
from .wan import WanAdapter

#: Every adapter the engine knows, in lookup order.
ADAPTERS: tuple[type[ModelAdapter], ...] = (WanAdapter, CogVideoXAdapter, HunyuanVideoAdapter, LTXAdapter)


def supported_pipelines() -> list[str]:
    return [name for adapter in ADAPTERS for name in adapter.pipeline_classes]


def adapter_class(pipe: DiffusionPipeline) -> type[ModelAdapter]:
    """The adapter class for ``pipe``'s class, or a :class:`SuperGenError` naming the supported classes."""
    return adapter_named(type(pipe).__name__)


def adapter_named(name: str) -> type[ModelAdapter]:
    """The adapter class for the diffusers pipeline class ``name`` (see :func:`adapter_class`)."""
    for adapter in ADAPTERS:
        if name in adapter.pipeline_classes:
            return adapter
    raise SuperGenError(f"{name} is not supported; supported diffusers pipelines: {', '.join(supported_pipelines())}")


def adapter_for(pipe: DiffusionPipeline) -> ModelAdapter:
    """The adapter for ``pipe`` (see :func:`adapter_class`)."""
    return adapter_class(pipe)(pipe)


__all__ = [
    "ADAPTERS", "BRANCHES", "FIRST_FRAME", "CanvasEncoder", "Conditioning", "FamilyMemory", "FamilyModules", "FirstFrameVideo", "ModelAdapter", "Request", "Stepper", "adapter_class", "adapter_for", "adapter_named", "combine_guidance", "supported_pipelines",
]
