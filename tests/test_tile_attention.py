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
    TileLayout,
    available_backends,
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
    "block_list": _block_list(),
}
TILE_LAYOUTS = [name for name, layout in LAYOUTS.items() if isinstance(layout, TileLayout)]


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
        rect = canvas[:, r0:r1, c0:c1].reshape(-1)
        assert torch.equal(run.sort().values, rect.sort().values)
        if layout.cell == layout.tile:
            assert torch.equal(run, rect)
        for r in range(r0, r1, ch):
            for c in range(c0, c1, cw):
                where = position[canvas[:, r : min(r + ch, r1), c : min(c + cw, c1)].reshape(-1)]
                assert int(where.max() - where.min()) + 1 == where.numel()


def test_default_cells_follow_the_halo():
    assert TileLayout(canvas=(1, 8, 8), tile=(4, 4)).cell == (4, 4)
    assert TileLayout(canvas=(1, 8, 8), tile=(4, 4), halo=2).cell == (2, 2)
    # Halo-sized cells make the halo bands whole runs: less computed work at one block size.
    plain = TileLayout(canvas=(2, 32, 32), tile=(16, 16), halo=4, cell=(16, 16))
    cells = TileLayout(canvas=(2, 32, 32), tile=(16, 16), halo=4)
    assert torch.equal(plain.token_mask()[plain.canvas_index()][:, plain.canvas_index()],
                       cells.token_mask()[cells.canvas_index()][:, cells.canvas_index()])
    assert cells.block_index(32, 32).computed_pairs() < plain.block_index(32, 32).computed_pairs()


@pytest.mark.parametrize("name", TILE_LAYOUTS)
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
def test_compiled_flex_matches_reference():
    """Compiled FlexAttention (what runs on GPUs) trusts the BlockMask's full-block lists and
    lowers mask_mod into its kernel; eager FlexAttention does neither. One compiled CPU run
    (~20 s) on a layout with both full and partial blocks at FlexAttention's block size."""
    from torch.nn.attention.flex_attention import flex_attention

    from supergen_kernels.flex import FLEX_BLOCK_SIZE, flex_block_mask

    layout = TileLayout(canvas=(2, 16, 24), tile=(8, 12), halo=2)  # N = 768
    visited, full = layout.block_index(FLEX_BLOCK_SIZE, FLEX_BLOCK_SIZE).to_dense()
    assert full.any() and (visited & ~full).any()
    q, k, v = _qkv(layout, 64)
    compiled = torch.compile(flex_attention, dynamic=False)
    out = compiled(q, k, v, block_mask=flex_block_mask(layout, "cpu"))
    assert _rel_err(out, tile_attention(q, k, v, layout, backend="reference")) <= 1e-5


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
    (name, head_dim, blocks, False)
    for name in LAYOUTS
    for head_dim, blocks in ((64, (16, 32)), (128, (32, 16)))
] + [
    # diffusers hands attention (batch, seq, heads, head_dim): a transposed view
    ("halo_ragged", 64, None, True),
    ("halo_wide", 80, (16, 16), True),  # head dims padded on the host: 80 -> 128, 12 -> 16
    ("local_ragged", 12, (16, 16), False),
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
    for name, head_dim, blocks, strided in TRITON_CASES:
        layout = LAYOUTS[name]
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
    for name, d, b, s in TRITON_CASES
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
