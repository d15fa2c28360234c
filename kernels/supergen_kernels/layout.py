"""Sparse attention layouts: which query token may attend to which key token.

Two layouts share one interface (:class:`SparseLayout`):

* :class:`TileLayout` — the canvas is cut into spatial tiles that span all frames. A query in
  tile ``t`` attends to every key whose spatial position (row, col) lies in tile ``t``'s key
  window, in every frame: the tile grown by ``halo`` tokens on each side, at the canvas edge
  clipped, clamped or wrapped around (the ``boundary`` policy). ``halo=0`` is tile-local
  (block-diagonal) attention; ``halo>0`` lets tiles see across their borders. The tile grid can
  be shifted by an ``offset``, and :class:`LayoutCycle` gives the layout of every refinement
  step of a shift schedule, the way ``supergen.tiling.TilePlan`` moves its tiles.
  Tokens are processed in **tile-major order**: tile by tile (row-major over the tile grid),
  so each tile is one contiguous run of the sequence; inside a tile, by halo-sized cells (see
  :class:`TileLayout`).
* :class:`BlockListLayout` — a general block-sparse pattern: an explicit boolean matrix saying
  which (query block, key block) pairs are computed. Every listed pair is attended in full.

Every layout can produce

* the token-level boolean mask ``(seq, seq)`` — for the dense reference only (quadratic memory);
* a :class:`BlockIndex` for a given block size — per query block, the key blocks to visit and
  whether each is *full* (every token pair allowed: no masking needed) or *partial* (mask at
  the token level) — built without ever materialising the token mask;
* the *token rule* the Triton kernel evaluates inside partial blocks (see :class:`TokenRule`),
  and the same rule as a FlexAttention ``mask_mod``.

The token rule is deliberately tiny so a kernel can evaluate it from registers: every query
token carries a window ``[row_lo, row_hi) x [col_lo, col_hi)`` and every key token a position
``(row, col)``; the pair is allowed iff the position lies in the window on both axes. A window
that wraps around the canvas edge has ``hi`` past the axis length; a key at position ``p`` is
in ``[lo, hi)`` when ``p`` or ``p + length`` is (:func:`in_window`). Keys past the end of the
sequence are given position ``-1`` by the kernels, which no window contains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Protocol

import torch

# The shift schedule has one owner, supergen.tiling: the attention layouts take their cut lines,
# periods, strides and offsets from it, so attention windows and TilePlan tiles cannot drift apart.
from supergen.tiling import AxisSchedule, shift_stride


@dataclass(frozen=True)
class TokenRule:
    """Per-token data for the allowed(query, key) test used inside partial blocks.

    Attributes:
        q_window: int32 ``(seq, 4)``: ``row_lo, row_hi, col_lo, col_hi`` of each query's window
            (half-open; ``hi`` may pass the axis length when the window wraps around).
        k_pos: int32 ``(seq, 2)``: ``row, col`` of each key.
        period: ``(height, width)``: the axis lengths windows wrap around (see
            :func:`in_window`).
    """

    q_window: torch.Tensor
    k_pos: torch.Tensor
    period: tuple[int, int]


def in_window(pos: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, period: int) -> torch.Tensor:
    """Whether positions ``pos`` lie in the half-open windows ``[lo, hi)`` of one axis.

    The plain PyTorch statement of the rule the Triton kernel evaluates in partial blocks (and
    FlexAttention's ``mask_mod``). Windows start inside the axis (``0 <= lo < period``); one
    that wraps around the canvas edge ends past it (``hi > period``) and then also holds the
    positions ``p`` with ``p + period < hi``. Positions below 0 (keys past the sequence end)
    are in no window.
    """
    return ((pos >= lo) & (pos < hi)) | ((pos >= 0) & (pos + period < hi))


def _window_mask_mod(row_lo, row_hi, col_lo, col_hi, key_row, key_col, height: int, width: int) -> Callable:
    """The token rule as a FlexAttention ``mask_mod`` over padded per-token tensors (each
    int32 ``(length,)``): query windows and key positions."""

    # One 1-D tensor per coordinate, indexed once each: the compiled FlexAttention kernel
    # lowers plain 1-D gathers (indexing a row and then a column fails to lower).
    def mask_mod(b, head, q_idx, kv_idx):
        r, c = key_row[kv_idx], key_col[kv_idx]
        return in_window(r, row_lo[q_idx], row_hi[q_idx], height) & in_window(c, col_lo[q_idx], col_hi[q_idx], width)

    return mask_mod


def _block_list_mask_mod(blocks: torch.Tensor, size: int, seq_len: int) -> Callable:
    """A :class:`BlockListLayout`'s ``mask_mod``: the block lookup in bool ``blocks`` (padded)."""

    def mask_mod(b, h, q_idx, kv_idx):
        return blocks[q_idx // size, kv_idx // size] & (kv_idx < seq_len)

    return mask_mod


def _pack_rows(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack a bool block matrix ``(rows, cols)`` into per-row lists.

    Returns:
        ``(count, index)``: int32 ``(rows,)`` and int32 ``(rows, max(1, max count))``; row ``i``
        lists its True columns ascending in its first ``count[i]`` entries, then zeros.
    """
    count = blocks.sum(dim=1).to(torch.int32)
    # A stable sort on "not set" moves the set columns to the front and keeps them ascending.
    order = torch.sort((~blocks).to(torch.int8), dim=1, stable=True).indices
    width = max(int(count.max()) if count.numel() else 0, 1)
    order = order[:, :width]
    used = torch.arange(width, device=blocks.device)[None, :] < count[:, None]
    return count, torch.where(used, order, 0).to(torch.int32).contiguous()


def _unpack_rows(count: torch.Tensor, index: torch.Tensor, cols: int) -> torch.Tensor:
    """Inverse of :func:`_pack_rows`: bool ``(rows, cols)``."""
    used = torch.arange(index.shape[1], device=index.device)[None, :] < count[:, None]
    rows = torch.arange(index.shape[0], device=index.device)[:, None].expand_as(used)
    blocks = torch.zeros(index.shape[0], cols, dtype=torch.bool, device=index.device)
    blocks[rows[used], index[used].long()] = True
    return blocks


@dataclass(frozen=True)
class BlockIndex:
    """Block-sparse structure at one block size, in the layout's sequence order.

    Query block ``i`` covers tokens ``[i*block_m, min((i+1)*block_m, seq_len))``; key block ``j``
    covers ``[j*block_n, ...)``. The last block of each side may be short. A visited key block is
    either *full* (every real query of the query block may attend every key of the key block,
    and the key block is not cut short by the sequence end: no masking needed) or *partial*
    (the token rule decides per pair). This is the split FlexAttention's ``BlockMask`` uses too.

    Attributes:
        seq_len: number of tokens ``N``.
        block_m: query block size.
        block_n: key block size.
        full_count: int32 ``(num_q_blocks,)``: number of full key blocks of query block ``i``.
        full_index: int32 ``(num_q_blocks, max_full)``: those key blocks, ascending, in the first
            ``full_count[i]`` entries of row ``i``; the rest is padding never read.
        partial_count: int32 ``(num_q_blocks,)``: number of partial key blocks.
        partial_index: int32 ``(num_q_blocks, max_partial)``: those key blocks, likewise.
    """

    seq_len: int
    block_m: int
    block_n: int
    full_count: torch.Tensor
    full_index: torch.Tensor
    partial_count: torch.Tensor
    partial_index: torch.Tensor

    @property
    def num_q_blocks(self) -> int:
        return math.ceil(self.seq_len / self.block_m)

    @property
    def num_kv_blocks(self) -> int:
        return math.ceil(self.seq_len / self.block_n)

    @staticmethod
    def from_block_matrices(
        seq_len: int, block_m: int, block_n: int, visited: torch.Tensor, full: torch.Tensor
    ) -> BlockIndex:
        """Build from bool block matrices ``(num_q_blocks, num_kv_blocks)``; ``full`` must imply
        ``visited``."""
        full_count, full_index = _pack_rows(full)
        partial_count, partial_index = _pack_rows(visited & ~full)
        return BlockIndex(
            seq_len, block_m, block_n, full_count, full_index, partial_count, partial_index
        )

    def to_dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Block-level matrices ``(visited, full)``, bool ``(num_q_blocks, num_kv_blocks)``."""
        full = _unpack_rows(self.full_count, self.full_index, self.num_kv_blocks)
        partial = _unpack_rows(self.partial_count, self.partial_index, self.num_kv_blocks)
        return full | partial, full

    def computed_pairs(self) -> int:
        """Number of (query, key) token pairs inside visited blocks, short edge blocks counted at
        their real size: the work a block-sparse kernel does, for FLOP counts."""
        visited, _ = self.to_dense()
        q_sizes = _block_sizes(self.seq_len, self.block_m, visited.device)
        k_sizes = _block_sizes(self.seq_len, self.block_n, visited.device)
        return int((q_sizes[:, None] * k_sizes[None, :] * visited).sum())


class SparseLayout(Protocol):
    """What the attention backends need from a layout."""

    @property
    def seq_len(self) -> int: ...

    def token_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """bool ``(seq, seq)``, True where query ``i`` may attend key ``j``."""
        ...

    def block_index(
        self, block_m: int, block_n: int, device: torch.device | str = "cpu"
    ) -> BlockIndex: ...

    def token_rule(self, device: torch.device | str = "cpu") -> TokenRule: ...

    def mask_mod(self, length: int, device: torch.device | str = "cpu") -> Callable: ...

    def mask_mod_parts(self, length: int, device: torch.device | str = "cpu") -> tuple[Callable, tuple]: ...

    def memo(self, key: tuple, build): ...


def _block_sizes(seq_len: int, block: int, device) -> torch.Tensor:
    """int64 ``(ceil(seq_len / block),)``: real size of each block (the last may be short)."""
    starts = torch.arange(0, seq_len, block, device=device)
    return (seq_len - starts).clamp(max=block)


class _Memo:
    """Per-instance memo for derived tensors (index tensors, block indices, masks), so a layout
    built once serves every layer and step. Frozen dataclasses forbid attribute assignment, so
    the memo lives directly in the instance ``__dict__``; it takes no part in equality."""

    def memo(self, key: tuple, build):
        """Return the value cached under ``key`` (devices are normalised), building it once."""
        cache = self.__dict__.setdefault("_memo", {})
        key = tuple(str(a) if isinstance(a, torch.device) else a for a in key)
        if key not in cache:
            cache[key] = build()
        return cache[key]

    def __getstate__(self) -> dict:
        # Pickle (e.g. to send a layout to another process) without the memo: it holds
        # closures and device tensors, and is rebuilt on demand.
        return {k: v for k, v in self.__dict__.items() if k != "_memo"}


#: Canvas-edge policies of :class:`TileLayout`; ``clamp`` and ``wrap`` mean what they mean for
#: ``supergen.tiling.TilePlan``'s shift mode.
BOUNDARIES = ("clip", "clamp", "wrap")
Boundary = Literal["clip", "clamp", "wrap"]


def _axis_tiles(length: int, tile: int, offset: int, halo: int, boundary: str) -> list[tuple[int, int, int, int]]:
    """One axis of a :class:`TileLayout`: ``(own_lo, own_hi, win_lo, win_hi)`` of each tile.

    The tile owns (its queries are) ``[own_lo, own_hi)``; it attends to ``[win_lo, win_hi)``.
    Both may end past ``length`` with ``wrap`` (positions taken modulo ``length``). The cut
    lines are ``supergen.tiling.AxisSchedule``'s at patch 1, so attention tiles and ``TilePlan``
    tiles coincide at the same offset.
    """
    tile = min(tile, length)
    cuts = _schedule(length, tile, 1, boundary).cuts(offset)
    if boundary == "wrap":
        ends = cuts[1:] + [cuts[0] + length]  # the last segment wraps past the edge
    else:
        ends = cuts[1:] + [length]
    tiles = []
    for lo, hi in zip(cuts, ends):
        if boundary == "wrap":
            if hi - lo + 2 * halo >= length:  # the window reaches all the way round
                win = (0, length)
            else:
                start = (lo - halo) % length
                win = (start, start + hi - lo + 2 * halo)
        else:
            # clamp: the window is a full tile clamped inside the canvas (the tile's context);
            # clip: the window is the owned segment itself. Then the halo, cut at the edges.
            start, end = (min(lo, length - tile), min(lo, length - tile) + tile) if boundary == "clamp" else (lo, hi)
            win = (max(start - halo, 0), min(end + halo, length))
        tiles.append((lo, hi, *win))
    return tiles


def _schedule(length: int, tile: int, stride: int, boundary: str) -> AxisSchedule:
    """``supergen.tiling``'s shift schedule of one axis in tokens (``clip`` cuts as ``clamp`` does)."""
    return AxisSchedule(length, min(tile, length), 1, "shift", "wrap" if boundary == "wrap" else "clamp", stride, 0)


def axis_period(length: int, tile: int, boundary: str) -> int:
    """Smallest grid offset (tokens) after which one axis's tiles repeat; 0 when the tile spans
    the axis (nothing moves): ``supergen.tiling.AxisSchedule.period``."""
    return _schedule(length, tile, 1, boundary).period


@dataclass(frozen=True)
class TileLayout(_Memo):
    """Tile-local or tile+halo attention over a video canvas of tokens.

    Args:
        canvas: ``(frames, height, width)`` of the canvas in tokens (after patchify; e.g. a
            Wan 4K latent of 5 x 270 x 480 with patch (1, 2, 2) is ``(5, 135, 240)``).
        tile: ``(height, width)`` of a tile in tokens; tiles span all frames. Tiles are laid
            from the top-left corner; when the tile does not divide the canvas, the last row /
            column of tiles is smaller.
        halo: spatial margin in tokens added on every side of a tile to form its key window.
        cell: ``(height, width)`` in tokens of the cells that order tokens *inside* a tile, or
            None for the default: ``(halo, halo)`` when ``halo > 0``, else the whole tile.
        offset: ``(rows, cols)`` grid offset in tokens, ``0 <= offset < canvas`` per axis: the
            cut lines of the tile grid start here instead of at 0 (``clip``/``clamp``: cuts at
            ``offset % tile + k * tile``, plus the canvas edge; ``wrap``: see below). An axis
            the tile spans is never cut, whatever its offset. :class:`LayoutCycle` picks the
            offsets of a shift schedule.
        boundary: what happens at the canvas edge, per axis:

            - ``"clip"`` (default): tiles from the cut lines, edge tiles smaller; a tile's window
              is the tile grown by the halo, cut at the canvas edge. At offset 0 this is the
              plain tile grid.
            - ``"clamp"``: the same tiles own the queries, but each window is a *full-size* tile
              clamped inside the canvas (then grown by the halo, cut at the edge): a small edge
              tile's queries see the context a native-size tile forward would give them. This
              is ``TilePlan``'s ``clamp`` (the window it runs, the segment it writes).
            - ``"wrap"``: the canvas is a torus: ``ceil(length / tile)`` near-equal tiles per axis
              starting at the offset, windows grown by the halo around the edge, so tiles and
              windows can wrap (opposite edges side by side). This is ``TilePlan``'s ``wrap``.

    Tile-major order: tiles one after another (row-major over the tile grid); inside a tile,
    cells one after another (row-major over the cells, laid from the tile's corner, edge cells
    smaller); inside a cell, (frame, row, col). With ``halo == 0`` (and the default cell) a
    tile's tokens are therefore in plain (frame, row, col) order, exactly the sequence a
    per-tile transformer call sees. With a halo, halo-sized cells make each neighbour's halo
    band a set of whole cells, i.e. long contiguous runs of keys, so most key blocks a window
    touches are entirely inside it (full) instead of interleaved with outside keys (partial:
    computed in full but mostly masked). The order never changes the result, only the work.

    The sequence order of everything this layout produces (masks, block indices, the token
    rule) is tile-major; :meth:`to_tile_major` / :meth:`from_tile_major` convert activations.
    Derived tensors are memoised per (block size, device): a layout is meant to be built once and
    reused for every layer and step.
    """

    canvas: tuple[int, int, int]
    tile: tuple[int, int]
    halo: int = 0
    cell: tuple[int, int] | None = None
    offset: tuple[int, int] = (0, 0)
    boundary: Boundary = "clip"

    def __post_init__(self) -> None:
        object.__setattr__(self, "canvas", tuple(int(s) for s in self.canvas))
        object.__setattr__(self, "tile", tuple(int(s) for s in self.tile))
        if len(self.canvas) != 3 or min(self.canvas) < 1:
            raise ValueError(f"canvas must be (frames, height, width) >= 1, got {self.canvas}")
        if len(self.tile) != 2 or min(self.tile) < 1:
            raise ValueError(f"tile must be (height, width) >= 1, got {self.tile}")
        if self.halo < 0:
            raise ValueError(f"halo must be >= 0, got {self.halo}")
        if self.cell is None:
            default = (self.halo, self.halo) if self.halo > 0 else self.tile
            object.__setattr__(self, "cell", default)
        object.__setattr__(self, "cell", tuple(int(s) for s in self.cell))
        if len(self.cell) != 2 or min(self.cell) < 1:
            raise ValueError(f"cell must be (height, width) >= 1, got {self.cell}")
        object.__setattr__(self, "offset", tuple(int(s) for s in self.offset))
        if len(self.offset) != 2 or not all(0 <= o < n for o, n in zip(self.offset, self.canvas[1:])):
            raise ValueError(
                f"offset must be (rows, cols) with 0 <= offset < canvas (height, width) = "
                f"{self.canvas[1:]}, got {self.offset}"
            )
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {BOUNDARIES}, got {self.boundary!r}")

    # ----------------------------------------------------------------------------- geometry
    @property
    def seq_len(self) -> int:
        f, h, w = self.canvas
        return f * h * w

    def _axes(self) -> tuple[list[tuple[int, int, int, int]], list[tuple[int, int, int, int]]]:
        """Per axis (rows, cols), ``(own_lo, own_hi, win_lo, win_hi)`` of each tile."""
        return tuple(
            _axis_tiles(length, tile, offset, self.halo, self.boundary)
            for length, tile, offset in zip(self.canvas[1:], self.tile, self.offset)
        )

    @property
    def grid(self) -> tuple[int, int]:
        """Number of tile rows and tile columns."""
        rows, cols = self._axes()
        return len(rows), len(cols)

    @property
    def num_tiles(self) -> int:
        rows, cols = self.grid
        return rows * cols

    def tile_rects(self) -> list[tuple[int, int, int, int]]:
        """``(row0, row1, col0, col1)`` (half-open, in tokens) of each tile, in tile order. With
        ``wrap`` a tile may end past the canvas (``row1 > height``): its rows are ``row0 ..
        row1 - 1`` modulo the height (likewise columns), as ``supergen.tiling.Window`` counts."""
        rows, cols = self._axes()
        return [(r[0], r[1], c[0], c[1]) for r in rows for c in cols]

    def tile_windows(self) -> list[tuple[int, int, int, int]]:
        """``(row_lo, row_hi, col_lo, col_hi)`` key window of each tile (see ``boundary``); a
        window that wraps ends past the canvas, like :meth:`tile_rects`."""
        rows, cols = self._axes()
        return [(r[2], r[3], c[2], c[3]) for r in rows for c in cols]

    def tile_offsets(self) -> list[int]:
        """Start of each tile in the tile-major sequence, plus the total length at the end."""
        f = self.canvas[0]
        sizes = [f * (r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in self.tile_rects()]
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + s)
        return offsets

    # -------------------------------------------------------------------------- permutation
    def tile_major_index(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """int64 ``(seq,)``: ``index[p]`` is the canvas-order position of tile-major token ``p``.

        Canvas order is (frame, row, col) row-major over the whole canvas, the order in which
        diffusers' video transformers flatten patch tokens.
        """
        def build():
            f, h, w = self.canvas
            ch, cw = self.cell
            grid = torch.arange(self.seq_len, device=device).view(f, h, w)

            def span(a: int, b: int, n: int) -> torch.Tensor:  # a .. b-1, wrapped into [0, n)
                return torch.arange(a, b, device=device) % n

            parts = [
                grid[:, span(r, min(r + ch, r1), h)[:, None], span(c, min(c + cw, c1), w)].reshape(-1)
                for r0, r1, c0, c1 in self.tile_rects()
                for r in range(r0, r1, ch)
                for c in range(c0, c1, cw)
            ]
            return torch.cat(parts)

        return self.memo(("perm", device), build)

    def canvas_index(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """int64 ``(seq,)``: the inverse of :meth:`tile_major_index`."""
        def build():
            perm = self.tile_major_index(device)
            inv = torch.empty_like(perm)
            inv[perm] = torch.arange(perm.numel(), device=perm.device)
            return inv

        return self.memo(("inv", device), build)

    def to_tile_major(self, x: torch.Tensor, dim: int = -2) -> torch.Tensor:
        """Reorder ``x`` along ``dim`` (length ``seq``) from canvas order to tile-major order.

        One gather. ``dim=-2`` fits ``(batch, heads, seq, head_dim)``; use ``dim=1`` for
        diffusers' ``(batch, seq, channels)`` hidden states.
        """
        return x.index_select(dim, self.tile_major_index(x.device))

    def from_tile_major(self, x: torch.Tensor, dim: int = -2) -> torch.Tensor:
        """Inverse of :meth:`to_tile_major`."""
        return x.index_select(dim, self.canvas_index(x.device))

    # ---------------------------------------------------------------------------- the rule
    def _token_coords(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tile-major ``(tile id, row, col)`` of every token, each int64 ``(seq,)``."""
        def build():
            _, h, w = self.canvas
            perm = self.tile_major_index(device)
            sizes = torch.diff(torch.tensor(self.tile_offsets(), device=device))
            tile_id = torch.repeat_interleave(torch.arange(self.num_tiles, device=device), sizes)
            return tile_id, (perm // w) % h, perm % w

        return self.memo(("coords", device), build)

    def token_rule(self, device: torch.device | str = "cpu") -> TokenRule:
        def build():
            tile_id, row, col = self._token_coords(device)
            windows = torch.tensor(self.tile_windows(), dtype=torch.int32, device=device)
            k_pos = torch.stack([row, col], dim=1).to(torch.int32)
            return TokenRule(windows[tile_id].contiguous(), k_pos.contiguous(), self.canvas[1:])

        return self.memo(("rule", device), build)

    def keys_in_window(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """bool ``(num_tiles, seq)``: key ``j`` (tile-major) lies in tile ``t``'s window."""
        _, h, w = self.canvas
        _, row, col = self._token_coords(device)
        win = torch.tensor(self.tile_windows(), device=device)
        return (
            in_window(row[None], win[:, 0:1], win[:, 1:2], h)
            & in_window(col[None], win[:, 2:3], win[:, 3:4], w)
        )

    def mask_mod(self, length: int, device: torch.device | str = "cpu") -> Callable:
        """The token rule as a FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool``.

        FlexAttention may evaluate it at indices up to the next multiple of its block size
        (pytorch/pytorch#137801), so the per-token tensors are padded to ``length``: padded
        keys sit at position -1, outside every window.
        """
        make, args = self.mask_mod_parts(length, device)
        return make(*args)

    def mask_mod_parts(self, length: int, device: torch.device | str = "cpu") -> tuple[Callable, tuple]:
        """``(make, args)`` with ``make(*args)`` equal to :meth:`mask_mod`: ``make`` is one
        module-level function for every TileLayout and ``args`` are the layout's per-token
        tensors and the canvas size, so a compiled caller can take the layout as data (a new
        grid offset is then new inputs, not a new graph)."""
        rule = self.token_rule(device)
        n = self.seq_len
        q_window = torch.zeros(4, length, dtype=torch.int32, device=device)
        k_pos = torch.full((2, length), -1, dtype=torch.int32, device=device)
        q_window[:, :n], k_pos[:, :n] = rule.q_window.T, rule.k_pos.T
        return _window_mask_mod, (*q_window.unbind(0), *k_pos.unbind(0), *rule.period)

    def token_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """bool ``(seq, seq)`` in tile-major order. Quadratic memory: tests and reference only."""
        tile_id, _, _ = self._token_coords(device)
        return self.keys_in_window(device)[tile_id]

    def block_index(
        self, block_m: int, block_n: int, device: torch.device | str = "cpu"
    ) -> BlockIndex:
        """The :class:`BlockIndex` at block sizes ``(block_m, block_n)``, in
        ``O(num_tiles * seq + num_q_blocks * num_kv_blocks)`` time and memory: never ``seq**2``."""
        return self.memo(
            ("blocks", block_m, block_n, device),
            lambda: self._build_block_index(block_m, block_n, device),
        )

    def _build_block_index(self, block_m: int, block_n: int, device) -> BlockIndex:
        n, nt = self.seq_len, self.num_tiles
        nq, nk = math.ceil(n / block_m), math.ceil(n / block_n)
        # How many keys of each key block fall in each tile's window.
        padded = torch.zeros(nt, nk * block_n, dtype=torch.int32, device=device)
        padded[:, :n] = self.keys_in_window(device).int()
        counts = padded.view(nt, nk, block_n).sum(dim=2)  # (tiles, kv blocks)
        # A query block is a contiguous run of tile-major tokens, so the tiles its queries
        # belong to are the contiguous id range [first, last]; prefix sums over tiles answer
        # "does any tile in the range ..." for every (query block, key block) at once.
        tile_id, _, _ = self._token_coords(device)
        starts = torch.arange(nq, device=device) * block_m
        first = tile_id[starts]
        last = tile_id[(starts + block_m).clamp(max=n) - 1]

        def any_tile_in_range(per_tile: torch.Tensor) -> torch.Tensor:
            prefix = torch.zeros(nt + 1, nk, dtype=torch.int64, device=device)
            prefix[1:] = per_tile.long().cumsum(dim=0)
            return (prefix[last + 1] - prefix[first]) > 0  # (nq, nk)

        # Visited: some member tile has a key in the block. Full: no member tile lacks any of
        # the block's block_n keys (a short last block is never full, so the kernels mask the
        # sequence end).
        visited = any_tile_in_range(counts > 0)
        full = ~any_tile_in_range(counts < block_n)
        return BlockIndex.from_block_matrices(n, block_m, block_n, visited, full)


@dataclass(frozen=True, eq=False)  # eq on a tensor field would be ambiguous: identity instead
class BlockListLayout(_Memo):
    """A general block-sparse layout: an explicit list of computed (query block, key block)
    pairs, each attended in full.

    Args:
        seq_len: number of tokens ``N``.
        block_size: the granularity of ``blocks``.
        blocks: bool ``(ceil(N / block_size), ceil(N / block_size))``; ``blocks[i, j]`` means
            queries of block ``i`` attend every key of block ``j``.

    The sequence order is whatever order the caller uses. Block indices can be produced at any
    block size that divides ``block_size`` (each smaller block then lies in one listed block),
    so use a multiple of 128 for the flex backend (its block size) and of the Triton kernel's
    block sizes (128 x 64 by default) for the triton backend.
    Every query should list at least one key block, else its softmax is empty and its output
    undefined.
    """

    seq_len: int
    block_size: int
    blocks: torch.Tensor

    def __post_init__(self) -> None:
        nb = math.ceil(self.seq_len / self.block_size)
        if self.blocks.dtype != torch.bool or tuple(self.blocks.shape) != (nb, nb):
            raise ValueError(
                f"blocks must be a bool tensor of shape ({nb}, {nb}), "
                f"got {self.blocks.dtype} {tuple(self.blocks.shape)}"
            )

    def _fine_blocks(self, block_m: int, block_n: int, device) -> torch.Tensor:
        """The block matrix at the finer block sizes (each must divide ``block_size``)."""
        if self.block_size % block_m or self.block_size % block_n:
            raise ValueError(
                f"block sizes ({block_m}, {block_n}) must divide the list's block size "
                f"{self.block_size}"
            )
        n = self.seq_len
        rows = torch.arange(0, n, block_m, device=device) // self.block_size
        cols = torch.arange(0, n, block_n, device=device) // self.block_size
        return self.blocks.to(device)[rows][:, cols]

    def token_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return self._fine_blocks(1, 1, device)

    def mask_mod(self, length: int, device: torch.device | str = "cpu") -> Callable:
        """FlexAttention ``mask_mod``: the block lookup, safe for indices below ``length``."""
        make, args = self.mask_mod_parts(length, device)
        return make(*args)

    def mask_mod_parts(self, length: int, device: torch.device | str = "cpu") -> tuple[Callable, tuple]:
        """``(make, args)`` with ``make(*args)`` equal to :meth:`mask_mod` (see
        :meth:`TileLayout.mask_mod_parts`)."""
        nb = math.ceil(length / self.block_size)
        blocks = torch.zeros(nb, nb, dtype=torch.bool, device=device)
        listed = self.blocks.shape[0]
        blocks[:listed, :listed] = self.blocks.to(device)
        return _block_list_mask_mod, (blocks, self.block_size, self.seq_len)

    def token_rule(self, device: torch.device | str = "cpu") -> TokenRule:
        # For the Triton kernel, which takes block sizes dividing block_size. Inside a listed
        # block every pair is allowed; the only partial blocks are those cut short by the
        # sequence end, where the kernels' out-of-range key position (-1) already
        # fails the window. So: one window [0, 1) x [0, 1) that every real key at (0, 0) is in.
        n = self.seq_len
        q_window = torch.tensor([0, 1, 0, 1], dtype=torch.int32, device=device).repeat(n, 1)
        return TokenRule(q_window, torch.zeros(n, 2, dtype=torch.int32, device=device), (1, 1))

    def block_index(
        self, block_m: int, block_n: int, device: torch.device | str = "cpu"
    ) -> BlockIndex:
        def build():
            visited = self._fine_blocks(block_m, block_n, device)
            k_sizes = _block_sizes(self.seq_len, block_n, device)
            full = visited & (k_sizes == block_n)[None, :]
            return BlockIndex.from_block_matrices(self.seq_len, block_m, block_n, visited, full)

        return self.memo(("blocks", block_m, block_n, device), build)


class LayoutCycle:
    """The :class:`TileLayout` of every refinement step of a shift schedule, built once per offset.

    The tile grid moves by ``stride = max(1, round(tile / shift_divisor))`` tokens per axis every
    ``shift_every`` steps, each axis on its own cycle: the schedule is ``supergen.tiling``'s own
    (one :class:`~supergen.tiling.AxisSchedule` per axis, in tokens instead of latent units;
    ``TilePlan``'s stride, rounded to the patch, is this stride times the patch). So attention
    windows move the way shift-mode tiles do, and a window border at one step is interior at a
    later one.

    Args:
        canvas: ``(frames, height, width)`` in tokens.
        tile: ``(height, width)`` in tokens.
        halo: key-window margin in tokens.
        shift_divisor: the grid moves by ``tile / shift_divisor`` (at least one token).
        shift_every: refinement steps between two moves.
        boundary: ``"clamp"`` (``TilePlan``'s default), ``"wrap"`` or ``"clip"``; see
            :class:`TileLayout`.
        cell: passed to every :class:`TileLayout`.

    ``cycle[step]`` (or :meth:`layout`) is the layout of refinement step ``step`` (0-based, as
    ``TilePlan.offsets`` counts). Layouts are built on first use and kept, one per distinct
    offset, so their memoised index tensors and block indices are built once per offset too.
    """

    def __init__(
        self,
        canvas: tuple[int, int, int],
        tile: tuple[int, int],
        halo: int = 0,
        *,
        shift_divisor: int = 16,
        shift_every: int = 1,
        boundary: Boundary = "clamp",
        cell: tuple[int, int] | None = None,
    ):
        if shift_divisor < 1 or shift_every < 1:
            raise ValueError(
                f"shift_divisor and shift_every must be >= 1, got {shift_divisor} and {shift_every}"
            )
        # Validates canvas, tile, halo, cell and boundary once, and is the step-0 layout.
        first = TileLayout(canvas, tile, halo, cell, (0, 0), boundary)
        self.canvas, self.tile, self.halo, self.cell = first.canvas, first.tile, first.halo, cell
        self.boundary, self.shift_every = boundary, shift_every
        self.axes = tuple(
            _schedule(n, t, shift_stride(min(t, n), 1, shift_divisor), boundary) for n, t in zip(first.canvas[1:], first.tile)
        )
        self.strides = tuple(axis.stride for axis in self.axes)
        self.periods = tuple(axis.period for axis in self.axes)
        self._layouts = {(0, 0): first}

    def offset(self, step: int) -> tuple[int, int]:
        """Grid offset ``(rows, cols)`` in tokens at refinement step ``step``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        moves = step // self.shift_every
        return tuple(axis.offset(moves) for axis in self.axes)

    @property
    def num_offsets(self) -> int:
        """Distinct offsets the schedule visits (the per-axis cycle lengths' least common
        multiple); the layouts repeat every ``num_offsets * shift_every`` steps."""
        return math.lcm(*(len(axis.cycle()) for axis in self.axes))

    def layout(self, step: int) -> TileLayout:
        """The layout of refinement step ``step``, built on first use of its offset."""
        offset = self.offset(step)
        if offset not in self._layouts:
            self._layouts[offset] = TileLayout(
                self.canvas, self.tile, self.halo, self.cell, offset, self.boundary
            )
        return self._layouts[offset]

    __getitem__ = layout


def shifted_layouts(
    canvas: tuple[int, int, int],
    tile: tuple[int, int],
    halo: int = 0,
    *,
    num_steps: int,
    shift_divisor: int = 16,
    shift_every: int = 1,
    boundary: Boundary = "clamp",
    cell: tuple[int, int] | None = None,
) -> list[TileLayout]:
    """The layouts of refinement steps ``0 .. num_steps - 1`` (see :class:`LayoutCycle`); steps
    at the same offset share one :class:`TileLayout` object, so everything it memoises is built
    once per offset."""
    cycle = LayoutCycle(
        canvas, tile, halo, shift_divisor=shift_divisor, shift_every=shift_every,
        boundary=boundary, cell=cell,
    )
    return [cycle.layout(step) for step in range(num_steps)]
