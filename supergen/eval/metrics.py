"""Yardsticks for tiled video generation: seams, lattice texture, duplicated objects, frame-to-frame
object consistency, flicker, fidelity.

Every function takes numpy arrays or torch tensors (any float or integer dtype, any device)
laid out **frames last-channel**, the layout ``diffusers`` returns with ``output_type="np"``
and that video writers take:

* a video is ``(F, H, W, C)`` (or ``(B, F, H, W, C)`` where noted),
* a frame is ``(H, W, C)``.

Values are expected in ``value_range`` / ``data_range`` units given by the caller (default
``[0, 1]``). A :mod:`supergen.eval.toyworld` clip ``(C, F, H, W)`` in ``[-1, 1]`` converts with
``(clip.transpose(1, 2, 3, 0) + 1) / 2``.

This module depends only on numpy, torch and OpenCV, so it is cheap to import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch


def _as_array(x) -> np.ndarray:
    """float64 numpy copy of a numpy array or torch tensor (metrics are cheap; precision
    matters more than speed when comparing near-identical videos)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _line_gradient_energy(v: np.ndarray, axis: int, robust: bool = False) -> np.ndarray:
    """Absolute gradient across each line of ``axis`` of ``(N, H, W, C)`` frames, one value per line.

    Entry ``i`` is the step between pixels ``i`` and ``i + 1``, i.e. across line ``i + 1``;
    channels are summed, then the frames and the other spatial axis are reduced by the mean, or
    by the median when ``robust`` (a few object edges along a line then do not count): shape
    ``(size - 1,)``.
    """
    grad = np.abs(np.diff(v, axis=axis)).sum(axis=-1)
    if not robust:
        return grad.mean(axis=tuple(a for a in range(grad.ndim) if a != axis))
    return np.median(np.moveaxis(grad, axis, -1).reshape(-1, grad.shape[axis]), axis=0)


def seam_score(video, tile_period_xy, offset=(0, 0)) -> float:
    """How much stronger image gradients are on tile-border lines than elsewhere.

    Args:
        video: ``(F, H, W, C)`` (a single ``(H, W, C)`` frame also works).
        tile_period_xy: ``(period_x, period_y)`` in pixels: spacing of the tile borders.
            Either entry may be ``None`` to ignore that axis.
        offset: ``(offset_x, offset_y)``: pixel index of one border line on each axis,
            i.e. borders lie between pixels ``b - 1`` and ``b`` for
            ``b = offset + k * period``.

    Returns:
        For each axis, the mean absolute gradient across the border lines divided by the
        mean absolute gradient across lines at the other ``period - 1`` phases of the same
        spacing; the larger of the two axis ratios is returned. ``~1`` means the borders
        look like any other line (no seam); a visible seam gives ``>> 1``. Comparing with
        lines of the same spacing elsewhere, rather than with the global mean, cancels
        content that happens to be periodic or concentrated in part of the frame.
    """
    v = _as_array(video)
    if v.ndim == 3:
        v = v[None]
    ratios = []
    # Axis 2 (width) has vertical border lines at x positions; axis 1 (height) horizontal.
    for axis, period, off in ((2, tile_period_xy[0], offset[0]), (1, tile_period_xy[1], offset[1])):
        if period is None or period < 2 or v.shape[axis] <= period:
            continue
        energy = _line_gradient_energy(v, axis)
        lines = np.arange(1, v.shape[axis])
        phase = (lines - off) % period
        border = energy[phase == 0].mean()
        elsewhere = energy[phase != 0].mean()
        ratios.append(border / max(elsewhere, 1e-12))
    if not ratios:
        raise ValueError("seam_score needs at least one tile period smaller than the frame")
    return float(max(ratios))


def _saturated_mask(frame, value_range, min_chroma: float, min_area: int | None):
    """The frame mapped to [0, 1], its saturated-colour mask (chroma ``>= min_chroma``) and the
    minimum blob area in pixels (default 0.2 % of the frame, at least 4)."""
    f = _as_array(frame)
    lo, hi = value_range
    f = (f - lo) / (hi - lo)
    mask = f.max(axis=-1) - f.min(axis=-1) >= min_chroma
    if min_area is None:
        min_area = max(4, int(0.002 * mask.size))
    return f, mask, min_area


