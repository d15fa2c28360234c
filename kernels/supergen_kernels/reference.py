"""Dense reference: scaled dot-product attention with the layout's token-level boolean mask.

This is the ground truth the other backends are tested against. It materialises the
``(seq, seq)`` mask, so it is for small sequences (tests) only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layout import SparseLayout


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
    """
    mask = layout.token_mask(q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
