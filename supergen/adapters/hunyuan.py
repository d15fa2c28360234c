"""HunyuanVideo (text- and image-to-video) behind the :class:`ModelAdapter` interface.

What differs from Wan, each handled here at the adapter's boundary:

- guidance: guidance-distilled transformers (``guidance_embeds``, HunyuanVideo T2V) take the scale
  as an input (one forward per tile); others use classifier-free guidance with the negative prompt
  (the pipeline's ``true_cfg_scale``). ``Conditioning.guidance_scale`` is whichever applies;
- the schedule is the pipeline's explicit ``sigmas = linspace(1, 0, N + 1)[:-1]``;
- the VAE latent is scaled by ``scaling_factor``;
- image-to-video, ``latent_concat`` (HunyuanVideo-I2V): the image latent and a first-frame mask are
  concatenated on channels; the first latent frame reproduces the image and its four pixel frames
  are dropped after decoding, so this adapter renders one extra latent frame and the output has the
  frame count asked for; ``token_replace``: the first latent frame *is* the image latent, held fixed
  (:data:`~supergen.adapters.base.FIRST_FRAME`);
- both I2V pipelines start from ``0.999 · noise + 0.001 · image latent``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import retrieve_timesteps

from ..errors import SuperGenError
from ..families import HUNYUAN, hunyuan_image_interleave
from .base import FIRST_FRAME, ModelAdapter, Request
from .positions import CanvasPositions, position_key


def mask_in_rank_order(mask: torch.Tensor, video: int, ranks: int) -> torch.Tensor:
    """HunyuanVideo's key mask ``(B, 1, 1, video + text)`` (video tokens, then text) reordered to the key
    order Ulysses gathers: rank 0's video and text shares, rank 1's, and so on."""
    video_part, text_part = mask[..., :video].chunk(ranks, dim=-1), mask[..., video:].chunk(ranks, dim=-1)
    return torch.cat([part for pair in zip(video_part, text_part) for part in pair], dim=-1)


class HunyuanCanvasRope(CanvasPositions):
    """HunyuanVideo's 3-D RoPE with the tile's tokens numbered by their canvas position.

    Installed in place of ``transformer.rope`` for a render (:mod:`.positions`). Tables are
    computed as diffusers' ``HunyuanVideoRotaryPosEmbed`` does, so rows/cols ``0..n-1`` give its
    tables exactly; ``ntk`` scales theta on the spatial axes (:meth:`ModelAdapter.ntk_factors`).
    """

    def axis_dims(self) -> tuple[int, int]:
        return tuple(self.original.rope_dim[1:])

    def _table(self, frames: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)`` of the tile set now over ``frames`` token frames, built once per render on ``device``."""
        (rows,), (cols,) = self.rows, self.cols
        return self.cached((frames, position_key(rows), position_key(cols), self.ntk, device), lambda: self._build(frames, rows, cols, device))

    def _build(self, frames: int, rows: torch.Tensor, cols: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        rope = self.original
        axes = (torch.arange(frames, device=device, dtype=torch.float32), rows.to(device, torch.float32), cols.to(device, torch.float32))
        grid = torch.meshgrid(*axes, indexing="ij")
        freqs = [
            get_1d_rotary_pos_embed(rope.rope_dim[i], grid[i].reshape(-1), rope.theta, use_real=True, ntk_factor=factor)
            for i, factor in enumerate((1.0, *self.ntk))
        ]
        return torch.cat([f[0] for f in freqs], dim=1), torch.cat([f[1] for f in freqs], dim=1)

    def preload(self, frames: int, device: torch.device) -> None:
        self._table(frames // self.original.patch_size_t, device)

    def canvas_table(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1, C, F, h, w)`` → ``(cos, sin)``, each ``(F·h·w / patch, head_dim)`` (one tile per call)."""
        return self._table(hidden_states.shape[2] // self.original.patch_size_t, hidden_states.device)


class HunyuanVideoAdapter(ModelAdapter):
    """``HunyuanVideoPipeline`` / ``HunyuanVideoImageToVideoPipeline`` (``latent_concat`` and ``token_replace``)."""

    spec = HUNYUAN
    position_module = HunyuanCanvasRope

    def __init__(self, pipe):
        super().__init__(pipe)
        self.condition_type = pipe.transformer.config.image_condition_type if self.requires_image else None

    # ---- context-parallel sketch ---------------------------------------------------------------
    def context_parallel_blocker(self, ranks: int) -> str:
        if self.condition_type == "token_replace":
            return "token_replace image-to-video replaces the first frame's tokens, which the split spreads over ranks"
        return ""

    @contextlib.contextmanager
    def context_parallel_extras(self, ranks: int) -> Iterator[None]:
        """Every block gets its key mask in the ranks' token order (:func:`mask_in_rank_order`), removed on exit.

        Raises:
            SuperGenError: (at the first block) video or text tokens do not split evenly over ``ranks``.
        """
        model = self.pipe.transformer

        def reorder(block, args, kwargs):
            hidden, text, temb, mask, *rest = args  # diffusers passes the blocks' inputs by position
            video, words = hidden.shape[1], text.shape[1]
            if video + words == mask.shape[-1]:  # the first block, before the plan's split
                if video % ranks or words % ranks:
                    raise SuperGenError(f"the sketch's {video} video and {words} text tokens do not both split over {ranks} "
                                        "ranks; use parallel.sketch=cfg")
            else:
                video *= ranks
            return (hidden, text, temb, mask_in_rank_order(mask, video, ranks), *rest), kwargs

        handles = [block.register_forward_pre_hook(reorder, with_kwargs=True)
                   for block in (*model.transformer_blocks, *model.single_transformer_blocks)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    # ---- time windows -----------------------------------------------------------------------
    def time_window_blocker(self) -> str:
        # token_replace's transformer gives the first latent frame of every forward the image's
        # clean-timestep modulation: in a window past frame 0 that frame is not the image.
        if self.condition_type == "token_replace":
            return ("HunyuanVideo-I2V token_replace treats the first frame of every window as the image; "
                    "render at most tiling.frames frames or use a latent_concat checkpoint")
        return ""

    # ---- pipeline ---------------------------------------------------------------------------
    def pipeline_frames(self, num_frames: int) -> int:
        return num_frames + self.extra_latent_frames(num_frames) * self.vae_scale[0]

    @property
    def _embedded_guidance(self) -> bool:
        return self.pipe.transformer.config.guidance_embeds

    # ---- conditioning -----------------------------------------------------------------------
    def encode_text(self, request: Request, guidance_scale: float) -> dict[str, torch.Tensor | None]:
        pipe = self.pipe
        kwargs = {}
        if self.requires_image:
            # The LLaVA encoder sees the image at its own size (its processor resizes it), so the
            # embedding is the same for the sketch and the canvas.
            kwargs = {"image": request.image, "image_embed_interleave": hunyuan_image_interleave(self.condition_type)}
        dtype = pipe.transformer.dtype
        embeds: dict[str, torch.Tensor | None] = {}
        prompts = [("", request.prompt)]
        if guidance_scale > 1.0 and not self._embedded_guidance:
            prompts.append(("negative_", request.negative_prompt))
        for prefix, text in prompts:
            prompt_embeds, pooled, mask = pipe.encode_prompt(prompt=text, device=self.device, **kwargs)
            embeds |= {
                f"{prefix}prompt_embeds": prompt_embeds.to(dtype),
                f"{prefix}pooled_prompt_embeds": pooled.to(dtype),
                f"{prefix}prompt_attention_mask": mask.to(dtype),
            }
        return embeds

    def spatial_conditioning(self, request, height, width, generator=None, encode=None):
        # The condition here is one image frame (small at any size): the pipeline's own code encodes it.
        if not self.requires_image:
            return {}
        pipe = self.pipe
        image = pipe.video_processor.preprocess(request.image, height, width).to(self.device, pipe.vae.dtype)
        shape = self.latent_shape(request.num_frames, height, width)
        placeholder = torch.zeros(shape, device=self.device)
        # The pipeline's prepare_latents encodes the image (posterior mode); `latents` given, it draws no noise.
        _, image_latents = pipe.prepare_latents(
            image, 1, shape[1], height, width, self.pipeline_frames(request.num_frames), torch.float32,
            self.device, generator, placeholder, self.condition_type,
        )
        first = image_latents[:, :, :1]
        if self.condition_type == "token_replace":
            return {FIRST_FRAME: first}
        # latent_concat, as the pipeline: image latent on the first frame, zeros after; a first-frame mask.
        condition = torch.zeros(1, shape[1] + 1, *shape[2:], device=self.device)
        condition[:, : shape[1], :1] = first
        condition[:, shape[1], :1] = 1.0
        return {"condition": condition}

    def _image_latent(self, spatial: dict[str, torch.Tensor]) -> torch.Tensor:
        """The image's latent ``(1, C, 1, H, W)`` from either kind of spatial conditioning."""
        if FIRST_FRAME in spatial:
            return spatial[FIRST_FRAME]
        return spatial["condition"][:, : self.latent_channels, :1]

    # ---- stage 1 ----------------------------------------------------------------------------
    def pipeline_kwargs(self, request, embeds, guidance_scale, guidance_scale_2):
        kwargs = dict(embeds)
        if self._embedded_guidance:
            kwargs["guidance_scale"] = guidance_scale
        else:
            kwargs["true_cfg_scale"] = guidance_scale
        if self.requires_image:
            kwargs["image"] = request.image
        return kwargs

    # ---- VAE --------------------------------------------------------------------------------
    def to_vae(self, latents):
        return latents / self.pipe.vae.config.scaling_factor

    def from_vae(self, latents):
        return latents * self.pipe.vae.config.scaling_factor

    # ---- schedule and noise -------------------------------------------------------------------
    def set_timesteps(self, scheduler, num_inference_steps, latent_shape):
        sigmas = np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1]
        retrieve_timesteps(scheduler, num_inference_steps, self.device, sigmas=sigmas)

    def initial_latents(self, shape, spatial, generator):
        latents = super().initial_latents(shape, spatial, generator)
        if not self.requires_image:
            return latents
        t = torch.tensor([0.999], device=latents.device)
        return self.hold(latents * t + self._image_latent(spatial) * (1 - t), spatial)

    def renoise(self, scheduler, x0, timestep, spatial, generator):
        if self.condition_type == "latent_concat":
            # The first latent frame reproduces the image (its pixels are never shown): start it from
            # the image latent rather than the copy of the sketch's first frame that encode() put there.
            x0 = torch.cat([self._image_latent(spatial).to(x0.dtype), x0[:, :, 1:]], dim=2)
        return super().renoise(scheduler, x0, timestep, spatial, generator)

    # ---- stage 2 ----------------------------------------------------------------------------
    def runs_branches(self, guidance_scale):
        # Guidance-distilled transformers take the scale as an input: one branch, whole tiles.
        return not self._embedded_guidance and super().runs_branches(guidance_scale)

    def predict_batch(self, latents, timestep, cond, tiles, canvas, positions, branch=None):
        model = self.pipe.transformer
        batch = latents.shape[0]
        hidden = latents
        if "condition" in cond.spatial:
            hidden = torch.cat([latents, cond.spatial["condition"]], dim=1)
        hidden = hidden.to(model.dtype)
        t = timestep.expand(batch).to(latents.dtype)
        guidance = None
        if self._embedded_guidance:
            guidance = torch.tensor([cond.guidance_scale] * batch, dtype=model.dtype, device=latents.device) * 1000.0
        if positions != "local":
            self.set_positions(model, tiles, canvas, positions, model.rope.axis_dims())
        embeds = cond.embeds

        def expand(x: torch.Tensor) -> torch.Tensor:
            return x.expand(batch, *x.shape[1:])

        def forward(prefix: str) -> torch.Tensor:
            return model(
                hidden_states=hidden, timestep=t, encoder_hidden_states=expand(embeds[prefix + "prompt_embeds"]),
                encoder_attention_mask=expand(embeds[prefix + "prompt_attention_mask"]),
                pooled_projections=expand(embeds[prefix + "pooled_prompt_embeds"]), guidance=guidance, return_dict=False,
            )[0]

        return self.guided(model, tiles, self.cfg_scale(timestep, cond), forward, branch)
