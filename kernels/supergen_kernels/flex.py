"""FlexAttention path: ``torch.nn.attention.flex_attention`` with a ``BlockMask`` built from the
layout's :class:`~supergen_kernels.layout.BlockIndex` (no dense mask evaluation, so it scales to
4K canvases).

Compiled, the layout enters the graph as data: the block lists and the mask's per-token tensors
are inputs of one compiled function, and the ``mask_mod`` is rebuilt from them inside it. So the
moving windows of a shift schedule (a new layout every step) reuse one compiled kernel per
sequence shape, instead of each grid offset being a new graph; past dynamo's recompile limit
that would fall back to eager FlexAttention, a dense path no 2K/4K canvas fits.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable

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
    return layout.memo(("flex_block_mask", device), lambda: _block_mask(*_layout_data(layout, device)))


def _layout_data(layout: SparseLayout, device: torch.device | str) -> tuple:
    """``(blocks, make_mask_mod, mask_args, seq_len)``: everything a BlockMask of the layout is
    built from, as tensors, ints and one module-level function (memoised on the layout)."""

    def build():
        index = layout.block_index(FLEX_BLOCK_SIZE, FLEX_BLOCK_SIZE, device)

        def padded(index_rows: torch.Tensor) -> torch.Tensor:
            # BlockMask takes the number of key blocks from the last dim of the index lists (to
            # build its transposed, query-major copy), so pad the lists to full width. That also
            # gives every layout of one sequence length the same shapes (one compiled graph).
            out = index_rows.new_zeros(index_rows.shape[0], index.num_kv_blocks)
            out[:, : index_rows.shape[1]] = index_rows
            return out[None, None]

        blocks = (index.partial_count[None, None], padded(index.partial_index),
                  index.full_count[None, None], padded(index.full_index))
        # FlexAttention's mask_mod is the mask's definition (its eager CPU path applies it to
        # every pair, full blocks included); the full/partial lists only let the compiled kernel
        # skip it.
        make, args = layout.mask_mod_parts(index.num_kv_blocks * FLEX_BLOCK_SIZE, device)
        return blocks, make, args, layout.seq_len

    return layout.memo(("flex_layout_data", device), build)


def _block_mask(blocks: tuple, make_mask_mod: Callable, mask_args: tuple, seq_len: int) -> BlockMask:
    return BlockMask.from_kv_blocks(
        *blocks, BLOCK_SIZE=FLEX_BLOCK_SIZE, mask_mod=make_mask_mod(*mask_args), seq_lengths=(seq_len, seq_len)
    )


def _flex_over_layout_data(q, k, v, blocks, make_mask_mod, mask_args, seq_len, scale):
    """FlexAttention with the BlockMask built here from data: the function that gets compiled."""
    return flex_attention(q, k, v, block_mask=_block_mask(blocks, make_mask_mod, mask_args, seq_len), scale=scale)


@functools.cache
def _compiled(compiler) -> Callable:
    return torch.compile(_flex_over_layout_data, backend=compiler, dynamic=False)


def flex_tile_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: SparseLayout,
    scale: float | None = None,
    *,
    compiler: str | Callable | None = "default",
) -> torch.Tensor:
    """FlexAttention over the layout, in the layout's sequence order.

    Args:
        q, k, v: ``(batch, heads, seq, head_dim)``.
        layout: the sparse layout (what FlexAttention needs of it is built once per device and
            memoised on it).
        scale: softmax scale; ``head_dim ** -0.5`` when None.
        compiler: the ``torch.compile`` backend that runs FlexAttention (one compiled function
            per backend, taking the layout as data: see the module docstring), or None to run
            it eagerly. ``"default"``: ``"inductor"`` for CUDA tensors, eager elsewhere.

    Returns:
        ``(batch, heads, seq, head_dim)``, dtype of ``q``.
    """
    if compiler == "default":
        # On CUDA, compiling is what makes FlexAttention sparse and fast: uncompiled it runs a
        # dense math fallback that materialises the full score matrix. On CPU we stay uncompiled:
        # compiling needs a working C++ toolchain, costs ~17 s per new shape, and the CPU path is
        # only used for correctness tests on tiny shapes.
        compiler = "inductor" if q.is_cuda else None
    if compiler is not None:
        return _compiled(compiler)(q, k, v, *_layout_data(layout, q.device), scale)
    with warnings.catch_warnings():
        # The "called without torch.compile()" warning is the deliberate eager choice above.
        warnings.filterwarnings("ignore", message=".*without torch.compile.*")
        return flex_attention(q, k, v, block_mask=flex_block_mask(layout, q.device), scale=scale)
