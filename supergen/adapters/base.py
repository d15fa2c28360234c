"""The interface between the family-agnostic engine and one model family.

The engine (sketch → upscale → re-noise → tiled refinement → decode) never looks inside a model. It
asks the family's :class:`ModelAdapter` for four things: text/image conditioning, a latent-space
VAE round trip, the wrapped pipeline's sketch, and the guided prediction of a batch of tiles. The
adapter in turn knows nothing about tiling schedules, caches or ranks: it receives tiles already
cropped and the :class:`~supergen.tiling.Tile` windows only to set positions.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
from diffusers import DiffusionPipeline

from ..tiling import Tile, crop


@dataclass
class Conditioning:
    """Everything a tile forward needs besides the latent.

    ``embeds`` are global (text, image embeddings) and go to every tile unchanged; ``spatial`` are
    canvas-sized latent maps ``(1, C, F, H, W)`` that every tile sees through its own window (e.g. the
    image-to-video condition), cropped by :meth:`for_tiles`.
    """

    embeds: dict[str, torch.Tensor | None]
    spatial: dict[str, torch.Tensor] = field(default_factory=dict)
    guidance_scale: float = 5.0
    guidance_scale_2: float | None = None

    @property
    def do_guidance(self) -> bool:
        return self.guidance_scale > 1.0

    def for_tiles(self, tiles: list[Tile]) -> "Conditioning":
        """This conditioning for a batch of tiles: spatial maps cropped and stacked, ``(len(tiles), C, F, h, w)``."""
        spatial = {name: torch.cat([crop(value, t) for t in tiles]) for name, value in self.spatial.items()}
        return replace(self, spatial=spatial)


@dataclass
class Request:
    """One video to render, as the engine hands it to the adapter."""

    prompt: str
    negative_prompt: str
    num_frames: int
    image: Any | None = None  # PIL image for image-to-video


class ModelAdapter(abc.ABC):
    """One model family behind the engine. Subclasses name the diffusers pipelines they accept."""

    #: diffusers pipeline class names this adapter accepts.
    pipeline_classes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, pipe: DiffusionPipeline):
        self.pipe = pipe

    # ---- geometry -------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def vae_scale(self) -> tuple[int, int, int]:
        """VAE compression ``(temporal, height, width)``."""

    @property
    @abc.abstractmethod
    def patch(self) -> tuple[int, int, int]:
        """Transformer patch ``(temporal, height, width)`` in latent units."""

    @property
    def native_size(self) -> tuple[int, int] | None:
        """The resolution the model was trained at, in pixels, when the adapter knows it."""
        return None

    @property
    def pixel_multiple(self) -> int:
        """Height and width must be multiples of this (VAE scale × patch)."""
        return self.vae_scale[1] * self.patch[1]

    @abc.abstractmethod
    def snap_frames(self, num_frames: int) -> int:
        """The nearest frame count the VAE accepts (for Wan, ``4k + 1``)."""

    @property
    def requires_image(self) -> bool:
        return False

    @property
    def device(self) -> torch.device:
        return self.pipe._execution_device

    @property
    def scheduler(self):
        return self.pipe.scheduler

    # ---- conditioning -----------------------------------------------------------------------
    @abc.abstractmethod
    def encode_prompt(self, request: Request, guidance_scale: float) -> dict[str, torch.Tensor | None]:
        """Text (and image) embeddings, computed once and shared by both stages."""

    def spatial_conditioning(self, request: Request, height: int, width: int) -> dict[str, torch.Tensor]:
        """Canvas-sized conditioning maps at pixel size ``(height, width)``; none by default."""
        return {}

    # ---- stage 1 ----------------------------------------------------------------------------
    @abc.abstractmethod
    def sketch(
        self,
        request: Request,
        embeds: dict[str, torch.Tensor | None],
        height: int,
        width: int,
        num_inference_steps: int,
        guidance_scale: float,
        guidance_scale_2: float | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Run the wrapped pipeline at ``(height, width)``; return its normalised latent ``(1, C, F, h, w)``."""

    # ---- VAE --------------------------------------------------------------------------------
    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latent ``(1, C, F, h, w)`` → video ``(1, 3, frames, H, W)`` in [-1, 1]."""

    @abc.abstractmethod
    def encode(self, video: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Video ``(1, 3, frames, H, W)`` in [-1, 1] → normalised latent; posterior mode when ``generator`` is None."""

    def set_vae_tiling(self, enabled: bool) -> None:
        vae = self.pipe.vae
        if enabled and hasattr(vae, "enable_tiling"):
            vae.enable_tiling()
        elif not enabled and hasattr(vae, "disable_tiling"):
            vae.disable_tiling()

    # ---- stage 2 ----------------------------------------------------------------------------
    @abc.abstractmethod
    def predict(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        cond: Conditioning,
        tiles: list[Tile],
        canvas: tuple[int, int],
        positions: str,
    ) -> torch.Tensor:
        """Guided model output for a batch of tiles.

        Args:
            latents: ``(B, C, F, h, w)`` float32, the tiles' windows of the canvas latent.
            timestep: scalar tensor, the scheduler's current timestep.
            cond: conditioning already cropped to these tiles (:meth:`Conditioning.for_tiles`).
            tiles: the ``B`` windows (all of shape ``(h, w)``), for positions.
            canvas: canvas latent size ``(H, W)``.
            positions: ``local`` | ``global`` | ``ntk``.

        Returns:
            ``(B, C, F, h, w)`` float32, what the scheduler's ``step`` expects.
        """
