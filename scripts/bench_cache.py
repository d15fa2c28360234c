"""Cache policies at equal compute on the trained toy model: fidelity and quality over compute fraction.

For each canvas size, prompt and seed it renders the uncached video, then every cache setting from
the same sketch (rendered once, passed as ``sketch_video``), and measures against the uncached video
PSNR and SSIM, plus the quality yardsticks of ``scripts/bench_quality.py`` (seam score, object-count
error against the sketch, temporal flicker). Compute is the share of transformer block forwards
that ran (for tile policies the share of tile-forwards: every block of a computed tile runs).

Renders are a set of ``supergen.eval.sets`` (``--set test``, the default, for reported numbers;
``--set tuning`` to choose thresholds or rules). Every policy runs at the same reuse cap
(``--max-consecutive``, the shipped ``cache.max_consecutive`` unless given); MagCache's per-step
ratios are calibrated on the tuning set's first render. Thresholds do not fix the compute, so region
is swept and compared with each baseline setting at the compute that setting reached on the same
render (region's sweep interpolated linearly in compute), as paired differences with a 95 %
interval (``supergen.eval.stats``); the swept policies are also shown on the grid 50 %, 60 %, … 90 %.

    python scripts/bench_cache.py --sizes 256 --rows rows.jsonl          # the test set, 16 renders
    python scripts/bench_cache.py --from-rows rows.jsonl --plot docs/cache-curves.png

A run into a ``--rows`` file that already holds some rows measures only what is missing (a render
and setting already there is taken from the file), so runs split by ``--start``/``--stop`` or
adding settings share one file; with ``--references DIR`` they also share the sketches, the
uncached videos and MagCache's ratios instead of rendering them again.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import time
import zlib

import cv2
import numpy as np
import torch

from supergen import SuperGenPipeline
from supergen.builtin import load_pipeline
from supergen.config import CacheConfig
from supergen.eval.metrics import object_count, psnr, seam_score, ssim, temporal_flicker
from supergen.eval.sets import SETS, eval_set
from supergen.eval.stats import mean_interval, paired_difference

BASE = {"tiling": {"mode": "shift", "boundary": "clamp", "positions": "global"}, "refine": {"strength": 0.6}}
GRID = [0.5, 0.6, 0.7, 0.8, 0.9]
METRICS = ("psnr", "ssim", "seam", "obj_err", "flicker")
COLOURS = {"region": (200, 60, 30), "region-flat": (240, 160, 60), "steps": (40, 40, 40), "teacache": (60, 160, 60),
           "fbc": (60, 90, 220), "magcache": (170, 60, 200)}  # RGB


class MagRatios(logging.Handler):
    """Collects the ratios diffusers' MagCache logs at the end of a calibration run (one list per context)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lists: list[list[float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("MagCache Calibration Results:"):
            self.lists.append([float(v) for v in message.split(":", 1)[1].strip(" []").split(",")])


def measure(sg: SuperGenPipeline, out, sketch: np.ndarray, reference: np.ndarray | None) -> dict[str, float]:
    video = out.frames[0]
    scale = sg.adapter.vae_scale[1]
    tile = out.stats.tile
    plan = sg.plan(*out.stats.size, out.stats.num_frames).tiles
    dy, dx = plan.offsets(len(out.stats.steps) - 1)
    size = video.shape[2:0:-1]
    sketch_counts = np.array([object_count(cv2.resize(f, size, interpolation=cv2.INTER_NEAREST)) for f in sketch])
    row = {
        "compute": 1.0 - out.cache_report.block_share_skipped,
        "seam": seam_score(video, (tile[1], tile[0]), (dx * scale, dy * scale)),
        "obj_err": float(np.mean(np.array([object_count(f) for f in video]) - sketch_counts)),
        "flicker": temporal_flicker(video),
        # Per step, per tile: C computed, . reused (what the rows are read for when a rule loses).
        "decisions": " ".join("".join("C" if t.computed else "." for t in s.tiles) for s in out.cache_report.steps),
    }
    if reference is not None:
        row |= {"psnr": min(psnr(video, reference), 99.0), "ssim": ssim(video, reference)}
    return row


MATCHED = {"psnr": True, "ssim": True, "seam": False, "flicker": False}  # metric: higher is better
DIGITS = {"psnr": ".2f", "ssim": ".4f", "seam": ".2f", "flicker": ".5f"}


