"""Wan 2.1 / 2.2 (text- and image-to-video) behind the :class:`ModelAdapter` interface."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from ..attention import SPARSE_KERNELS, StepLayouts
from ..errors import SuperGenError
from ..families import WAN
from .base import FirstFrameVideo, ModelAdapter, Request, processors_replaced
from .positions import CanvasPositions, on_device, position_key


class CanvasRotaryPosEmbed(CanvasPositions):
    """Wan's 3-D RoPE with each tile numbered by its place on the canvas.

    Installed in place of ``transformer.rope`` for a render (:mod:`.positions`). Frequencies are
    computed exactly as diffusers' ``WanRotaryPosEmbed`` does, so a tile at offset zero gets
    bit-identical tables; ``ntk`` scales theta on the spatial axes (:meth:`ModelAdapter.ntk_factors`).
    """

    def _table(self, dim: int, positions: torch.Tensor, ntk_factor: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)`` of one axis at host ``positions``, built once per render on ``device``."""
        return self.cached((dim, position_key(positions), ntk_factor, device), lambda: get_1d_rotary_pos_embed(
            dim, on_device(positions, device), getattr(self.original, "theta", 10000.0), use_real=True, repeat_interleave_real=True,
            ntk_factor=ntk_factor, freqs_dtype=torch.float64,
        ))

    def axis_dims(self) -> tuple[int, int]:
        return self.original.h_dim, self.original.w_dim

    def _frame_positions(self, count: int) -> list[torch.Tensor]:
        """Per tile, its frames' positions: the canvas frames of a time window, else ``0..count-1``."""
        return self.frames if self.frames is not None else [torch.arange(count)] * len(self.rows)

    def preload(self, frames: int, device: torch.device) -> None:
        rope = self.original
        for positions in self._frame_positions(frames // rope.patch_size[0]):
            self._table(rope.t_dim, positions, 1.0, device)
        for rows, cols in zip(self.rows, self.cols):
            self._table(rope.h_dim, rows, self.ntk[0], device)
            self._table(rope.w_dim, cols, self.ntk[1], device)

    def canvas_table(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, F, h, w)`` → ``(freqs_cos, freqs_sin)``, each ``(B, F·h·w / patch, 1, head_dim)``."""
        rope = self.original
        _, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = rope.patch_size
        ppf, pph, ppw = frames // p_t, height // p_h, width // p_w
        device = hidden_states.device
        ntk_h, ntk_w = self.ntk
        outputs_cos, outputs_sin = [], []
        for times, rows, cols in zip(self._frame_positions(ppf), self.rows, self.cols):
            cos_t, sin_t = self._table(rope.t_dim, times, 1.0, device)
            cos_h, sin_h = self._table(rope.h_dim, rows, ntk_h, device)
            cos_w, sin_w = self._table(rope.w_dim, cols, ntk_w, device)
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

    spec = WAN
    position_module = CanvasRotaryPosEmbed

    def __init__(self, pipe):
        super().__init__(pipe)
        if getattr(pipe.config, "expand_timesteps", False):
            raise SuperGenError(
                "Wan 2.2 TI2V-5B style pipelines (expand_timesteps=True) are not supported yet; "
                "supported: Wan 2.1 T2V/I2V and Wan 2.2 A14B T2V/I2V"
            )

    def _dtype(self) -> torch.dtype:
        return self.transformers[0].dtype

    # ---- conditioning -----------------------------------------------------------------------
    def encode_text(self, request: Request, guidance_scale: float) -> dict[str, torch.Tensor | None]:
        prompt_embeds, negative_embeds = self._pipeline_text_embeds(request, guidance_scale)
        dtype = self._dtype()
        return {
            "prompt_embeds": prompt_embeds.to(self.device, dtype),
            "negative_prompt_embeds": None if negative_embeds is None else negative_embeds.to(self.device, dtype),
        }

    def image_embeds(self, request: Request) -> dict[str, torch.Tensor | None]:
        pipe = self.pipe
        if self.requires_image and pipe.transformer is not None and pipe.transformer.config.image_dim is not None:
            # Wan 2.1 I2V: the CLIP embedding of the whole image, global to every tile.
            return {"image_embeds": pipe.encode_image(request.image, self.device).to(self._dtype())}
        return {"image_embeds": None}

    def spatial_conditioning(self, request, height, width, generator=None, encode=None):
        """Wan 2.1/2.2 I2V: ``{"condition": (1, 4 + C, f, h, w)}``, the first-frame mask and the latent of
        the image followed by zero frames, as ``WanImageToVideoPipeline.prepare_latents`` lays them out.

        The condition video is encoded by the engine's ``encode`` (tiled and split across ranks at
        large sizes), window by window (:class:`FirstFrameVideo`), never whole.
        """
        if not self.requires_image:
            return {}
        image = self.pipe.video_processor.preprocess(request.image, height=height, width=width).to(self.device, torch.float32)
        video = FirstFrameVideo(image, request.num_frames)
        # Posterior mode (the pipeline's sample_mode="argmax"), normalised as prepare_latents does.
        latent = encode(video) if encode is not None else self.encode(video[...], None)
        # The mask is 1 on the latent frame made of the image (the first frame, repeated to fill the
        # temporal compression) and 0 on the others: prepare_latents' mask after its reshape.
        mask = torch.zeros(1, self.vae_scale[0], *latent.shape[2:], device=latent.device)
        mask[:, :, 0] = 1.0
        return {"condition": torch.cat([mask, latent.to(mask.device)], dim=1)}

    # ---- stage 1 ----------------------------------------------------------------------------
    def pipeline_kwargs(self, request, embeds, guidance_scale, guidance_scale_2):
        kwargs = dict(
            prompt_embeds=embeds["prompt_embeds"],
            negative_prompt_embeds=embeds["negative_prompt_embeds"],
            guidance_scale=guidance_scale,
        )
        if self.pipe.config.boundary_ratio is not None:
            kwargs["guidance_scale_2"] = guidance_scale_2
        if self.requires_image:
            # The pipeline refuses image and image_embeds together and needs the image for its latent
            # condition, so it re-encodes the (small) CLIP embedding itself.
            kwargs["image"] = request.image
        return kwargs

    # ---- VAE --------------------------------------------------------------------------------
    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.pipe.vae.config
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(like.device, like.dtype)
        std = torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(like.device, like.dtype)
        return mean, std

    def to_vae(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self._latent_stats(latents)
        # Same arithmetic as WanPipeline (divide by 1/std), so outputs match bit for bit.
        return latents / (1.0 / std) + mean

    def from_vae(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self._latent_stats(latents)
        return (latents - mean) * (1.0 / std)

    # ---- stage 2 ----------------------------------------------------------------------------
    def _model_for(self, timestep: torch.Tensor, cond):
        """Wan 2.2 A14B: high-noise expert above ``boundary_ratio``, low-noise expert below (as the pipeline)."""
        pipe = self.pipe
        ratio = pipe.config.boundary_ratio
        if ratio is None or timestep >= ratio * pipe.scheduler.config.num_train_timesteps:
            return pipe.transformer, cond.guidance_scale
        scale_2 = cond.guidance_scale_2 if cond.guidance_scale_2 is not None else cond.guidance_scale
        return pipe.transformer_2, scale_2

    def cfg_scale(self, timestep, cond):
        return self._model_for(timestep, cond)[1] if self.runs_branches(cond.guidance_scale) else None

    def predict_batch(self, latents, timestep, cond, tiles, canvas, positions, branch=None):
        model, _ = self._model_for(timestep, cond)
        batch = latents.shape[0]
        hidden = latents
        if "condition" in cond.spatial:
            hidden = torch.cat([latents, cond.spatial["condition"]], dim=1)
        hidden = hidden.to(model.dtype)
        t = timestep.expand(batch)
        embeds = cond.embeds

        def expand(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.expand(batch, *x.shape[1:])

        def forward(prefix: str) -> torch.Tensor:
            return model(
                hidden_states=hidden, timestep=t, encoder_hidden_states=expand(embeds[prefix + "prompt_embeds"]),
                encoder_hidden_states_image=expand(embeds["image_embeds"]), return_dict=False,
            )[0]

        if positions != "local":
            self.set_positions(model, tiles, canvas, positions, model.rope.axis_dims())
        return self.guided(model, tiles, self.cfg_scale(timestep, cond), forward, branch)

    # ---- tiling.mode=attention ----------------------------------------------------------------
    @contextlib.contextmanager
    def tile_attention(self, layouts, backend: str, heads=None) -> Iterator[StepLayouts]:
        """Every block's self-attention restricted to tile(+halo) windows inside the ``with`` block
        (:class:`WanTileAttnProcessor`); the original processors are restored on exit.

        ``layouts`` is a ``supergen_kernels.LayoutCycle`` (or one fixed ``TileLayout``); the block
        yields the :class:`~supergen.attention.StepLayouts` all processors read: call it with the
        refinement step to move the windows. ``heads``: see :meth:`ModelAdapter.tile_attention`.
        """
        steps = StepLayouts(layouts)
        with processors_replaced([block.attn1 for model in self.transformers for block in model.blocks],
                                 lambda: WanTileAttnProcessor(steps, backend, heads)):
            yield steps


def _rotate(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    # Wan's interleaved rotary embedding (as in diffusers' WanAttnProcessor), x: (B, N, heads, D).
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class WanTileAttnProcessor:
    """Self-attention of a Wan block restricted to tile(+halo) windows of the canvas.

    Same projections, norms and rotary embedding as diffusers' ``WanAttnProcessor`` (written out
    here because diffusers keeps its projection helper private); only the attention itself is the
    sparse :func:`supergen_kernels.tile_attention` over the current step's layout (tokens in canvas
    order, as the transformer produces them).

    With ``heads`` (a :class:`~supergen.parallel.canvas.HeadExchange`) the block sees this rank's
    share of the tokens (the sequence is split over the ranks outside attention): the projected
    queries, keys and values trade tokens for heads with the other ranks, the kernel runs on this
    rank's heads over the whole canvas, and the result trades back before the output projection.
    """

    def __init__(self, layouts: StepLayouts, backend: str, heads=None):
        self.layouts, self.backend, self.heads = layouts, SPARSE_KERNELS[backend], heads

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        """``hidden_states`` ``(B, n, dim)`` → ``(B, n, dim)``; ``n`` is the layout's ``seq_len``, or
        its share on this rank with ``heads``."""
        from supergen_kernels import tile_attention

        if encoder_hidden_states is not None:
            raise SuperGenError("tile attention replaces self-attention (attn1) only")
        if attn.fused_projections:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))
        if rotary_emb is not None:
            query, key = _rotate(query, *rotary_emb), _rotate(key, *rotary_emb)
        if self.heads is not None:  # one all-to-all for q, k and v: (3, B, n, H, D) → (3, B, N, H / ranks, D)
            query, key, value = self.heads.to_heads(torch.stack([query, key, value])).unbind(0)
        out = tile_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), self.layouts.layout, self.backend, order="canvas"
        ).transpose(1, 2)
        if self.heads is not None:
            out = self.heads.to_tokens(out.contiguous())
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))
