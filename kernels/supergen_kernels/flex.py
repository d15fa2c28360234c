"""FlexAttention path: ``torch.nn.attention.flex_attention`` with a ``BlockMask`` built from the
layout's :class:`~supergen_kernels.layout.BlockIndex` (no dense mask evaluation, so it scales to
4K canvases)."""

from __future__ import annotations

import functools
import warnings

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from .layout import SparseLayout

#: FlexAttention's native block size; the BlockMask must be built at the size the kernel uses.
FLEX_BLOCK_SIZE = 128


def flex_block_mask(layout: SparseLayout, device: torch.device | str = "cpu") -> BlockMask:
    """A ``BlockMask`` equivalent to ``layout.token_mask()``, built from the block index and
    memoised on the layout per device.

    Full blocks go to FlexAttention's "full" lists (the compiled kernel skips ``mask_mod``
    there); partial blocks evaluate the layout's ``mask_mod``.
    """
    return layout.memo(("flex_block_mask", device), lambda: _build_block_mask(layout, device))


def _build_block_mask(layout: SparseLayout, device: torch.device | str) -> BlockMask:
    index = layout.block_index(FLEX_BLOCK_SIZE, FLEX_BLOCK_SIZE, device)
    # FlexAttention's mask_mod is the mask's definition (its eager CPU path applies it to every
    # pair, full blocks included); the full/partial lists only let the compiled kernel skip it.
    mask_mod = layout.mask_mod(index.num_kv_blocks * FLEX_BLOCK_SIZE, device)

    def padded(index_rows: torch.Tensor) -> torch.Tensor:
        # BlockMask takes the number of key blocks from the last dim of the index lists (to
        # build its transposed, query-major copy), so pad the lists to full width.
        out = index_rows.new_zeros(index_rows.shape[0], index.num_kv_blocks)
        out[:, : index_rows.shape[1]] = index_rows
        return out[None, None]

    return BlockMask.from_kv_blocks(
        index.partial_count[None, None], padded(index.partial_index),
        index.full_count[None, None], padded(index.full_index),
        BLOCK_SIZE=FLEX_BLOCK_SIZE, mask_mod=mask_mod, seq_lengths=(layout.seq_len, layout.seq_len),
    )


@functools.cache
def _compiled_flex():
    return torch.compile(flex_attention, dynamic=False)


def flex_tile_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: SparseLayout,
    scale: float | None = None,
) -> torch.Tensor:
    """FlexAttention over the layout, in the layout's sequence order.

    Args:
        q, k, v: ``(batch, heads, seq, head_dim)``.
        layout: the sparse layout (its BlockMask is built once per device, see
            :func:`flex_block_mask`).
        scale: softmax scale; ``head_dim ** -0.5`` when None.

    Returns:
        ``(batch, heads, seq, head_dim)``, dtype of ``q``.
    """
    block_mask = flex_block_mask(layout, q.device)
    # On CUDA, compiling is what makes FlexAttention sparse and fast: uncompiled it runs a
    # dense math fallback that materialises the full score matrix. On CPU we stay uncompiled:
    # compiling needs a working C++ toolchain, costs ~17 s per new shape, and the CPU path is
    # only used for correctness tests on tiny shapes.
    if q.is_cuda:
        return _compiled_flex()(q, k, v, block_mask=block_mask, scale=scale)
    with warnings.catch_warnings():
        # The "called without torch.compile()" warning is the deliberate CPU choice above.
        warnings.filterwarnings("ignore", message=".*without torch.compile.*")
        return flex_attention(q, k, v, block_mask=block_mask, scale=scale)
