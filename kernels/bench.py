"""Benchmark sparse tile attention on a GPU: Triton kernel vs dense flash SDPA vs FlexAttention
vs a loop of per-tile SDPA calls, at 2K and 4K canvases with Wan2.1 head shapes.

    python kernels/bench.py                      # GPU: the full table
    python kernels/bench.py --smoke              # CPU: tiny shapes, checks the code path only

Geometry (Wan2.1: VAE stride 8, patch 2, so 16 pixels per token side): the tile is the
native 720x1280 frame, 45x80 tokens; 2K (1440x2560) is 90x160 tokens = 2x2 tiles, 4K
(2160x3840) is 135x240 tokens = 3x3 tiles; 5 latent frames. Head shapes: Wan2.1-1.3B has 12
heads x 128, Wan2.1-14B 40 heads x 128. Batch 1 (one CFG branch).

Every method computes the same thing except dense SDPA, which attends the whole canvas: it is
the speed-of-light reference for TFLOP/s. Columns:

* ``ms`` — median over ``--iters`` timed calls after warm-up (compilation excluded);
* ``TFLOP/s computed`` — ``4 * heads * head_dim * pairs / time`` where ``pairs`` is the
  (query, key) pairs the method actually multiplies: ``N**2`` for dense, the visited blocks
  for Triton and FlexAttention (at their own block sizes), the tile x window sizes for the loop;
* ``TFLOP/s useful`` — the same with the pairs the mask allows, identical for every sparse
  method, so it compares them on equal work;
* ``% flash`` — computed TFLOP/s as a share of dense flash SDPA's;
* ``max |err|`` — against the per-tile SDPA loop (the sparse methods only).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

# Run from a checkout without installing: the package lives next to this script.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from supergen_kernels import TileLayout, available_backends, tile_attention  # noqa: E402
from supergen_kernels.flex import FLEX_BLOCK_SIZE  # noqa: E402

PIXELS_PER_TOKEN = 16  # Wan2.1: VAE spatial stride 8 x patch 2
CANVASES = {"2k": (1440, 2560), "4k": (2160, 3840)}
HEAD_SHAPES = {"wan1.3b": (12, 128), "wan14b": (40, 128)}


@dataclass
class Row:
    case: str
    method: str
    ms: float
    computed_pairs: int
    useful_pairs: int
    err: float | None


def _time(fn: Callable[[], torch.Tensor], iters: int, warmup: int) -> tuple[float, torch.Tensor]:
    """Median milliseconds of ``fn()`` and its last output."""
    for _ in range(warmup):
        out = fn()
    cuda = torch.cuda.is_available()
    times = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            out = fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out


def _window_keys(layout: TileLayout, device) -> list[torch.Tensor]:
    """Per tile, the tile-major indices of the keys in its window (for the per-tile loop)."""
    return [inside.nonzero().squeeze(1) for inside in layout.keys_in_window(device)]


def bench_case(
    name: str, layout: TileLayout, heads: int, head_dim: int, dtype, device, iters: int, warmup: int
) -> list[Row]:
    n = layout.seq_len
    q, k, v = (torch.randn(1, heads, n, head_dim, dtype=dtype, device=device) for _ in range(3))
    offsets = layout.tile_offsets()
    windows = _window_keys(layout, device)
    useful = sum((b - a) * keys.numel() for a, b, keys in zip(offsets, offsets[1:], windows))
    rows = []

    def per_tile_loop() -> torch.Tensor:
        out = torch.empty_like(q)
        for a, b, keys in zip(offsets, offsets[1:], windows):
            if layout.halo == 0:  # the window is the tile itself: contiguous, no gather
                k_t, v_t = k[:, :, a:b], v[:, :, a:b]
            else:
                k_t, v_t = k.index_select(2, keys), v.index_select(2, keys)
            out[:, :, a:b] = F.scaled_dot_product_attention(q[:, :, a:b], k_t, v_t)
        return out

    ms, expected = _time(per_tile_loop, iters, warmup)
    rows.append(Row(name, "per-tile SDPA loop", ms, useful, useful, None))

    def dense() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)

    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            ms, _ = _time(dense, iters, warmup)
        rows.append(Row(name, "dense SDPA (flash)", ms, n * n, useful, None))
    else:
        ms, _ = _time(dense, iters, warmup)
        rows.append(Row(name, "dense SDPA", ms, n * n, useful, None))

    backends = available_backends(device)
    if "flex" in backends:
        flex_pairs = layout.block_index(FLEX_BLOCK_SIZE, FLEX_BLOCK_SIZE, device).computed_pairs()
        ms, out = _time(lambda: tile_attention(q, k, v, layout, "flex"), iters, warmup)
        err = float((out.float() - expected.float()).abs().max())
        rows.append(Row(name, "FlexAttention", ms, flex_pairs, useful, err))
    if "triton" in backends:
        from supergen_kernels.triton_tile_attention import default_blocks

        block_m, block_n, _, _ = default_blocks(head_dim)
        triton_pairs = layout.block_index(block_m, block_n, device).computed_pairs()
        ms, out = _time(lambda: tile_attention(q, k, v, layout, "triton"), iters, warmup)
        err = float((out.float() - expected.float()).abs().max())
        rows.append(Row(name, f"Triton ({block_m}x{block_n})", ms, triton_pairs, useful, err))
    else:
        print(f"[{name}] triton skipped: not available for {device.type} tensors here")
    return rows


def print_table(rows: list[Row], heads_dim: dict[str, tuple[int, int]]) -> None:
    print("| case | method | ms | TFLOP/s computed | TFLOP/s useful | % flash | max abs err |")
    print("|---|---|---:|---:|---:|---:|---:|")
    flash = {}
    for r in rows:
        heads, d = heads_dim[r.case]
        r.tflops = 4 * heads * d * r.computed_pairs / (r.ms * 1e-3) / 1e12
        r.useful_tflops = 4 * heads * d * r.useful_pairs / (r.ms * 1e-3) / 1e12
        if r.method.startswith("dense"):
            flash[r.case] = r.tflops
    for r in rows:
        share = f"{100 * r.tflops / flash[r.case]:.0f}%" if r.case in flash else "-"
        err = "-" if r.err is None else f"{r.err:.1e}"
        print(
            f"| {r.case} | {r.method} | {r.ms:.2f} | {r.tflops:.1f} | {r.useful_tflops:.1f} "
            f"| {share} | {err} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes; runs on CPU too")
    parser.add_argument("--canvas", nargs="+", default=list(CANVASES), choices=list(CANVASES))
    parser.add_argument("--heads", nargs="+", default=list(HEAD_SHAPES), choices=list(HEAD_SHAPES))
    parser.add_argument("--frames", type=int, default=5, help="latent frames")
    parser.add_argument("--tile", type=int, nargs=2, default=(45, 80), help="tile, tokens (h w)")
    parser.add_argument("--halo", type=int, nargs="+", default=[0, 8], help="halos, tokens")
    parser.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("No CUDA GPU on this machine: nothing to benchmark. "
              "Use --smoke to run the script's code path on tiny CPU shapes.")
        return 0

    device = torch.device("cuda" if cuda else "cpu")
    # Each layout brings its own mask_mod closure, so compiled FlexAttention recompiles per case;
    # past dynamo's default limit (8) it would silently fall back to the dense eager path.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    import importlib.util

    triton_version = "not installed"
    if importlib.util.find_spec("triton") is not None:
        import triton

        triton_version = triton.__version__
    print(f"device: {torch.cuda.get_device_name() if cuda else 'CPU'}; torch {torch.__version__}; "
          f"triton {triton_version}")

    if args.smoke:
        # Ragged on purpose (the tile does not divide the canvas). fp32 on CPU: SDPA and
        # FlexAttention's eager path have no fast bf16 CPU kernels.
        cases = [("smoke", (2, 12, 18), (5, 8), halo, (2, 64)) for halo in args.halo]
        dtype = torch.float32 if not cuda else torch.bfloat16
        args.iters, args.warmup = min(args.iters, 2), 1
    else:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
        cases = []
        for canvas in args.canvas:
            h, w = (p // PIXELS_PER_TOKEN for p in CANVASES[canvas])
            for head_name in args.heads:
                for halo in args.halo:
                    cases.append((f"{canvas} {head_name}", (args.frames, h, w), tuple(args.tile),
                                  halo, HEAD_SHAPES[head_name]))

    rows, heads_dim = [], {}
    for label, canvas, tile, halo, (heads, head_dim) in cases:
        layout = TileLayout(canvas=canvas, tile=tile, halo=halo)
        name = f"{label} halo {halo}"
        heads_dim[name] = (heads, head_dim)
        tiles = math.prod(layout.grid)
        print(f"[{name}] canvas {canvas} tokens = {layout.seq_len}, {tiles} tiles, "
              f"{heads} heads x {head_dim}", flush=True)
        rows += bench_case(name, layout, heads, head_dim, dtype, device, args.iters, args.warmup)
        if cuda:
            torch.cuda.empty_cache()
    print()
    print_table(rows, heads_dim)
    return 0


if __name__ == "__main__":
    sys.exit(main())
