"""A picture of a :class:`~supergen.cache.report.CacheReport`: the canvas with its tiles, one panel per step."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import SuperGenError
from .report import CacheReport

_COMPUTED = np.array([60, 200, 60], dtype=np.float32)  # green, RGB
_REUSED = np.array([220, 60, 60], dtype=np.float32)  # red
#: The tile colours by meaning (the demo's legend shows them).
COLOURS = {"computed": _COMPUTED, "reused": _REUSED}


def cache_map(report: CacheReport, thumbnail: np.ndarray | None = None, panel_width: int = 160, frame: int = 0) -> np.ndarray:
    """A picture of the report: one panel per step (left to right), each the canvas with its tiles.

    A computed tile is tinted green, a reused one red; with block-level caching the green fades toward
    red in proportion to the blocks skipped inside the tile. Tile borders are drawn in white. The
    panel's count is of all the step's tiles.

    Args:
        thumbnail: an RGB ``(h, w, 3)`` uint8 frame of the video to draw under the tiles (grey if None).
        frame: with time windows, the latent frame whose tiles are drawn (a canvas element of each
            frame is written by one time window's tiles, which shift along time from step to step).

    Returns:
        ``(panel_h + 18, steps × (panel_width + 4), 3)`` uint8 RGB.
    """
    import cv2

    height, width = report.canvas
    scale = panel_width / width
    panel_h = max(1, round(height * scale))
    if thumbnail is None:
        base = np.full((panel_h, panel_width, 3), 128, np.float32)
    else:
        grey = cv2.cvtColor(thumbnail, cv2.COLOR_RGB2GRAY)
        base = np.repeat(cv2.resize(grey, (panel_width, panel_h), interpolation=cv2.INTER_AREA)[..., None], 3, -1).astype(np.float32)
    panels = []
    for step in report.steps:
        tint = np.zeros((height, width, 3), np.float32)
        owner = np.zeros((height, width), np.int32)
        for index, tile in enumerate(step.tiles):
            if tile.frames is not None and frame not in tile.frames.positions().tolist():
                continue
            share = 1.0
            if tile.computed and step.blocks_per_tile:
                share = tile.blocks / step.blocks_per_tile
            colour = _COMPUTED * share + _REUSED * (1 - share) if tile.computed else _REUSED
            for rs, _ in tile.rows.pieces():
                for cs, _ in tile.cols.pieces():
                    tint[rs, cs] = colour
                    owner[rs, cs] = index
        tint = cv2.resize(tint, (panel_width, panel_h), interpolation=cv2.INTER_NEAREST)
        owner = cv2.resize(owner.astype(np.float32), (panel_width, panel_h), interpolation=cv2.INTER_NEAREST)
        # One-pixel borders where the owning tile changes (a wrapped tile's two pieces get one too).
        edge = np.zeros(owner.shape, bool)
        edge[:, 1:] |= owner[:, 1:] != owner[:, :-1]
        edge[1:, :] |= owner[1:, :] != owner[:-1, :]
        panel = 0.45 * base + 0.55 * tint
        panel[edge] = 255
        label = np.zeros((18, panel_width, 3), np.uint8)
        cv2.putText(label, f"step {step.step}: {step.computed}/{len(step.tiles)}", (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
        column = np.concatenate([label.astype(np.float32), panel])
        panels.append(np.pad(column, ((0, 0), (2, 2), (0, 0))))
    return np.clip(np.concatenate(panels, axis=1), 0, 255).astype(np.uint8)


def write_cache_map(path: str | Path, report: CacheReport, thumbnail: np.ndarray | None = None) -> None:
    """Write :func:`cache_map` as a PNG (OpenCV, so BGR on disk)."""
    import cv2

    picture = cache_map(report, thumbnail)
    if not cv2.imwrite(str(path), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        raise SuperGenError(f"could not write the cache map to {str(path)!r}")
