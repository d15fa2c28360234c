"""One refinement step on a canvas k× the native area: tiled (supergen) vs one full-canvas forward.

Each variant runs in its own fresh process so its peak memory is its own (CPU: peak RSS above the
process' baseline after building the model; GPU: ``torch.cuda.max_memory_allocated``). Random weights
time the same as trained ones. Prints wall time and peak memory per variant and their ratios; with
``--jsonl`` each variant's row is appended to the file as soon as that variant has finished.

    python scripts/bench_refine.py                          # medium random Wan on CPU, 4x native area
    python scripts/bench_refine.py --arch wan2.1-1.3b --canvas 1440x2560 --frames 81 --dtype bfloat16   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

#: Transformer sizes: a medium config that runs on a laptop CPU, and Wan2.1-T2V-1.3B's real architecture.
ARCHS = {
    "medium": dict(num_attention_heads=4, attention_head_dim=32, ffn_dim=512, num_layers=4, text_dim=64, native=(256, 448)),
    "wan2.1-1.3b": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30, text_dim=4096, native=(480, 832)),
}


def build(arch: str, dtype: torch.dtype, device: torch.device):
    from diffusers import WanPipeline, WanTransformer3DModel

    from supergen.adapters import adapter_for
    from supergen.builtin import tiny_wan_pipeline

    spec = dict(ARCHS[arch])
    spec.pop("native")
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), in_channels=16, out_channels=16, freq_dim=256,
                                        cross_attn_norm=True, qk_norm="rms_norm_across_heads", **spec)
    tiny = tiny_wan_pipeline()  # VAE/scheduler only give geometry here; the transformer is what is timed
    pipe = WanPipeline(tokenizer=tiny.tokenizer, text_encoder=tiny.text_encoder, vae=tiny.vae,
                       transformer=transformer.to(device, dtype).eval(), scheduler=tiny.scheduler)
    return pipe, adapter_for(pipe)


def run_variant(args) -> dict:
    from supergen.adapters import Conditioning
    from supergen.refine import TileRefiner
    from supergen.tiling import TilePlan

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    pipe, adapter = build(args.arch, dtype, device)
    native = ARCHS[args.arch]["native"]
    height, width = map(int, args.canvas.split("x"))
    canvas = (height // 8, width // 8)
    tile = canvas if args.variant == "full" else (native[0] // 8, native[1] // 8)
    plan = TilePlan(canvas, tile, patch=(2, 2), mode="shift", boundary="clamp")
    text_dim = ARCHS[args.arch]["text_dim"]
    gen = torch.Generator().manual_seed(0)
    embeds = {
        "prompt_embeds": torch.randn(1, 512, text_dim, generator=gen).to(device, dtype),
        "negative_prompt_embeds": torch.randn(1, 512, text_dim, generator=gen).to(device, dtype),
        "image_embeds": None,
    }
    cond = Conditioning(embeds=embeds, guidance_scale=5.0)
    latents = torch.randn(1, 16, (args.frames - 1) // 4 + 1, *canvas, generator=gen).to(device)
    refiner = TileRefiner(plan, adapter, cond, positions="global", batch_tiles=1)
    timestep = torch.tensor(500.0, device=device)
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_alloc = torch.cuda.memory_allocated()
    times, cpu_times = [], []
    with torch.no_grad():
        for _ in range(args.warmup + args.repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            _, stats = refiner.step(0, timestep, latents)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    times, cpu_times = times[args.warmup :], cpu_times[args.warmup :]
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base_alloc) / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_rss) / 2**10  # KiB → MiB
    tokens = latents.shape[2] * (tile[0] // 2) * (tile[1] // 2)
    return dict(variant=args.variant, tiles=stats.tiles, tokens_per_forward=tokens, seconds=min(times),
                cpu_seconds=min(cpu_times), peak_mib=peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="medium", choices=sorted(ARCHS))
    parser.add_argument("--canvas", default=None, help="HxW pixels; default: 2x the native size per axis (4x area)")
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 makes CPU time comparable under load)")
    parser.add_argument("--json", default=None, help="also write both variants' results to this JSON file")
    parser.add_argument("--jsonl", default=None, help="append each variant's row to this file as a JSON line when it finishes")
    parser.add_argument("--variant", choices=["tiled", "full"], help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.canvas is None:
        native = ARCHS[args.arch]["native"]
        args.canvas = f"{native[0] * 2}x{native[1] * 2}"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    results = {}
    for variant in ("tiled", "full"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--canvas", args.canvas, "--variant", variant]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"{variant} variant failed:\n{out.stderr}")
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        if args.jsonl:  # now, not after both: a time limit may end this run during the next variant
            with open(args.jsonl, "a") as fh:
                fh.write(json.dumps(dict(arch=args.arch, canvas=args.canvas, frames=args.frames, dtype=args.dtype,
                                         device=device, **results[variant])) + "\n")
    print(f"one refinement step (cond + uncond), {args.arch}, canvas {args.canvas}x{args.frames} frames, {args.dtype}, {device}")
    print(f"{'variant':<8}{'tiles':>6}{'tokens/forward':>16}{'wall s':>10}{'CPU s':>10}{'peak MiB':>10}")
    for r in results.values():
        print(f"{r['variant']:<8}{r['tiles']:>6}{r['tokens_per_forward']:>16}{r['seconds']:>10.3f}{r['cpu_seconds']:>10.3f}{r['peak_mib']:>10.1f}")
    t, f = results["tiled"], results["full"]
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(arch=args.arch, canvas=args.canvas, frames=args.frames, dtype=args.dtype, device=device, **results), fh, indent=2)
    print(f"full/tiled: wall time {f['seconds'] / t['seconds']:.2f}x, CPU time {f['cpu_seconds'] / t['cpu_seconds']:.2f}x, "
          f"peak memory {f['peak_mib'] / max(t['peak_mib'], 1e-9):.2f}x")


if __name__ == "__main__":
    main()
