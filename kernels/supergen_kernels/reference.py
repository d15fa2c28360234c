"""Dense reference: scaled dot-product attention with the layout's token-level boolean mask.

This is the ground truth the other backends are tested against. It materialises the
``(seq, seq)`` mask, so it is for small sequences only: above :data:`MAX_DENSE_MASK_ELEMENTS`
mask elements it refuses before building anything (a 4K x 81-frame Wan canvas, 680,400 tokens,
would need a 463 GB mask).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import BackendUnavailable
from .layout import SparseLayout

#: Largest dense mask the reference builds: 2**28 bools = 256 MiB, a sequence of 16,384 tokens.
MAX_DENSE_MASK_ELEMENTS = 2**28


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: SparseLayout,
    scale: float | None = None,
) -> torch.Tensor:
    """Masked attention in the layout's sequence order.

    Args:
        q, k, v: ``(batch, heads, seq, head_dim)``.
        layout: supplies the ``(seq, seq)`` mask.
        scale: softmax scale; ``head_dim ** -0.5`` when None.

    Returns:
        ``(batch, heads, seq, head_dim)``, dtype of ``q``.

    Raises:
        BackendUnavailable: ``seq ** 2`` exceeds :data:`MAX_DENSE_MASK_ELEMENTS`; raised before
            the mask (or anything else sequence-sized) is built.
    """
    n = layout.seq_len
    if n * n > MAX_DENSE_MASK_ELEMENTS:
        raise BackendUnavailable(
            f"the reference backend builds a dense ({n}, {n}) boolean mask, {n * n / 1e9:.1f} GB "
            f"for a sequence of N={n} tokens; it is limited to {MAX_DENSE_MASK_ELEMENTS} mask "
            f"elements (N <= {int(MAX_DENSE_MASK_ELEMENTS**0.5)}). Use backend 'flex' or "
            "'triton': both are sparse and never build the dense mask"
        )
    mask = layout.token_mask(q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
