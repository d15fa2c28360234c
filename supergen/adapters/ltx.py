"""LTX-Video (text- and image-to-video) behind the :class:`ModelAdapter` interface.

What differs from Wan, each handled here at the adapter's boundary:

- the transformer takes *packed* latents ``(B, tokens, C)``: tiles are packed before and unpacked
  after every call with the pipeline's own ``_pack_latents`` / ``_unpack_latents``;
- positions are explicit: ``video_coords`` (pixel-scaled token coordinates) for canvas positions;
- the schedule is the pipeline's ``sigmas = linspace(1, 1/N, N)`` shifted by ``mu`` for the token
  count of one transformer call;
- latents are normalised with per-channel mean/std *and* ``scaling_factor``; newer VAEs decode with a
  timestep (the pipeline's default ``decode_timestep=0``, no decode noise);
- image-to-video: the first latent frame is the image latent, held fixed, and its tokens get
  timestep 0 (:data:`~supergen.adapters.base.FIRST_FRAME`).
"""

from __future__ import annotations

from typing import ContextManager

import numpy as np
import torch
from diffusers.models.transformers.transformer_ltx import apply_rotary_emb
from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift, retrieve_timesteps
from diffusers.pipelines.ltx.pipeline_ltx_image2video import retrieve_latents

from .. import compat
from ..compat import dispatch_attention_fn
from ..errors import SuperGenError
from ..families import LTX
from .base import FIRST_FRAME, ModelAdapter, Request, processors_replaced
from .positions import InputTables, on_device, position_key