def object_count(frame, value_range=(0.0, 1.0), min_chroma: float = 0.5, min_area: int | None = None) -> int:
    """Number of separate saturated-colour blobs in a frame (duplication detector).

    Args:
        frame: ``(H, W, 3)`` RGB.
        value_range: ``(low, high)`` of the input values, mapped to ``[0, 1]``.
        min_chroma: a pixel is "object" if ``max(r, g, b) - min(r, g, b) >= min_chroma``
            (chroma, not HSV saturation: dark muted colours such as navy have HSV
            saturation 1 but low chroma, and must count as background).
        min_area: components smaller than this many pixels are ignored (noise, anti-aliased
            fringes). Default: 0.2 % of the frame area, at least 4 pixels.

    Returns:
        The count of 8-connected components of the saturated mask that are large enough.
        Touching objects merge into one component; the toy world's captions name distinct
        colours, so compare counts against the sketch, not against an exact scene count.
    """
    _, mask, min_area = _saturated_mask(frame, value_range, min_chroma, min_area)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    # Label 0 is the background of the mask.
    return int((stats[1:n, cv2.CC_STAT_AREA] >= min_area).sum())


@dataclass(frozen=True)
class Blob:
    """One saturated-colour object found in a frame by :func:`find_objects`.

    ``colour`` is the palette entry nearest to its pixels, ``shape`` one of
    ``"square"``, ``"disk"``, ``"triangle"`` (from how much of its bounding box it fills:
    1.0, pi/4 and 1/2 for ideal shapes), ``fill`` that fraction, ``area`` in pixels.
    """

    colour: str
    shape: str
    fill: float
    area: int


# Fill-ratio boundaries halfway between the ideal shapes: triangle 0.5 | disk 0.785 | square 1.0.
_FILL_DISK, _FILL_SQUARE = (0.5 + math.pi / 4) / 2, (math.pi / 4 + 1.0) / 2


def find_objects(frame, palette: dict, value_range=(0.0, 1.0), min_chroma: float = 0.5,
                 min_area: int | None = None) -> list[Blob]:
    """Saturated-colour objects in a frame, each named by colour and shape.

    Args:
        frame: ``(H, W, 3)`` RGB.
        palette: ``{name: (r, g, b)}`` in ``[0, 1]``; each blob gets the nearest name
            (e.g. :data:`supergen.eval.toyworld.OBJECT_COLOURS`).
        value_range, min_chroma, min_area: as in :func:`object_count`.

    Returns:
        One :class:`Blob` per connected region of one colour, largest first. Shapes are judged
        by bounding-box fill, which assumes axis-aligned squares and upright triangles (the toy
        world's).
    """
    f, saturated, min_area = _saturated_mask(frame, value_range, min_chroma, min_area)
    names = list(palette)
    colours = np.asarray([palette[n] for n in names], dtype=np.float64)
    # Name every saturated pixel first, then find components per colour: objects of different
    # colours that touch stay separate (one mask would merge them).
    nearest = np.argmin(((f[..., None, :] - colours) ** 2).sum(axis=-1), axis=-1)
    blobs = []
    for k, name in enumerate(names):
        mask = (saturated & (nearest == k)).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        for i in range(1, n):  # label 0 is the mask's background
            area = int(stats[i, cv2.CC_STAT_AREA])
            if area < min_area:
                continue
            fill = area / float(stats[i, cv2.CC_STAT_WIDTH] * stats[i, cv2.CC_STAT_HEIGHT])
            shape = "square" if fill >= _FILL_SQUARE else "disk" if fill >= _FILL_DISK else "triangle"
            blobs.append(Blob(name, shape, fill, area))
    return sorted(blobs, key=lambda b: -b.area)


