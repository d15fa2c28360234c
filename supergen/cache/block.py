"""Block-level reuse inside computed tiles, per canvas token and per block (``cache.block``).

Shaped like diffusers' ``hooks/first_block_cache.py``: :class:`BlockCacheConfig` → :class:`BlockState`
(one per block and guidance branch, kept by a diffusers ``StateManager`` keyed on the branch of the
active cache context) → :class:`BlockCacheHook` → :func:`apply_block_cache`.

A transformer block whose input changed by less than ``cache.block.input_threshold`` (relative L1) since it last ran
under the tiles in progress returns its input plus its last residual. The state is a canvas of
tokens ``(F', H', W', D)`` rather than a tile's tokens, for the same reason as the tile cache: a
shifted tile reads what was last computed under its current window, in frames too when the clip is
refined in time windows (a tile's tokens are those of its time window's frames, all frames without).
The tiles in progress come from :func:`~supergen.cache.windows.current_batch`.

Memory: two token canvases per block and branch, in the model's dtype (the block's own input and
output dtype; the change is measured in float32), plus two ``(F', H', W')`` maps:
:func:`block_cache_bytes`, which the planner adds to the refinement stage, so a render whose state
cannot fit is refused before it starts. That is why it is off by default. Its state is filled by the
tiles a rank computes, so under tile parallelism decisions would differ between ranks: the pipeline
refuses it with several ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.hooks import HookRegistry, ModelHook

from .. import compat
from ..compat import BaseState
from ..config import CacheConfig
from ..errors import SuperGenError
from .reuse import _EPS
from .report import transformer_blocks
from .windows import KeyedStates, branch_of, current_batch

BLOCK_CACHE_HOOK = "supergen_block_cache"
_DEFAULT = CacheConfig()


@dataclass
class BlockCacheConfig:
    """Settings of the block cache: ``cache.block.input_threshold`` and ``cache.max_consecutive``, whose
    defaults (and meanings) are the config's (:mod:`supergen.config`).

    Args:
        canvas: canvas latent ``(frames, H, W)``; patch: the transformer's ``(pt, ph, pw)``.
        threshold: relative L1 change of a block's input under which its residual is reused.
        max_consecutive: a token is recomputed after this many consecutive reuses.
    """

    canvas: tuple[int, int, int]
    patch: tuple[int, int, int]
    threshold: float = _DEFAULT.block.input_threshold
    max_consecutive: int = _DEFAULT.max_consecutive

    @classmethod
    def from_config(cls, cache: CacheConfig, canvas: tuple[int, int, int], patch: tuple[int, int, int]) -> "BlockCacheConfig":
        """The settings a ``cache`` config section asks for, on this render's canvas and patch."""
        return cls(canvas, patch, cache.block.input_threshold, cache.max_consecutive)


class BlockState(BaseState):
    """One block's last computed input and residual per canvas token, for one guidance branch."""

    def __init__(self, grid: tuple[int, int, int]):
        self.grid = grid
        self.reset()

    def reset(self) -> None:
        #: ``(F', H', W', D)`` in the block's dtype, allocated at the first forward (D is the block's width).
        self.inputs: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None
        #: ``(F', H', W')`` bool: tokens computed at least once; int: consecutive reuses since.
        self.filled: torch.Tensor | None = None
        self.streak: torch.Tensor | None = None

    def allocate(self, dim: int, device: torch.device, dtype: torch.dtype) -> None:
        f, h, w = self.grid
        self.inputs = torch.zeros(f, h, w, dim, device=device, dtype=dtype)
        self.residual = torch.zeros(f, h, w, dim, device=device, dtype=dtype)
        self.filled = torch.zeros(f, h, w, dtype=torch.bool, device=device)
        self.streak = torch.zeros(f, h, w, dtype=torch.int64, device=device)


