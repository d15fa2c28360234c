"""Sparse tile attention for supergen: one operation, three backends.

A canvas of video tokens ``(frames, height, width)`` is cut into spatial tiles spanning all
frames; each query attends only to keys in its tile's window (the tile, grown by a halo).
With tokens in *tile-major* order (each tile contiguous) this is block-sparse attention whose
cost is linear in the number of tiles.

Typical use (one layout per canvas geometry, reused for every layer and step)::

    from supergen_kernels import TileLayout, tile_attention

    layout = TileLayout(canvas=(5, 135, 240), tile=(45, 80), halo=8)
    x = layout.to_tile_major(hidden_states, dim=1)       # once, before the blocks
    ...
    out = tile_attention(q, k, v, layout, backend="triton")  # q, k, v: (B, heads, N, D)
    ...
    hidden_states = layout.from_tile_major(x, dim=1)     # once, after the blocks

Backends (same signature, same result up to float rounding):

* ``"reference"`` — SDPA with the dense ``(N, N)`` boolean mask; ground truth; small N only.
* ``"flex"`` — FlexAttention with a ``BlockMask``; compiled on CUDA, uncompiled on CPU.
* ``"triton"`` — this package's block-sparse Triton kernel; CUDA, or the CPU interpreter when
  ``TRITON_INTERPRET=1`` is set before the kernel module is first imported.

Use :func:`available_backends` to ask what runs here; an unusable backend raises
:class:`BackendUnavailable` naming the reason and the alternatives.
"""

from __future__ import annotations

import importlib
from typing import Literal

import torch

from .layout import (
    BOUNDARIES,
    BlockIndex,
    BlockListLayout,
    LayoutCycle,
    SparseLayout,
    TileLayout,
    TokenRule,
    in_window,
    shifted_layouts,
)

__all__ = [
    "BACKENDS",
    "BOUNDARIES",
    "BackendUnavailable",
    "BlockIndex",
    "BlockListLayout",
    "LayoutCycle",
    "SparseLayout",
    "TileLayout",
    "TokenRule",
    "available_backends",
    "flex_block_mask",
    "in_window",
    "shifted_layouts",
    "tile_attention",
]

BACKENDS = ("reference", "flex", "triton")


class BackendUnavailable(RuntimeError):
    """The requested attention backend cannot run on this machine / for these tensors."""


def _unavailable_reason(backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run on tensors on ``device``, or None when it can."""
    if backend == "reference":
        return None
    if backend == "flex":
        try:
            importlib.import_module("torch.nn.attention.flex_attention")
        except ImportError:
            return f"torch {torch.__version__} has no torch.nn.attention.flex_attention (needs >= 2.5)"
        return None
    if backend == "triton":
        # Imported lazily: triton is an optional dependency, and its interpret mode is fixed
        # when the kernel module is first imported.
        try:
            kernel = importlib.import_module("supergen_kernels.triton_tile_attention")
        except ImportError as exc:
            return f"triton cannot be imported ({exc}); install the 'triton' extra"
        except Exception as exc:  # noqa: BLE001 - any failure of a Triton install is "unavailable"
            # An installed Triton that is too old or broken fails while the kernel module is
            # being decorated (AttributeError on an API it lacks, RuntimeError from a backend
            # probe), not with an ImportError.
            return (
                f"importing the Triton kernel failed with {type(exc).__name__}: {exc} "
                f"(triton {_triton_version()}; the kernel needs Triton >= 3.0)"
            )
        missing = kernel.missing_features()
        if missing:
            return f"triton {_triton_version()} lacks {', '.join(missing)}"
        if device.type == "cuda" or kernel.INTERPRETED:
            return None
        gpu = "a CUDA GPU is present" if torch.cuda.is_available() else "there is no CUDA GPU"
        return (
            f"the Triton kernel needs CUDA tensors (got {device.type}; {gpu}), or "
            "TRITON_INTERPRET=1 set before supergen_kernels.triton_tile_attention is first "
            "imported to run it in Triton's CPU interpreter"
        )
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


def _triton_version() -> str:
    try:
        import triton
    except Exception:  # noqa: BLE001 - only for a message
        return "(version unknown)"
    return getattr(triton, "__version__", "(version unknown)")


def __getattr__(name: str):
    # flex_block_mask is imported on first use, like the backends, so importing this package
    # stays cheap and works even where FlexAttention does not.
    if name == "flex_block_mask":
        from .flex import flex_block_mask

        return flex_block_mask
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends that can run on tensors on ``device`` here."""
    device = torch.device(device)
    return [b for b in BACKENDS if _unavailable_reason(b, device) is None]


def tile_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: SparseLayout,
    backend: Literal["reference", "flex", "triton"] = "reference",
    *,
    order: Literal["tile_major", "canvas"] = "tile_major",
    scale: float | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sparse attention of ``q`` over ``k``/``v`` restricted to ``layout``. Forward only.

    Args:
        q, k, v: ``(batch, heads, seq, head_dim)`` (the SDPA convention; diffusers' dispatch
            uses ``(batch, seq, heads, head_dim)``: transpose(1, 2) first), one dtype and
            device, ``seq == layout.seq_len``.
        layout: a :class:`TileLayout` or :class:`BlockListLayout`; build it once and reuse it:
            it memoises its index tensors.
        backend: ``"reference"``, ``"flex"`` or ``"triton"``.
        order: sequence order of ``q, k, v`` and of the result. ``"tile_major"`` (default) is
            the layout's own order and costs nothing extra: permute hidden states once per
            forward with ``layout.to_tile_major`` / ``from_tile_major``. ``"canvas"`` (a
            :class:`TileLayout` only) accepts canvas (frame, row, col) order and permutes
            q, k, v in and the result out on every call: convenient, four gathers dearer.
        scale: softmax scale; ``head_dim ** -0.5`` when None.
        out: optional ``(batch, heads, seq, head_dim)`` tensor to write the result into.

    Returns:
        ``(batch, heads, seq, head_dim)`` in ``order``, dtype of ``q`` (``out`` when given).

    Raises:
        BackendUnavailable: the backend cannot run here; the message says why and which can.
    """
    reason = _unavailable_reason(backend, q.device)
    if reason is not None:
        raise BackendUnavailable(
            f"attention backend {backend!r} is unavailable: {reason}. "
            f"Available here for {q.device.type} tensors: {available_backends(q.device)}"
        )
    if q.shape[-2] != layout.seq_len:
        raise ValueError(f"sequence length {q.shape[-2]} != layout.seq_len {layout.seq_len}")
    if order == "canvas":
        if not isinstance(layout, TileLayout):
            raise ValueError("order='canvas' needs a TileLayout")
        q, k, v = (layout.to_tile_major(t) for t in (q, k, v))
    elif order != "tile_major":
        raise ValueError(f"order must be 'tile_major' or 'canvas', got {order!r}")

    # The Triton kernel writes straight into `out` (so every element it writes is its own);
    # the other backends and the canvas order go through a temporary.
    direct = out if order == "tile_major" else None
    if backend == "triton":
        from .triton_tile_attention import triton_tile_attention

        result = triton_tile_attention(q, k, v, layout, scale=scale, out=direct)
    elif backend == "flex":
        from .flex import flex_tile_attention

        result = flex_tile_attention(q, k, v, layout, scale=scale)
    else:
        from .reference import reference_attention

        result = reference_attention(q, k, v, layout, scale=scale)

    if order == "canvas":
        result = layout.from_tile_major(result)
    if out is None or result is out:
        return result
    return out.copy_(result)
