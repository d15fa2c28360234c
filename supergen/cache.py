"""Region-aware feature cache: reuse the model output of tiles (and blocks) that barely change.

A :class:`RegionCache` is a :class:`~supergen.refine.TilePolicy`. At each refinement step it decides,
per tile, *compute* or *reuse*; a reused tile's prediction is its current input plus the residual
(model output − input) last computed there. Everything it remembers is a map over the **canvas**
(latent ``(1, C, F, H, W)`` or per-element statistics ``(H, W)``), never per tile index, so the state
stays valid when the tile grid shifts: a tile reads whatever was last computed under its current
window, whichever tile computed it.

The estimator (per tile window ``W``, all statistics float32, averaged over channels and frames):

* input drift: ``D = Σ_W Σ_steps |x_s − x_{s−1}|`` accumulated since each element was last computed;
* gain: ``k = Σ_W |Δoutput| / Σ_W |Δinput|`` between the element's last two *computed* steps only.
  Reused steps never enter the history (writing reconstructed outputs would pin ``k`` at 1.0, the
  reference implementation's fault, which causes long runs of skips);
* predicted relative output change ``k · D / Σ_W |output|``; the tile is reused while it stays
  strictly under the tile's threshold (so threshold 0 reuses nothing).

The first ``warmup_steps`` and the last step are always computed, and no element goes more than
``max_consecutive`` steps without being recomputed.

Region rule (per tile): ``threshold = base · clamp((v_median / v) ** strength, min_scale, max_scale)``
where ``v`` is the tile's volatility, the relative change of its model output between its last two
computations, and ``v_median`` the median over this step's tiles. Quiet regions (sky, walls) so reuse
for longer and busy regions are recomputed sooner, at the same base threshold.

Classifier-free guidance: the adapter returns the guided prediction ``uncond + s·(cond − uncond)``
and the cache stores and decides on that one combined residual, so the conditional and
unconditional passes are always computed or reused together. That is the coherent choice: the
scheduler only consumes the combination, so the threshold bounds the error of exactly what it
consumes; deciding the branches apart would mix a fresh branch with a stale one, and the guidance
scale would multiply their mismatch by ``s``.

Block level (:class:`BlockCache`, off by default): inside computed tiles, a transformer block whose
input changed by less than ``block.threshold`` (relative L1) since it was last computed returns its
input plus its last residual. Its state is kept per guidance branch in canvas *token* coordinates
for the same reason as above.

Every tile decision depends only on the canvas latent, the step, the tiles and the state derived
from the blended predictions, which every rank holds identically: the tile-parallel runner lets
every rank take every decision itself. (Block decisions are not replicated: a rank's block state is
filled by the tiles it computes, one more reason the block cache is off by default.)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from diffusers.hooks import FirstBlockCacheConfig, HookRegistry, MagCacheConfig, ModelHook
from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS
from diffusers.hooks._helpers import TransformerBlockRegistry
from diffusers.hooks.hooks import BaseState, StateManager

from .config import CacheConfig
from .errors import SuperGenError
from .tiling import Tile, Window, accumulate, crop

_EPS = 1e-12
_COUNTER_HOOK = "supergen_block_counter"
_BLOCK_CACHE_HOOK = "supergen_block_cache"


# ---- report -------------------------------------------------------------------------------------
class ComputeAll:
    """The policy without a cache: every tile is computed at every step."""

    def start(self, num_steps):
        pass

    def scope(self, step, tiles):
        return contextlib.nullcontext()

    def decide(self, step, timestep, latents, tiles):
        return [True] * len(tiles)

    def predictions(self, step, latents, tiles, computed):
        return computed

    def observe(self, step, latents, prediction):
        pass


@dataclass
class TileRecord:
    """One tile at one step: where it wrote on the canvas and what it cost."""

    #: The canvas rows/columns the tile writes (its owned part of the window), latent units.
    rows: Window
    cols: Window
    computed: bool
    #: Transformer block forwards actually run for this tile (all guidance branches).
    blocks: int = 0


@dataclass
class StepReport:
    """What the cache did at one refinement step."""

    step: int
    tiles: list[TileRecord]
    #: Block forwards of one uncached tile (blocks × guidance branches); 0 when not counted.
    blocks_per_tile: int = 0

    @property
    def computed(self) -> int:
        return sum(t.computed for t in self.tiles)


@dataclass
class CacheReport:
    """Per-step cache decisions of one render (``out.cache_report``)."""

    canvas: tuple[int, int]
    steps: list[StepReport] = field(default_factory=list)

    @property
    def tile_steps(self) -> int:
        return sum(len(s.tiles) for s in self.steps)

    @property
    def tiles_skipped(self) -> int:
        return sum(len(s.tiles) - s.computed for s in self.steps)

    @property
    def block_share_skipped(self) -> float:
        """Fraction of all block forwards an uncached run would do that were skipped (tile and block level)."""
        total = sum(s.blocks_per_tile * len(s.tiles) for s in self.steps)
        done = sum(t.blocks for s in self.steps for t in s.tiles)
        return 0.0 if total == 0 else 1.0 - done / total


def _owned(window: Window, weight_1d: torch.Tensor | None) -> Window:
    """The part of ``window`` with non-zero blend weight (clamp tiles only write their own segment)."""
    if weight_1d is None:
        return window
    nz = torch.nonzero(weight_1d > 0).flatten()
    first, last = int(nz[0]), int(nz[-1])
    return Window((window.start + first) % window.canvas, last - first + 1, window.canvas)


def _record(tile: Tile, computed: bool) -> TileRecord:
    rows_w = cols_w = None
    if tile.weight is not None:
        rows_w, cols_w = tile.weight.amax(dim=1), tile.weight.amax(dim=0)
    return TileRecord(_owned(tile.rows, rows_w), _owned(tile.cols, cols_w), computed)


# ---- block hooks --------------------------------------------------------------------------------
def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's transformer blocks, found by the same names diffusers' own cache hooks use."""
    blocks = []
    for name, child in model.named_children():
        if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(child, torch.nn.ModuleList):
            blocks.extend(child)
    return blocks