@dataclass(frozen=True)
class PromptMatch:
    """How well the objects found in a frame match the objects a prompt asked for.

    ``colours_found``: asked-for colours that appear (as any blob); ``shapes_right``: of
    those, how many have the asked-for shape (its largest blob of that colour);
    ``extra_colours``: colours that appear but were not asked for.
    """

    asked: int
    colours_found: int
    shapes_right: int
    extra_colours: int


def match_prompt(blobs: list[Blob], asked: list[tuple[str, str]]) -> PromptMatch:
    """Compare :func:`find_objects` output with ``asked = [(colour, shape), ...]``."""
    largest = {}
    for blob in blobs:  # largest first, so the first blob of a colour is its largest
        largest.setdefault(blob.colour, blob)
    wanted = dict(asked)
    found = [c for c in wanted if c in largest]
    return PromptMatch(
        asked=len(wanted),
        colours_found=len(found),
        shapes_right=sum(largest[c].shape == wanted[c] for c in found),
        extra_colours=len(set(largest) - set(wanted)),
    )


def temporal_flicker(video) -> float:
    """Mean absolute temporal second difference ``|x[t+1] - 2 x[t] + x[t-1]|``.

    Args:
        video: ``(F, H, W, C)`` with ``F >= 3``.

    Returns:
        A scalar in the video's value units. Static content and brightness that changes at
        a constant rate score 0; content that jumps back and forth between frames (tiles
        refined inconsistently from frame to frame) scores high. Moving edges contribute a
        little, so compare methods on the same content rather than reading absolute values.
    """
    v = _as_array(video)
    if v.shape[0] < 3:
        raise ValueError("temporal_flicker needs at least 3 frames")
    return float(np.abs(v[2:] - 2.0 * v[1:-1] + v[:-2]).mean())


def temporal_seam_score(video, borders, span: int = 1) -> float:
    """How much more the picture changes across time-window borders than elsewhere (1 = no pulse).

    The mean absolute frame-to-frame change ``|x[t] - x[t-1]|`` over the frames ``b .. b + span - 1``
    of each border ``b`` in ``borders`` (where a window of the last refinement step begins), divided by
    the same mean over every other frame. Windows refined apart that disagree print a jump at their
    border, once per border: a "pulse" every window length when the borders never move (fixed chunks).

    ``span`` is how many video frames a border covers. Windows are cut in latent frames, and a causal
    VAE's latent frame ``k >= 1`` decodes to the temporal factor's frames (Wan: 4), so two windows'
    disagreement can show in any change into those frames, not only into the first: pass the
    temporal factor to score whole latent frames (``span=1``: the first frame only).

    Args:
        video: ``(F, H, W, C)``.
        borders: frame indices ``1 <= t < F`` (the first frame of a window other than the clip's first).
        span: frames per border, at least 1 (cut at the clip's end).
    """
    v = _as_array(video)
    change = np.abs(np.diff(v, axis=0)).reshape(v.shape[0] - 1, -1).mean(axis=1)  # change[t - 1]: frame t - 1 -> t
    at = sorted({int(t) for t in borders})
    if not at or at[0] < 1 or at[-1] >= v.shape[0]:
        raise ValueError(f"borders must be frame indices in [1, {v.shape[0]}); got {list(borders)}")
    if span < 1:
        raise ValueError(f"span must be at least 1 frame; got {span}")
    inside = np.ones(len(change), dtype=bool)
    for t in at:
        inside[t - 1 : t - 1 + span] = False
    if not inside.any():
        raise ValueError(f"every frame is within {span} of a border: nothing to compare with")
    return float(change[~inside].mean() / max(change[inside].mean(), 1e-12))