class BlockCacheHook(ModelHook):
    """Reuses one block's residual when its input barely moved since the block last ran there."""

    _is_stateful = True

    def __init__(self, config: BlockCacheConfig):
        super().__init__()
        self.config = config
        self.grid = tuple(c // p for c, p in zip(config.canvas, config.patch))
        # Keyed on the guidance branch only: the state is already a map over the whole canvas.
        self.state_manager = KeyedStates(BlockState, branch_of, (self.grid,))
        self._metadata = None

    def initialize_hook(self, module):
        self._metadata = compat.TransformerBlockRegistry.get(type(module))
        return module

    def reset_state(self, module):
        self.state_manager.reset()
        return module

    def _tokens(self, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per tile in progress, the index of its tokens in a ``(F', H', W', ...)`` canvas: its frames
        ``(f', 1, 1)`` (its time window's, else all), rows ``(1, h', 1)`` and columns ``(1, 1, w')``."""
        pt, ph, pw = self.config.patch
        index = []
        for t in current_batch().tiles:
            frames = torch.arange(self.grid[0]) if t.frames is None else t.frames.positions()[::pt] // pt
            rows, cols = t.rows.positions()[::ph] // ph, t.cols.positions()[::pw] // pw
            index.append((frames.to(device)[:, None, None], rows.to(device)[None, :, None], cols.to(device)[None, None, :]))
        return index

    @staticmethod
    def _gather(canvas_tokens: torch.Tensor, tokens, shape) -> torch.Tensor:
        """``(F', H', W', D)`` at the tiles' tokens → ``shape`` = ``(B, f'·h'·w', D)`` in Wan's token order."""
        return torch.stack([canvas_tokens[index].reshape(-1, shape[-1]) for index in tokens])

    def _may_reuse(self, state: BlockState, tokens, x: torch.Tensor) -> bool:
        for index in tokens:
            if not bool(state.filled[index].all()) or int(state.streak[index].max()) >= self.config.max_consecutive:
                return False
        previous = self._gather(state.inputs, tokens, x.shape).float()
        change = (x - previous).abs().sum() / previous.abs().sum().clamp_min(_EPS)
        return float(change) < self.config.threshold

    def new_forward(self, module, *args, **kwargs):
        hidden = compat.block_argument(self._metadata, "hidden_states", args, kwargs)
        state: BlockState = self.state_manager.get_state()
        tokens = self._tokens(hidden.device)
        x = hidden.float()
        if state.inputs is not None and self._may_reuse(state, tokens, x):
            for index in tokens:
                state.streak[index] += 1
            return (x + self._gather(state.residual, tokens, hidden.shape).float()).to(hidden.dtype)
        output = self.fn_ref.original_forward(*args, **kwargs)
        if not isinstance(output, torch.Tensor):
            # CogVideoX / HunyuanVideo blocks also return the text stream; a residual of the video
            # stream alone would let the two drift apart, so refuse rather than cache half a block.
            raise SuperGenError(
                f"cache.block needs transformer blocks that return one tensor (Wan, LTX); "
                f"{type(module).__name__} returns {type(output).__name__}. Use cache.block.enabled=false"
            )
        if state.inputs is None:
            state.allocate(x.shape[-1], x.device, hidden.dtype)
        residual = (output.float() - x).to(hidden.dtype)
        for b, index in enumerate(tokens):
            shape = (*(len(i.flatten()) for i in index), x.shape[-1])
            state.inputs[index] = hidden[b].reshape(shape)
            state.residual[index] = residual[b].reshape(shape)
            state.filled[index] = True
            state.streak[index] = 0
        return output


def block_cache_bytes(grid: tuple[int, int, int], dim: int, blocks: int, branches: int, itemsize: int) -> int:
    """Bytes of the block cache's state: per block and guidance branch, inputs and residuals of
    every canvas token ``(F', H', W', dim)`` in the model dtype (``itemsize``), and the ``(F', H', W')``
    filled (bool) and streak (int64) maps (per frame: time windows reach some frames and not others)."""
    f, h, w = grid
    return blocks * branches * f * h * w * (2 * dim * itemsize + 1 + 8)


def apply_block_cache(models: list[torch.nn.Module], config: BlockCacheConfig) -> list[tuple[HookRegistry, str]]:
    """Register a :class:`BlockCacheHook` on every transformer block of ``models``; returns what to remove."""
    installed = []
    for model in models:
        for block in transformer_blocks(model):
            registry = HookRegistry.check_if_exists_or_initialize(block)
            registry.register_hook(BlockCacheHook(config), BLOCK_CACHE_HOOK)
            installed.append((registry, BLOCK_CACHE_HOOK))
    return installed
