"""Tile parallelism: refinement steps on 1 vs N ranks, and bytes moved per step vs the reference design.

Each configuration runs under ``torchrun`` in fresh processes (gloo on CPU, NCCL on GPUs), on the
medium random Wan of ``scripts/bench_refine.py`` at a 4×-native canvas. Per configuration: seconds
per refinement step (min over repeats, after a warm-up step), tiles computed, prediction bytes the
exchanger sent (summed over ranks), and — measured in the same processes — the time of the
reference design's exchange (every rank all-gathers a full-canvas prediction and the full latent,
fp32). Prints one table, side by side.

    python scripts/bench_parallel.py                       # CPU: 1 and 2 ranks
    python scripts/bench_parallel.py --ranks 1 2 4 8       # on a machine with 8 GPUs

``--end-to-end`` times whole renders instead (sketch, upscale/encode, refinement, decode) of the
medium random Wan (``planner.KNOWN["wan-medium-random"]``: transformer, VAE and text encoder) at 4×
its native area, per stage, with the bytes every rank sent per stage: one rank; then on N ranks
the previous design (``parallel.cfg=off``: sketch computed whole on every rank, whole tiles) beside
CFG parallelism (sketch branches on the mesh's cfg dimension, (tile, branch) units where they
balance better) and the Ulysses sketch (diffusers' context parallelism). Then a per-stage
projection to 8 GPUs for Wan2.1-14B at 4K × 81 from the planner's FLOPs and the bytes each stage moves.

    python scripts/bench_parallel.py --end-to-end          # CPU: 1 and 2 ranks (the most 2 cores can time)
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


#: ``--end-to-end`` variants: name → config overrides (on one rank only ``one``).
E2E_VARIANTS = {
    "one": [],
    "previous": ["parallel.cfg=off"],
    "cfg": ["parallel.cfg=auto", "parallel.sketch=cfg"],
    "ulysses": ["parallel.cfg=auto", "parallel.sketch=ulysses"],
}


def child_end_to_end(args) -> None:
    """One whole render on every rank of this torchrun launch; rank 0 writes stage times and bytes as JSON."""
    from bench_planner import random_pipeline

    from supergen import parallel
    from supergen.config import load_config
    from supergen.pipeline import SuperGenPipeline
    from supergen.cost import KNOWN
    from supergen.runtime import call_arguments

    arch = KNOWN["wan-medium-random"]
    native = arch.native_size
    overrides = [
        "model.device=" + args.device, f"job.height={native[0] * 2}", f"job.width={native[1] * 2}", f"job.num_frames={args.frames}",
        f"sketch.height={native[0]}", f"sketch.width={native[1]}", f"sketch.num_inference_steps={args.sketch_steps}",
        f"refine.num_inference_steps={args.steps * 2}", "refine.strength=0.5", "cache.enabled=false",
        f"tiling.tile_height={native[0]}", f"tiling.tile_width={native[1]}", "parallel.timeout_s=600", *E2E_VARIANTS[args.variant],
    ]
    cfg = load_config("tiny", overrides)
    group = parallel.init(cfg) if parallel.launched() else None
    device = group.device if group is not None else torch.device(args.device)
    pipe = random_pipeline(arch).to(device)
    pipe.set_progress_bar_config(disable=True)
    sg = SuperGenPipeline(pipe, cfg, group)
    start = time.perf_counter()
    out = sg(**call_arguments(cfg.job), generator=torch.Generator().manual_seed(0), output_type="np")
    total = time.perf_counter() - start
    stats = out.stats
    if group is None or group.is_leader:
        stages = stats.parallel.get("stages") or {name: {"seconds": s, "bytes": 0} for name, s in stats.seconds.items()}
        Path(args.out).write_text(json.dumps(dict(
            variant=args.variant, ranks=1 if group is None else group.size, total=total, stages=stages,
            plan=stats.parallel.get("plan", {}).get("summary", "1 rank"), tiles=[s.tiles for s in stats.steps],
            canvas=stats.canvas, sketch=stats.sketch, frames=stats.num_frames,
        )))


def end_to_end(args) -> None:
    """Run :func:`child_end_to_end` per rank count and variant; print the per-stage table and the projection."""
    results = []
    for ranks in args.ranks:
        for variant in (["one"] if ranks == 1 else ["previous", "cfg", "ulysses"]):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "result.json"
                cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port", str(29400 + ranks),
                       __file__, "--end-to-end", "--child", "--variant", variant, "--out", str(out), "--frames", str(args.frames),
                       "--steps", str(args.steps), "--sketch-steps", str(args.sketch_steps), "--device", args.device]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
                if proc.returncode != 0:
                    sys.exit(f"{ranks} ranks ({variant}) failed:\n{proc.stderr[-4000:]}")
                results.append(json.loads(out.read_text()))
    base = results[0]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, 1 thread per rank, load avg {os.getloadavg()[0]:.1f}"
    print(f"whole render, wan-medium-random, {base['canvas'][0]}x{base['canvas'][1]}x{base['frames']} from a {base['sketch'][0]}x{base['sketch'][1]} "
          f"sketch, {args.sketch_steps} sketch steps, {args.steps} refinement steps (tiles per step {base['tiles']}), {device}")
    stages = list(base["stages"])
    print(f"{'ranks':>5} {'variant':>9} " + " ".join(f"{s + ' s':>10} {s + ' MB':>10}" for s in stages) + f" {'total s':>8} {'speedup':>8}")
    for r in results:
        cells = " ".join(f"{r['stages'][s]['seconds']:>10.2f} {r['stages'][s]['bytes'] / 1e6:>10.2f}" for s in stages)
        print(f"{r['ranks']:>5} {r['variant']:>9} {cells} {r['total']:>8.2f} {base['total'] / r['total']:>7.2f}x")
    for r in results[1:]:
        print(f"  {r['variant']}: {r['plan']}")
    project_end_to_end(8)


#: Sustained dense bf16 throughput assumed per GPU for the projection (H100 SXM at ~50% of its 989 TFLOP/s peak).
GPU_FLOPS = 0.5 * 989e12


def project_end_to_end(ranks: int) -> None:
    """Per-stage time of Wan2.1-14B at 4K × 81 on one GPU and on ``ranks`` GPUs, from the planner's
    transformer FLOPs and the bytes each stage moves (sketch: Ulysses all-to-alls; refinement: one
    bf16 canvas of branch predictions per step; decode: the VAE tiles' pixels to the leader)."""
    from supergen.config import load_config
    from supergen.cost import KNOWN, estimate

    cfg = load_config("wan2.1-t2v-1.3b-4k", ["model.name=Wan2.1-14B"])
    arch = KNOWN["Wan2.1-14B"]
    plan = estimate(cfg, arch)
    f, h, w = plan.latent[1:]
    sketch_tokens = f * (plan.sketch[0] // 8 // 2) * (plan.sketch[1] // 8 // 2)  # latent frames × patches (VAE 8×, patch 2×2)
    hidden = arch.transformer["num_attention_heads"] * arch.transformer["attention_head_dim"]
    layers = arch.transformer["num_layers"]
    branches = 2 if plan.guidance else 1
    tiles = plan.tiles_per_step
    units = tiles * branches
    sketch_1 = plan.sketch_steps * plan.sketch_flops_per_step / GPU_FLOPS
    refine_1 = plan.refine_steps * plan.flops_per_step / GPU_FLOPS
    busiest = -(-units // ranks) / units  # share of a step's forwards on the busiest rank
    # Ulysses: 4 all-to-alls (q, k, v, out) of bf16 activations per layer and branch; each rank sends (n-1)/n of its shard.
    ulysses_bytes = plan.sketch_steps * branches * layers * 4 * sketch_tokens * hidden * 2 * (ranks - 1) / ranks / ranks
    refine_bytes = plan.refine_steps * branches * 16 * f * h * w * 2  # every branch prediction once, bf16
    print(f"\nprojection, transformer only (not measured; every stage: scripts/project_gpus.py): Wan2.1-14B, {plan.size[0]}x{plan.size[1]}x{plan.num_frames}, {plan.sketch_steps} sketch + {plan.refine_steps} "
          f"refinement steps, {tiles} tiles x {branches} branches per step, {GPU_FLOPS / 1e12:.0f} TFLOP/s per GPU sustained")
    for link, bandwidth in LINKS.items():
        sketch_n = sketch_1 / ranks + ulysses_bytes / bandwidth
        refine_n = refine_1 * busiest + refine_bytes * (ranks - 1) / ranks / bandwidth  # upper bound: no receive hidden behind compute
        # parallel.sketch=cfg: each rank runs one branch of every step (replicated along tile); the branch predictions cross once a step.
        sketch_cfg = sketch_1 / branches + plan.sketch_steps * 16 * f * (plan.sketch[0] // 8) * (plan.sketch[1] // 8) * 2 / bandwidth
        print(f"  {link}: sketch {sketch_1:.0f} s -> {sketch_n:.0f} s (Ulysses, {ulysses_bytes / 1e9:.1f} GB per rank; {sketch_cfg:.0f} s with "
              f"parallel.sketch=cfg), refine {refine_1:.0f} s -> {refine_n:.0f} s (busiest rank {-(-units // ranks)} of {units} units/step, "
              f"{refine_bytes / 1e9:.1f} GB exchanged), transformer total {sketch_1 + refine_1:.0f} s -> {sketch_n + refine_n:.0f} s = "
              f"{(sketch_1 + refine_1) / (sketch_n + refine_n):.2f}x ({(sketch_1 + refine_1) / (sketch_cfg + refine_n):.2f}x with the cfg sketch)")
    # The VAE (not in the planner's FLOPs): its windows spread over the ranks like tiles; the decoded
    # pixels travel to the leader once (float32 here; bf16 VAEs halve it).
    (th, tw), (sh, sw) = (256, 256), (192, 192)  # diffusers' AutoencoderKLWan tiling
    windows = -(-plan.size[0] // sh) * -(-plan.size[1] // sw)
    pixels = 3 * plan.num_frames * plan.size[0] * plan.size[1] * 4
    print(f"  VAE: {windows} windows of {th}x{tw} -> busiest rank {-(-windows // ranks)} ({windows / -(-windows // ranks):.2f}x); decode sends "
          f"{pixels * (ranks - 1) / ranks / 1e9:.1f} GB to the leader: " + ", ".join(f"{n.split()[0]} {pixels / b:.2f} s" for n, b in LINKS.items()))


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
    parser.add_argument("--end-to-end", action="store_true", help="time whole renders per stage (see the module docstring)")
    parser.add_argument("--sketch-steps", type=int, default=4, help="--end-to-end: sketch steps")
    parser.add_argument("--variant", default="one", choices=sorted(E2E_VARIANTS), help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--exchange-dtype", default="fp32", help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.canvas is None:
        native = ARCHS[args.arch]["native"]
        args.canvas = f"{native[0] * 2}x{native[1] * 2}"
    if args.end_to_end:
        child_end_to_end(args) if args.child else end_to_end(args)
        return
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
