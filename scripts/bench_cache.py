"""Region-aware cache vs no cache vs diffusers' FBC / MagCache per tile: skips, time, fidelity.

Renders one video with the medium random Wan of ``scripts/bench_refine.py`` at 4× the native area
(2× per axis), refining an upscaled synthetic sketch (a quiet gradient "sky" over a textured block
that moves), once per cache setting, all in this process. Per setting: tile-forwards skipped, the
share of transformer block forwards skipped (tile and block level together: what FBC/MagCache skip
is blocks inside tiles), refinement-stage wall and CPU seconds, CPU time saved relative to the
uncached render (CPU time of this process: on a shared machine wall time also measures the other
users), the ratio *time saved / share skipped* (target ≥ 0.9: the cache's own overhead is at most 10% of what
it saves), and PSNR / SSIM of the decoded video against the uncached one.

Random weights decide how much is skippable: skip rates here say nothing about a trained model.
The comparison between policies at equal skip rates (fidelity at equal compute) is still meaningful.

    python scripts/bench_cache.py                  # CPU: 13 renders, ~30 min on a busy shared 2-core machine
    python scripts/bench_cache.py --device cuda --frames 21 --threads 0
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_refine import ARCHS  # noqa: E402  (the same medium model as the refinement benchmark)

from supergen.eval.metrics import psnr, ssim  # noqa: E402
from supergen.pipeline import SuperGenPipeline  # noqa: E402


def medium_pipeline(device: torch.device):
    """A WanPipeline with the medium transformer; the tiny pipeline's text encoder, VAE and scheduler.

    The transformer's text width is the tiny text encoder's (32, where ``bench_refine`` feeds random
    64-wide embeddings): here real prompts go through the whole pipeline.
    """
    from diffusers import WanPipeline, WanTransformer3DModel

    from supergen.builtin import tiny_wan_pipeline

    tiny = tiny_wan_pipeline()
    spec = {k: v for k, v in ARCHS["medium"].items() if k != "native"} | {"text_dim": tiny.text_encoder.config.d_model}
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), in_channels=16, out_channels=16, freq_dim=256,
                                        cross_attn_norm=True, qk_norm="rms_norm_across_heads", **spec)
    return WanPipeline(tokenizer=tiny.tokenizer, text_encoder=tiny.text_encoder, vae=tiny.vae,
                       transformer=transformer.eval(), scheduler=tiny.scheduler).to(device)


def synthetic_sketch(frames: int, height: int, width: int) -> np.ndarray:
    """``(frames, height, width, 3)`` uint8: a smooth gradient with a textured square moving right."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    video = np.empty((frames, height, width, 3), np.float32)
    rng = np.random.default_rng(0)
    texture = rng.uniform(0, 1, (height // 3, width // 4, 3)).astype(np.float32)
    for f in range(frames):
        frame = np.stack([0.3 + 0.4 * y / height, 0.5 + 0.2 * x / width, 0.9 - 0.3 * y / height], axis=-1)
        top, left = height // 2, (width // 8 + f * width // (4 * frames))
        frame[top : top + texture.shape[0], left : left + texture.shape[1]] = texture
        video[f] = frame
    return (video * 255).round().astype(np.uint8)


class MagRatios(logging.Handler):
    """Collects the ratios diffusers' MagCache logs at the end of a calibration run (one list per tile context)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lists: list[list[float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("MagCache Calibration Results:"):
            self.lists.append([float(v) for v in message.split(":", 1)[1].strip(" []").split(",")])

    def mean(self) -> list[float]:
        return np.mean(np.array(self.lists), axis=0).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--steps", type=int, default=16, help="schedule length N; strength 0.5 refines N/2 steps")
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--region", type=float, nargs="*", default=[0.1, 0.2, 0.3])
    parser.add_argument("--fbc", type=float, nargs="*", default=[0.1, 0.2, 0.4, 0.8])
    parser.add_argument("--magcache", type=float, nargs="*", default=[0.1, 0.3])
    parser.add_argument("--block", type=float, nargs="*", default=[0.1], help="block thresholds, with region at 0.2")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    pipe = medium_pipeline(device)
    pipe.set_progress_bar_config(disable=True)
    native = ARCHS["medium"]["native"]
    height, width = 2 * native[0], 2 * native[1]
    sketch = synthetic_sketch(args.frames, *native)
    base = {
        "job": {"height": height, "width": width, "num_frames": args.frames},
        "sketch": {"height": native[0], "width": native[1]},
        "refine": {"num_inference_steps": args.steps, "strength": args.strength, "guidance_scale": 5.0},
        "tiling": {"boundary": "wrap"},
    }

    def render(cache: dict):
        """The decoded video, refinement wall and CPU seconds, and the cache report of one render."""
        clock: dict[str, float] = {}

        def on_stage(name: str, info: dict) -> None:
            # CPU time of this process is what the cache saves; wall time also counts other users of a shared machine.
            clock[name] = time.process_time()

        sg = SuperGenPipeline.from_pipe(pipe, "tiny", **base, cache=cache)
        out = sg(sketch_video=sketch, generator=torch.Generator().manual_seed(0), output_type="np", callback_on_stage=on_stage)
        return out.frames[0], (out.stats.seconds["refine"], clock["decode"] - clock["refine"]), out.cache_report

    render({"enabled": False})  # warm-up: first-call allocations and lazy initialisation
    reference, reference_s, report = render({"enabled": False})
    rows = [("none", "-", report, reference_s, reference)]

    # MagCache needs per-step magnitude ratios of this model: calibrate them (no skipping) first.
    handler = MagRatios()
    mag_logger = logging.getLogger("diffusers.hooks.mag_cache")
    mag_logger.addHandler(handler)
    level, propagate = mag_logger.level, mag_logger.propagate
    mag_logger.setLevel(logging.INFO)
    mag_logger.propagate = False
    with contextlib.redirect_stdout(io.StringIO()):  # diffusers also prints every context's ratios
        render({"enabled": True, "policy": "magcache"})
    mag_logger.removeHandler(handler)
    mag_logger.setLevel(level)
    mag_logger.propagate = propagate
    ratios = handler.mean()

    settings = [("region", f"{t}", {"policy": "region", "threshold": t}) for t in args.region]
    settings += [("region+block", f"0.2/{b}", {"policy": "region", "threshold": 0.2, "block": {"enabled": True, "threshold": b}}) for b in args.block]
    settings += [("fbc", f"{t}", {"policy": "fbc", "threshold": t}) for t in args.fbc]
    settings += [("magcache", f"{t}", {"policy": "magcache", "threshold": t, "mag_ratios": ratios}) for t in args.magcache]
    for name, setting, cache in settings:
        video, seconds, report = render({"enabled": True, **cache})
        rows.append((name, setting, report, seconds, video))

    print(f"medium random Wan, {width}x{height}x{args.frames} (4x native {native[1]}x{native[0]}), "
          f"{len(report.steps)} refinement steps, {len(report.steps[0].tiles)} tiles/step, device {args.device}, "
          f"{torch.get_num_threads()} thread(s)")
    print("| policy | threshold | tile-fwd skipped | block-fwd skipped | refine wall s | refine CPU s | CPU saved | saved/skipped | PSNR dB | SSIM |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, setting, report, (wall, cpu), video in rows:
        share = report.block_share_skipped
        saved = 1.0 - cpu / reference_s[1]
        ratio = f"{saved / share:.2f}" if share > 0.02 else "-"
        quality = psnr(video, reference)
        print(f"| {name} | {setting} | {report.tiles_skipped}/{report.tile_steps} | {share:.0%} | {wall:.1f} | {cpu:.1f} | {saved:+.0%} | {ratio} | "
              f"{'inf' if quality == float('inf') else f'{quality:.1f}'} | {ssim(video, reference):.4f} |", flush=True)


if __name__ == "__main__":
    main()
