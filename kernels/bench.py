"""Benchmark sparse tile attention on a GPU: Triton kernel vs dense flash SDPA vs FlexAttention
vs a loop of per-tile SDPA calls, at 2K and 4K canvases with Wan2.1 head shapes.

    python kernels/bench.py                      # GPU: the full table
    python kernels/bench.py --smoke              # CPU: tiny shapes, checks the code path only
    python kernels/bench.py --jsonl rows.jsonl   # also append each row to a file as it is measured

Per case, the methods run in order of value (dense flash, Triton, FlexAttention, then the
per-tile loop), and with ``--jsonl`` each row is appended (one JSON object per line, flushed) the
moment it is measured, so a run cut short by a time limit keeps every finished row.

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

FlexAttention compiles once per sequence shape (the layout is data to the compiled function), so
the halo 0 and halo 8 cases of one canvas share a compile.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable

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
    heads: int
    head_dim: int

    def tflops(self, pairs: int) -> float:
        return 4 * self.heads * self.head_dim * pairs / (self.ms * 1e-3) / 1e12


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
    name: str, layout: TileLayout, heads: int, head_dim: int, dtype, device, iters: int, warmup: int,
    emit: Callable[[Row], None],
) -> None:
    """Time every method on one case, calling ``emit`` with each row as soon as it is measured."""
    n = layout.seq_len
    q, k, v = (torch.randn(1, heads, n, head_dim, dtype=dtype, device=device) for _ in range(3))
    offsets = layout.tile_offsets()
    windows = _window_keys(layout, device)
    useful = sum((b - a) * keys.numel() for a, b, keys in zip(offsets, offsets[1:], windows))

    def row(method: str, ms: float, computed: int, err: float | None = None) -> None:
        emit(Row(name, method, ms, computed, useful, err, heads, head_dim))

    def per_tile_loop() -> torch.Tensor:
        out = torch.empty_like(q)
        for a, b, keys in zip(offsets, offsets[1:], windows):
            if layout.halo == 0:  # the window is the tile itself: contiguous, no gather
                k_t, v_t = k[:, :, a:b], v[:, :, a:b]
            else:
                k_t, v_t = k.index_select(2, keys), v.index_select(2, keys)
            out[:, :, a:b] = F.scaled_dot_product_attention(q[:, :, a:b], k_t, v_t)
        return out

    expected = per_tile_loop()  # the sparse methods' yardstick; timed last, it matters least

    def dense() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)

    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            ms, _ = _time(dense, iters, warmup)
        row("dense SDPA (flash)", ms, n * n)
    else:
        ms, _ = _time(dense, iters, warmup)
        row("dense SDPA", ms, n * n)

    def max_err(out: torch.Tensor) -> float:
        return float((out.float() - expected.float()).abs().max())

    backends = available_backends(device)
    if "triton" in backends:
        from supergen_kernels.triton_tile_attention import default_blocks

        block_m, block_n, _, _ = default_blocks(head_dim)
        ms, out = _time(lambda: tile_attention(q, k, v, layout, "triton"), iters, warmup)
        row(f"Triton ({block_m}x{block_n})", ms, layout.block_index(block_m, block_n, device).computed_pairs(), max_err(out))
    else:
        print(f"[{name}] triton skipped: not available for {device.type} tensors here")
    if "flex" in backends:
        ms, out = _time(lambda: tile_attention(q, k, v, layout, "flex"), iters, warmup)
        row("FlexAttention", ms, layout.block_index(FLEX_BLOCK_SIZE, FLEX_BLOCK_SIZE, device).computed_pairs(), max_err(out))
    ms, _ = _time(per_tile_loop, iters, warmup)
    row("per-tile SDPA loop", ms, useful)


def row_record(r: Row, flash_tflops: float | None) -> dict:
    """One row as a JSON-ready dict, TFLOP/s included (``pct_flash`` once the case's dense row exists)."""
    tflops = r.tflops(r.computed_pairs)
    return dict(case=r.case, method=r.method, ms=r.ms, tflops_computed=tflops, tflops_useful=r.tflops(r.useful_pairs),
                pct_flash=None if flash_tflops is None else 100 * tflops / flash_tflops, max_abs_err=r.err,
                computed_pairs=r.computed_pairs, useful_pairs=r.useful_pairs, heads=r.heads, head_dim=r.head_dim)


def print_table(records: list[dict]) -> None:
    print("| case | method | ms | TFLOP/s computed | TFLOP/s useful | % flash | max abs err |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in records:
        share = "-" if r["pct_flash"] is None else f"{r['pct_flash']:.0f}%"
        err = "-" if r["max_abs_err"] is None else f"{r['max_abs_err']:.1e}"
        print(f"| {r['case']} | {r['method']} | {r['ms']:.2f} | {r['tflops_computed']:.1f} | {r['tflops_useful']:.1f} "
              f"| {share} | {err} |")


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
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the case list this many times (the spread between rounds is the timing noise)")
    parser.add_argument("--jsonl", type=Path, default=None,
                        help="append each row to this file as a JSON line the moment it is measured")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("No CUDA GPU on this machine: nothing to benchmark. "
              "Use --smoke to run the script's code path on tiny CPU shapes.")
        return 0

    device = torch.device("cuda" if cuda else "cpu")
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

    records: list[dict] = []
    sink: IO[str] | None = None if args.jsonl is None else args.jsonl.open("a")
    flash: dict[str, float] = {}

    def emit(r: Row) -> None:
        if r.method.startswith("dense"):
            flash[r.case] = r.tflops(r.computed_pairs)
        record = dict(round=round_, **row_record(r, flash.get(r.case)))
        records.append(record)
        print(f"[{r.case}] {r.method}: {r.ms:.2f} ms", flush=True)
        if sink is not None:
            sink.write(json.dumps(record) + "\n")
            sink.flush()  # a time limit may end this process at any moment: every row is on disk

    for round_ in range(args.rounds):
        for label, canvas, tile, halo, (heads, head_dim) in cases:
            layout = TileLayout(canvas=canvas, tile=tile, halo=halo)
            name = f"{label} halo {halo}"
            print(f"[{name}] canvas {canvas} tokens = {layout.seq_len}, {math.prod(layout.grid)} tiles, "
                  f"{heads} heads x {head_dim}", flush=True)
            bench_case(name, layout, heads, head_dim, dtype, device, args.iters, args.warmup, emit)
            if cuda:
                torch.cuda.empty_cache()
    print()
    print_table(records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