def interval(values, digits: str = ".3g") -> str:
    """Mean [95 % interval] of ``values``; the mean alone for a single value (no interval to give)."""
    if len(values) < 2:
        return f"{np.mean(values):{digits}} (n=1)"
    i = mean_interval(values)
    return f"{i.mean:{digits}} [{i.low:{digits}}, {i.high:{digits}}]"


def paired(candidate: list[float], baseline: list[float], higher_is_better: bool, digits: str) -> str:
    """``candidate - baseline`` per render as "mean [95 %] k/n verdict" (k: renders the candidate is no worse on)."""
    if len(candidate) < 2:
        return f"{candidate[0] - baseline[0]:+{digits}} (n=1)"
    p = paired_difference(candidate, baseline, higher_is_better)
    d = p.difference
    return f"{d.mean:+{digits}} [{d.low:+{digits}}, {d.high:+{digits}}] {p.no_worse}/{d.n} {p.verdict}"


# Region swept from its floor (threshold 10: every element recomputed every third step) to 83 %; each
# baseline at two settings inside 50-90 % compute at 4x, its thresholds read off the tuning set's
# first render (teacache 0.05 / 0.1 / 0.2: 86 / 61 / 47 %; fbc 0.1 / 0.3 / 0.6: 90 / 73 / 61 %;
# magcache 0.05 / 0.1: 87 / 70 %), never off the test set.
DEFAULT_SETTINGS = ["region:1.0", "steps:0.5", "region:0.1", "teacache:0.1", "fbc:0.6", "region:10", "magcache:0.1",
                    "fbc:0.3", "steps:0.8", "teacache:0.07", "region:0.03"]


def settings(args, ratios: list[float] | None) -> list[tuple[str, dict]]:
    """Every cache setting of ``--settings``, in its order; all of them share one reuse cap
    (``--max-consecutive``), so no policy is compared at a looser cap than another."""
    out = []
    for item in args.settings:
        name, _, value = item.partition(":")
        policy = "region" if name == "region-flat" else name
        section = {"region": {"change_threshold": float(value)}, "steps": {"fraction": float(value)},
                   "teacache": {"rel_l1_threshold": float(value)}, "fbc": {"threshold": float(value)},
                   "magcache": {"threshold": float(value), "mag_ratios": ratios}}[policy]
        if name == "region-flat":
            section["strength"] = 0.0
        out.append((name, {"policy": policy, "max_consecutive": args.max_consecutive, policy: section}))
    return out


def calibrate(render) -> list[float]:
    """MagCache's per-step ratios of this model from diffusers' calibration mode (mean over contexts)."""
    handler, logger = MagRatios(), logging.getLogger("diffusers.hooks.mag_cache")
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # diffusers also prints every context's ratios
            render({"enabled": True, "policy": "magcache"})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
    return np.mean(np.array(handler.lists), axis=0).tolist()


def on_grid(points: list[dict], metric: str) -> list[float]:
    """``metric`` interpolated at each GRID fraction from one render's sweep (NaN outside it).

    A setting that skipped nothing is the uncached render itself (PSNR infinite, capped at 99): it
    is left out, or every curve would be drawn towards 99 dB between its last skipping point and 100%.
    """
    points = [p for p in points if p["compute"] < 1.0 - 1e-6]
    if not points:
        return [float("nan")] * len(GRID)
    xs = np.array([p["compute"] for p in points])
    ys = np.array([p[metric] for p in points])
    order = np.argsort(xs)
    xs, ys = xs[order], ys[order]
    return [float(np.interp(g, xs, ys)) if xs[0] - 1e-6 <= g <= xs[-1] + 1e-6 else float("nan") for g in GRID]


