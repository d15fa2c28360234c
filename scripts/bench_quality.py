"""Quality yardsticks on the toy model at 4x its native area: seams, duplication, flicker, cache fidelity.

For each setting it renders the same prompt and seed and prints one row: seam score (gradient energy
on the last step's tile-border lines against lines at the same spacing elsewhere; ~1 = no seam),
object-count error against the sketch (connected components of saturated colour, mean over frames:
duplicated objects show up as a positive error), temporal flicker, PSNR/SSIM against the uncached
render of the same tiling (cache rows only) and wall time.

    python scripts/bench_quality.py                     # all groups, ~2-4 minutes on a laptop CPU
    python scripts/bench_quality.py --groups tiling      # tiling | attention | positions | strength | cache
    python scripts/bench_quality.py --groups attention --seeds 0 1 2 --size 384   # mean over seeds
    python scripts/bench_quality.py --groups --strip assets/toy-4x-strip.png   # the README's picture
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch

from supergen import SuperGenPipeline
from supergen.builtin import load_pipeline
from supergen.eval.metrics import object_count, psnr, seam_score, ssim, temporal_flicker

BASE = {"tiling": {"mode": "shift", "boundary": "clamp", "positions": "global"}, "refine": {"strength": 0.6}}
GROUPS = {
    "tiling": [
        ("shift wrap", {"tiling": {"boundary": "wrap"}}),
        ("shift clamp", {}),
        # 48 px: the most the 128-px tile allows (geometry.overlap_pixels refuses half a tile or more).
        ("overlap 48", {"tiling": {"mode": "overlap", "overlap": 48}}),
        # Windows fixed for the whole refinement (shift_every past the step count): attention mode before issue #16.
        ("attention halo 0 fixed", {"tiling": {"mode": "attention", "halo": 0, "shift_every": 100}}),
        ("attention halo 32 fixed", {"tiling": {"mode": "attention", "halo": 32, "shift_every": 100}}),
    ],
    # Attention windows that move every step on shift mode's schedule (the default).
    "attention": [(f"attention halo {h}", {"tiling": {"mode": "attention", "halo": h}}) for h in (0, 16, 32)],
    "positions": [(f"positions {p}, {b}", {"tiling": {"positions": p, "boundary": b}}) for b in ("clamp", "wrap") for p in ("local", "global", "ntk")],
    "strength": [(f"strength {s}", {"refine": {"strength": s}}) for s in (0.4, 0.6, 0.8)],
    "cache": [(f"region cache {t}", {"cache": {"enabled": True, "threshold": t}}) for t in (0.0, 0.2, 0.4, 0.8)],
}


def merge(base: dict, extra: dict) -> dict:
    out = {k: dict(v) for k, v in base.items()}
    for section, values in extra.items():
        out.setdefault(section, {}).update(values)
    return out


def border_geometry(sg: SuperGenPipeline, out) -> tuple[tuple[int, int], tuple[int, int]]:
    """Tile period and one border offset (pixels, x then y) of the last refinement step's grid."""
    tile = out.stats.tile  # pixels (h, w)
    plan = sg.plan(*out.stats.size, out.stats.num_frames)
    last = len(out.stats.steps) - 1
    if plan.layout is not None:  # attention: the last step's windows, offset in tokens
        native = out.stats.sketch or tile
        dy, dx = (o * sg.adapter.pixel_multiple for o in plan.layout[last].offset)
        return (native[1], native[0]), (dx, dy)
    if sg.config.tiling.mode == "shift":
        scale = sg.adapter.vae_scale[1]
        dy, dx = plan.tiles.offsets(last)
        return (tile[1], tile[0]), (dx * scale, dy * scale)
    return (tile[1], tile[0]), (tile[1], tile[0])  # overlap: the first tile's far edge is a seam candidate


