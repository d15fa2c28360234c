"""Project one render's wall time on 1 and on N GPUs, stage by stage, every stage included.

A projection, not a measurement: no GPU has run these renders. What is counted and what is assumed:

- **FLOPs, counted.** Transformer forwards (the sketch and every refinement unit): the planner's
  :func:`supergen.cost.transformer_flops`, per step with that step's tile count
  (``TilePlan.count``). The VAE: ``torch.utils.flop_counter`` on diffusers' real ``AutoencoderKLWan``
  (the architecture's published config) on the meta device, one call per distinct window shape
  (the canvas encode and decode windows ``TiledVAE`` cuts, and the untiled decode of the sketch).
  The text encoder (UMT5): ``2 · (parameters − token embedding) · tokens`` for its linears plus
  ``4 · tokens² · d_model`` per layer for attention, once per prompt (positive and negative).
- **Throughput, assumed** (no GPU was lent to measure it): ``--tflops`` sustained for the bf16
  transformer and text encoder (default 494: half an H100 SXM's dense bf16 peak), ``--vae-tflops``
  for Wan's float32 VAE convolutions (default 150: about 30 % of the H100's dense TF32 peak, which
  cuDNN uses for float32 convolutions by default; its 96-channel full-resolution layers are closer
  to memory-bound than the transformer). The script also prints the result with the VAE at a third
  of that, since it is the least certain figure.
- **Links, assumed**: NVLink 450 GB/s and PCIe 25 GB/s per GPU, one direction; no overlap of any
  transfer with compute (an upper bound on the exchange).
- **How each stage divides** (the code's own rules): the text encoder runs on every rank (not
  divided); the sketch is split by tokens (``parallel.sketch=ulysses``: 4 bf16 all-to-alls per block,
  branch and step) or by guidance branch (``cfg``: each rank runs one branch, the branch predictions
  cross once a step); the sketch's own VAE decode is untiled and runs on every rank (not divided);
  the canvas encode and decode split the VAE windows with ``parallel.exchanger.balance`` by area and
  wait for each row of windows (so a row costs its busiest rank); the refinement gives each rank
  ``ceil(units / N)`` (tile, branch) units a step (``parallel.cfg=auto``) and every rank receives the
  predictions it did not compute in ``parallel.exchange_dtype``.
- **Left out**: model loading, the resize of the sketch, the re-noise, the scheduler and blending
  (element-wise, memory-bound), kernel launch overheads, writing the video (ffmpeg on the host,
  after the decode), and any imbalance real kernels add between equal-FLOP units.

    python scripts/project_gpus.py                                    # Wan2.1-14B, 4K x 81, 8 GPUs
    python scripts/project_gpus.py --model Wan2.1-1.3B --gpus 4
"""

from __future__ import annotations

import argparse
import functools

import torch
from torch.utils.flop_counter import FlopCounterMode

from supergen.config import load_config
from supergen.cost import KNOWN, estimate, transformer_flops
from supergen.parallel.exchanger import balance

#: Link bandwidths, bytes/s, per GPU and direction: NVLink (H100 SXM) and PCIe 4.0 x16 (as scripts/bench_parallel.py).
LINKS = {"NVLink 450 GB/s": 450e9, "PCIe 25 GB/s": 25e9}
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@functools.lru_cache(maxsize=None)
def vae_flops(vae_config: tuple, direction: str, shape: tuple[int, ...]) -> int:
    """FLOPs of one untiled ``AutoencoderKLWan`` encode or decode of a ``shape`` input, counted on meta tensors."""
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        vae = AutoencoderKLWan(**{k: list(v) if isinstance(v, tuple) else v for k, v in vae_config})  # hashable for the cache
        x = torch.zeros(shape)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        vae.decode(x) if direction == "decode" else vae.encode(x)
    return counter.get_total_flops()


def windows(height: int, width: int, tile: tuple[int, int], stride: tuple[int, int]) -> list[list[tuple[int, int]]]:
    """The (h, w) of each window, row by row, as ``TiledVAE`` cuts a ``height × width`` input."""
    return [[(min(tile[0], height - i), min(tile[1], width - j)) for j in range(0, width, stride[1])] for i in range(0, height, stride[0])]


