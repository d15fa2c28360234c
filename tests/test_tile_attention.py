"""Sparse tile attention (supergen_kernels): layouts, and reference vs FlexAttention vs Triton.

The Triton kernel has no GPU here, so it runs in Triton's CPU interpreter. Triton fixes the
interpret mode when a kernel is decorated, i.e. when its module is first imported, and another
test in the same session may already have imported it in compiled mode. So the Triton cases
run in one child process started with TRITON_INTERPRET=1; the parent makes the inputs, the
child runs the kernel on NaN-poisoned outputs, the parent checks the results.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import supergen_kernels
from supergen_kernels import (
    BackendUnavailable,
    BlockListLayout,
    LayoutCycle,
    TileLayout,
    available_backends,
    shifted_layouts,
    tile_attention,
)


def _block_list() -> BlockListLayout:
    # 300 tokens in blocks of 128 (the last one short): the diagonal (every query sees
    # something) plus an off-diagonal pair in each direction.
    blocks = torch.eye(3, dtype=torch.bool)
    blocks[0, 2] = blocks[2, 1] = True
    return BlockListLayout(seq_len=300, block_size=128, blocks=blocks)


LAYOUTS = {
    # tile-local, the tile divides the canvas, N = 128
    "local": TileLayout(canvas=(2, 8, 8), tile=(4, 4), halo=0),
    # tile-local, edge tiles smaller (7 = 3+3+1 rows, 10 = 4+4+2 cols), N = 210
    "local_ragged": TileLayout(canvas=(3, 7, 10), tile=(3, 4), halo=0),
    # tile + halo 1, edge tiles smaller, N = 216
    "halo_ragged": TileLayout(canvas=(2, 9, 12), tile=(4, 5), halo=1),
    # halo 2 on 3x3 tiles: windows reach two tiles over; 2x2 cells (default), N = 108
    "halo_wide": TileLayout(canvas=(2, 6, 9), tile=(3, 3), halo=2),
    # halo 1 with plain (frame, row, col) order inside each tile, N = 120
    "halo_plain": TileLayout(canvas=(2, 6, 10), tile=(3, 5), halo=1, cell=(3, 5)),
    # shifted grids (the attention mode's shift schedule). clamp: a 1-row and a 2-col edge
    # tile whose windows are full 3x4 tiles clamped inside the canvas, N = 140
    "clamp_shifted": TileLayout(canvas=(2, 7, 10), tile=(3, 4), halo=1, offset=(1, 2), boundary="clamp"),
    # wrap: tiles and windows run around both canvas edges, N = 140
    "wrap_shifted": TileLayout(canvas=(2, 7, 10), tile=(3, 4), halo=1, offset=(2, 3), boundary="wrap"),
    # wrap, tile-local: a wrapped tile's queries see only its own (wrapped) tokens, N = 96
    "wrap_local": TileLayout(canvas=(2, 6, 8), tile=(3, 4), offset=(2, 1), boundary="wrap"),
    "block_list": _block_list(),
}
TILE_LAYOUTS = [name for name, layout in LAYOUTS.items() if isinstance(layout, TileLayout)]
# Shift schedules of the attention mode, small enough to run every offset through every
# backend: strides (2, 2); 3 row offsets x 2 col offsets = 6 layouts per boundary, N = 48.
CYCLES = {
    boundary: LayoutCycle(canvas=(1, 6, 8), tile=(3, 4), halo=1, shift_divisor=2, boundary=boundary)
    for boundary in ("clamp", "wrap")
}


def _qkv(layout, head_dim: int, batch: int = 1, heads: int = 2, dtype=torch.float32):
    """Fresh random q, k, v ``(batch, heads, seq, head_dim)`` (unseeded on purpose)."""
    shape = (batch, heads, layout.seq_len, head_dim)
    return tuple(torch.randn(shape, dtype=dtype) for _ in range(3))


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


# ------------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("name", TILE_LAYOUTS)
def test_permutation_round_trips_and_tiles_are_contiguous(name):
    layout = LAYOUTS[name]
    f, h, w = layout.canvas
    perm = layout.tile_major_index()
    assert torch.equal(perm.sort().values, torch.arange(layout.seq_len))

    x = torch.randn(2, 3, layout.seq_len, 4)
    assert torch.equal(layout.from_tile_major(layout.to_tile_major(x)), x)
    assert torch.equal(layout.to_tile_major(layout.from_tile_major(x)), x)
    hidden = torch.randn(2, layout.seq_len, 5)  # diffusers' (batch, seq, channels)
    assert torch.equal(layout.from_tile_major(layout.to_tile_major(hidden, dim=1), dim=1), hidden)

    # Tile t occupies [offsets[t], offsets[t+1]) of the tile-major sequence and holds exactly
    # the canvas tokens of its rectangle, in every frame; each cell of it is one contiguous
    # run; with one cell per tile the order is plain (frame, row, col).
    canvas = torch.arange(layout.seq_len).view(f, h, w)
    tile_major = layout.to_tile_major(canvas.reshape(1, -1, 1), dim=1).reshape(-1)
    position = layout.canvas_index()  # canvas token -> tile-major position
    offsets = layout.tile_offsets()
    assert offsets[-1] == layout.seq_len
    ch, cw = layout.cell
    for t, (r0, r1, c0, c1) in enumerate(layout.tile_rects()):
        run = tile_major[offsets[t] : offsets[t + 1]]
        rect = _rect(canvas, r0, r1, c0, c1)
        assert torch.equal(run.sort().values, rect.sort().values)
        if layout.cell == layout.tile:
            assert torch.equal(run, rect)
        for r in range(r0, r1, ch):
            for c in range(c0, c1, cw):
                where = position[_rect(canvas, r, min(r + ch, r1), c, min(c + cw, c1))]
                assert int(where.max() - where.min()) + 1 == where.numel()


def _rect(canvas: torch.Tensor, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
    """Tokens of rows r0..r1-1 x cols c0..c1-1 of a (frames, h, w) canvas in (frame, row, col)
    order, rows and cols taken modulo the canvas (a wrapped tile ends past the edge)."""
    _, h, w = canvas.shape
    rows, cols = torch.arange(r0, r1) % h, torch.arange(c0, c1) % w
    return canvas[:, rows[:, None], cols].reshape(-1)


def test_default_cells_follow_the_halo():
    assert TileLayout(canvas=(1, 8, 8), tile=(4, 4)).cell == (4, 4)
    assert TileLayout(canvas=(1, 8, 8), tile=(4, 4), halo=2).cell == (2, 2)
    # Halo-sized cells make the halo bands whole runs: less computed work at one block size.
    plain = TileLayout(canvas=(2, 32, 32), tile=(16, 16), halo=4, cell=(16, 16))
    cells = TileLayout(canvas=(2, 32, 32), tile=(16, 16), halo=4)
    assert torch.equal(plain.token_mask()[plain.canvas_index()][:, plain.canvas_index()],
                       cells.token_mask()[cells.canvas_index()][:, cells.canvas_index()])
    assert cells.block_index(32, 32).computed_pairs() < plain.block_index(32, 32).computed_pairs()


@pytest.mark.parametrize("name", [n for n in TILE_LAYOUTS if LAYOUTS[n].offset == (0, 0) and LAYOUTS[n].boundary == "clip"])
def test_token_mask_is_tile_window(name):
    """The mask, mapped back to canvas order, is 'key inside the query's tile grown by the
    halo', computed here from canvas coordinates directly."""
    layout = LAYOUTS[name]
    f, h, w = layout.canvas
    th, tw = layout.tile
    g = layout.halo
    idx = torch.arange(layout.seq_len)
    row, col = (idx // w) % h, idx % w
    r0, c0 = (row // th) * th, (col // tw) * tw  # the query's tile origin
    r1, c1 = (r0 + th).clamp(max=h), (c0 + tw).clamp(max=w)
    expected = (
        (row[None] >= r0[:, None] - g) & (row[None] < r1[:, None] + g)
        & (col[None] >= c0[:, None] - g) & (col[None] < c1[:, None] + g)
    )
    inv = layout.canvas_index()
    assert torch.equal(layout.token_mask()[inv][:, inv], expected)


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("blocks", [(16, 16), (16, 32), (32, 16), (64, 64), (128, 128)])
def test_block_index_matches_token_mask(name, blocks):
    layout = LAYOUTS[name]
    block_m, block_n = blocks
    index = layout.block_index(block_m, block_n)
    n = layout.seq_len
    nq, nk = index.num_q_blocks, index.num_kv_blocks
    # Pad the mask with "disallowed"; padded query rows then count as "allowed" for the
    # all() test, padded key columns as disallowed (a short key block is never full).
    mask = torch.zeros(nq * block_m, nk * block_n, dtype=torch.bool)
    mask[:n, :n] = layout.token_mask()
    tiles = mask.view(nq, block_m, nk, block_n)
    real_q = torch.zeros(nq * block_m, dtype=torch.bool)
    real_q[:n] = True
    real_q = real_q.view(nq, block_m, 1, 1)
    visited = tiles.any(dim=(1, 3))
    full = (tiles | ~real_q).all(dim=(1, 3))

    got_visited, got_full = index.to_dense()
    assert torch.equal(got_visited, visited)
    assert torch.equal(got_full, full)
    # The packed lists are ascending and hold exactly the counted blocks.
    for count, lists in ((index.full_count, index.full_index), (index.partial_count, index.partial_index)):
        for row in range(nq):
            listed = lists[row, : count[row]]
            assert torch.all(listed[1:] > listed[:-1])
    assert index.computed_pairs() >= int(layout.token_mask().sum())


def test_tile_local_is_block_diagonal_and_sparser_than_halo():
    local = LAYOUTS["local"].block_index(16, 16)
    visited, full = local.to_dense()
    # 4 tiles of 32 tokens, blocks of 16: two diagonal 2x2 blocks per tile, all full.
    assert torch.equal(visited, torch.block_diag(*[torch.ones(2, 2, dtype=torch.bool)] * 4))
    assert torch.equal(full, visited)
    halo = TileLayout(canvas=(2, 8, 8), tile=(4, 4), halo=1).block_index(16, 16)
    assert halo.computed_pairs() > local.computed_pairs()


# ------------------------------------------------------------------------ shifted grids
@pytest.mark.parametrize("boundary", ["clamp", "wrap"])
@pytest.mark.parametrize(
    "canvas,tile,divisor,every",
    [((9, 14), (4, 6), 4, 1), ((8, 12), (4, 4), 2, 2), ((7, 5), (7, 2), 3, 1), ((6, 10), (4, 5), 16, 1)],
    ids=["ragged", "divides-every2", "one-row-tile", "stride-floor"],
)
def test_shifted_tiles_are_tileplans_tiles(boundary, canvas, tile, divisor, every):
    """At every step, the attention layout's tiles are supergen.tiling.TilePlan's shift-mode
    tiles (at patch 1, i.e. in tokens): the same owned rectangles (the queries) and windows
    (what a tile forward would see: the keys at halo 0)."""
    from supergen.tiling import TilePlan

    plan = TilePlan(canvas, tile, patch=(1, 1), mode="shift", boundary=boundary,
                    shift_divisor=divisor, shift_every=every)
    cycle = LayoutCycle((1, *canvas), tile, shift_divisor=divisor, shift_every=every, boundary=boundary)
    steps = 2 * cycle.num_offsets * every + 1
    layouts = shifted_layouts((1, *canvas), tile, num_steps=steps, shift_divisor=divisor,
                              shift_every=every, boundary=boundary)
    for step in range(steps):
        layout = layouts[step]
        assert layout == cycle[step]
        assert layout.offset == plan.offsets(step)
        owned, windows = [], []
        for t in plan.tiles(step):
            axes = []
            for window, weight in ((t.rows, None if t.weight is None else t.weight.amax(1)),
                                   (t.cols, None if t.weight is None else t.weight.amax(0))):
                # clamp: the tile owns the part of its window where its weight is 1
                idx = torch.arange(window.size) if weight is None else weight.nonzero().squeeze(1)
                axes.append((window.start + int(idx[0]), window.start + int(idx[-1]) + 1,
                             window.start, window.start + window.size))
            owned.append((axes[0][0], axes[0][1], axes[1][0], axes[1][1]))
            windows.append((axes[0][2], axes[0][3], axes[1][2], axes[1][3]))
        assert layout.tile_rects() == owned
        assert layout.tile_windows() == windows
    # Each axis visits its whole cycle, and the layouts then repeat as the very same objects.
    period = cycle.num_offsets * every
    assert len({cycle.offset(s) for s in range(period)}) == cycle.num_offsets
    assert all(cycle[s] is cycle[s + period] for s in range(period))
    assert layouts[0] is layouts[period]


@pytest.mark.parametrize("boundary", ["clip", "clamp", "wrap"])
@pytest.mark.parametrize("offset", [(0, 0), (1, 3), (4, 5)])
@pytest.mark.parametrize("halo", [0, 2])
def test_shifted_token_mask_owns_every_token_once_and_allows_its_window(boundary, offset, halo):
    """Independent of the layout's own arithmetic: expand each tile's rectangle and window to
    sets of canvas positions (modulo the canvas), then compare the mask with them."""
    layout = TileLayout(canvas=(2, 7, 11), tile=(3, 4), halo=halo, offset=offset, boundary=boundary)
    f, h, w = layout.canvas

    def cells(r0, r1, c0, c1):
        return {(r % h, c % w) for r in range(r0, r1) for c in range(c0, c1)}

    owner = {}
    for t, rect in enumerate(layout.tile_rects()):
        for pos in cells(*rect):
            assert pos not in owner, f"{pos} owned twice"
            owner[pos] = t
    assert len(owner) == h * w
    windows = [cells(*win) for win in layout.tile_windows()]
    for t, rect in enumerate(layout.tile_rects()):
        assert cells(*rect) <= windows[t]  # a tile sees its own tokens

    idx = torch.arange(layout.seq_len)
    row, col = ((idx // w) % h).tolist(), (idx % w).tolist()
    expected = torch.tensor([[(rk, ck) in windows[owner[(rq, cq)]] for rk, ck in zip(row, col)]
                             for rq, cq in zip(row, col)])
    inv = layout.canvas_index()
    assert torch.equal(layout.token_mask()[inv][:, inv], expected)


def test_wrap_puts_opposite_edges_in_one_window_and_clamp_never_does():
    wrap = TileLayout(canvas=(1, 6, 8), tile=(3, 4), halo=1, boundary="wrap")
    clamp = TileLayout(canvas=(1, 6, 8), tile=(3, 4), halo=1, boundary="clamp")
    top_left, bottom_right = 0, 6 * 8 - 1  # canvas order
    for layout, expected in ((wrap, True), (clamp, False)):
        inv = layout.canvas_index()
        assert bool(layout.token_mask()[inv[top_left], inv[bottom_right]]) is expected


def test_shifted_layout_arguments_are_checked():
    with pytest.raises(ValueError, match=r"offset must be .* \(7, 10\), got \(7, 0\)"):
        TileLayout(canvas=(1, 7, 10), tile=(3, 4), offset=(7, 0))
    with pytest.raises(ValueError, match=r"boundary must be one of \('clip', 'clamp', 'wrap'\), got 'torus'"):
        TileLayout(canvas=(1, 7, 10), tile=(3, 4), boundary="torus")
    with pytest.raises(ValueError, match="shift_divisor and shift_every must be >= 1, got 0 and 1"):
        LayoutCycle((1, 7, 10), (3, 4), shift_divisor=0)


@pytest.mark.parametrize("boundary", list(CYCLES))
def test_reference_and_flex_agree_at_every_offset_of_a_cycle(boundary):
    """Reference (dense mask) and FlexAttention (BlockMask from the block index, and its
    mask_mod) on every layout of the cycle. The Triton kernel runs the same layouts in the
    interpreter child below (TRITON_CASES)."""
    from supergen_kernels.flex import FLEX_BLOCK_SIZE, flex_block_mask

    cycle = CYCLES[boundary]
    outputs = []
    q, k, v = _qkv(cycle[0], 32, batch=2)
    for step in range(cycle.num_offsets):
        layout = cycle[step]
        ref = tile_attention(q, k, v, layout, backend="reference", order="canvas")
        out = tile_attention(q, k, v, layout, backend="flex", order="canvas")
        assert _rel_err(out, ref) <= 1e-5
        visited, _ = layout.block_index(FLEX_BLOCK_SIZE, FLEX_BLOCK_SIZE).to_dense()
        assert torch.equal(flex_block_mask(layout, "cpu").to_dense()[0, 0].bool(), visited)
        outputs.append(ref)
    # The windows really move: in canvas order, every step's result differs from the first.
    assert all((o - outputs[0]).abs().max() > 1e-3 for o in outputs[1:])


# ----------------------------------------------------------- reference semantics, no mask
def test_reference_halo0_equals_per_tile_sdpa():
    layout = LAYOUTS["local_ragged"]
    q, k, v = _qkv(layout, 64)
    out = tile_attention(q, k, v, layout, backend="reference")
    offsets = layout.tile_offsets()
    for a, b in zip(offsets[:-1], offsets[1:]):
        tile = F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b])
        assert _rel_err(out[:, :, a:b], tile) <= 1e-5


def test_halo_covering_canvas_equals_dense_attention():
    layout = TileLayout(canvas=(2, 6, 7), tile=(3, 3), halo=7)
    q, k, v = _qkv(layout, 64)
    dense = F.scaled_dot_product_attention(q, k, v)
    for backend in ("reference", "flex"):
        assert _rel_err(tile_attention(q, k, v, layout, backend=backend), dense) <= 1e-5


# ------------------------------------------------------------------------- backends
@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("head_dim", [64, 128])
def test_flex_matches_reference(name, head_dim):
    layout = LAYOUTS[name]
    q, k, v = _qkv(layout, head_dim)
    ref = tile_attention(q, k, v, layout, backend="reference")
    out = torch.full_like(q, float("nan"))
    tile_attention(q, k, v, layout, backend="flex", out=out)
    assert not out.isnan().any()
    assert _rel_err(out, ref) <= 1e-5


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit internals, during compile
@pytest.mark.parametrize("offset,boundary", [((0, 0), "clip"), ((5, 7), "wrap")], ids=["fixed", "wrap-shifted"])
def test_compiled_flex_matches_reference(offset, boundary):
    """Compiled FlexAttention (what runs on GPUs: the same compiled function, inductor's CPU
    code here) trusts the BlockMask's full-block lists and lowers mask_mod into its kernel;
    eager FlexAttention does neither. Layouts with both full and partial blocks at FlexAttention's
    block size; the wrapped one lowers the wrap term of the token rule too. Both have one shape:
    one compile (~20 s), which the second layout reuses."""
    from supergen_kernels.flex import FLEX_BLOCK_SIZE, flex_tile_attention

    layout = TileLayout(canvas=(2, 16, 24), tile=(8, 12), halo=2, offset=offset, boundary=boundary)  # N = 768
    visited, full = layout.block_index(FLEX_BLOCK_SIZE, FLEX_BLOCK_SIZE).to_dense()
    assert full.any() and (visited & ~full).any()
    q, k, v = _qkv(layout, 64)
    out = flex_tile_attention(q, k, v, layout, compiler="inductor")
    assert _rel_err(out, tile_attention(q, k, v, layout, backend="reference")) <= 1e-5


def test_one_compiled_flex_graph_serves_a_whole_shift_cycle():
    """Attention mode moves the windows every step, so FlexAttention gets a new BlockMask each
    time. Compiled, the layout is data (inputs of the graph, not constants of it): a full shift
    cycle compiles once per distinct shape, and each step's output is that step's layout's (a
    graph with the first offset baked in would fail the comparison). dynamo counts the compiles;
    its CompileCounter backend runs the captured graph without inductor, so this takes seconds."""
    from supergen.compat import CompileCounter
    from supergen_kernels.flex import flex_tile_attention

    counter = CompileCounter()
    # One step per token (shift_divisor 8 on 4x6 tiles): a cycle of 12 offsets, more than
    # dynamo's default recompile limit (8), then a second shape with a short cycle.
    cycles = [LayoutCycle((1, 8, 12), (4, 6), halo=1, shift_divisor=8), LayoutCycle((2, 8, 12), (4, 6), halo=1, shift_divisor=2)]
    assert [c.num_offsets for c in cycles] == [12, 2]
    for cycle in cycles:
        q, k, v = _qkv(cycle[0], 16, heads=1)
        for step in range(cycle.num_offsets):
            out = flex_tile_attention(q, k, v, cycle[step], compiler=counter)
            assert _rel_err(out, tile_attention(q, k, v, cycle[step], backend="reference")) <= 1e-5
    assert counter.frame_count == len(cycles)


def test_canvas_order_equals_tile_major_order():
    layout = LAYOUTS["halo_ragged"]
    q, k, v = _qkv(layout, 64)
    canvas_out = tile_attention(q, k, v, layout, backend="flex", order="canvas")
    tm = [layout.to_tile_major(t) for t in (q, k, v)]
    expected = layout.from_tile_major(tile_attention(*tm, layout, backend="reference"))
    assert _rel_err(canvas_out, expected) <= 1e-5


@pytest.mark.skipif(
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
    reason="triton is usable in this process",
)
def test_triton_without_gpu_names_the_alternatives():
    layout = LAYOUTS["local"]
    q, k, v = _qkv(layout, 64)
    assert "triton" not in available_backends("cpu")
    with pytest.raises(BackendUnavailable) as err:
        tile_attention(q, k, v, layout, backend="triton")
    message = str(err.value)
    assert "'triton'" in message and "['reference', 'flex']" in message
    if importlib.util.find_spec("triton") is not None:
        assert "TRITON_INTERPRET=1" in message
    else:
        assert "cannot be imported" in message


@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")
@pytest.mark.parametrize(
    "capability,dtype,head_dim,mma", [(90, "bf16", 128, "wgmma"), (80, "fp16", 64, "mma.sync")]
)
def test_triton_kernel_compiles_for_gpus(capability, dtype, head_dim, mma):
    """Compile the kernel ahead of time for Hopper and Ampere, with no GPU: catches what the
    interpreter does not (typing, layouts, shared memory), and checks tensor-core use."""
    pytest.importorskip("triton")
    from triton import compile as triton_compile
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from supergen_kernels import triton_tile_attention as tta

    if tta.INTERPRETED:
        pytest.skip("the kernel module was imported in interpreter mode")
    kernel = tta._tile_attention_fwd
    constexprs = {"BLOCK_M": 128, "BLOCK_N": 64, "HEAD_DIM": head_dim, "PRECISION": "tf32"}
    # Contiguous head_dim axis: Triton specialises a stride of 1 to a constant at launch too.
    constexprs.update({f"stride_{t}d": 1 for t in "qkvo"})
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in ("Q", "K", "V", "Out"):
            signature[name] = "*" + dtype
        elif name in ("full_count", "full_index", "partial_count", "partial_index", "q_window", "k_pos"):
            signature[name] = "*i32"
        else:
            signature[name] = "fp32" if name == "qk_scale" else "i32"
    compiled = triton_compile(
        ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
        target=GPUTarget("cuda", capability, 32),
        options={"num_warps": 8 if head_dim == 128 else 4, "num_stages": 3},
    )
    assert compiled.asm["cubin"]
    assert mma in compiled.asm["ptx"]


# Each case: layout name, head dim, (block_m, block_n) or None for the public entry point with
# the kernel's default blocks, and whether q, k, v are strided views. Small blocks make many
# blocks straddle tile borders; all lengths but local's 128 (all blocks full there) are not
# multiples of the block sizes.
TRITON_CASES = [
    (name, LAYOUTS[name], head_dim, blocks, False)
    for name in LAYOUTS
    for head_dim, blocks in ((64, (16, 32)), (128, (32, 16)))
] + [
    # diffusers hands attention (batch, seq, heads, head_dim): a transposed view
    ("halo_ragged", LAYOUTS["halo_ragged"], 64, None, True),
    # head dims padded on the host: 80 -> 128, 12 -> 16
    ("halo_wide", LAYOUTS["halo_wide"], 80, (16, 16), True),
    ("local_ragged", LAYOUTS["local_ragged"], 12, (16, 16), False),
] + [
    # every offset of both shift cycles, wrapped windows included
    (f"{boundary}-step{step}", cycle[step], 32, (16, 16), False)
    for boundary, cycle in CYCLES.items()
    for step in range(cycle.num_offsets)
]

_TRITON_CHILD = textwrap.dedent(
    """
    import sys, torch
    from supergen_kernels import tile_attention
    from supergen_kernels.triton_tile_attention import INTERPRETED, triton_tile_attention
    assert INTERPRETED, "the child must run the Triton interpreter"
    cases = torch.load(sys.argv[1], weights_only=False)
    outputs = []
    for layout, q, k, v, blocks in cases:
        out = torch.full_like(q, float("nan"))  # poison: every element must be written
        if blocks is None:
            tile_attention(q, k, v, layout, backend="triton", out=out)
        else:
            triton_tile_attention(q, k, v, layout, out=out, block_m=blocks[0], block_n=blocks[1])
        outputs.append(out)
    torch.save(outputs, sys.argv[2])
    """
)


@pytest.fixture(scope="module")
def triton_results(tmp_path_factory):
    """Run every Triton case in one interpreter child; returns [(output, reference)]."""
    pytest.importorskip("triton")
    tmp = tmp_path_factory.mktemp("triton")
    cases, refs = [], []
    for _, layout, head_dim, blocks, strided in TRITON_CASES:
        if strided:
            shape = (2, layout.seq_len, 3, head_dim)
            q, k, v = (torch.randn(shape).transpose(1, 2) for _ in range(3))
        else:
            q, k, v = _qkv(layout, head_dim, batch=2)
        cases.append((layout, q, k, v, blocks))
        refs.append(tile_attention(q, k, v, layout, backend="reference"))
    torch.save(cases, tmp / "cases.pt")
    package_root = str(Path(supergen_kernels.__file__).resolve().parent.parent)
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    subprocess.run(
        [sys.executable, "-c", _TRITON_CHILD, str(tmp / "cases.pt"), str(tmp / "out.pt")],
        env=env, check=True, timeout=300,
    )
    outputs = torch.load(tmp / "out.pt")
    return dict(zip(range(len(TRITON_CASES)), zip(outputs, refs)))


@pytest.mark.parametrize("case", range(len(TRITON_CASES)), ids=[
    f"{name}-d{d}-{'default' if b is None else f'{b[0]}x{b[1]}'}{'-strided' if s else ''}"
    for name, _, d, b, s in TRITON_CASES
])
def test_triton_matches_reference(triton_results, case):
    out, ref = triton_results[case]
    assert not out.isnan().any(), "some output element was never written"
    assert _rel_err(out, ref) <= 1e-5


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_flex_block_mask_carries_the_block_index(name):
    """Eager (CPU) FlexAttention evaluates mask_mod on every pair and ignores the block lists,
    so the backend test above cannot see them; the compiled GPU kernel trusts them. Check them
    here: visited and full blocks equal the layout's block index at FlexAttention's size."""
    from supergen_kernels.flex import FLEX_BLOCK_SIZE, flex_block_mask

    layout = LAYOUTS[name]
    visited, full = layout.block_index(FLEX_BLOCK_SIZE, FLEX_BLOCK_SIZE).to_dense()
    block_mask = flex_block_mask(layout, "cpu")
    assert torch.equal(block_mask.to_dense()[0, 0].bool(), visited)
    full_count = block_mask.full_kv_num_blocks[0, 0]
    full_index = block_mask.full_kv_indices[0, 0]
    got_full = torch.zeros_like(full)
    for row in range(full.shape[0]):
        got_full[row, full_index[row, : full_count[row]].long()] = True
    assert torch.equal(got_full, full)


# ------------------------------------------------------------------ 64-bit offsets
_BIG_STRIDE_CHILD = textwrap.dedent(
    """
    import resource, sys, torch
    from supergen_kernels import TileLayout, tile_attention
    from supergen_kernels.triton_tile_attention import INTERPRETED, triton_tile_attention
    assert INTERPRETED, "the child must run the Triton interpreter"
    layout = TileLayout(canvas=(1, 4, 8), tile=(4, 4), halo=1)  # N = 32, two tiles
    n, d = layout.seq_len, 16
    # Consecutive tokens 2**31 / 31 elements apart: the last token's first element sits past
    # 2**31 elements, as at 4K where (batch, seq, heads, head_dim) views have seq * heads *
    # head_dim = 3.5e9. One 4 GiB fp16 storage holds q, k, v and out interleaved; only the
    # pages of the 4 x 32 rows are ever written, so it costs address space, not memory.
    stride = 2**31 // (n - 1) + 64
    storage = torch.empty((n - 1) * stride + 4 * d, dtype=torch.float16)
    q, k, v, out = (storage.as_strided((1, 1, n, d), (0, 0, stride, 1), storage_offset=i * d)
                    for i in range(4))
    g = torch.Generator().manual_seed(0)
    small = [torch.randn(1, 1, n, d, generator=g) for _ in range(3)]
    for view, value in zip((q, k, v), small):
        view.copy_(value)
    out.fill_(float("nan"))
    triton_tile_attention(q, k, v, layout, out=out, block_m=16, block_n=16)
    ref = tile_attention(*(t.half().float() for t in small), layout, backend="reference")
    err = float((out.float() - ref).abs().max())
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"max abs err {err:.2e}, peak RSS {peak_mib:.0f} MiB")
    assert err < 5e-3, err
    assert peak_mib < 3000, "the 4 GiB storage was touched: the test would not fit CI"
    """
)


def test_triton_offsets_past_2_31_elements():
    """The kernel addresses elements past 2**31 correctly. Before the fix its per-token offsets
    (token index x stride) were int32 products, which wrap past 2**31: the interpreter then
    reads outside the tensor (a segfault, or garbage). Runs in its own interpreter child so a
    crash fails this test alone."""
    pytest.importorskip("triton")
    package_root = str(Path(supergen_kernels.__file__).resolve().parent.parent)
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", _BIG_STRIDE_CHILD], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (
        f"child exited with {result.returncode} (negative: killed by that signal)\n"
        f"{result.stdout}\n{result.stderr[-3000:]}"
    )


# -------------------------------------------------------------- availability probes
def test_triton_probe_names_a_missing_feature(monkeypatch):
    """A Triton whose tl.dot lacks input_precision (before 3.0) is reported by name, and the
    backend is not offered, instead of failing inside the kernel's compilation."""
    pytest.importorskip("triton")
    import triton
    import triton.language as tl

    def old_dot(input, other, acc=None, allow_tf32=None, out_dtype=None):  # Triton 2.x's signature
        raise AssertionError("never called")

    monkeypatch.setattr(tl, "dot", old_dot)
    reason = supergen_kernels._unavailable_reason("triton", torch.device("cuda"))
    assert reason == f"triton {triton.__version__} lacks tl.dot(..., input_precision=...) (Triton >= 3.0)"
    assert "triton" not in available_backends("cuda")
    monkeypatch.undo()
    assert "triton" in available_backends("cuda")


def test_triton_probe_catches_failures_at_kernel_import(monkeypatch):
    """Not only ImportError: an installed Triton lacking an API the kernel module uses at import
    (here triton.jit, removed) fails with AttributeError; the probe reports it, names what
    is missing and the Triton version."""
    pytest.importorskip("triton")
    import triton

    monkeypatch.delitem(sys.modules, "supergen_kernels.triton_tile_attention", raising=False)
    monkeypatch.delattr(triton, "jit")
    reason = supergen_kernels._unavailable_reason("triton", torch.device("cuda"))
    assert reason.startswith("importing the Triton kernel failed with AttributeError")
    assert "jit" in reason and triton.__version__ in reason
    layout = LAYOUTS["local"]
    with pytest.raises(BackendUnavailable, match="AttributeError"):
        tile_attention(*_qkv(layout, 16), layout, backend="triton")


# ------------------------------------------------------------------- dense-mask guard
def test_reference_refuses_a_huge_dense_mask_before_building_anything():
    """4K x 81 frames on Wan (21 x 135 x 240 tokens): the mask would be 463 GB. q, k, v are
    expanded views (no memory), and the layout has built no index tensor when it refuses."""
    layout = TileLayout(canvas=(21, 135, 240), tile=(45, 80), halo=8)
    n = layout.seq_len
    q = torch.zeros(1, 1, 1, 64).expand(1, 1, n, 64)
    with pytest.raises(BackendUnavailable) as err:
        tile_attention(q, q, q, layout, backend="reference")
    message = str(err.value)
    assert f"({n}, {n}) boolean mask, 462.9 GB" in message and "N=680400" in message
    assert "'flex'" in message and "'triton'" in message
    assert not layout.__dict__.get("_memo")


def test_reference_mask_limit_is_inclusive(monkeypatch):
    from supergen_kernels import reference

    monkeypatch.setattr(reference, "MAX_DENSE_MASK_ELEMENTS", 100)
    at_limit = TileLayout(canvas=(1, 2, 5), tile=(2, 2))  # N = 10: 100 mask elements
    over = TileLayout(canvas=(1, 3, 4), tile=(2, 2))  # N = 12: 144
    q, k, v = _qkv(at_limit, 16)
    assert torch.isfinite(tile_attention(q, k, v, at_limit, backend="reference")).all()
    with pytest.raises(BackendUnavailable, match="limited to 100 mask elements"):
        tile_attention(*_qkv(over, 16), over, backend="reference")