def plot(path: str, curves: dict[str, dict[str, list[float]]], title: str) -> None:
    """One panel per metric, compute fraction on x; drawn with OpenCV (no matplotlib here)."""
    w, h, pad = 300, 220, 40
    panels = []
    for metric in METRICS:
        panel = np.full((h + 2 * pad, w + 2 * pad, 3), 255, np.uint8)
        values = [v for c in curves.values() for v in c[metric] if np.isfinite(v)]
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        hi = hi if hi > lo else lo + 1.0
        to_px = lambda g, v: (int(pad + (g - GRID[0]) / (GRID[-1] - GRID[0]) * w), int(pad + h - (v - lo) / (hi - lo) * h))  # noqa: E731
        cv2.rectangle(panel, (pad, pad), (pad + w, pad + h), (180, 180, 180), 1)
        for g in GRID:
            cv2.putText(panel, f"{g:.0%}", (to_px(g, lo)[0] - 12, pad + h + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
        cv2.putText(panel, f"{hi:.3g}", (2, pad + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
        cv2.putText(panel, f"{lo:.3g}", (2, pad + h), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
        cv2.putText(panel, f"{metric} vs compute", (pad, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
        for name, curve in curves.items():
            colour = COLOURS.get(name, (120, 120, 120))[::-1]
            pts = [to_px(g, v) for g, v in zip(GRID, curve[metric]) if np.isfinite(v)]
            for a, b in zip(pts, pts[1:]):
                cv2.line(panel, a, b, colour, 2, cv2.LINE_AA)
            for p in pts:
                cv2.circle(panel, p, 3, colour, -1)
        panels.append(panel)
    legend = np.full((panels[0].shape[0], 160, 3), 255, np.uint8)
    for i, name in enumerate(curves):
        cv2.line(legend, (10, 60 + 22 * i), (40, 60 + 22 * i), COLOURS.get(name, (120, 120, 120))[::-1], 3)
        cv2.putText(legend, name, (48, 64 + 22 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    top = np.concatenate(panels[:3], axis=1)
    bottom = np.concatenate(panels[3:] + [legend, np.full((legend.shape[0], top.shape[1] - 2 * panels[0].shape[1] - 160, 3), 255, np.uint8)], axis=1)
    picture = np.concatenate([np.full((26, top.shape[1], 3), 255, np.uint8), top, bottom])
    cv2.putText(picture, title, (8, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.imwrite(path, picture)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 384], help="square canvases in px (native 128)")
    parser.add_argument("--set", default="test", choices=list(SETS),
                        help="renders (prompt, seed) of supergen.eval.sets: choose settings on tuning, report on test")
    parser.add_argument("--max-consecutive", type=int, default=CacheConfig().max_consecutive,
                        help="cache.max_consecutive of every policy (default: the shipped default); fbc has no cap in diffusers")
    parser.add_argument("--settings", nargs="*", default=DEFAULT_SETTINGS, metavar="POLICY:VALUE",
                        help="cache settings in the order they run over all renders: region, region-flat (strength 0), "
                             "teacache, fbc, magcache with a threshold; steps with a compute fraction")
    parser.add_argument("--start", type=int, default=0,
                        help="first render of the set to run, prompt-major then seed, from 0 (split or resume a run)")
    parser.add_argument("--stop", type=int, help="render number to stop before (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plot", help="write the curves as a PNG")
    parser.add_argument("--rows", help="append every measured row to this JSON-lines file as it finishes; "
                                       "rows already in it are not measured again")
    parser.add_argument("--references", metavar="DIR",
                        help="keep each render's sketch and uncached video (and MagCache's ratios) here, and load them "
                             "instead of rendering again when --rows already holds the uncached row (runs that add settings)")
    parser.add_argument("--from-rows", nargs="+", metavar="FILE",
                        help="skip rendering: make the table (and --plot) from JSON-lines files of earlier runs")
    args = parser.parse_args()
    if args.from_rows:
        rows = [json.loads(line) for path in args.from_rows for line in open(path) if line.strip()]
        args.set = ",".join(sorted({r.get("set", "unnamed") for r in rows}))  # rows from before the sets have none
        report(group_rows(rows), args, f"from {len(rows)} rows of {' '.join(args.from_rows)}")
        return
    torch.set_num_threads(args.threads)
    if args.references:
        os.makedirs(args.references, exist_ok=True)
    recorded = recorded_rows(args.rows)
    pipe = load_pipeline("toy")
    pipe.set_progress_bar_config(disable=True)
    points: dict[str, dict[tuple, list[dict]]] = {}  # policy -> per render (size, prompt, seed), its sweep
    start = time.perf_counter()
    bad = [item for item in args.settings if item.partition(":")[0] not in COLOURS or not item.partition(":")[2]]
    if bad:
        parser.error(f"--settings {' '.join(bad)}: each is POLICY:VALUE with POLICY one of {', '.join(COLOURS)}")
    for size in args.sizes:
        # Setting by setting over all renders, so that a run stopped early leaves whole rows (every render) behind.
        renders = {}
        for number, (prompt, seed) in enumerate(eval_set(args.set).renders()):
            if args.start <= number and (args.stop is None or number < args.stop):
                earlier = recorded.get((size, prompt, seed, "none", None))
                stored = reference_file(args.references, size, prompt, seed)
                if earlier is not None and stored and os.path.exists(stored):
                    # rendered by an earlier run of these renders (deterministic): load, do not render again
                    with np.load(stored) as videos:
                        sketch, reference = videos["sketch"], videos["reference"]
                    renders[(size, prompt, seed)] = (renderer(pipe, prompt, seed, size, sketch)[0], sketch, reference)
                    points.setdefault("none", {})[(size, prompt, seed)] = [earlier]
                    print(f"render {number}: sketch and uncached video loaded from {stored}", flush=True)
                    continue
                render, sketch = renderer(pipe, prompt, seed, size)
                sg, out = render({"enabled": False})
                renders[(size, prompt, seed)] = (render, sketch, out.frames[0])
                if stored:
                    np.savez(stored, sketch=sketch, reference=out.frames[0])
                row = measure(sg, out, sketch, None)
                points.setdefault("none", {})[(size, prompt, seed)] = [row]
                if earlier is None:
                    record(args.rows, args.set, size, prompt, seed, "none", {}, row)
                else:  # the file already holds this reference: say whether the render reproduced it
                    drift = max(abs(row[m] - earlier[m]) / max(abs(earlier[m]), 1e-12) for m in ("seam", "obj_err", "flicker"))
                    print(f"render {number}: uncached row already in {args.rows}, not appended; largest relative "
                          f"difference of this render's seam, object count and flicker from it: {drift:.1e}", flush=True)
        ratios = None
        if any(item.startswith("magcache:") for item in args.settings):
            # calibrated on the tuning set's first render, never on the renders reported
            stored = args.references and os.path.join(args.references, f"mag-ratios-{size}.json")
            if stored and os.path.exists(stored):
                ratios = json.load(open(stored))
            else:
                ratios = calibrate(renderer(pipe, *SETS["tuning"].renders()[0], size)[0])
                if stored:
                    json.dump(ratios, open(stored, "w"))
            print(f"MagCache ratios ({size} px): {' '.join(f'{r:.4f}' for r in ratios)}", flush=True)
        for name, cache in settings(args, ratios):
            for (_, prompt, seed), (render, sketch, reference) in renders.items():
                done = recorded.get((size, prompt, seed, name, setting_of(cache)))
                if done is not None:  # measured by an earlier run into the same --rows file (deterministic)
                    points.setdefault(name, {}).setdefault((size, prompt, seed), []).append(done)
                    continue
                began = time.perf_counter()
                sg, out = render({"enabled": True, **cache})
                row = {"setting": setting_of(cache), **measure(sg, out, sketch, reference)}
                points.setdefault(name, {}).setdefault((size, prompt, seed), []).append(row)
                record(args.rows, args.set, size, prompt, seed, name, cache, row)
                print(f"{size} {prompt[:40]!r} seed {seed} {name} {setting_of(cache)}: "
                      + " ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float))
                      + f" ({time.perf_counter() - began:.0f} s)", flush=True)
        print(f"# {size}px done after {time.perf_counter() - start:.0f} s", flush=True)

    report(points, args, f"{time.perf_counter() - start:.0f} s")


def renderer(pipe, prompt: str, seed: int, size: int, sketch: np.ndarray | None = None):
    """``(render, sketch)``: the sketch of (prompt, seed) at the native 128 px (rendered unless
    given), and a function that refines it at ``size`` px with a given cache section and returns
    ``(pipeline, output)``."""
    generator = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
    if sketch is None:
        native = SuperGenPipeline.from_pipe(pipe, "toy", **BASE)
        sketch = native(prompt=prompt, height=128, width=128, num_frames=9, generator=generator(), output_type="np").frames[0]

    def render(cache: dict):
        sg = SuperGenPipeline.from_pipe(pipe, "toy", **BASE, cache=cache)
        return sg, sg(prompt=prompt, sketch_video=sketch, height=size, width=size, num_frames=9, generator=generator())

    return render, sketch


def reference_file(folder: str | None, size: int, prompt: str, seed: int) -> str | None:
    """Where ``--references`` keeps a render's sketch and uncached video (None without the option)."""
    return folder and os.path.join(folder, f"{size}-{seed}-{zlib.crc32(prompt.encode()):08x}.npz")


def recorded_rows(path: str | None) -> dict[tuple, dict]:
    """The rows already in the ``--rows`` file by (size, prompt, seed, policy, setting), the first of
    each: a run into the same file measures and writes only what is not there yet."""
    try:
        rows = [json.loads(line) for line in open(path) if line.strip()] if path else []
    except FileNotFoundError:
        rows = []
    recorded: dict[tuple, dict] = {}
    for r in rows:
        recorded.setdefault((r["size"], r["prompt"], r["seed"], r["policy"], r["setting"]), r)
    return recorded


def record(path: str | None, set_name: str, size: int, prompt: str, seed: int, name: str, cache: dict, row: dict) -> None:
    """One measured row as a JSON line, so a run stopped early still leaves its table behind."""
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"set": set_name, "size": size, "prompt": prompt, "seed": seed, "policy": name,
                                "setting": setting_of(cache), "cache": cache, **row}) + "\n")


def setting_of(cache: dict) -> float | None:
    """The swept value of a cache section: its policy's threshold (``steps``: fraction); None uncached."""
    section = cache.get(cache.get("policy"), {})
    return next((section[k] for k in ("change_threshold", "fraction", "rel_l1_threshold", "threshold") if k in section), None)


def group_rows(rows: list[dict]) -> dict[str, dict[tuple, list[dict]]]:
    """Rows of ``--rows`` files back into per-policy sweeps keyed by render (size, prompt, seed);
    renders without an uncached reference are dropped. Several files of the same renders (runs of
    other settings) merge: the renders are deterministic, so their references are the same video,
    and a setting measured twice on a render (a rerun) counts once, its first row."""
    unique: dict[tuple, dict] = {}
    for r in rows:
        unique.setdefault((r["size"], r["prompt"], r["seed"], r["policy"], r["setting"]), r)
    rows = list(unique.values())
    renders = {(r["size"], r["prompt"], r["seed"]) for r in rows if r["policy"] == "none"}
    points: dict[str, dict[tuple, list[dict]]] = {}
    for key in sorted(renders):
        mine = [r for r in rows if (r["size"], r["prompt"], r["seed"]) == key]
        for name in dict.fromkeys(r["policy"] for r in mine):
            points.setdefault(name, {})[key] = [r for r in mine if r["policy"] == name]
    return points


def report(points: dict[str, dict[tuple, list[dict]]], args, took: str) -> None:
    """Three tables (and with ``--plot`` the PNG), each cell a mean over renders with its 95 % interval.

    1. Every setting on its own, over the renders it ran on: compute (mean and range), PSNR and
       SSIM against the uncached render, and seam and flicker as paired differences from the
       uncached render of the same renders (with how many renders were no worse, and "tie").
    2. ``region`` against every other setting at that setting's compute, render by render: region's
       sweep interpolated to the compute the other setting reached on the same render (above the
       sweep, region's highest point, at less compute, and the row says so; renders below the sweep
       are left out, so n may be below the set's size), as the paired
       difference region minus the other in PSNR and SSIM (higher better), seam and flicker (lower
       better), with how many renders region was no worse on, and "tie" where the interval contains zero.
    3. Each swept policy on the grid 50 % … 90 % (a fraction that fewer than half the renders
       reached is left blank): mean PSNR [interval]; these means are the PNG's curves.
    """
    if "none" not in points:
        print("no renders")
        return
    renders = len(points["none"])
    base = {m: interval([r[0][m] for r in points["none"].values()]) for m in ("seam", "obj_err", "flicker")}
    print(f"\ntoy model, sizes {args.sizes}, set {args.set}: {renders} renders (size, prompt, seed), "
          f"20-step schedule, strength 0.6, shift/clamp; {took}")
    print(f"uncached, mean [95 %]: seam {base['seam']}, object-count error {base['obj_err']}, flicker {base['flicker']}")
    print("\nminus uncached: the setting's value minus the uncached render's, paired by render: mean [95 %], no worse on k/n, verdict")
    print("| policy | setting | compute (range) | PSNR dB [95 %] | SSIM [95 %] | seam minus uncached | flicker minus uncached | obj err | n |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, sweeps in points.items():
        if name == "none":
            continue
        for setting in dict.fromkeys(r["setting"] for rows in sweeps.values() for r in rows):
            pairs = [(r, points["none"][key][0]) for key, rs in sweeps.items() for r in rs if r["setting"] == setting]
            rows = [r for r, _ in pairs]
            compute = [r["compute"] for r in rows]
            versus = [paired([r[m] for r, _ in pairs], [u[m] for _, u in pairs], False, DIGITS[m]) for m in ("seam", "flicker")]
            print(f"| {name} | {setting} | {np.mean(compute):.0%} ({min(compute):.0%}–{max(compute):.0%}) | "
                  f"{interval([r['psnr'] for r in rows], '.1f')} | {interval([r['ssim'] for r in rows], '.4f')} | {versus[0]} | "
                  f"{versus[1]} | {np.mean([r['obj_err'] for r in rows]):+.2f} | {len(rows)} |")
    if "region" in points:
        print("\nregion minus each setting at that setting's compute, paired by render: mean [95 %], region no worse on k/n, verdict")
        print("| policy | setting | compute | PSNR dB | SSIM | seam | flicker |")
        print("|---|---|---|---|---|---|---|")
        for name, sweeps in points.items():
            if name in ("none", "region"):
                continue
            for setting in dict.fromkeys(r["setting"] for rows in sweeps.values() for r in rows):
                pairs = {m: ([], []) for m in MATCHED}
                computes, regions = [], []
                for key, rows in sweeps.items():
                    other = next((r for r in rows if r["setting"] == setting), None)
                    region = [p for p in points["region"].get(key, []) if p["compute"] < 1.0 - 1e-6]
                    if other is None or not region:
                        continue
                    xs = np.array([p["compute"] for p in region])
                    if other["compute"] < xs.min() - 1e-6:
                        continue  # region cannot compute this little: no fair pair
                    # Above region's sweep, its highest point stands in: region at less compute than
                    # the other setting, so a difference in region's favour only understates its lead.
                    at = min(other["compute"], float(xs.max()))
                    order = np.argsort(xs)
                    computes.append(other["compute"])
                    regions.append(at)
                    for m, (mine, theirs) in pairs.items():
                        mine.append(float(np.interp(at, xs[order], np.array([p[m] for p in region])[order])))
                        theirs.append(other[m])
                if len(computes) < 2:
                    print(f"| {name} | {setting} | – | below region's sweep on {len(sweeps) - len(computes)} of {len(sweeps)} renders | | | |")
                    continue
                cells = [paired(*pairs[m], higher, DIGITS[m]) for m, higher in MATCHED.items()]
                where = f"{np.mean(computes):.0%}" + (f" (region at {np.mean(regions):.0%})" if np.mean(computes) - np.mean(regions) > 0.005 else "")
                print(f"| {name} | {setting} | {where} | " + " | ".join(cells) + " |")
    curves: dict[str, dict[str, list[float]]] = {}
    print("\nswept policies on the compute grid: mean PSNR dB [95 %] over the renders reaching the fraction (k/n)")
    print("| policy | " + " | ".join(f"{g:.0%}" for g in GRID) + " |")
    print("|---|" + "---|" * len(GRID))
    for name, sweeps in points.items():
        if name == "none" or max(len(s) for s in sweeps.values()) < 2:
            continue
        per_render = {m: np.array([on_grid(s, m) for s in sweeps.values()]) for m in METRICS}
        reached = np.isfinite(per_render["psnr"]).sum(axis=0)
        cells = []
        curves[name] = {m: [] for m in METRICS}
        for i, n in enumerate(reached):
            enough = 2 * n >= len(sweeps) and n >= 2  # a mean over fewer than half the renders is another sample
            for m in METRICS:
                values = per_render[m][:, i]
                curves[name][m].append(float(np.mean(values[np.isfinite(values)])) if enough else float("nan"))
            column = per_render["psnr"][:, i]
            cells.append(f"{mean_interval(column[np.isfinite(column)])} ({n}/{len(sweeps)})" if enough else f"– ({n}/{len(sweeps)})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.plot:
        plot(args.plot, curves, f"toy model {args.sizes} px, {renders} renders: mean over the renders reaching each fraction (at least half)")
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
