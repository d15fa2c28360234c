"""CogVideoX 1.5 (text- and image-to-video) behind the :class:`ModelAdapter` interface.

What differs from Wan, each handled here at the adapter's boundary:

- latents are ``(B, F, C, H, W)`` in the pipeline; the canvas stays ``(1, C, F, H, W)`` and is
  transposed around every transformer call;
- the VAE latent is scaled by ``scaling_factor`` (no per-channel mean/std);
- 1.5 pads the latent frames to a multiple of its temporal patch with leading frames it drops before
  decoding (:meth:`extra_latent_frames`);
- the pipeline builds the rotary tables and passes them in (``image_rotary_emb``), so canvas
  positions are a different table, not a swapped module;
- DDIM-style v-prediction schedulers; ``CogVideoXDPMScheduler.step`` also needs the previous step's
  ``pred_original_sample`` and timestep, and draws noise from the generator (:meth:`stepper`);
- image-to-video concatenates the image latent (first frame, zeros elsewhere) on channels.
"""

from __future__ import annotations

from typing import ContextManager

import torch
from diffusers import CogVideoXDPMScheduler
from diffusers.models.embeddings import apply_rotary_emb, get_1d_rotary_pos_embed
from diffusers.utils.torch_utils import randn_tensor

from ..compat import dispatch_attention_fn
from ..families import COGVIDEOX
from .base import ModelAdapter, Request, Stepper, processors_replaced
from .positions import InputTables, position_key


