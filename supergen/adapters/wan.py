"""Wan 2.1 / 2.2 (text- and image-to-video) behind the :class:`ModelAdapter` interface."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from torch import nn

from ..errors import SuperGenError
from ..tiling import Tile
from .base import Conditioning, ModelAdapter, Request


class CanvasRotaryPosEmbed(nn.Module):
    """Wan's 3-D RoPE with each tile numbered by its place on the canvas.

    diffusers' ``WanRotaryPosEmbed`` always numbers a tile's tokens ``0..n-1``, so every tile "believes"
    it is the top-left of a scene (which duplicates objects at 4K). This module is swapped in for
    ``transformer.rope`` for the duration of one forward (:meth:`WanAdapter._canvas_positions`): the
    model code stays diffusers', only its position table changes. Frequencies are computed exactly as
    diffusers does, so a tile at offset zero gets bit-identical tables.

    ``ntk`` additionally scales theta on the spatial axes by ``s ** (d / (d - 2))`` where ``s`` is the
    canvas/tile ratio on that axis and ``d`` the axis' rotary dimension: the standard NTK-aware rule,
    which keeps the lowest frequency's period at the canvas size and the highest unchanged.
    """

    def __init__(self, original: nn.Module, rows: list[torch.Tensor], cols: list[torch.Tensor], ntk: tuple[float, float] | None):
        super().__init__()
        self.t_dim, self.h_dim, self.w_dim = original.t_dim, original.h_dim, original.w_dim
        self.patch_size = original.patch_size
        self.theta = getattr(original, "theta", 10000.0)
        self.rows, self.cols, self.ntk = rows, cols, ntk

    def _table(self, dim: int, positions: torch.Tensor, ntk_factor: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return get_1d_rotary_pos_embed(
            dim, positions.to(device), self.theta, use_real=True, repeat_interleave_real=True,
            ntk_factor=ntk_factor, freqs_dtype=torch.float64,
        )

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, F, h, w)`` → ``(freqs_cos, freqs_sin)``, each ``(B, F·h·w / patch, 1, head_dim)``."""
        _, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.patch_size
        ppf, pph, ppw = frames // p_t, height // p_h, width // p_w
        device = hidden_states.device
        ntk_h, ntk_w = self.ntk if self.ntk is not None else (1.0, 1.0)
        cos_t, sin_t = self._table(self.t_dim, torch.arange(ppf), 1.0, device)
        outputs_cos, outputs_sin = [], []
        for rows, cols in zip(self.rows, self.cols):
            cos_h, sin_h = self._table(self.h_dim, rows, ntk_h, device)
            cos_w, sin_w = self._table(self.w_dim, cols, ntk_w, device)
            for parts, out in (((cos_t, cos_h, cos_w), outputs_cos), ((sin_t, sin_h, sin_w), outputs_sin)):
                f, h, w = parts
                grid = torch.cat(
                    [
                        f.view(ppf, 1, 1, -1).expand(ppf, pph, ppw, -1),
                        h.view(1, pph, 1, -1).expand(ppf, pph, ppw, -1),
                        w.view(1, 1, ppw, -1).expand(ppf, pph, ppw, -1),
                    ],
                    dim=-1,
                )
                out.append(grid.reshape(1, ppf * pph * ppw, 1, -1))
        return torch.cat(outputs_cos), torch.cat(outputs_sin)