def write_strip(path: str, sketch: np.ndarray, video: np.ndarray, frame_ids=(0, 4, 8)) -> None:
    """PNG: the sketch (nearest-neighbour enlarged to the video's size) above the video, chosen frames
    side by side. sketch, video: ``(F, h, w, 3)`` / ``(F, H, W, 3)`` floats in [0, 1]."""
    from PIL import Image

    size = video.shape[2:0:-1]
    top = np.concatenate([cv2.resize(sketch[i], size, interpolation=cv2.INTER_NEAREST) for i in frame_ids], axis=1)
    bottom = np.concatenate([video[i] for i in frame_ids], axis=1)
    grid = (np.clip(np.concatenate([top, bottom]), 0, 1) * 255).round().astype(np.uint8)
    # A 256-colour palette keeps the PNG small in git history; these frames have few colours.
    Image.fromarray(grid).quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)


def measure(sg: SuperGenPipeline, args, seed: int, group: str, references: dict) -> tuple[float, ...]:
    """One render's (seam, object-count error, flicker, PSNR, SSIM, tile-forwards skipped, seconds).

    PSNR/SSIM (cache group only) compare with the group's first row for the same seed (threshold 0:
    the uncached render); elsewhere they are NaN.
    """
    start = time.perf_counter()
    out = sg(prompt=args.prompt, height=args.size, width=args.size, num_frames=9, generator=torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - start
    video, sketch = out.frames[0], out.sketch[0]
    period, offset = border_geometry(sg, out)
    counts = np.array([object_count(f) for f in video])
    # The sketch at the canvas size, so both counts use the same minimum component area.
    sketch_counts = np.array([object_count(cv2.resize(f, video.shape[2:0:-1], interpolation=cv2.INTER_NEAREST)) for f in sketch])
    skipped = sum(s.tiles - s.tiles_computed for s in out.stats.steps)
    fidelity = (float("nan"), float("nan"))
    if group == "cache":
        reference = references.setdefault(seed, video)
        fidelity = (psnr(video, reference), ssim(video, reference))
    return (seam_score(video, period, offset), float(np.mean(counts - sketch_counts)), temporal_flicker(video), *fidelity,
            skipped, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", nargs="*", default=list(GROUPS), choices=list(GROUPS))
    parser.add_argument("--prompt", default="a red disk moving right and a blue square staying still on a vertical sky to sand background")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one render per seed; rows show the mean")
    parser.add_argument("--size", type=int, default=256, help="square canvas in pixels (native is 128)")
    parser.add_argument("--strip", help="also write a PNG of the base setting's sketch and video, frames 0, 4, 8")
    args = parser.parse_args()
    pipe = load_pipeline("toy")
    pipe.set_progress_bar_config(disable=True)
    print(f"toy model, {args.size}x{args.size}x9 from a 128x128 sketch, prompt {args.prompt!r}, seeds {args.seeds}")
    print(f"{'setting':<28}{'seam':>7}{'obj err':>9}{'flicker':>9}{'PSNR':>8}{'SSIM':>8}{'skipped':>9}{'s':>7}")
    references: dict[int, np.ndarray] = {}
    for group in args.groups:
        for name, extra in GROUPS[group]:
            sg = SuperGenPipeline.from_pipe(pipe, "toy", **merge(BASE, extra))
            rows = [measure(sg, args, seed, group, references) for seed in args.seeds]
            seam, obj_err, flicker, psnr_, ssim_, skipped, seconds = (np.mean(column) for column in zip(*rows))
            fidelity = (f"{psnr_:.1f}", f"{ssim_:.4f}") if group == "cache" else ("", "")
            print(f"{name:<28}{seam:>7.2f}{obj_err:>+9.2f}{flicker:>9.4f}{fidelity[0]:>8}{fidelity[1]:>8}"
                  f"{skipped:>9.1f}{seconds:>7.1f}", flush=True)
    if args.strip:
        sg = SuperGenPipeline.from_pipe(pipe, "toy", **BASE)
        out = sg(prompt=args.prompt, height=args.size, width=args.size, num_frames=9,
                 generator=torch.Generator().manual_seed(args.seeds[0]))
        write_strip(args.strip, out.sketch[0], out.frames[0])
        print(f"wrote {args.strip}")


if __name__ == "__main__":
    main()