class _Scope:
    """The tiles of the transformer call in progress, shared by the block hooks of one render."""

    def __init__(self) -> None:
        self.tiles: list[Tile] = []


class _CounterHook(ModelHook):
    """Counts block forwards that really run; registered innermost so cache hooks that skip bypass it."""

    def __init__(self, scope: _Scope, counts: dict[int, int]):
        super().__init__()
        self.scope, self.counts = scope, counts

    def new_forward(self, module, *args, **kwargs):
        for tile in self.scope.tiles:
            self.counts[tile.index] = self.counts.get(tile.index, 0) + 1
        return self.fn_ref.original_forward(*args, **kwargs)


class _BranchState(BaseState):
    """Per guidance branch: the context name's prefix keys it (``cond`` / ``uncond``)."""

    def reset(self):
        pass


@dataclass
class _BlockMemory:
    """One block's last computed input and residual per canvas token ``(F', H', W', D)``, float32."""

    inputs: torch.Tensor
    residual: torch.Tensor
    #: ``(H', W')`` bool: tokens that have been computed at least once.
    filled: torch.Tensor
    #: ``(H', W')`` int: consecutive reuses since the token was last computed.
    streak: torch.Tensor


class _BlockCacheHook(ModelHook):
    """Reuses one block's residual when its input barely moved since the block last ran there."""

    _is_stateful = True

    def __init__(self, cache: "BlockCache", index: tuple[int, int]):
        super().__init__()
        self.cache, self.index = cache, index
        # Only so diffusers' cache_context reaches this hook: the branch is the context name's prefix.
        self.state_manager = StateManager(_BranchState)
        self._metadata = None

    def initialize_hook(self, module):
        self._metadata = TransformerBlockRegistry.get(type(module))
        return module

    def reset_state(self, module):
        return module

    def new_forward(self, module, *args, **kwargs):
        hidden = self._metadata._get_parameter_from_args_kwargs("hidden_states", args, kwargs)
        branch = self.state_manager.context.name.split("/")[0]
        key = (branch, self.index)
        tokens = self.cache.token_index(self.cache.scope.tiles)
        x = hidden.float()
        memory = self.cache.memory.get(key)
        if memory is not None and self.cache.may_reuse(memory, tokens, x):
            self.cache.count_reuse(memory, tokens, reused=True)
            return (x + self.cache.gather(memory.residual, tokens, hidden.shape)).to(hidden.dtype)
        output = self.fn_ref.original_forward(*args, **kwargs)
        if not isinstance(output, torch.Tensor):
            # CogVideoX / HunyuanVideo blocks also return the text stream; a residual of the video
            # stream alone would let the two drift apart, so refuse rather than cache half a block.
            raise SuperGenError(
                f"cache.block needs transformer blocks that return one tensor (Wan, LTX); "
                f"{type(module).__name__} returns {type(output).__name__}. Use cache.block.enabled=false"
            )
        if memory is None:
            memory = self.cache.new_memory(x.shape[-1], x.device)
            self.cache.memory[key] = memory
        self.cache.store(memory, tokens, x, output.float() - x)
        self.cache.count_reuse(memory, tokens, reused=False)
        return output