class WanAdapter(ModelAdapter):
    """``WanPipeline`` / ``WanImageToVideoPipeline``, Wan 2.1 and 2.2 (two experts split at ``boundary_ratio``)."""

    pipeline_classes = ("WanPipeline", "WanImageToVideoPipeline")

    def __init__(self, pipe):
        super().__init__(pipe)
        if getattr(pipe.config, "expand_timesteps", False):
            raise SuperGenError(
                "Wan 2.2 TI2V-5B style pipelines (expand_timesteps=True) are not supported yet; "
                "supported: Wan 2.1 T2V/I2V and Wan 2.2 A14B T2V/I2V"
            )
        self.is_i2v = type(pipe).__name__ == "WanImageToVideoPipeline"

    @property
    def _any_transformer(self):
        return self.pipe.transformer if self.pipe.transformer is not None else self.pipe.transformer_2

    @property
    def vae_scale(self) -> tuple[int, int, int]:
        s = self.pipe.vae_scale_factor_spatial
        return (self.pipe.vae_scale_factor_temporal, s, s)

    @property
    def patch(self) -> tuple[int, int, int]:
        return tuple(self._any_transformer.config.patch_size)

    @property
    def native_size(self) -> tuple[int, int] | None:
        return None  # Wan checkpoints do not record it; presets set sketch.height/width.

    @property
    def requires_image(self) -> bool:
        return self.is_i2v

    def snap_frames(self, num_frames: int) -> int:
        k = self.vae_scale[0]
        return max(1, (num_frames - 1) // k * k + 1)

    def _dtype(self) -> torch.dtype:
        return self._any_transformer.dtype

    # ---- conditioning -----------------------------------------------------------------------
    def encode_prompt(self, request: Request, guidance_scale: float) -> dict[str, torch.Tensor | None]:
        pipe = self.pipe
        prompt_embeds, negative_embeds = pipe.encode_prompt(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            do_classifier_free_guidance=guidance_scale > 1.0,
            num_videos_per_prompt=1,
            max_sequence_length=512,
            device=self.device,
        )
        dtype = self._dtype()
        embeds = {
            "prompt_embeds": prompt_embeds.to(dtype),
            "negative_prompt_embeds": None if negative_embeds is None else negative_embeds.to(dtype),
            "image_embeds": None,
        }
        if self.is_i2v and pipe.transformer is not None and pipe.transformer.config.image_dim is not None:
            # Wan 2.1 I2V: the CLIP embedding of the whole image, global to every tile.
            embeds["image_embeds"] = pipe.encode_image(request.image, self.device).to(dtype)
        return embeds

    def spatial_conditioning(self, request: Request, height: int, width: int) -> dict[str, torch.Tensor]:
        if not self.is_i2v:
            return {}
        pipe = self.pipe
        image = pipe.video_processor.preprocess(request.image, height=height, width=width).to(self.device, torch.float32)
        latent_frames = (request.num_frames - 1) // self.vae_scale[0] + 1
        shape = (1, pipe.vae.config.z_dim, latent_frames, height // self.vae_scale[1], width // self.vae_scale[2])
        # The pipeline's own prepare_latents builds mask + image latent at the canvas size; passing
        # `latents` stops it from drawing noise, so the user's generator is left untouched.
        placeholder = torch.zeros(shape, device=self.device)
        _, condition = pipe.prepare_latents(
            image, 1, shape[1], height, width, request.num_frames, torch.float32, self.device, None, placeholder
        )
        return {"condition": condition}

    # ---- stage 1 ----------------------------------------------------------------------------
    def sketch(self, request, embeds, height, width, num_inference_steps, guidance_scale, guidance_scale_2, generator):
        kwargs = dict(
            prompt_embeds=embeds["prompt_embeds"],
            negative_prompt_embeds=embeds["negative_prompt_embeds"],
            height=height,
            width=width,
            num_frames=request.num_frames,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            output_type="latent",
        )
        if self.pipe.config.boundary_ratio is not None:
            kwargs["guidance_scale_2"] = guidance_scale_2
        if self.is_i2v:
            kwargs["image"] = request.image
            kwargs["image_embeds"] = embeds["image_embeds"]
        return self.pipe(**kwargs).frames

    # ---- VAE --------------------------------------------------------------------------------
    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.pipe.vae.config
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(like.device, like.dtype)
        std = torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(like.device, like.dtype)
        return mean, std

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        latents = latents.to(vae.device, vae.dtype)
        mean, std = self._latent_stats(latents)
        # Same arithmetic as WanPipeline (multiply by 1/std's reciprocal), so outputs match bit for bit.
        return vae.decode(latents / (1.0 / std) + mean, return_dict=False)[0]

    def encode(self, video: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        vae = self.pipe.vae
        dist = vae.encode(video.to(vae.device, vae.dtype)).latent_dist
        latents = dist.mode() if generator is None else dist.sample(generator)
        latents = latents.float()
        mean, std = self._latent_stats(latents)
        return (latents - mean) * (1.0 / std)

    # ---- stage 2 ----------------------------------------------------------------------------
    def _model_for(self, timestep: torch.Tensor, cond: Conditioning):
        """Wan 2.2 A14B: high-noise expert above ``boundary_ratio``, low-noise expert below (as the pipeline)."""
        pipe = self.pipe
        ratio = pipe.config.boundary_ratio
        if ratio is None or timestep >= ratio * pipe.scheduler.config.num_train_timesteps:
            return pipe.transformer, cond.guidance_scale
        scale_2 = cond.guidance_scale_2 if cond.guidance_scale_2 is not None else cond.guidance_scale
        return pipe.transformer_2, scale_2

    @contextlib.contextmanager
    def _canvas_positions(self, model, tiles: list[Tile], canvas: tuple[int, int], positions: str) -> Iterator[None]:
        if positions == "local":
            yield
            return
        _, p_h, p_w = self.patch
        rows = [t.rows.positions()[::p_h] // p_h for t in tiles]
        cols = [t.cols.positions()[::p_w] // p_w for t in tiles]
        ntk = None
        if positions == "ntk":
            rope = model.rope
            scale_h, scale_w = canvas[0] / tiles[0].shape[0], canvas[1] / tiles[0].shape[1]
            ntk = (
                max(1.0, scale_h) ** (rope.h_dim / max(rope.h_dim - 2, 1)),
                max(1.0, scale_w) ** (rope.w_dim / max(rope.w_dim - 2, 1)),
            )
        original = model.rope
        model.rope = CanvasRotaryPosEmbed(original, rows, cols, ntk)
        try:
            yield
        finally:
            model.rope = original

    def predict(self, latents, timestep, cond, tiles, canvas, positions):
        model, scale = self._model_for(timestep, cond)
        batch = latents.shape[0]
        hidden = latents
        if "condition" in cond.spatial:
            hidden = torch.cat([latents, cond.spatial["condition"]], dim=1)
        hidden = hidden.to(model.dtype)
        t = timestep.expand(batch)
        embeds = cond.embeds

        def expand(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.expand(batch, *x.shape[1:])

        name = "tile" + "-".join(str(t.index) for t in tiles)
        with self._canvas_positions(model, tiles, canvas, positions):
            with model.cache_context(f"cond/{name}"):
                pred = model(
                    hidden_states=hidden, timestep=t, encoder_hidden_states=expand(embeds["prompt_embeds"]),
                    encoder_hidden_states_image=expand(embeds["image_embeds"]), return_dict=False,
                )[0]
            if cond.do_guidance:
                with model.cache_context(f"uncond/{name}"):
                    uncond = model(
                        hidden_states=hidden, timestep=t, encoder_hidden_states=expand(embeds["negative_prompt_embeds"]),
                        encoder_hidden_states_image=expand(embeds["image_embeds"]), return_dict=False,
                    )[0]
                pred = uncond + scale * (pred - uncond)
        return pred.float()