def tiled_vae(rows: list[list[tuple[int, int]]], flops_of, ranks: int) -> tuple[float, float]:
    """(FLOPs on one rank, FLOPs on the critical path over ``ranks``): windows owned by ``balance`` on
    their area, as ``TiledVAE`` does; every row waits for its busiest rank."""
    flat = [hw for row in rows for hw in row]
    owner = balance([float(h * w) for h, w in flat], ranks)
    total = critical = 0.0
    k = 0
    for row in rows:
        load = [0.0] * ranks
        for hw in row:
            f = flops_of(hw)
            total += f
            load[owner[k]] += f
            k += 1
        critical += max(load)
    return total, critical


def project(config: str, model: str, gpus: int, tflops: float, vae_tflops: float) -> None:
    cfg = load_config(config, [f"model.name={model}"])
    arch = KNOWN[model]
    plan = estimate(cfg, arch)
    render = plan.render
    c, f, h, w = plan.latent
    branches = 2 if plan.guidance else 1
    sketch_branches = 2 if render.sketch_guidance_scale > 1.0 else 1
    vt, vs, _ = arch.vae_scale
    (th, tw), (sh, sw) = arch.vae_tile
    vae_cfg = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in arch.vae.items()))
    exchange = DTYPE_BYTES[cfg.parallel.exchange_dtype]
    T, V = tflops * 1e12, vae_tflops * 1e12

    # Text encoder (UMT5): every rank encodes the prompts itself.
    te = arch.text_encoder
    tokens = arch.spec.prompt_shapes(arch.transformer, arch.image_to_video)["prompt_embeds"][0]
    linear_params = arch.parameters()["text_encoder"] - te["vocab_size"] * te["d_model"]
    prompts = 2 if plan.guidance or sketch_branches == 2 else 1  # with guidance, the negative prompt too
    text = prompts * (2 * linear_params * tokens + 4 * tokens * tokens * te["d_model"] * te["num_layers"])

    # Sketch transformer: steps × the planner's per-step FLOPs (both branches).
    sketch = plan.sketch_steps * plan.sketch_flops_per_step
    sh_, sw_ = plan.sketch
    sketch_tokens = (f // arch.patch[0]) * (sh_ // vs // arch.patch[1]) * (sw_ // vs // arch.patch[2])
    ulysses_bytes = plan.sketch_steps * sketch_branches * arch.num_blocks * 4 * sketch_tokens * arch.width * 2 \
        * (gpus - 1) / gpus / gpus
    cfg_bytes = plan.sketch_steps * c * f * (sh_ // vs) * (sw_ // vs) * 4  # the other branch's prediction, float32, once a step
    sketch_latent = c * f * (sh_ // vs) * (sw_ // vs) * 4  # the leader's sketch broadcast to every rank
    sketch_decode = vae_flops(vae_cfg, "decode", (1, c, f, sh_ // vs, sw_ // vs))

    # Canvas encode (pixel windows) and decode (latent windows), split over the ranks a row at a time.
    H, W = h * vs, w * vs
    enc_rows = windows(H, W, (th, tw), (sh, sw))
    dec_rows = windows(h, w, (th // vs, tw // vs), (sh // vs, sw // vs))
    enc = lambda n: tiled_vae(enc_rows, lambda hw: vae_flops(vae_cfg, "encode", (1, 3, plan.num_frames, *hw)), n)  # noqa: E731
    dec = lambda n: tiled_vae(dec_rows, lambda hw: vae_flops(vae_cfg, "decode", (1, c, f, *hw)), n)  # noqa: E731
    n_dec = sum(map(len, dec_rows))
    enc_gather = sum(c * f * -(-a // vs) * -(-b // vs) * 4 for row in enc_rows for a, b in row) * (gpus - 1) / gpus  # latents to every rank
    dec_gather = sum(3 * plan.num_frames * a * vs * b * vs * 4 for row in dec_rows for a, b in row) * (gpus - 1) / gpus  # pixels to the leader

    # Refinement: per step, that step's (tile, branch) units, ceil(units / N) on the busiest rank.
    unit = transformer_flops(arch, plan.tokens_per_tile)
    counts = [plan.plan.count(s) for s in range(plan.refine_steps)]
    refine_1 = sum(counts) * branches * unit
    refine_n = sum(-(-n * branches // gpus) for n in counts) * unit
    refine_bytes = plan.refine_steps * branches * c * f * h * w * exchange * (gpus - 1) / gpus

    print(f"projection (not measured): {model}, {H}x{W}x{plan.num_frames} from a {sh_}x{sw_} sketch ({config}), "
          f"{plan.sketch_steps} sketch + {plan.refine_steps} refinement steps, {min(counts)}-{max(counts)} tiles x {branches} branches a step; "
          f"assumed {tflops:g} TFLOP/s (transformer, text encoder), {vae_tflops:g} TFLOP/s (VAE), no transfer overlapped")
    print(f"FLOPs counted: text {text:.3g}, sketch {sketch:.3g}, sketch decode {sketch_decode:.3g}, canvas encode {enc(1)[0]:.3g} "
          f"({sum(map(len, enc_rows))} windows), refinement {refine_1:.3g}, canvas decode {dec(1)[0]:.3g} ({n_dec} windows)")
    for link, bw in LINKS.items():
        for mode in ("ulysses", "cfg"):
            stages = {
                "text encoder": (text / T, text / T, "every rank"),
                f"sketch ({mode})": (sketch / T, (sketch / T / gpus + ulysses_bytes / bw) if mode == "ulysses"
                                     else sketch / T / sketch_branches + cfg_bytes / bw, ""),
                "sketch decode": (sketch_decode / V, sketch_decode / V + sketch_latent / bw, "every rank"),
                "canvas encode": (enc(1)[0] / V, enc(gpus)[1] / V + enc_gather / bw, ""),
                "refinement": (refine_1 / T, refine_n / T + refine_bytes / bw, ""),
                "canvas decode": (dec(1)[0] / V, dec(gpus)[1] / V + dec_gather / bw, ""),
            }
            one = sum(a for a, _, _ in stages.values())
            many = sum(b for _, b, _ in stages.values())
            print(f"\n{gpus} GPUs over {link}, sketch {mode}:")
            print(f"  {'stage':<18} {'1 GPU s':>9} {f'{gpus} GPUs s':>9} {'speedup':>8}")
            for name, (a, b, note) in stages.items():
                print(f"  {name:<18} {a:>9.1f} {b:>9.1f} {a / b:>7.2f}x  {note}")
            print(f"  {'whole render':<18} {one:>9.1f} {many:>9.1f} {one / many:>7.2f}x")
    # Sensitivity to the least certain assumption: the VAE at a third of --vae-tflops.
    V3 = V / 3
    bw = LINKS["PCIe 25 GB/s"]
    one = (text + sketch + refine_1) / T + (sketch_decode + enc(1)[0] + dec(1)[0]) / V3
    many = text / T + sketch / T / gpus + ulysses_bytes / bw + sketch_decode / V3 + sketch_latent / bw + enc(gpus)[1] / V3 + enc_gather / bw \
        + refine_n / T + refine_bytes / bw + dec(gpus)[1] / V3 + dec_gather / bw
    print(f"\nwith the VAE at {vae_tflops / 3:g} TFLOP/s (PCIe, Ulysses sketch): {one:.1f} s -> {many:.1f} s = {one / many:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="wan2.1-t2v-1.3b-4k", help="preset or YAML (sizes, steps, tiling)")
    parser.add_argument("--model", default="Wan2.1-14B", choices=sorted(k for k in KNOWN if k.startswith("Wan2.1")),
                        help="a Wan 2.1 architecture of the planner (the VAE FLOPs are counted on Wan's VAE)")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--tflops", type=float, default=494.0, help="assumed sustained TFLOP/s of the bf16 transformer and text encoder")
    parser.add_argument("--vae-tflops", type=float, default=150.0, help="assumed sustained TFLOP/s of the float32 (TF32) VAE")
    args = parser.parse_args()
    if args.gpus < 2:
        parser.error(f"--gpus {args.gpus}: project to 2 or more GPUs")
    project(args.config, args.model, args.gpus, args.tflops, args.vae_tflops)


if __name__ == "__main__":
    main()
