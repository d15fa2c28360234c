"""Model families' runtime adapters. Each adapter is one file; :func:`adapter_for` picks one for a
diffusers pipeline. The families' facts without an adapter: :mod:`supergen.families`."""

from __future__ import annotations

from diffusers import DiffusionPipeline

from ..families import FamilySpec, family_of, supported_pipelines
from .base import BRANCHES, FIRST_FRAME, CanvasEncoder, Conditioning, FirstFrameVideo, ModelAdapter, Request, Stepper, combine_guidance
from .cogvideox import CogVideoXAdapter
from .hunyuan import HunyuanVideoAdapter
from .ltx import LTXAdapter
from .wan import WanAdapter

#: Every adapter the engine knows, by family.
ADAPTERS: dict[FamilySpec, type[ModelAdapter]] = {adapter.spec: adapter for adapter in (WanAdapter, CogVideoXAdapter, HunyuanVideoAdapter, LTXAdapter)}


def adapter_class(pipe: DiffusionPipeline) -> type[ModelAdapter]:
    """The adapter class for ``pipe``'s class, or a :class:`SuperGenError` naming the supported classes."""
    return ADAPTERS[family_of(type(pipe).__name__)]


def adapter_for(pipe: DiffusionPipeline) -> ModelAdapter:
    """The adapter for ``pipe`` (see :func:`adapter_class`)."""
    return adapter_class(pipe)(pipe)


__all__ = [
    "ADAPTERS", "BRANCHES", "FIRST_FRAME", "CanvasEncoder", "Conditioning", "FirstFrameVideo", "ModelAdapter", "Request", "Stepper",
    "adapter_class", "adapter_for", "combine_guidance", "supported_pipelines",
]
