"""Quality yardsticks on the toy model at 4x its native area: seams, duplication, flicker, cache fidelity.

Renders are a set of ``supergen.eval.sets`` (``--set test``, the default, for reported numbers;
``--set tuning`` to choose defaults): per (prompt, seed) the sketch is drawn once at the native
128 px and every setting refines it. Per setting it prints the mean over the renders with its 95 %
interval (``supergen.eval.stats``) of: seam score (gradient energy on the last step's tile-border
lines against lines at the same spacing elsewhere; ~1 = no seam), object-count error against the
sketch (connected components of saturated colour, mean over frames: duplicated objects show up as
a positive error), temporal flicker, PSNR against the uncached render (cache rows only); and the
paired difference in seam score against the named baseline (``shift clamp``, the preset), with the
count of renders no worse than it and "tie" where the interval contains zero.

    python scripts/bench_quality.py --rows rows.jsonl                 # all groups on the test set
    python scripts/bench_quality.py --groups attention --size 384     # tiling | attention | positions | strength | cache
    python scripts/bench_quality.py --settings "shift clamp" "overlap 48" --rows rows.jsonl   # chosen rows only
    python scripts/bench_quality.py --from-rows rows.jsonl            # the tables again, no rendering
    python scripts/bench_quality.py --groups --strip assets/toy-4x-strip.png   # the README's picture

With ``--rows``, renders whose row is already in the file are skipped, so an interrupted run resumes
and several processes (``--settings`` or ``--start``/``--stop``) can share the work.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import cv2
import numpy as np
import torch

from supergen import SuperGenPipeline
from supergen.adapters import Conditioning, Request
from supergen.builtin import load_pipeline
from supergen.eval.metrics import object_count, psnr, seam_score, temporal_flicker
from supergen.eval.sets import SETS, eval_set
from supergen.eval.stats import mean_interval, paired_difference
from supergen.tiling import Tile, Window, accumulate, crop

BASE = {"tiling": {"mode": "shift", "boundary": "clamp", "positions": "global"}, "refine": {"strength": 0.6}}
# The README's picture: one prompt and seed, not a measurement.
STRIP_PROMPT = "a red disk moving right and a blue square staying still on a vertical sky to sand background"
BASELINE = "shift clamp"  # BASE itself: the paired differences are against it unless --versus names another
GROUPS = {
    "tiling": [
        ("shift wrap", {"tiling": {"boundary": "wrap"}}),
        # 48 px: the most the 128-px tile allows (geometry.overlap_pixels refuses half a tile or more).
        ("overlap 48", {"tiling": {"mode": "overlap", "overlap": 48}}),
        # The mode's defaults (halo 64 px, windows moving every step on shift mode's schedule).
        ("attention halo 64", {"tiling": {"mode": "attention"}}),
        # The control: a halo of 256 px makes every window the whole canvas at 4x and 9x, i.e. one dense
        # forward with no tile border anywhere. Its seam score is what the yardstick reads with no seams.
        ("whole canvas (halo 256)", {"tiling": {"mode": "attention", "halo": 256}}),
    ],
    # Other halos, moving windows; and the default halo with windows fixed for the whole refinement
    # (shift_every past the step count: attention mode before issue #16).
    "attention": [(f"attention halo {h}", {"tiling": {"mode": "attention", "halo": h}}) for h in (0, 16, 32)]
    + [("attention halo 64 fixed", {"tiling": {"mode": "attention", "shift_every": 100}})],
    # local and global positions give the same video with clamp (Wan's RoPE is relative, clamped tiles never
    # wrap), and global with wrap is "shift wrap": the rows that differ from others.
    "positions": [("positions ntk, clamp", {"tiling": {"positions": "ntk"}})]
    + [(f"positions {p}, wrap", {"tiling": {"positions": p, "boundary": "wrap"}}) for p in ("local", "ntk")],
    "strength": [(f"strength {s}", {"refine": {"strength": s}}) for s in (0.4, 0.8)],
    "cache": [(f"region cache {t}", {"cache": {"enabled": True, "threshold": t}}) for t in (0.2, 0.4, 0.8)],
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


def draw_sketch(pipe, prompt: str, seed: int) -> np.ndarray:
    """The render's sketch at the native 128 px, ``(9, 128, 128, 3)``: drawn once, refined by every setting."""
    native = SuperGenPipeline.from_pipe(pipe, "toy", **BASE)
    return native(prompt=prompt, height=128, width=128, num_frames=9, generator=torch.Generator().manual_seed(seed),
                  output_type="np").frames[0]


