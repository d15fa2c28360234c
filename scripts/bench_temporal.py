"""Temporal windows on the toy model: fixed chunks vs shifted windows vs whole-clip tiles.

A clip longer than the model's native length (toy: 9 frames) is upscaled 2x (default 128 -> 256 px) three
ways, everything else equal (one spatial tile covering the canvas, so only time is tiled):

- ``fixed``: windows of 9 frames that never move and always cut (the chunked baseline of video upscalers);
- ``shifted``: windows of 9 frames whose borders move every step (supergen's default; they cut at
  every step, the last included);
- ``feathered``: the same, blending across the last step's borders (``tiling.feather_last=true``);
- ``whole``: one window over the whole clip (reference only: the model outside its training length).

Per input clip (a toyworld scene, its caption as the prompt) and seed it prints the temporal seam
score (``supergen.eval.metrics.temporal_seam_score`` at the frames where the last step's windows
begin, a blended border at its middle) twice: over the whole latent frame a window begins with
(``span`` = the VAE's temporal factor, the score the criterion is read on) and over its first video
frame only (``span=1``); then the temporal flicker. ``whole`` has no borders: it is scored at the
fixed chunks' borders, and, as a control, at each moving setting's borders (the content's own
change at those frames: about 1 when the score measures windows, not the scene).

    nice python scripts/bench_temporal.py                  # 4 scenes x 2 seeds, 33 frames
    python scripts/bench_temporal.py --scenes 1 --seeds 0  # one row, a quick look
    nice python scripts/bench_temporal.py --size 64        # 64 -> 128 px: the canvas is one native tile, 4x cheaper
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from supergen import SuperGenPipeline
from supergen.builtin import load_pipeline
from supergen.eval.metrics import temporal_flicker, temporal_seam_score
from supergen.eval.toyworld import make_clip, make_scene

#: toy's native clip (9 frames) as the window; the spatial tile is set to the canvas (main()), so only time is tiled.
SETTINGS = {
    "fixed": {"frames": 9, "shift_every": 1000, "feather_last": False},
    "shifted": {"frames": 9, "feather_last": False},
    "feathered": {"frames": 9, "feather_last": True},
    "whole": {"frames": 10_000},
}


def window_borders(sg: SuperGenPipeline, frames: int, size: int) -> list[int]:
    """Video frames where a time window of the last refinement step begins (other than frame 0).

    A window begins at the first latent frame where its weight reaches one half: the first frame it
    owns when windows cut, the middle of the ramp when they blend (its neighbour's weight falls
    below one half there). A causal VAE's latent frame ``k >= 1`` holds video frames
    ``t·(k-1)+1 .. t·k``, so a window that begins at latent frame ``k`` begins at video frame ``t·(k-1)+1``."""
    plan = sg.plan(2 * size, 2 * size, frames, sketch_video_size=(size, size))
    t = sg.adapter.vae_scale[0]
    starts = set()
    for tile in plan.tiles.tiles(plan.refine_steps - 1):
        weight = tile.weight[:, 0, 0] if tile.weight is not None else torch.ones(tile.frames.size)
        starts.add(tile.frames.start + int((weight >= 0.5).nonzero()[0]))
    return sorted(t * (k - 1) + 1 for k in starts if k > 0)


def fitting_scenes(count: int, frames: int, size: int) -> list[int]:
    """The first ``count`` toyworld scene seeds whose objects stay in the frame for ``frames`` frames (a
    fast object leaves the frame within 33 frames: toyworld refuses to sample it)."""
    seeds, seed = [], 0
    while len(seeds) < count:
        try:
            make_scene(seed, size, size, frames)
            seeds.append(seed)
        except ValueError:
            pass
        seed += 1
    return seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--scenes", type=int, default=4, help="toyworld scenes (the first that fit the length), one prompt each")
    parser.add_argument("--skip", type=int, default=0, help="leave out the first SKIP of those scenes (to split a run across processes)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS),
                        help="which settings to render (the shifted < fixed column needs both)")
    parser.add_argument("--steps", type=int, default=20, help="refine.num_inference_steps")
    parser.add_argument("--strength", type=float, default=0.6)
    parser.add_argument("--size", type=int, default=128, help="input side in pixels (a multiple of 16); the output is twice it")
    args = parser.parse_args()

    pipe = load_pipeline("toy")
    pipe.set_progress_bar_config(disable=True)
    out_size = 2 * args.size
    refine = {"num_inference_steps": args.steps, "strength": args.strength}
    pipelines = {name: SuperGenPipeline.from_pipe(pipe, "toy", refine=refine, tiling={"tile_height": out_size, "tile_width": out_size, **cfg})
                 for name, cfg in SETTINGS.items() if name in args.settings}
    fixed = SuperGenPipeline.from_pipe(pipe, "toy", refine=refine, tiling={"tile_height": out_size, "tile_width": out_size, **SETTINGS["fixed"]})
    fixed_borders = window_borders(fixed, args.frames, args.size)
    print(f"toy, {args.frames} frames {args.size} -> {out_size} px, {args.steps} steps, strength {args.strength}; "
          f"fixed chunk borders at frames {fixed_borders}")
    compare = "shifted" in pipelines and "fixed" in pipelines
    span = fixed.adapter.vae_scale[0]  # video frames per latent frame
    print(f"{'scene':>5} {'seed':>4} | " + " | ".join(f"{n:>7} seam  seam@1  flicker" for n in pipelines)
          + (" | shifted < fixed" if compare else ""))
    wins, rows, controls_by_row = 0, [], []
    for scene in fitting_scenes(args.scenes, args.frames, args.size)[args.skip:]:
        video, meta = make_clip(scene, args.size, args.size, args.frames)
        sketch = ((video.transpose(1, 2, 3, 0) + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        for seed in args.seeds:
            row, videos = {}, {}
            for name, sg in pipelines.items():
                start = time.perf_counter()
                videos[name] = out = sg(prompt=meta.caption(), height=out_size, width=out_size, num_frames=args.frames,
                                        sketch_video=sketch, generator=torch.Generator().manual_seed(seed), output_type="np").frames[0]
                borders = fixed_borders if name == "whole" else window_borders(sg, args.frames, args.size)
                row[name] = (temporal_seam_score(out, borders, span), temporal_seam_score(out, borders), temporal_flicker(out),
                             time.perf_counter() - start)
            controls = {name: temporal_seam_score(videos["whole"], window_borders(sg, args.frames, args.size), span)
                        for name, sg in pipelines.items() if name != "whole" and "whole" in videos}
            win = compare and row["shifted"][0] < row["fixed"][0]
            wins += win
            rows.append(row)
            controls_by_row.append(controls)
            print(f"{scene:>5} {seed:>4} | " + " | ".join(f"{s:12.3f} {s1:7.3f} {f:8.4f}" for s, s1, f, _ in row.values())
                  + (f" | {'yes' if win else 'no'}" if compare else "")
                  + (" | whole at their borders: " + " ".join(f"{n} {c:.3f}" for n, c in controls.items()) if controls else ""),
                  flush=True)
    for column, label in ((0, f"mean seam (span {span})"), (1, "mean seam (first frame)"), (2, "mean flicker")):
        print(f"{label}: " + ", ".join(f"{n} {np.mean([r[n][column] for r in rows]):.4g}" for n in pipelines))
    if compare:
        print(f"shifted beats fixed on {wins} of {len(rows)} (span {span}); on the first frame only: "
              f"{sum(r['shifted'][1] < r['fixed'][1] for r in rows)} of {len(rows)}")
    if compare and "whole" in pipelines:
        # The content's own change differs between the two settings' border frames: divide each
        # setting's score by the whole clip's at the same frames before comparing.
        fair = sum(r["shifted"][0] / c["shifted"] < r["fixed"][0] / c["fixed"] for r, c in zip(rows, controls_by_row))
        print(f"shifted beats fixed on {fair} of {len(rows)} with each score divided by the whole clip's at its borders")
    if "whole" in pipelines:
        for name in (n for n in pipelines if n != "whole"):
            worse = sum(r[name][2] > 1.1 * r["whole"][2] for r in rows)
            print(f"{name}: flicker more than 10 % above whole-clip in {worse} of {len(rows)}")
    print("seconds per render: " + ", ".join(f"{n} {np.mean([r[n][3] for r in rows]):.0f}" for n in pipelines))


if __name__ == "__main__":
    main()
