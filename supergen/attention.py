"""Attention backends, and tile(+halo) attention over a whole canvas (``tiling.mode: attention``).

Two uses, one config key (``attention.backend``):

- ``shift`` / ``overlap`` modes run dense attention inside each tile through diffusers' own
  dispatcher: ``sdpa`` → diffusers ``native``, ``flex`` → ``flex``, ``xformers`` → ``xformers``.
- ``attention`` mode runs the whole canvas in one forward in which every token attends only to its
  tile's window grown by a halo (block-sparse, cost linear in tiles) with the kernels of
  ``supergen_kernels``: ``sdpa`` → SDPA with a boolean mask, ``flex`` → FlexAttention's
  ``BlockMask``, ``triton`` → the project's block-sparse Triton kernel.

The sparse path replaces only the self-attention processor of each transformer block for the
duration of the refinement (the adapter's ``tile_attention``, e.g. Wan's ``WanTileAttnProcessor``);
the model's code and weights stay diffusers'. The windows move every step as shift-mode tiles do:
the processors read the current step's layout from one :class:`StepLayouts`, which the refiner
advances (``TileRefiner.on_step``).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from .errors import SuperGenError, install_hint

#: Backend names of diffusers' attention dispatcher for dense (per-tile) attention.
DENSE = {"sdpa": "native", "flex": "flex", "xformers": "xformers"}
#: Backends of supergen_kernels for tile(+halo) attention over the canvas.
SPARSE_KERNELS = {"sdpa": "reference", "flex": "flex", "triton": "triton"}


def _xformers_reason(device: torch.device) -> str | None:
    try:
        import xformers.ops  # noqa: F401
    except ImportError:
        return f"xformers is not installed ({install_hint('xformers')})"
    return None if device.type == "cuda" else "xformers has no CPU kernels"


def available_backends(device: torch.device, sparse: bool) -> list[str]:
    """The values of ``attention.backend`` usable here, for dense per-tile or sparse canvas attention."""
    from supergen_kernels import available_backends as kernel_backends

    if sparse:
        runnable = set(kernel_backends(device))
        return [name for name, kernel in SPARSE_KERNELS.items() if kernel in runnable]
    return [name for name in DENSE if name != "xformers" or _xformers_reason(device) is None]


def check_backend(name: str, device: torch.device, sparse: bool, seq_len: int | None = None) -> None:
    """Raise a :class:`SuperGenError` saying why ``name`` cannot run here and what can.

    Args:
        seq_len: tokens of the canvas in ``tiling.mode=attention``; ``sdpa`` there builds a dense
            ``seq_len²`` boolean mask, refused here (before any compute) above the reference kernel's limit.
    """
    usable = available_backends(device, sparse)
    if sparse and name == "sdpa" and seq_len is not None:
        from supergen_kernels.reference import MAX_DENSE_MASK_ELEMENTS

        if seq_len * seq_len > MAX_DENSE_MASK_ELEMENTS:
            others = [b for b in usable if b != "sdpa"]
            raise SuperGenError(
                f"attention.backend='sdpa' with tiling.mode=attention builds a dense {seq_len}x{seq_len} mask "
                f"({seq_len * seq_len / 2**30:,.1f} GiB) for this canvas; it is limited to sequences of "
                f"{int(MAX_DENSE_MASK_ELEMENTS ** 0.5)} tokens. Use attention.backend="
                + (" or ".join(repr(b) for b in others) if others else "'flex' or 'triton' (neither runs here)")
                + " (block-sparse), or tiling.mode=shift"
            )
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


class StepLayouts:
    """The tile(+halo) layout of the refinement step in progress, shared by every block's processor.

    Holds a ``supergen_kernels.LayoutCycle`` (the windows move every step) or one fixed
    ``TileLayout``; calling it with a step index makes that step's layout current.
    """

    def __init__(self, layouts):
        from supergen_kernels import TileLayout

        self._fixed = layouts if isinstance(layouts, TileLayout) else None
        self._cycle = None if self._fixed is not None else layouts
        self.step = 0

    def __call__(self, step: int) -> None:
        self.step = step

    @property
    def layout(self):
        """The ``TileLayout`` of the current step (the cycle builds each offset's layout once)."""
        return self._fixed if self._fixed is not None else self._cycle[self.step]


@contextlib.contextmanager
def dense_backend(name: str) -> Iterator[None]:
    """diffusers' dispatcher set to the backend for per-tile attention (a no-op for PyTorch's own SDPA)."""
    if name == "sdpa":
        yield
        return
    from diffusers import attention_backend

    with attention_backend(DENSE[name]):
        yield