def measure(sg: SuperGenPipeline, args, prompt: str, seed: int, sketch: np.ndarray, reference: np.ndarray | None):
    """One render's row: seam, object-count error, flicker, PSNR against ``reference`` (NaN without
    one), tile-forwards skipped, seconds; and the video."""
    start = time.perf_counter()
    out = sg(prompt=prompt, sketch_video=sketch, height=args.size, width=args.size, num_frames=9,
             generator=torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - start
    video = out.frames[0]
    period, offset = border_geometry(sg, out)
    counts = np.array([object_count(f) for f in video])
    # The sketch at the canvas size, so both counts use the same minimum component area.
    sketch_counts = np.array([object_count(cv2.resize(f, video.shape[2:0:-1], interpolation=cv2.INTER_NEAREST)) for f in sketch])
    row = {"seam": seam_score(video, period, offset), "obj_err": float(np.mean(counts - sketch_counts)),
           "flicker": temporal_flicker(video), "psnr": float("nan") if reference is None else min(psnr(video, reference), 99.0),
           "skipped": sum(s.tiles - s.tiles_computed for s in out.stats.steps), "seconds": seconds}
    return row, video


#: The settings --per-step compares, each predicting on the same captured canvas state.
STEP_SETTINGS = [(BASELINE, {})] + [(f"attention halo {h}", {"tiling": {"mode": "attention", "halo": h}}) for h in (0, 16, 32, 64)] \
    + [("whole canvas (halo 256)", {"tiling": {"mode": "attention", "halo": 256}})]


def token_line_seam(prediction: torch.Tensor, cuts: tuple[set[int], set[int]], patch: int) -> float:
    """Mean absolute jump of ``prediction`` ``(1, C, F, H, W)`` across the tile-border token lines ``cuts``
    (latent units, per axis) over the mean jump across the other token lines; the larger axis ratio.
    In latent space and on token lines only, so neither the VAE's texture nor the patch grid weighs in."""
    ratios = []
    for dim, borders in ((-1, cuts[1]), (-2, cuts[0])):
        jump = prediction.diff(dim=dim).abs().movedim(dim, 0).flatten(1).mean(1)  # jump[i]: across line i + 1
        lines = range(patch, prediction.shape[dim], patch)
        border = [jump[x - 1] for x in lines if x in borders]
        other = [jump[x - 1] for x in lines if x not in borders]
        if border:
            ratios.append(float(torch.stack(border).mean() / torch.stack(other).mean()))
    return max(ratios)


def step_seams(pipe, prompt: str, seed: int, sketch: np.ndarray, size: int, steps: list[int]) -> list[dict]:
    """The seam each setting of STEP_SETTINGS puts into one guided prediction, all on the same input.

    A render of the baseline keeps its canvas latent before each refinement step of ``steps`` (>= 1);
    every setting then predicts on that latent at that step's geometry, and :func:`token_line_seam`
    reads the prediction at the step's tile borders (the shift-clamp grid; attention windows move on
    the same schedule). A render's seam score sums what every step left; this is one step's share,
    free of the noise that 12 steps of different predictions add.
    """
    base = SuperGenPipeline.from_pipe(pipe, "toy", **BASE)
    inputs: dict[int, torch.Tensor] = {}  # step -> the canvas latent it starts from
    timesteps: dict[int, torch.Tensor] = {}

    def keep(_pipe, step, timestep, tensors):  # the latent after step `step` is the input of step + 1
        inputs[step + 1], timesteps[step] = tensors["latents"].clone(), timestep
        return tensors

    base(prompt=prompt, sketch_video=sketch, height=size, width=size, num_frames=9, output_type="latent",
         generator=torch.Generator().manual_seed(seed), callback_on_step_end=keep)
    rows = []
    for name, extra in STEP_SETTINGS:
        sg = SuperGenPipeline.from_pipe(pipe, "toy", **merge(BASE, extra))
        adapter, plan, tiling = sg.adapter, sg.plan(size, size, 9), sg.config.tiling
        grid = base.plan(size, size, 9).tiles
        cond = Conditioning(adapter.encode_prompt(Request(prompt, "", 9), guidance_scale=plan.guidance_scale), {},
                            plan.guidance_scale, plan.guidance_scale_2)
        canvas = plan.tiles.canvas
        whole = Tile(0, Window(0, canvas[0], canvas[0]), Window(0, canvas[1], canvas[1]))
        for step in steps:
            latents, timestep = inputs[step], timesteps[step]
            with torch.no_grad(), adapter.positions(tiling.positions):
                if plan.layout is None:
                    prediction = torch.zeros_like(latents)
                    for tile in plan.tiles.tiles(step):
                        accumulate(prediction, tile, adapter.predict(crop(latents, tile), timestep, cond, [tile], canvas, tiling.positions))
                else:
                    with adapter.tile_attention(plan.layout, sg.config.attention.backend) as layouts:
                        layouts(step)
                        prediction = adapter.predict(latents, timestep, cond, [whole], canvas, tiling.positions)
            cuts = tuple(set(axis.cuts(offset)) - {0} for axis, offset in zip(grid.axes, grid.offsets(step)))
            rows.append({"prompt": prompt, "seed": seed, "step": step, "setting": name,
                         "seam": token_line_seam(prediction, cuts, adapter.patch[-1])})
    return rows


def step_report(rows: list[dict]) -> None:
    """Per setting the mean one-step seam [95 %] and its paired difference against the whole canvas."""
    key = lambda r: (r["prompt"], r["seed"], r["step"])  # noqa: E731
    floor = {key(r): r["seam"] for r in rows if r["setting"] == STEP_SETTINGS[-1][0]}
    print(f"| setting | one-step seam [95 %] | minus the whole canvas's, paired: mean [95 %], no worse k/n | n |\n|---|---|---|---|")
    for name, _ in STEP_SETTINGS:
        mine = [r for r in rows if r["setting"] == name]
        versus = "(the floor)" if name == STEP_SETTINGS[-1][0] else paired_difference(
            [r["seam"] for r in mine], [floor[key(r)] for r in mine], higher_is_better=False)
        print(f"| {name} | {mean_interval([r['seam'] for r in mine])} | {versus} | {len(mine)} |")


def report(rows: list[dict], title: str, baseline: str = BASELINE) -> None:
    """Per setting the mean over its renders [95 %], and the paired differences in seam score and in
    object-count error against ``baseline`` (both lower is better: fewer seams, fewer added objects)."""
    print(title)
    key = lambda r: (r["set"], r["size"], r["prompt"], r["seed"])  # noqa: E731  the render a row belongs to
    base = {key(r): r for r in rows if r["setting"] == baseline}

    def versus(mine: list[dict], metric: str) -> str:
        paired = [(r[metric], base[key(r)][metric]) for r in mine if key(r) in base]
        return str(paired_difference(*zip(*paired), higher_is_better=False)) if len(paired) > 1 else "–"

    print(f"| setting | seam [95 %] | seam minus {baseline}'s, paired: mean [95 %], no worse k/n | object-count error [95 %] "
          f"| object-count error minus {baseline}'s, paired | flicker [95 %] | PSNR vs uncached [95 %] | tile-forwards skipped | s | n |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for setting in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == setting]
        if len(mine) < 2:
            print(f"| {setting} | only {len(mine)} render |")
            continue
        seam, objects = ("(the baseline)",) * 2 if setting == baseline else (versus(mine, "seam"), versus(mine, "obj_err"))
        flicker = mean_interval([r["flicker"] for r in mine])
        fidelity = [r["psnr"] for r in mine if np.isfinite(r["psnr"])]
        print(f"| {setting} | {mean_interval([r['seam'] for r in mine])} | {seam} | {mean_interval([r['obj_err'] for r in mine])} | {objects} "
              f"| {flicker.mean:.4f} [{flicker.low:.4f}, {flicker.high:.4f}] | {mean_interval(fidelity) if len(fidelity) > 1 else '–'} "
              f"| {np.mean([r['skipped'] for r in mine]):.1f} | {np.nanmean([r['seconds'] for r in mine]):.1f} | {len(mine)} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", nargs="*", default=list(GROUPS), choices=list(GROUPS))
    names = [BASELINE] + [n for g in GROUPS.values() for n, _ in g]
    parser.add_argument("--settings", nargs="+", choices=names, metavar="NAME",
                        help="render only these settings, in this order (default: the baseline, then every setting of --groups)")
    parser.add_argument("--versus", default=BASELINE, choices=names, metavar="NAME",
                        help=f"the setting paired differences are against (default: {BASELINE})")
    parser.add_argument("--set", default="test", choices=list(SETS), help="renders (prompt, seed) of supergen.eval.sets")
    parser.add_argument("--start", type=int, default=0, help="first render of the set to run, prompt-major then seed, from 0")
    parser.add_argument("--stop", type=int, help="render number to stop before (default: all)")
    parser.add_argument("--size", type=int, default=256, help="square canvas in pixels (native is 128)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: several processes share the cores)")
    parser.add_argument("--rows", help="append every measured row to this JSON-lines file as it finishes")
    parser.add_argument("--from-rows", nargs="+", metavar="FILE", help="skip rendering: the table from earlier --rows files")
    parser.add_argument("--per-step", nargs="+", type=int, metavar="STEP",
                        help="instead of the rows: the seam one refinement step (>= 1) puts into each setting's prediction, "
                             "all on the same canvas state, for the renders of --set, --start, --stop")
    parser.add_argument("--strip", help="also write a PNG of the base setting's sketch and video (STRIP_PROMPT, seed 0), frames 0, 4, 8")
    args = parser.parse_args()
    if args.from_rows:
        rows = [json.loads(line) for path in args.from_rows for line in open(path) if line.strip()]
        report(rows, f"from {len(rows)} rows of {' '.join(args.from_rows)}", args.versus)
        return
    torch.set_num_threads(args.threads)
    pipe = load_pipeline("toy")
    pipe.set_progress_bar_config(disable=True)
    if args.per_step:
        chosen = eval_set(args.set).renders()[args.start:args.stop]
        step_rows = []
        for prompt, seed in chosen:
            sketch = draw_sketch(pipe, prompt, seed)
            step_rows += step_seams(pipe, prompt, seed, sketch, args.size, args.per_step)
            print(f"{len(step_rows) // len(STEP_SETTINGS)} predictions per setting", flush=True)
        print(f"\ntoy model, {args.size}x{args.size}x9, set {args.set} renders {args.start}..{args.start + len(chosen)}, steps {args.per_step}")
        step_report(step_rows)
        return
    every = dict([(BASELINE, {})] + [s for g in GROUPS.values() for s in g])
    names = args.settings or [BASELINE] + [name for g in args.groups for name, _ in GROUPS[g]]
    settings = [(name, every[name]) for name in names]
    renders = eval_set(args.set).renders()
    done = set()  # (prompt, seed, setting) already in the --rows file: resume instead of measuring twice
    if args.rows and os.path.exists(args.rows):
        done = {(r["prompt"], r["seed"], r["setting"]) for line in open(args.rows) if line.strip()
                for r in [json.loads(line)] if (r["set"], r["size"]) == (args.set, args.size)}
    rows: list[dict] = []
    for number, (prompt, seed) in enumerate(renders):
        todo = [(name, extra) for name, extra in settings if (prompt, seed, name) not in done]
        if number < args.start or (args.stop is not None and number >= args.stop) or not todo or not args.groups:
            continue
        if any("cache" in extra for _, extra in todo):  # their PSNR reference first (rendered again if its row is written)
            todo = [(BASELINE, {})] + [(name, extra) for name, extra in todo if name != BASELINE]
        sketch = draw_sketch(pipe, prompt, seed)
        reference = None
        for name, extra in todo:
            sg = SuperGenPipeline.from_pipe(pipe, "toy", **merge(BASE, extra))
            row, video = measure(sg, args, prompt, seed, sketch, reference if "cache" in extra else None)
            reference = video if name == BASELINE else reference  # the uncached render the cache rows compare with
            row = {"set": args.set, "size": args.size, "prompt": prompt, "seed": seed, "setting": name, **row}
            if (prompt, seed, name) in done:
                continue
            rows.append(row)
            if args.rows:
                with open(args.rows, "a") as f:
                    f.write(json.dumps(row) + "\n")
            print(f"render {number} {name}: seam {row['seam']:.2f} obj {row['obj_err']:+.2f} psnr {row['psnr']:.1f} "
                  f"{row['seconds']:.0f} s", flush=True)
    if rows:
        report(rows, f"\ntoy model, {args.size}x{args.size}x9 from 128x128 sketches, set {args.set} renders "
                     f"{args.start}..{args.stop or len(renders)}; baseline {args.versus}", args.versus)
    if args.strip:
        out = SuperGenPipeline.from_pipe(pipe, "toy", **BASE)(prompt=STRIP_PROMPT, height=args.size, width=args.size, num_frames=9,
                                                           generator=torch.Generator().manual_seed(0))
        write_strip(args.strip, out.sketch[0], out.frames[0])
        print(f"wrote {args.strip}")


if __name__ == "__main__":
    main()
