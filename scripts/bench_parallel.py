"""Tile parallelism: refinement steps on 1 vs N ranks, and bytes moved per step vs the reference design.

Each configuration runs under ``torchrun`` in fresh processes (gloo on CPU, NCCL on GPUs), on the
medium random Wan of ``scripts/bench_refine.py`` at a 4×-native canvas. Per configuration: seconds
per refinement step (min over repeats, after a warm-up step), tiles computed, prediction bytes the
exchanger sent (summed over ranks), and — measured in the same processes — the time of the
reference design's exchange (every rank all-gathers a full-canvas prediction and the full latent,
fp32). Prints one table, side by side.

    python scripts/bench_parallel.py                       # CPU: 1 and 2 ranks
    python scripts/bench_parallel.py --ranks 1 2 4 8       # on a machine with 8 GPUs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_refine import ARCHS, build  # noqa: E402  (the same medium model as the refinement benchmark)


def child(args) -> None:
    """One configuration, on every rank of this torchrun launch; rank 0 writes the result as JSON."""
    import torch.distributed as dist

    from supergen import parallel
    from supergen.adapters import Conditioning
    from supergen.config import load_config
    from supergen.refine import SingleProcess, TileRefiner
    from supergen.tiling import TilePlan

    cfg = load_config("tiny", ["model.device=" + args.device, f"parallel.exchange_dtype={args.exchange_dtype}"])
    group = parallel.init(cfg) if parallel.launched() else None
    device = torch.device(cfg.model.device if group is not None else args.device)
    dtype = getattr(torch, args.dtype)
    pipe, adapter = build(args.arch, dtype, device)
    native = ARCHS[args.arch]["native"]
    height, width = map(int, args.canvas.split("x"))
    canvas, tile = (height // 8, width // 8), (native[0] // 8, native[1] // 8)
    plan = TilePlan(canvas, tile, patch=(2, 2), mode="shift", boundary=args.boundary, shift_divisor=16)
    text_dim = ARCHS[args.arch]["text_dim"]
    gen = torch.Generator().manual_seed(0)  # same inputs on every rank
    embeds = {
        "prompt_embeds": torch.randn(1, 512, text_dim, generator=gen).to(device, dtype),
        "negative_prompt_embeds": torch.randn(1, 512, text_dim, generator=gen).to(device, dtype),
        "image_embeds": None,
    }
    latents = torch.randn(1, 16, (args.frames - 1) // 4 + 1, *canvas, generator=gen).to(device)
    runner = SingleProcess()
    if group is not None and group.size > 1:
        runner = parallel.TileExchanger(group, tuple(latents.shape[1:3]), args.exchange_dtype)
    refiner = TileRefiner(plan, adapter, Conditioning(embeds=embeds, guidance_scale=5.0), positions="global", runner=runner)
    timestep = torch.tensor(500.0, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
        if group is not None:
            dist.barrier(group=group.pg)

    seconds, tiles = [], []
    with torch.no_grad():
        for step in range(args.warmup + args.steps):
            sync()
            start = time.perf_counter()
            _, stats = refiner.step(step, timestep, latents)
            sync()
            if step >= args.warmup:
                seconds.append(time.perf_counter() - start)
                tiles.append(stats.tiles_computed)
    exchanger = isinstance(runner, parallel.TileExchanger)
    sent = list(runner.bytes_sent[args.warmup :]) if exchanger else [0] * len(seconds)
    waited = list(runner.wait_seconds[args.warmup :]) if exchanger else [0.0] * len(seconds)
    reference_seconds = None
    if group is not None and group.size > 1:
        # The reference design's exchange, timed here: all-gather the full-canvas prediction and latent.
        gathered = [torch.empty_like(latents) for _ in range(group.size)]
        times = []
        for _ in range(3):
            sync()
            start = time.perf_counter()
            dist.all_gather(gathered, latents, group=group.pg)
            dist.all_gather(gathered, latents, group=group.pg)
            sync()
            times.append(time.perf_counter() - start)
        reference_seconds = min(times)
        totals = torch.tensor(sent, dtype=torch.int64, device=device)
        dist.all_reduce(totals, group=group.pg)
        sent = totals.tolist()
    if group is None or group.is_leader:
        canvas_bytes = latents.numel() * 4
        ranks = group.size if group is not None else 1
        Path(args.out).write_text(json.dumps(dict(
            ranks=ranks, exchange_dtype=args.exchange_dtype, seconds=seconds, tiles=tiles, bytes_sent=sent, wait_seconds=waited,
            # Per step each rank contributes a full fp32 prediction and latent to the all-gathers.
            reference_bytes=ranks * 2 * canvas_bytes if ranks > 1 else 0, reference_seconds=reference_seconds,
            tile_bytes={d: 16 * latents.shape[2] * tile[0] * tile[1] * s for d, s in (("fp32", 4), ("bf16", 2))},
            canvas_bytes=canvas_bytes,
        )))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="medium", choices=sorted(ARCHS))
    parser.add_argument("--canvas", default=None, help="HxW pixels; default: 2x the native size per axis (4x area)")
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--boundary", default="clamp", choices=["clamp", "wrap"])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=4, help="timed steps (the grid shifts every step)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--project", type=int, default=8, help="project the step time to this many devices")
    parser.add_argument("--exchange-dtype", default="fp32", help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.canvas is None:
        native = ARCHS[args.arch]["native"]
        args.canvas = f"{native[0] * 2}x{native[1] * 2}"
    if args.child:
        child(args)
        return
    runs = [(r, d) for r in args.ranks for d in (("fp32",) if r == 1 else ("fp32", "bf16"))]
    results = []
    for ranks, exchange in runs:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port", str(29400 + ranks),
                   __file__, "--child", "--out", str(out), "--exchange-dtype", exchange, "--arch", args.arch, "--canvas", args.canvas,
                   "--frames", str(args.frames), "--dtype", args.dtype, "--device", args.device, "--boundary", args.boundary,
                   "--steps", str(args.steps), "--warmup", str(args.warmup)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
            if proc.returncode != 0:
                sys.exit(f"{ranks} ranks ({exchange}) failed:\n{proc.stderr[-4000:]}")
            results.append(json.loads(out.read_text()))
    base = results[0]
    per_step = lambda r: sum(r["seconds"]) / len(r["seconds"])  # noqa: E731 - the grid alternates 4 and 9 tiles
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, 1 thread per rank, load avg {os.getloadavg()[0]:.1f}"
    print(f"refinement steps (cond + uncond), {args.arch}, canvas {args.canvas}x{args.frames} frames, tile {'x'.join(map(str, ARCHS[args.arch]['native']))}, "
          f"{args.boundary}, {args.dtype}, {device}")
    print(f"{'ranks':>5} {'exchange':>8} {'tiles/step':>10} {'s/step':>8} {'speedup':>8} {'s/tile':>8} "
          f"{'wait s':>7} {'bytes/step':>11} {'reference':>11} {'ratio':>6} {'ref. s':>7}")
    for r in results:
        tiles = sum(r["tiles"]) / len(r["tiles"])
        sent = sum(r["bytes_sent"]) / len(r["bytes_sent"])
        ratio = f"{sent / r['reference_bytes']:.3f}" if r["reference_bytes"] else "-"
        ref_s = f"{r['reference_seconds']:.3f}" if r["reference_seconds"] else "-"
        print(f"{r['ranks']:>5} {r['exchange_dtype']:>8} {tiles:>10.2f} {per_step(r):>8.3f} {per_step(base) / per_step(r):>7.2f}x "
              f"{per_step(r) * r['ranks'] / tiles:>8.3f} {sum(r['wait_seconds']) / len(r['wait_seconds']):>7.3f} {sent:>11,.0f} {r['reference_bytes']:>11,} {ratio:>6} {ref_s:>7}")
    print(f"prediction bytes per tile: fp32 {base['tile_bytes']['fp32']:,}, bf16 {base['tile_bytes']['bf16']:,}; canvas latent {base['canvas_bytes']:,} (fp32)")
    project(base, results, args.project)


#: Link bandwidths for the projection, bytes/s: NVLink (H100 SXM, per GPU, one direction) and PCIe 4.0 x16.
LINKS = {"NVLink 450 GB/s": 450e9, "PCIe 25 GB/s": 25e9}


def project(base: dict, results: list[dict], ranks: int) -> None:
    """Step time on ``ranks`` devices from the measured one-rank per-tile time and the measured bytes.

    Compute: the busiest rank runs ceil(tiles / ranks) tiles (equal tiles, no cache). Exchange: the
    predictions sent per step do not depend on the rank count (measured above); a rank receives the
    share it did not compute, all but the last tile overlapped with its compute, so the exposed part
    is at most one tile's transfer (no overlap at all in brackets). The reference all-gathers each
    rank's fp32 prediction and latent: a rank receives 2·(ranks−1) canvases, none overlapped.
    """
    tiles = round(sum(base["tiles"]) / len(base["tiles"]))
    per_tile = sum(base["seconds"]) / sum(base["tiles"])
    compute = -(-tiles // ranks) * per_tile
    print(f"projection to {ranks} devices: {tiles} tiles/step, {per_tile:.3f} s/tile (measured, 1 rank) -> "
          f"compute {compute:.3f} s/step, ideal speedup {tiles * per_tile / compute:.2f}x")
    for name, bandwidth in LINKS.items():
        cells = []
        for dtype, size in base["tile_bytes"].items():
            measured = [r for r in results if r["ranks"] > 1 and r["exchange_dtype"] == dtype]
            if not measured:
                continue
            received = sum(measured[0]["bytes_sent"]) / len(measured[0]["bytes_sent"]) * (ranks - 1) / ranks
            cells.append(f"ours {dtype} {size / bandwidth * 1e3:.3f} ms exposed ({received / bandwidth * 1e3:.3f} ms if not overlapped)")
        reference = 2 * (ranks - 1) * base["canvas_bytes"] / bandwidth
        print(f"  {name}: " + "; ".join(cells) + f"; reference {reference * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
