"""Attention backends, and tile(+halo) attention over a whole canvas (``tiling.mode: attention``).

Two uses, one config key (``attention.backend``):

- ``shift`` / ``overlap`` modes run dense attention inside each tile through diffusers' own
  dispatcher: ``sdpa`` → diffusers ``native``, ``flex`` → ``flex``, ``xformers`` → ``xformers``.
- ``attention`` mode runs the whole canvas in one forward in which every token attends only to its
  tile's window grown by a halo (block-sparse, cost linear in tiles) with the kernels of
  ``supergen_kernels``: ``sdpa`` → SDPA with a boolean mask, ``flex`` → FlexAttention's
  ``BlockMask``, ``triton`` → the project's block-sparse Triton kernel.

The sparse path replaces only the self-attention processor (``attn1``) of each transformer block
for the duration of the refinement; the model's code and weights stay diffusers'.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from .errors import SuperGenError

BACKENDS = ("sdpa", "flex", "triton", "xformers")
#: Backend names of diffusers' attention dispatcher for dense (per-tile) attention.
DENSE = {"sdpa": "native", "flex": "flex", "xformers": "xformers"}
#: Backends of supergen_kernels for tile(+halo) attention over the canvas.
SPARSE = {"sdpa": "reference", "flex": "flex", "triton": "triton"}


def _xformers_reason(device: torch.device) -> str | None:
    try:
        import xformers.ops  # noqa: F401
    except ImportError:
        return "xformers is not installed (pip install supergen[xformers])"
    return None if device.type == "cuda" else "xformers has no CPU kernels"


def available_backends(device: torch.device, sparse: bool) -> list[str]:
    """The values of ``attention.backend`` usable here, for dense per-tile or sparse canvas attention."""
    from supergen_kernels import available_backends as kernel_backends

    if sparse:
        runnable = set(kernel_backends(device))
        return [name for name, kernel in SPARSE.items() if kernel in runnable]
    return [name for name in DENSE if name != "xformers" or _xformers_reason(device) is None]


def check_backend(name: str, device: torch.device, sparse: bool) -> None:
    """Raise a :class:`SuperGenError` saying why ``name`` cannot run here and what can."""
    usable = available_backends(device, sparse)
    if name in usable:
        return
    mode = "tiling.mode=attention" if sparse else "tiling.mode=shift/overlap"
    if name == "xformers":
        why = _xformers_reason(device) or "xformers has no sparse tile kernel"
    elif name == "triton" and not sparse:
        why = "the Triton kernel is the sparse canvas kernel; dense per-tile attention uses diffusers' backends"
    else:
        why = f"it cannot run on {device.type} here"
    raise SuperGenError(f"attention.backend={name!r} is unavailable with {mode}: {why}. Available: {', '.join(usable)}")


@contextlib.contextmanager
def dense_backend(name: str) -> Iterator[None]:
    """diffusers' dispatcher set to the backend for per-tile attention (a no-op for PyTorch's own SDPA)."""
    if name == "sdpa":
        yield
        return
    from diffusers import attention_backend

    with attention_backend(DENSE[name]):
        yield


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

    Same projections, norms and rotary embedding as diffusers' ``WanAttnProcessor``; only the
    attention itself is the sparse :func:`supergen_kernels.tile_attention` over ``layout`` (tokens in
    canvas order, as the transformer produces them).
    """

    def __init__(self, layout, backend: str):
        self.layout, self.backend = layout, SPARSE[backend]

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        """``hidden_states`` ``(B, N, dim)`` with ``N = layout.seq_len`` → ``(B, N, dim)``."""
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections
        from supergen_kernels import tile_attention

        if encoder_hidden_states is not None:
            raise SuperGenError("tile attention replaces self-attention (attn1) only")
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))
        if rotary_emb is not None:
            query, key = _rotate(query, *rotary_emb), _rotate(key, *rotary_emb)
        out = tile_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), self.layout, self.backend, order="canvas"
        )
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


@contextlib.contextmanager
def tile_attention(transformers: list[nn.Module], layout, backend: str) -> Iterator[None]:
    """Every Wan block's self-attention restricted to ``layout`` inside the ``with`` block.

    Args:
        transformers: the pipeline's transformers (Wan 2.2 has two experts).
        layout: a :class:`supergen_kernels.TileLayout` over the canvas in tokens.
        backend: ``sdpa`` | ``flex`` | ``triton``.
    """
    saved = []
    for model in transformers:
        blocks = getattr(model, "blocks", None)
        if blocks is None or not all(hasattr(b, "attn1") for b in blocks):
            raise SuperGenError(f"tiling.mode=attention supports Wan transformers; got {type(model).__name__}")
        for block in blocks:
            saved.append((block.attn1, block.attn1.processor))
            block.attn1.set_processor(WanTileAttnProcessor(layout, backend))
    try:
        yield
    finally:
        for attn, processor in saved:
            attn.set_processor(processor)