class LTXContextParallelAttnProcessor:
    """diffusers' ``LTXVideoAttnProcessor`` with the text mask broadcast over heads instead of repeated.

    diffusers' processor repeats the cross-attention mask for all ``H`` heads (``(B, H, 1, T)``); under
    Ulysses each rank attends with ``H / ranks`` heads, so that mask no longer broadcasts. Here it stays
    ``(B, 1, 1, T)`` (it is the same for every head). Same projections, norms and rotary embedding;
    installed only for a context-parallel sketch (:meth:`LTXAdapter.context_parallel_extras`).
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        """``hidden_states`` ``(B, S, dim)``; ``attention_mask`` the additive text bias ``(B, 1, T)`` → ``(B, S, dim)``."""
        if attention_mask is not None:
            attention_mask = attention_mask.unsqueeze(1)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query, key, value = attn.norm_q(attn.to_q(hidden_states)), attn.norm_k(attn.to_k(context)), attn.to_v(context)
        if image_rotary_emb is not None:
            query, key = apply_rotary_emb(query, image_rotary_emb), apply_rotary_emb(key, image_rotary_emb)
        query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))
        out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, backend=self._attention_backend,
                                    parallel_config=self._parallel_config)
        return attn.to_out[1](attn.to_out[0](out.flatten(2, 3).to(query.dtype)))


class LTXAdapter(ModelAdapter):
    """``LTXPipeline`` / ``LTXImageToVideoPipeline`` (LTX-Video 0.9.x)."""

    spec = LTX
    #: The pipelines' default ``frame_rate``; it scales the temporal coordinate of the rotary embedding.
    frame_rate = 25

    def context_parallel_extras(self, ranks: int) -> ContextManager:
        """The cross-attention of every block with its text mask broadcast over heads (:class:`LTXContextParallelAttnProcessor`)."""
        return processors_replaced([block.attn2 for block in self.pipe.transformer.transformer_blocks], LTXContextParallelAttnProcessor)

    def __init__(self, pipe):
        super().__init__(pipe)
        self._coords = InputTables()  # each window's video_coords, on the device while :meth:`positions` is entered

    def _rope_scale(self) -> tuple[float, float, float]:
        """The pipeline's ``rope_interpolation_scale``: latent → pixel (and frame → seconds) factors."""
        t, s, _ = self.vae_scale
        return (t / self.frame_rate, s, s)

    # ---- conditioning -----------------------------------------------------------------------
    def encode_text(self, request: Request, guidance_scale: float) -> dict[str, torch.Tensor | None]:
        embeds, mask, negative, negative_mask = self.pipe.encode_prompt(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            do_classifier_free_guidance=guidance_scale > 1.0,
            num_videos_per_prompt=1,
            max_sequence_length=request.max_sequence_length or self.spec.max_sequence_length,
            device=self.device,
        )
        return {
            "prompt_embeds": embeds, "prompt_attention_mask": mask,
            "negative_prompt_embeds": negative, "negative_prompt_attention_mask": negative_mask,
        }

    def spatial_conditioning(self, request, height, width, generator=None, encode=None):
        # The condition here is one image frame (small at any size): the pipeline's own code encodes it.
        if not self.requires_image:
            return {}
        pipe = self.pipe
        image = pipe.video_processor.preprocess(request.image, height=height, width=width)
        image = image.to(self.device, pipe.transformer.dtype).unsqueeze(2)
        # As the pipeline's prepare_latents: a posterior *sample* (the generator's first draw), normalised
        # without scaling_factor.
        latent = retrieve_latents(pipe.vae.encode(image), generator).float()
        return {FIRST_FRAME: compat.ltx_normalize_latents(latent, pipe.vae.latents_mean, pipe.vae.latents_std)}

    # ---- stage 1 ----------------------------------------------------------------------------
    def pipeline_kwargs(self, request, embeds, guidance_scale, guidance_scale_2):
        kwargs = dict(embeds, guidance_scale=guidance_scale, frame_rate=self.frame_rate)
        if self.requires_image:
            kwargs["image"] = request.image
        return kwargs

    def _pack(self, latents: torch.Tensor) -> torch.Tensor:
        p_t, p, _ = self.patch
        return compat.ltx_pack_latents(latents, p, p_t)

    def _unpack(self, tokens: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        p_t, p, _ = self.patch
        return compat.ltx_unpack_latents(tokens, shape[2] // p_t, shape[3] // p, shape[4] // p, p, p_t)

    def from_pipeline_latents(self, latents, shape):
        return self._unpack(latents, shape).float()

    # ---- VAE --------------------------------------------------------------------------------
    def to_vae(self, latents):
        vae = self.pipe.vae
        return compat.ltx_denormalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)

    def from_vae(self, latents):
        vae = self.pipe.vae
        return compat.ltx_normalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)

    def vae_decode(self, latents):
        vae = self.pipe.vae
        # The pipeline's defaults: decode_timestep=0 and no decode noise.
        timestep = torch.zeros(1, device=latents.device, dtype=latents.dtype) if vae.config.timestep_conditioning else None
        return vae.decode(latents, timestep, return_dict=False)[0]

    # ---- schedule ---------------------------------------------------------------------------
    def set_timesteps(self, scheduler, num_inference_steps, latent_shape):
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        config = scheduler.config
        mu = calculate_shift(
            latent_shape[2] * latent_shape[3] * latent_shape[4],
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        retrieve_timesteps(scheduler, num_inference_steps, self.device, sigmas=sigmas, mu=mu)

    # ---- stage 2 ----------------------------------------------------------------------------
    def positions(self, mode: str) -> ContextManager[None]:
        """For one render: each window's ``video_coords`` kept on the device (the transformer takes them
        as an input, so no module is installed; :meth:`preload_positions` builds them). Re-entrant."""
        return self._coords.render()

    def preload_positions(self, tiles, canvas, mode, frames, device) -> None:
        """Every window's ``video_coords`` on the device before the first refinement step."""
        if mode == "global":
            for tile in tiles:
                self._tile_coords(tile, frames // self.patch[0], device)

    def _tile_coords(self, tile, frames: int, device: torch.device) -> torch.Tensor:
        """``(3, tokens)`` canvas coordinates of ``tile``'s tokens, scaled as the transformer's own grid
        (``position × rope_interpolation_scale × patch``; it divides by its base size), from this
        render's tables."""
        (rows,), (cols,) = self.token_positions([tile])

        def build() -> torch.Tensor:
            p_t, p, _ = self.patch
            scale_t, scale_h, scale_w = self._rope_scale()
            grid = torch.stack(torch.meshgrid(torch.arange(frames, dtype=torch.float32), rows.float(), cols.float(), indexing="ij"))
            grid = grid.flatten(1)
            return on_device(torch.stack([grid[0] * scale_t * p_t, grid[1] * scale_h * p, grid[2] * scale_w * p]), device)

        return self._coords.get((frames, position_key(rows), position_key(cols), device), build)

    def _video_coords(self, latents: torch.Tensor, tiles) -> torch.Tensor:
        """``(B, 3, tokens)``: each tile's coordinates (:meth:`_tile_coords`), stacked on the device."""
        frames = latents.shape[2] // self.patch[0]
        return torch.stack([self._tile_coords(tile, frames, latents.device) for tile in tiles])

    def predict_batch(self, latents, timestep, cond, tiles, canvas, positions, branch=None):
        if positions == "ntk":
            raise SuperGenError(
                "tiling.positions=ntk is not supported for LTX-Video (its rotary embedding normalises coordinates "
                "by a fixed base size rather than using theta-scaled integer positions); use global or local"
            )
        model = self.pipe.transformer
        batch, _, frames, height, width = latents.shape
        p_t, p, _ = self.patch
        hidden = self._pack(latents).to(model.dtype)
        t = timestep.expand(batch)
        if self.requires_image:
            # Tokens of the held image frame are clean: timestep 0, as the pipeline's conditioning mask.
            mask = torch.zeros(batch, 1, frames, height, width, device=latents.device)
            mask[:, :, 0] = 1.0
            t = t.unsqueeze(-1) * (1 - self._pack(mask).squeeze(-1))
        where = dict(num_frames=frames // p_t, height=height // p, width=width // p, rope_interpolation_scale=self._rope_scale())
        if positions == "global":
            where["video_coords"] = self._video_coords(latents, tiles)
        embeds = cond.embeds

        def expand(x: torch.Tensor) -> torch.Tensor:
            return x.expand(batch, *x.shape[1:])

        def forward(prefix: str) -> torch.Tensor:
            return model(
                hidden_states=hidden, encoder_hidden_states=expand(embeds[prefix + "prompt_embeds"]), timestep=t,
                encoder_attention_mask=expand(embeds[prefix + "prompt_attention_mask"]), **where, return_dict=False,
            )[0]

        return self._unpack(self.guided(model, tiles, self.cfg_scale(timestep, cond), forward, branch), latents.shape)