class BlockCache:
    """Block-level reuse inside computed tiles (per tile window and per block, in canvas token coordinates).

    Memory: two float32 canvases of tokens × hidden size per block and guidance branch, which is
    why it is off by default; :mod:`scripts.bench_cache` measures whether it pays.

    Args:
        canvas: canvas latent ``(frames, H, W)``.
        patch: transformer patch ``(pt, ph, pw)``.
        threshold: relative L1 change of a block's input under which its residual is reused.
        max_consecutive: a token is recomputed after this many consecutive reuses.
    """

    def __init__(self, scope: _Scope, canvas: tuple[int, int, int], patch: tuple[int, int, int], threshold: float, max_consecutive: int):
        self.scope = scope
        self.grid = (canvas[0] // patch[0], canvas[1] // patch[1], canvas[2] // patch[2])
        self.patch = patch
        self.threshold, self.max_consecutive = threshold, max_consecutive
        #: Keyed by (guidance branch, (model, block)): Wan 2.2 has two expert transformers.
        self.memory: dict[tuple[str, tuple[int, int]], _BlockMemory] = {}

    def new_memory(self, dim: int, device: torch.device) -> _BlockMemory:
        f, h, w = self.grid
        return _BlockMemory(
            torch.zeros(f, h, w, dim, device=device), torch.zeros(f, h, w, dim, device=device),
            torch.zeros(h, w, dtype=torch.bool, device=device), torch.zeros(h, w, dtype=torch.int64, device=device),
        )

    def token_index(self, tiles: list[Tile]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per tile: the canvas token rows ``(h',)`` and columns ``(w',)`` its tokens sit at."""
        _, ph, pw = self.patch
        return [(t.rows.positions()[::ph] // ph, t.cols.positions()[::pw] // pw) for t in tiles]

    def gather(self, canvas_tokens: torch.Tensor, tokens, shape) -> torch.Tensor:
        """``(F', H', W', D)`` at the tiles' tokens → ``shape`` = ``(B, F'·h'·w', D)`` in Wan's token order."""
        parts = [canvas_tokens[:, r.to(canvas_tokens.device)][:, :, c.to(canvas_tokens.device)].reshape(-1, shape[-1]) for r, c in tokens]
        return torch.stack(parts)

    def store(self, memory: _BlockMemory, tokens, x: torch.Tensor, residual: torch.Tensor) -> None:
        for b, (r, c) in enumerate(tokens):
            r, c = r.to(x.device), c.to(x.device)
            shape = (self.grid[0], len(r), len(c), x.shape[-1])
            memory.inputs[:, r[:, None], c[None, :]] = x[b].reshape(shape)
            memory.residual[:, r[:, None], c[None, :]] = residual[b].reshape(shape)
            memory.filled[r[:, None], c[None, :]] = True

    def may_reuse(self, memory: _BlockMemory, tokens, x: torch.Tensor) -> bool:
        for r, c in tokens:
            r, c = r.to(x.device), c.to(x.device)
            if not bool(memory.filled[r[:, None], c[None, :]].all()):
                return False
            if int(memory.streak[r[:, None], c[None, :]].max()) >= self.max_consecutive:
                return False
        previous = self.gather(memory.inputs, tokens, x.shape)
        change = (x - previous).abs().sum() / previous.abs().sum().clamp_min(_EPS)
        return float(change) < self.threshold

    def count_reuse(self, memory: _BlockMemory, tokens, reused: bool) -> None:
        for r, c in tokens:
            index = (r[:, None].to(memory.streak.device), c[None, :].to(memory.streak.device))
            memory.streak[index] = memory.streak[index] + 1 if reused else 0


# ---- the tile-level policy ----------------------------------------------------------------------
@dataclass
class TileEstimate:
    """What :class:`RegionCache` estimated for one tile at one step (for reports and tests)."""

    #: ``|Δoutput| / |Δinput|`` over the window from its last two computed steps (None: not known yet).
    gain: float | None
    #: Predicted relative change of the tile's output since its last computation.
    change: float | None
    threshold: float


class RegionCache:
    """Tile-level region-aware cache (see the module docstring for the rule).

    Args:
        threshold: base threshold on the predicted relative output change (0 reuses nothing).
        warmup_steps: the first steps are always computed (two computations give the first gain).
        max_consecutive: maximum steps an element goes without being recomputed.
        region_strength, min_scale, max_scale: the region rule; strength 0 gives every tile ``threshold``.

    State (float32, ``(1, C, F, H, W)`` canvases and ``(H, W)`` per-element maps over the canvas latent):
    ``residual``, ``inputs`` (input at the last computation), ``previous`` (last step's latent);
    ``drift``, ``out_mag``, ``d_out``, ``d_in`` (means over C and F), ``count`` and ``streak`` (int).
    """

    def __init__(self, threshold: float, warmup_steps: int = 2, max_consecutive: int = 3,
                 region_strength: float = 1.0, min_scale: float = 0.5, max_scale: float = 2.0):
        self.threshold, self.warmup_steps, self.max_consecutive = threshold, warmup_steps, max_consecutive
        self.region_strength, self.min_scale, self.max_scale = region_strength, min_scale, max_scale
        self.num_steps = 0
        self.estimates: list[list[TileEstimate]] = []
        self._state: dict[str, torch.Tensor] = {}
        self._fresh: torch.Tensor | None = None

    def start(self, num_steps: int) -> None:
        self.num_steps = num_steps
        self.estimates = []
        self._state = {}

    def scope(self, step, tiles):
        return contextlib.nullcontext()

    def _window_sums(self, tile: Tile) -> dict[str, torch.Tensor]:
        """Sums of the per-element maps over the part of the window the tile writes."""
        owned = None if tile.weight is None else (tile.weight > 0).to(self._state["drift"].device)
        sums = {}
        for name in ("drift", "out_mag", "d_out", "d_in"):
            values = crop(self._state[name], tile)
            sums[name] = values.sum() if owned is None else values[owned].sum()
        count, streak = crop(self._state["count"], tile), crop(self._state["streak"], tile)
        if owned is not None:
            count, streak = count[owned], streak[owned]
        sums["count"], sums["streak"] = count.min(), streak.max()
        return sums

    def decide(self, step, timestep, latents, tiles):
        x = latents.float()
        if not self._state:
            h, w = x.shape[-2:]
            zeros = lambda dtype=torch.float32: torch.zeros(h, w, dtype=dtype, device=x.device)  # noqa: E731
            self._state = {
                "residual": torch.zeros_like(x), "inputs": torch.zeros_like(x), "previous": x.clone(),
                "drift": zeros(), "out_mag": zeros(), "d_out": zeros(), "d_in": zeros(),
                "count": zeros(torch.int64), "streak": zeros(torch.int64),
            }
        state = self._state
        state["drift"] += (x - state["previous"]).abs().mean(dim=(0, 1, 2))
        state["previous"] = x.clone()

        forced = step < self.warmup_steps or step >= self.num_steps - 1
        sums = [self._window_sums(tile) for tile in tiles]
        known = [bool(s["count"] >= 2) for s in sums]
        volatility = [float(s["d_out"] / s["out_mag"].clamp_min(_EPS)) for s in sums]
        reference = float(np.median([v for v, k in zip(volatility, known) if k])) if any(known) else 0.0
        decisions, estimates = [], []
        for s, is_known, v in zip(sums, known, volatility):
            threshold = self.threshold * self._region_scale(v, reference)
            if not is_known:
                estimates.append(TileEstimate(None, None, threshold))
                decisions.append(True)
                continue
            gain = s["d_out"] / s["d_in"].clamp_min(_EPS)
            change = float(gain * s["drift"] / s["out_mag"].clamp_min(_EPS))
            estimates.append(TileEstimate(float(gain), change, threshold))
            reuse = not forced and int(s["streak"]) < self.max_consecutive and change < threshold
            decisions.append(not reuse)
        self.estimates.append(estimates)
        # Elements written only by computed tiles get fresh statistics in observe().
        reused_cover = torch.zeros(x.shape[-2:], device=x.device)
        for tile, compute in zip(tiles, decisions):
            if not compute:
                accumulate(reused_cover, tile, torch.ones(tile.shape, device=x.device))
        self._fresh = reused_cover == 0
        return decisions

    def _region_scale(self, volatility: float, reference: float) -> float:
        if self.region_strength == 0 or reference <= 0:
            return 1.0
        ratio = (reference / max(volatility, _EPS)) ** self.region_strength
        return min(self.max_scale, max(self.min_scale, ratio))

    def predictions(self, step, latents, tiles, computed):
        out = dict(computed)
        for tile in tiles:
            if tile.index not in out:
                out[tile.index] = crop(latents, tile).float() + crop(self._state["residual"], tile)
        return out

    def observe(self, step, latents, prediction):
        state, fresh = self._state, self._fresh
        x = latents.float()
        output = prediction.float()
        residual = output - x
        # Gain history from computed steps only: |Δoutput| and |Δinput| against the last computation.
        had_one = fresh & (state["count"] >= 1)
        d_out = (output - (state["inputs"] + state["residual"])).abs().mean(dim=(0, 1, 2))
        d_in = (x - state["inputs"]).abs().mean(dim=(0, 1, 2))
        state["d_out"] = torch.where(had_one, d_out, state["d_out"])
        state["d_in"] = torch.where(had_one, d_in, state["d_in"])
        state["residual"] = torch.where(fresh, residual, state["residual"])
        state["inputs"] = torch.where(fresh, x, state["inputs"])
        state["out_mag"] = torch.where(fresh, output.abs().mean(dim=(0, 1, 2)), state["out_mag"])
        state["drift"] = torch.where(fresh, torch.zeros_like(state["drift"]), state["drift"])
        state["count"] = torch.where(fresh, (state["count"] + 1).clamp(max=2), state["count"])
        state["streak"] = torch.where(fresh, torch.zeros_like(state["streak"]), state["streak"] + 1)


# ---- reporting wrapper and construction ---------------------------------------------------------
class Reported:
    """Wraps any :class:`TilePolicy`: records per step which tiles were computed and how many blocks ran."""

    def __init__(self, policy: "TilePolicy", canvas: tuple[int, int], scope: _Scope, counts: dict[int, int], blocks_per_tile: int):
        self.policy, self.scope_state, self.counts = policy, scope, counts
        self.report = CacheReport(canvas)
        self.blocks_per_tile = blocks_per_tile

    def start(self, num_steps):
        self.report.steps = []
        self.policy.start(num_steps)

    @contextlib.contextmanager
    def scope(self, step, tiles):
        self.scope_state.tiles = tiles
        try:
            with self.policy.scope(step, tiles):
                yield
        finally:
            self.scope_state.tiles = []

    def decide(self, step, timestep, latents, tiles):
        self.counts.clear()
        decisions = self.policy.decide(step, timestep, latents, tiles)
        self.report.steps.append(StepReport(step, [_record(t, c) for t, c in zip(tiles, decisions)], self.blocks_per_tile))
        return decisions

    def predictions(self, step, latents, tiles, computed):
        return self.policy.predictions(step, latents, tiles, computed)

    def observe(self, step, latents, prediction):
        # Records are in plan order, and a tile's index is its place in the plan.
        for index, record in enumerate(self.report.steps[-1].tiles):
            record.blocks = self.counts.get(index, 0)
        self.policy.observe(step, latents, prediction)


def _transformers(pipe) -> list[torch.nn.Module]:
    return [m for m in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None)) if m is not None]


@contextlib.contextmanager
def cache_policy(cfg: CacheConfig, pipe, canvas: tuple[int, int, int], patch: tuple[int, int, int], num_steps: int,
                 guidance: bool) -> Iterator[Reported]:
    """The tile policy ``cfg`` asks for, with its hooks installed on ``pipe``'s transformer(s) while in use.

    Args:
        cfg: the ``cache`` config section.
        pipe: the wrapped diffusers pipeline (its ``transformer`` and, for Wan 2.2, ``transformer_2``).
        canvas: canvas latent ``(frames, H, W)``; patch: the transformer's ``(pt, ph, pw)``.
        num_steps: refinement steps of this render (MagCache interpolates its ratios to it).
        guidance: whether each tile runs a conditional and an unconditional forward.

    Yields:
        A :class:`Reported` policy; its ``report`` is complete when the refinement has run.
    """
    models = _transformers(pipe)
    scope, counts = _Scope(), {}
    policy_name = cfg.policy if cfg.enabled else "none"
    policy: "TilePolicy" = ComputeAll()
    installed: list[tuple[HookRegistry, str]] = []
    enabled_cache: list[torch.nn.Module] = []
    try:
        # The counter goes on first (innermost), so a cache hook that skips a block also skips the count.
        for model in models:
            for block in transformer_blocks(model):
                registry = HookRegistry.check_if_exists_or_initialize(block)
                registry.register_hook(_CounterHook(scope, counts), _COUNTER_HOOK)
                installed.append((registry, _COUNTER_HOOK))
        if policy_name == "region":
            policy = RegionCache(cfg.threshold, cfg.warmup_steps, cfg.max_consecutive,
                                 cfg.region.strength, cfg.region.min_scale, cfg.region.max_scale)
            if cfg.block.enabled:
                blocks = BlockCache(scope, canvas, patch, cfg.block.threshold, cfg.max_consecutive)
                for m, model in enumerate(models):
                    for i, block in enumerate(transformer_blocks(model)):
                        registry = HookRegistry.check_if_exists_or_initialize(block)
                        registry.register_hook(_BlockCacheHook(blocks, (m, i)), _BLOCK_CACHE_HOOK)
                        installed.append((registry, _BLOCK_CACHE_HOOK))
        elif policy_name in ("fbc", "magcache"):
            for model in models:
                if policy_name == "fbc" and len(transformer_blocks(model)) < 2:
                    # diffusers' FBC splits the blocks into a first and a tail: it needs two.
                    raise SuperGenError(f"cache.policy=fbc needs a transformer with at least 2 blocks; {type(model).__name__} has 1")
                model.enable_cache(_baseline_config(cfg, policy_name, num_steps))
                enabled_cache.append(model)
        _refresh_contexts(models)
        blocks_per_tile = len(transformer_blocks(models[0])) * (2 if guidance else 1) if models else 0
        yield Reported(policy, canvas[1:], scope, counts, blocks_per_tile)
    finally:
        for model in enabled_cache:
            model.disable_cache()
        for registry, name in reversed(installed):
            registry.remove_hook(name, recurse=False)
        _refresh_contexts(models)


def _refresh_contexts(models: list[torch.nn.Module]) -> None:
    # cache_context reaches block hooks through a list of registries cached on first use (e.g. by the
    # sketch's own cache_context calls); adding or removing block hooks makes it stale.
    for model in models:
        HookRegistry.check_if_exists_or_initialize(model).invalidate_child_registries_cache()


def _baseline_config(cfg: CacheConfig, name: str, num_steps: int):
    """diffusers' own hook config at the same settings: threshold, warmup, max consecutive skips."""
    if name == "fbc":
        return FirstBlockCacheConfig(threshold=cfg.threshold)
    if cfg.mag_ratios is None:
        # diffusers' calibration mode: skips nothing and logs the ratios to put in cache.mag_ratios.
        return MagCacheConfig(calibrate=True, num_inference_steps=num_steps)
    if len(cfg.mag_ratios) < 2:
        raise SuperGenError("cache.mag_ratios needs one ratio per step (at least two); run once without it to calibrate")
    return MagCacheConfig(
        threshold=cfg.threshold, max_skip_steps=cfg.max_consecutive, retention_ratio=cfg.warmup_steps / num_steps,
        num_inference_steps=num_steps, mag_ratios=list(cfg.mag_ratios),
    )


# ---- picture ------------------------------------------------------------------------------------
_COMPUTED = np.array([60, 200, 60], dtype=np.float32)  # green, RGB
_REUSED = np.array([220, 60, 60], dtype=np.float32)  # red


def cache_map(report: CacheReport, thumbnail: np.ndarray | None = None, panel_width: int = 160) -> np.ndarray:
    """A picture of the report: one panel per step (left to right), each the canvas with its tiles.

    A computed tile is tinted green, a reused one red; with block-level caching the green fades toward
    red in proportion to the blocks skipped inside the tile. Tile borders are drawn in white.

    Args:
        thumbnail: an RGB ``(h, w, 3)`` uint8 frame of the video to draw under the tiles (grey if None).

    Returns:
        ``(panel_h + 18, steps × (panel_width + 4), 3)`` uint8 RGB.
    """
    import cv2

    height, width = report.canvas
    scale = panel_width / width
    panel_h = max(1, round(height * scale))
    if thumbnail is None:
        base = np.full((panel_h, panel_width, 3), 128, np.float32)
    else:
        grey = cv2.cvtColor(thumbnail, cv2.COLOR_RGB2GRAY)
        base = np.repeat(cv2.resize(grey, (panel_width, panel_h), interpolation=cv2.INTER_AREA)[..., None], 3, -1).astype(np.float32)
    panels = []
    for step in report.steps:
        tint = np.zeros((height, width, 3), np.float32)
        owner = np.zeros((height, width), np.int32)
        for index, tile in enumerate(step.tiles):
            share = 1.0
            if tile.computed and step.blocks_per_tile:
                share = tile.blocks / step.blocks_per_tile
            colour = _COMPUTED * share + _REUSED * (1 - share) if tile.computed else _REUSED
            for rs, _ in tile.rows.pieces():
                for cs, _ in tile.cols.pieces():
                    tint[rs, cs] = colour
                    owner[rs, cs] = index
        tint = cv2.resize(tint, (panel_width, panel_h), interpolation=cv2.INTER_NEAREST)
        owner = cv2.resize(owner.astype(np.float32), (panel_width, panel_h), interpolation=cv2.INTER_NEAREST)
        # One-pixel borders where the owning tile changes (a wrapped tile's two pieces get one too).
        edge = np.zeros(owner.shape, bool)
        edge[:, 1:] |= owner[:, 1:] != owner[:, :-1]
        edge[1:, :] |= owner[1:, :] != owner[:-1, :]
        panel = 0.45 * base + 0.55 * tint
        panel[edge] = 255
        label = np.zeros((18, panel_width, 3), np.uint8)
        cv2.putText(label, f"step {step.step}: {step.computed}/{len(step.tiles)}", (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
        column = np.concatenate([label.astype(np.float32), panel])
        panels.append(np.pad(column, ((0, 0), (2, 2), (0, 0))))
    return np.clip(np.concatenate(panels, axis=1), 0, 255).astype(np.uint8)


def write_cache_map(path: str | Path, report: CacheReport, thumbnail: np.ndarray | None = None) -> None:
    """Write :func:`cache_map` as a PNG (OpenCV, so BGR on disk)."""
    import cv2

    picture = cache_map(report, thumbnail)
    if not cv2.imwrite(str(path), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        raise SuperGenError(f"could not write the cache map to {str(path)!r}")