def psnr(a, b, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB between two arrays of the same shape.

    ``data_range`` is ``max - min`` of the value scale (1 for ``[0, 1]``, 2 for ``[-1, 1]``,
    255 for uint8). Identical inputs give ``inf``.
    """
    x, y = _as_array(a), _as_array(b)
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch {x.shape} vs {y.shape}")
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a, b, data_range: float = 1.0, window_size: int = 11, sigma: float = 1.5) -> float:
    """Structural similarity (Wang et al. 2004) with an 11-tap Gaussian window, sigma 1.5.

    Args:
        a, b: ``(..., H, W, C)``: any leading dims (frames, batch) are treated as separate
            images; each channel is compared separately.
        data_range: ``max - min`` of the value scale, as in :func:`psnr`.

    Returns:
        The mean SSIM over all windows fully inside the image ("valid" filtering), channels
        and images; 1.0 for identical inputs.

    Written here because none of the project's dependencies provides SSIM: scikit-image is
    deliberately not a dependency, OpenCV's quality module is only in the contrib build, and
    torchmetrics/kornia are not installed.
    """
    x, y = _as_array(a), _as_array(b)
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch {x.shape} vs {y.shape}")
    h, w, c = x.shape[-3:]
    if min(h, w) < window_size:
        raise ValueError(f"frames of {h}x{w} are smaller than the {window_size}px SSIM window")
    # (N, H, W, C) -> (N * C, 1, H, W) so one depthwise conv filters every channel.
    def planes(v):
        t = torch.from_numpy(v.reshape(-1, h, w, c))
        return t.permute(0, 3, 1, 2).reshape(-1, 1, h, w)

    x, y = planes(x), planes(y)
    g = _gaussian_window(window_size, sigma)
    kernel = (g[:, None] * g[None, :])[None, None]

    def blur(t):
        return torch.nn.functional.conv2d(t, kernel)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(s.mean())


def lattice_texture(video, period: int = 16) -> float:
    """How much image gradients repeat with a fixed spatial period, at any phase.

    A VAE or transformer that works on a grid of ``period``-pixel cells (a token covers 16x16
    px in the toy model: 8x VAE, 2x2 patch) can print a texture on that grid. For each line
    position this takes the median absolute gradient across the line over all frames and rows
    (robust to the few object edges that cross it), folds those values at ``period`` and
    returns how far the strongest phase lies above the mean of all phases; unlike
    :func:`seam_score` it needs no known offset.

    Args:
        video: ``(F, H, W, C)``, a single ``(H, W, C)`` frame, or ``(B, F, H, W, C)``: every
            leading axis is pooled.
        period: lattice spacing in pixels (>= 2, smaller than the frame).

    Returns:
        The peak's excess in gradient units (channel-summed absolute steps, in the video's
        value units; the worse of the two axes). Smooth content scores ~0 (toy-world clips:
        < 5e-4 on a [0, 1] scale); a lattice texture of amplitude 0.005 scores ~1.4e-3.
        Compare with the same measure on the true clips, e.g. a VAE's reconstructions against
        their inputs.
    """
    v = _as_array(video)
    if v.ndim == 3:
        v = v[None]
    v = v.reshape(-1, *v.shape[-3:])
    if period < 2 or min(v.shape[1], v.shape[2]) <= period:
        raise ValueError(f"lattice_texture: period {period} must be >= 2 and smaller than the "
                         f"{v.shape[1]}x{v.shape[2]} frame")
    peaks = []
    for axis in (1, 2):
        energy = _line_gradient_energy(v, axis, robust=True)
        whole = len(energy) // period * period  # the same number of lines at every phase
        folded = energy[:whole].reshape(-1, period).mean(axis=0)
        peaks.append(folded.max() - folded.mean())
    return float(max(peaks))


def same_objects(first, second, palette: dict, value_range=(0.0, 1.0)) -> bool:
    """Whether two frames show the same objects: the same set of object colours.

    The toy world gives every object of a clip its own colour, so the colour set names the
    objects; shapes are left out because blurred shapes flip between the detector's classes
    from frame to frame. Used to check that a video's first frame, which a causal video VAE
    decodes on its own, belongs with the frames after it. ``first``, ``second``: ``(H, W, 3)``;
    other arguments as in :func:`find_objects`.
    """
    def colours(frame):
        return {blob.colour for blob in find_objects(frame, palette, value_range)}

    return colours(first) == colours(second)