class CogVideoXDispatchAttnProcessor:
    """diffusers' ``CogVideoXAttnProcessor2_0`` with the attention itself through diffusers' dispatcher.

    diffusers' CogVideoX processor calls PyTorch's SDPA directly, so its context parallelism (which
    lives in ``dispatch_attention_fn``) never sees it. Same projections, norms and rotary embedding,
    in the dispatcher's ``(B, S, heads, D)`` layout; installed only for a context-parallel sketch
    (:meth:`CogVideoXAdapter.context_parallel_extras`).
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        """``hidden_states`` ``(B, S_video, dim)``, ``encoder_hidden_states`` ``(B, S_text, dim)`` → both, projected."""
        text = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        query, key, value = (proj(hidden_states).unflatten(2, (attn.heads, -1)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query = torch.cat([query[:, :text], apply_rotary_emb(query[:, text:], image_rotary_emb, sequence_dim=1)], dim=1)
            if not attn.is_cross_attention:
                key = torch.cat([key[:, :text], apply_rotary_emb(key[:, text:], image_rotary_emb, sequence_dim=1)], dim=1)
        out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, backend=self._attention_backend,
                                    parallel_config=self._parallel_config)
        out = attn.to_out[1](attn.to_out[0](out.flatten(2, 3).type_as(query)))
        encoder_hidden_states, hidden_states = out.split([text, out.size(1) - text], dim=1)
        return hidden_states, encoder_hidden_states


class CogVideoXAdapter(ModelAdapter):
    """``CogVideoXPipeline`` / ``CogVideoXImageToVideoPipeline`` with a 1.5-style transformer (3-D RoPE, temporal patch)."""

    spec = COGVIDEOX

    def __init__(self, pipe):
        super().__init__(pipe)
        self._rotary_tables = InputTables()  # one render's, while :meth:`positions` is entered

    # ---- context-parallel sketch ---------------------------------------------------------------
    def context_parallel_extras(self, ranks: int) -> ContextManager:
        """Every block's attention through diffusers' dispatcher (:class:`CogVideoXDispatchAttnProcessor`), restored on exit."""
        return processors_replaced([block.attn1 for block in self.pipe.transformer.transformer_blocks], CogVideoXDispatchAttnProcessor)

    # ---- conditioning -----------------------------------------------------------------------
    def encode_text(self, request: Request, guidance_scale: float) -> dict[str, torch.Tensor | None]:
        prompt_embeds, negative_embeds = self._pipeline_text_embeds(request, guidance_scale)
        return {"prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_embeds}

    def spatial_conditioning(self, request, height, width, generator=None, encode=None):
        # The condition here is one image frame (small at any size): the pipeline's own code encodes it.
        if not self.requires_image:
            return {}
        pipe = self.pipe
        dtype = pipe.transformer.dtype
        image = pipe.video_processor.preprocess(request.image, height=height, width=width).to(self.device, dtype)
        shape = self.latent_shape(request.num_frames, height, width)
        frames = request.num_frames + self.extra_latent_frames(request.num_frames) * self.vae_scale[0]
        # The pipeline's prepare_latents samples the image posterior with the generator (before the
        # noise, as here) and lays out image latent + zero frames; `latents` given, it draws no noise.
        placeholder = torch.zeros(shape, device=self.device, dtype=dtype).transpose(1, 2)
        _, image_latents = pipe.prepare_latents(
            image, 1, shape[1], frames, height, width, dtype, self.device, generator, placeholder
        )
        return {"image_latents": image_latents.transpose(1, 2)}

    # ---- stage 1 ----------------------------------------------------------------------------
    def pipeline_kwargs(self, request, embeds, guidance_scale, guidance_scale_2):
        kwargs = dict(
            prompt_embeds=embeds["prompt_embeds"],
            negative_prompt_embeds=embeds["negative_prompt_embeds"],
            guidance_scale=guidance_scale,
        )
        if self.requires_image:
            kwargs["image"] = request.image
        return kwargs

    def from_pipeline_latents(self, latents, shape):
        return latents.transpose(1, 2).float()

    def draw_noise(self, shape, generator):
        # The pipeline draws (B, F, C, H, W): the same values need the same drawing order.
        b, c, f, h, w = shape
        return randn_tensor((b, f, c, h, w), generator=generator, device=self.device, dtype=torch.float32).transpose(1, 2)

    # ---- VAE --------------------------------------------------------------------------------
    def to_vae(self, latents):
        return 1 / self.pipe.vae.config.scaling_factor * latents

    def from_vae(self, latents):
        return self.pipe.vae.config.scaling_factor * latents

    # ---- schedule ---------------------------------------------------------------------------
    def stepper(self, scheduler, spatial, generator) -> Stepper:
        if not isinstance(scheduler, CogVideoXDPMScheduler):
            return super().stepper(scheduler, spatial, generator)
        # DPM-solver++ (2nd order, stochastic): carries the previous x0 estimate and timestep. The first
        # refinement step has neither and is first-order, as the pipeline's first step. It draws noise of
        # the sample's shape, so it steps in the pipeline's (B, F, C, H, W) layout to draw the same values.
        state: dict[str, torch.Tensor | None] = {"x0": None, "t": None}

        def step(prediction, timestep, latents):
            latents, state["x0"] = scheduler.step(
                prediction.transpose(1, 2), state["x0"], timestep, state["t"], latents.transpose(1, 2),
                generator=generator, return_dict=False,
            )
            state["t"] = timestep
            return latents.transpose(1, 2)

        return step

    # ---- stage 2 ----------------------------------------------------------------------------
    def _rotary(self, rows: torch.Tensor, cols: torch.Tensor, frames: int, ntk: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)``, each ``(frames·h·w, head_dim)``: the pipeline's 1.5 tables (``grid_type="slice"``)
        at token positions ``rows × cols``; rows/cols ``0..n-1`` give its tables exactly."""
        head = self.pipe.transformer.config.attention_head_dim
        dims = (head // 4, head // 8 * 3, head // 8 * 3)
        axes = [
            get_1d_rotary_pos_embed(dims[0], torch.arange(frames, dtype=torch.float32), use_real=True),
            get_1d_rotary_pos_embed(dims[1], rows.float(), use_real=True, ntk_factor=ntk[0]),
            get_1d_rotary_pos_embed(dims[2], cols.float(), use_real=True, ntk_factor=ntk[1]),
        ]
        n_h, n_w = len(rows), len(cols)
        tables = []
        for part in range(2):  # cos, sin
            t, h, w = (axis[part] for axis in axes)
            grid = torch.cat(
                [
                    t[:, None, None].expand(-1, n_h, n_w, -1),
                    h[None, :, None].expand(frames, -1, n_w, -1),
                    w[None, None, :].expand(frames, n_h, -1, -1),
                ],
                dim=-1,
            )
            tables.append(grid.reshape(frames * n_h * n_w, -1).to(self.device))
        return tables[0], tables[1]

    def positions(self, mode: str) -> ContextManager[None]:
        """For one render: the rotary tables of its windows, kept on the device (the transformer takes
        them as an input, so no module is installed; :meth:`preload_positions` builds them). Re-entrant."""
        return self._rotary_tables.render()

    def preload_positions(self, tiles, canvas, mode, frames, device) -> None:
        """Every window's rotary table on the device before the first step (in every position mode:
        the pipeline's own table is built on the host too)."""
        for tile in tiles:
            self._tile_rotary([tile], canvas, mode, frames // self.patch[0])

    def _tile_rotary(self, tiles, canvas: tuple[int, int], positions: str, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary table of a forward on ``tiles`` (one: :attr:`batched_positions` is False), from this render's tables."""
        if positions == "local":
            rows, cols = torch.arange(tiles[0].shape[0] // self.patch[1]), torch.arange(tiles[0].shape[1] // self.patch[2])
        else:
            (rows,), (cols,) = self.token_positions(tiles)
        ntk = (1.0, 1.0)
        if positions == "ntk":
            head = self.pipe.transformer.config.attention_head_dim
            ntk = self.ntk_factors(canvas, tiles[0].shape, (head // 8 * 3, head // 8 * 3))
        build = lambda: self._rotary(rows, cols, frames, ntk)  # noqa: E731
        return self._rotary_tables.get((frames, position_key(rows), position_key(cols), ntk, self.device), build)

    def predict_batch(self, latents, timestep, cond, tiles, canvas, positions, branch=None):
        model = self.pipe.transformer
        batch = latents.shape[0]
        hidden = latents
        if "image_latents" in cond.spatial:
            hidden = torch.cat([latents, cond.spatial["image_latents"].to(latents.dtype)], dim=1)
        # (B, C, F, h, w) → the pipeline's (B, F, C, h, w). DDIM-style scale_model_input is the identity.
        hidden = hidden.transpose(1, 2).to(model.dtype)
        rotary = self._tile_rotary(tiles, canvas, positions, latents.shape[2] // self.patch[0])
        ofs = None if model.config.ofs_embed_dim is None else hidden.new_full((1,), 2.0)  # as the pipeline
        t = timestep.expand(batch)

        def forward(prefix: str) -> torch.Tensor:
            embeds = cond.embeds[prefix + "prompt_embeds"]
            return model(
                hidden_states=hidden, encoder_hidden_states=embeds.expand(batch, *embeds.shape[1:]), timestep=t,
                ofs=ofs, image_rotary_emb=rotary, return_dict=False,
            )[0]

        return self.guided(model, tiles, self.cfg_scale(timestep, cond), forward, branch).transpose(1, 2)
