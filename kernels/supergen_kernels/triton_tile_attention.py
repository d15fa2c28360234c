"""Block-sparse attention forward in Triton.

The kernel is FlashAttention's forward pass (one program per query block and (batch, head);
stream key/value blocks; online softmax in fp32) with one change: instead of visiting every
key block, a program visits only the key blocks its query block's row of the
:class:`~supergen_kernels.layout.BlockIndex` lists. Listed blocks are of two kinds:

* **full** — every (query, key) pair is allowed: plain FlashAttention math, no masking;
* **partial** — the layout's token rule is evaluated per pair (is the key's (row, col) inside
  the query's window? :func:`~supergen_kernels.layout.in_window` is the same rule in PyTorch,
  windows that wrap around the canvas edge included) and disallowed scores become ``-inf``.
  Blocks cut short by the sequence end are always partial, and keys past the end are masked.

A program first runs through its full blocks, then its partial blocks, with one online-softmax
state, so the hot loop over full blocks carries no masking code.

Skipped blocks cost nothing, so the work is proportional to the listed blocks. Speed on a GPU
depends on the layout making most listed blocks full (tile-major order does that for the
tile-local part of every window).

Inputs: ``(batch, heads, seq, head_dim)`` in fp16, bf16 or fp32 (fp32 is for the interpreter
tests; on a GPU its dots run in exact IEEE fp32, slowly). Accumulation is fp32. The kernel
itself takes power-of-two head dims from 16 to 256 (``tl.arange`` and ``tl.dot`` need them), so
64 and 128 run as they are; any other head dim up to 256 (e.g. 80, or 12 in tiny test models)
is zero-padded on the host to the next power of two, which costs a copy of q, k, v and the
padded lanes' work but changes no result (zero lanes add nothing to q.k, and padded output
lanes are dropped).

On a machine without a GPU the kernel runs under Triton's interpreter, on CPU tensors, when
``TRITON_INTERPRET=1`` is set before this module is imported (Triton decides at decoration
time whether ``@triton.jit`` compiles or interprets).

Needs Triton >= 3.0 (``tl.dot(..., input_precision=...)``); :func:`missing_features` checks
what this Triton lacks, so the package's availability probe can name it.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .layout import SparseLayout


@triton.jit
def _attend_blocks(
    acc, l_i, m_i,  # online softmax state, updated and returned
    q, k_base, v_base, k_pos,
    blocks, count,  # this query block's list of key blocks, and its length
    row_lo, row_hi, col_lo, col_hi,  # (BLOCK_M,) key window of each query
    stride_kn, stride_kd, stride_vn, stride_vd,
    seq_len, height, width, qk_scale,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    MASKED: tl.constexpr,  # False: full blocks, no masking; True: partial blocks, token rule
    PRECISION: tl.constexpr,
):
    # Element offsets inside one key block, in int64 and computed once: a block's first key
    # moves the base pointer (below), these stay the same for every block. K is loaded
    # transposed, (HEAD_DIM, BLOCK_N), so q @ k is a plain dot.
    in_block = tl.arange(0, BLOCK_N).to(tl.int64)
    offs_d = tl.arange(0, HEAD_DIM).to(tl.int64)
    k_offs = in_block[None, :] * stride_kn + offs_d[:, None] * stride_kd
    v_offs = in_block[:, None] * stride_vn + offs_d[None, :] * stride_vd
    for i in range(0, count):
        start_n = tl.load(blocks + i) * BLOCK_N
        # int64 before the multiply: start_n * stride_kn passes 2**31 elements on (B, N, H, D)
        # views at 4K (N * H * D = 3.5e9 for Wan-14B at 4K x 81 frames).
        k_ptrs = k_base + start_n.to(tl.int64) * stride_kn + k_offs
        v_ptrs = v_base + start_n.to(tl.int64) * stride_vn + v_offs
        if MASKED:
            # Only a partial block can run past the sequence end: guard the loads there, and
            # mask keys past the end.
            offs_n = start_n + tl.arange(0, BLOCK_N)
            n_ok = offs_n < seq_len
            k = tl.load(k_ptrs, mask=n_ok[None, :], other=0.0)
            v = tl.load(v_ptrs, mask=n_ok[:, None], other=0.0)
            qk = tl.dot(q, k, input_precision=PRECISION) * qk_scale
            key_row = tl.load(k_pos + offs_n * 2 + 0, mask=n_ok, other=0)[None, :]
            key_col = tl.load(k_pos + offs_n * 2 + 1, mask=n_ok, other=0)[None, :]
            # The key, or its copy one canvas over (a window that wraps ends past the edge),
            # lies in the query's window on both axes.
            allowed = ((key_row >= row_lo[:, None]) & (key_row < row_hi[:, None])) | (
                key_row + height < row_hi[:, None]
            )
            allowed &= ((key_col >= col_lo[:, None]) & (key_col < col_hi[:, None])) | (
                key_col + width < col_hi[:, None]
            )
            allowed &= n_ok[None, :]
            qk = tl.where(allowed, qk, float("-inf"))
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
            qk = tl.dot(q, k, input_precision=PRECISION) * qk_scale

        # Rescale what was accumulated so far to the new running max, then add this block.
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _tile_attention_fwd(
    Q, K, V, Out,  # (batch, heads, seq, head_dim), any strides
    full_count, full_index,  # int32 (num_q_blocks,), (num_q_blocks, max_full)
    partial_count, partial_index,  # int32 (num_q_blocks,), (num_q_blocks, max_partial)
    q_window,  # int32 (seq, 4): row_lo, row_hi, col_lo, col_hi
    k_pos,  # int32 (seq, 2): row, col
    height, width,  # canvas size in tokens: the periods windows wrap around
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    num_heads, seq_len, max_full, max_partial,
    qk_scale,  # softmax scale * log2(e): the kernel works in base 2 (exp2 is the fast one)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,  # a power of two (the host pads other head dims)
    PRECISION: tl.constexpr,  # tl.dot input precision; matters for fp32 inputs only
):
    q_block = tl.program_id(0)
    # Every element offset is int64 (indices cast before they meet a stride): at 4K a
    # (batch, seq, heads, head_dim) view has seq * heads * head_dim = 3.5e9 > 2**31 (Wan-14B,
    # 81 frames), so int32 products would wrap and address memory outside the tensors.
    batch = (tl.program_id(1) // num_heads).to(tl.int64)
    head = (tl.program_id(1) % num_heads).to(tl.int64)

    offs_m = q_block * BLOCK_M + tl.arange(0, BLOCK_M)  # int32: token indices, for masks
    offs_m64 = offs_m.to(tl.int64)
    offs_d = tl.arange(0, HEAD_DIM).to(tl.int64)
    m_ok = offs_m < seq_len

    q_ptrs = Q + batch * stride_qb + head * stride_qh
    q_ptrs += offs_m64[:, None] * stride_qn + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=m_ok[:, None], other=0.0)

    # Each query's key window, for the partial blocks.
    row_lo = tl.load(q_window + offs_m * 4 + 0, mask=m_ok, other=0)
    row_hi = tl.load(q_window + offs_m * 4 + 1, mask=m_ok, other=0)
    col_lo = tl.load(q_window + offs_m * 4 + 2, mask=m_ok, other=0)
    col_hi = tl.load(q_window + offs_m * 4 + 3, mask=m_ok, other=0)

    # Online softmax state per query row: running max (base-2 logits), running sum of
    # exp2(logit - max), and the unnormalised output. The max starts finite, not -inf, so a
    # row whose first partial block is entirely masked computes exp2(-inf - (-1e30)) = 0
    # instead of exp2(-inf - -inf) = NaN.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    k_base = K + batch * stride_kb + head * stride_kh
    v_base = V + batch * stride_vb + head * stride_vh
    # Two passes over the same state, like the causal split in FlashAttention: full blocks
    # without any masking code in the loop, then partial blocks with the token rule.
    acc, l_i, m_i = _attend_blocks(
        acc, l_i, m_i, q, k_base, v_base, k_pos,
        full_index + q_block * max_full, tl.load(full_count + q_block),
        row_lo, row_hi, col_lo, col_hi,
        stride_kn, stride_kd, stride_vn, stride_vd, seq_len, height, width, qk_scale,
        BLOCK_N, HEAD_DIM, False, PRECISION,
    )
    acc, l_i, m_i = _attend_blocks(
        acc, l_i, m_i, q, k_base, v_base, k_pos,
        partial_index + q_block * max_partial, tl.load(partial_count + q_block),
        row_lo, row_hi, col_lo, col_hi,
        stride_kn, stride_kd, stride_vn, stride_vd, seq_len, height, width, qk_scale,
        BLOCK_N, HEAD_DIM, True, PRECISION,
    )

    # Every real query attends at least its own token, so l_i > 0 on every stored row; rows
    # past the sequence end may have l_i == 0 and are not stored, so divide them by 1.
    acc = acc / tl.where(m_ok, l_i, 1.0)[:, None]
    o_ptrs = Out + batch * stride_ob + head * stride_oh
    o_ptrs += offs_m64[:, None] * stride_on + offs_d[None, :] * stride_od
    tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=m_ok[:, None])


def _is_interpreted(kernel) -> bool:
    # Ask the decorated kernel itself rather than a setting: where that setting lives changed
    # across Triton releases (the environment variable, read at decoration, before 3.4;
    # triton.knobs since), but the interpreter has wrapped kernels in InterpretedFunction
    # throughout.
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # a Triton build without the CPU interpreter
        return False
    return isinstance(kernel, InterpretedFunction)


#: True when this module's kernel runs in Triton's CPU interpreter (TRITON_INTERPRET=1 was set
#: when it was imported).
INTERPRETED = _is_interpreted(_tile_attention_fwd)


def missing_features() -> list[str]:
    """The Triton features this kernel uses that the installed Triton lacks (empty: none).

    Checked by feature, not by version number, so a backport or a vendor build that has them
    passes."""
    missing = []
    if "input_precision" not in inspect.signature(tl.dot).parameters:
        missing.append("tl.dot(..., input_precision=...) (Triton >= 3.0)")
    if not hasattr(tl.math, "exp2"):
        missing.append("tl.math.exp2")
    return missing


def default_blocks(head_dim: int) -> tuple[int, int, int, int]:
    """``(block_m, block_n, num_warps, num_stages)`` for a head dim: the usual FlashAttention-2
    choice for Ampere/Hopper, not autotuned here (no GPU was available while writing this)."""
    if head_dim <= 64:
        return 128, 64, 4, 3
    return 128, 64, 8, 3


def triton_tile_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: SparseLayout,
    scale: float | None = None,
    out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Block-sparse attention over ``layout`` with the Triton kernel.

    Args:
        q, k, v: ``(batch, heads, seq, head_dim)``, same dtype (fp16, bf16 or fp32) and device,
            in the layout's sequence order.
        layout: the sparse layout; its block index at ``(block_m, block_n)`` is memoised on it.
        scale: softmax scale; ``head_dim ** -0.5`` when None.
        out: optional ``(batch, heads, seq, head_dim)`` tensor to write into.
        block_m, block_n: block sizes (powers of two, >= 16); defaults from
            :func:`default_blocks`. A :class:`BlockListLayout` needs them to divide its block
            size.

    Returns:
        ``out`` (or a new tensor), ``(batch, heads, seq, head_dim)``, dtype of ``q``.
    """
    batch, heads, seq, head_dim = q.shape
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must have one shape, got {q.shape}, {k.shape}, {v.shape}")
    if seq != layout.seq_len:
        raise ValueError(f"sequence length {seq} does not match the layout's {layout.seq_len}")
    if head_dim > 256:
        raise ValueError(f"head_dim {head_dim} > 256 is not supported")
    if out is not None and out.shape != q.shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {tuple(q.shape)}")
    padded_dim = max(triton.next_power_of_2(head_dim), 16)
    bm, bn, num_warps, num_stages = default_blocks(padded_dim)
    block_m, block_n = block_m or bm, block_n or bn
    scale = head_dim**-0.5 if scale is None else scale
    if padded_dim != head_dim:
        q, k, v = (F.pad(t, (0, padded_dim - head_dim)) for t in (q, k, v))
        result = torch.empty_like(q)
    else:
        result = torch.empty_like(q) if out is None else out
    index = layout.block_index(block_m, block_n, q.device)
    rule = layout.token_rule(q.device)
    grid = (index.num_q_blocks, batch * heads)
    _tile_attention_fwd[grid](
        q, k, v, result,
        index.full_count, index.full_index, index.partial_count, index.partial_index,
        rule.q_window, rule.k_pos, *rule.period,
        *q.stride(), *k.stride(), *v.stride(), *result.stride(),
        heads, seq, index.full_index.shape[1], index.partial_index.shape[1],
        scale * math.log2(math.e),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        HEAD_DIM=padded_dim,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=num_warps,
        num_stages=num_stages,
    )
    if padded_dim == head_dim:
        return result
    result = result[..., :head_dim]
    return result if out is None else out.copy_(result)
