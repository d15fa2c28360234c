"""A procedural "toy world" of short video clips with exact captions.

The toy model shipped in ``assets/toy-wan`` is trained on this world, and the quality
benchmarks use it as ground truth: every clip is a smooth two-colour gradient background
with one to three solid shapes moving in straight lines, and its caption is generated from
the same scene description that was drawn, so a caption never disagrees with its pixels.

Conventions
-----------
* A clip is a ``numpy.float32`` array of shape ``(C, F, H, W) = (3, num_frames, height,
  width)`` with values in ``[-1, 1]`` (the range diffusers VAEs take).
* Sizes and speeds scale with the frame size, so a 128 px clip is a 64 px clip drawn at
  twice the resolution (same world, finer edges).
* Object colours are fully saturated and background colours are muted (chroma <= 0.3),
  which is what lets :func:`supergen.eval.metrics.object_count` find objects by saturation.
* Everything is deterministic for a seed (``numpy.random.default_rng(seed)``).

Caption grammar (all lower case, single spaces)::

    caption    := object ("and" object)* "on a" orient bgcolour "to" bgcolour "background"
    object     := "a" colour shape motion
    motion     := "moving" ("left" | "right" | "up" | "down") | "staying still"
    orient     := "vertical" (first colour at the top) | "horizontal" (first colour at the left)

Example: ``"a red disk moving left and a blue square staying still on a vertical sky to
sand background"``.

This module depends only on numpy so tests and scripts can import it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

# Saturated object colours (RGB in [0, 1]); chroma (max - min) >= 0.75 for all of them.
OBJECT_COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.1, 0.1),
    "green": (0.1, 0.85, 0.1),
    "blue": (0.1, 0.2, 1.0),
    "yellow": (1.0, 0.9, 0.05),
    "cyan": (0.05, 0.9, 0.95),
    "magenta": (0.95, 0.1, 0.9),
    "orange": (1.0, 0.5, 0.05),
}

# Muted background colours; chroma <= 0.3 so they never read as "an object".
BACKGROUND_COLOURS: dict[str, tuple[float, float, float]] = {
    "gray": (0.5, 0.5, 0.5),
    "white": (0.9, 0.9, 0.88),
    "black": (0.08, 0.08, 0.1),
    "sand": (0.82, 0.74, 0.55),
    "sky": (0.55, 0.7, 0.85),
    "moss": (0.4, 0.5, 0.32),
    "rose": (0.8, 0.58, 0.62),
    "slate": (0.3, 0.34, 0.42),
}

SHAPES = ("disk", "square", "triangle")
# Unit direction (dx, dy) in image coordinates (y grows downwards) for each motion word.
MOTIONS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
    "still": (0, 0),
}
ORIENTATIONS = ("vertical", "horizontal")

# Relative sizes (fractions of min(height, width)) and speeds (fraction of the frame
# size along the motion axis, per frame). At 128 px: radius 11-22 px, speed 1.5-4.5 px.
RADIUS_RANGE = (0.09, 0.17)
SPEED_RANGE = (0.012, 0.035)


@dataclass(frozen=True)
class SceneObject:
    """One solid shape moving in a straight line.

    ``x``/``y`` are the centre in pixels at frame 0, ``radius`` is the half-size in pixels
    (disk radius, half the square's side, the triangle's circumradius-like extent) and
    ``speed`` is in pixels per frame along the ``motion`` direction.
    """

    shape: str
    colour: str
    motion: str
    x: float
    y: float
    radius: float
    speed: float

    def centre(self, frame: int) -> tuple[float, float]:
        """Centre ``(x, y)`` in pixels at ``frame``."""
        dx, dy = MOTIONS[self.motion]
        return self.x + dx * self.speed * frame, self.y + dy * self.speed * frame

    def phrase(self) -> str:
        verb = "staying still" if self.motion == "still" else f"moving {self.motion}"
        return f"a {self.colour} {self.shape} {verb}"


@dataclass(frozen=True)
class Scene:
    """Everything needed to draw a clip and to caption it."""

    height: int
    width: int
    num_frames: int
    background: tuple[str, str]  # (first colour, second colour)
    orientation: str  # "vertical": first colour at the top; "horizontal": at the left
    objects: tuple[SceneObject, ...] = field(default_factory=tuple)

    def caption(self) -> str:
        objects = " and ".join(o.phrase() for o in self.objects)
        c1, c2 = self.background
        return f"{objects} on a {self.orientation} {c1} to {c2} background"


def vocabulary() -> list[str]:
    """Every word the caption grammar can produce, in a fixed order (for the tokenizer)."""
    words = ["a", "and", "on", "to", "background", "moving", "staying"]
    words += list(OBJECT_COLOURS) + list(BACKGROUND_COLOURS) + list(SHAPES)
    words += list(MOTIONS) + list(ORIENTATIONS)
    return list(dict.fromkeys(words))


def sample_scene(
    rng: np.random.Generator, height: int = 128, width: int = 128, num_frames: int = 9
) -> Scene:
    """Draw a random scene; every object stays fully inside the frame for the whole clip.

    Objects get distinct colours so that a caption names each one unambiguously.
    """
    c1, c2 = rng.choice(list(BACKGROUND_COLOURS), size=2, replace=False)
    orientation = ORIENTATIONS[rng.integers(len(ORIENTATIONS))]
    n_objects = int(rng.integers(1, 4))
    colours = rng.choice(list(OBJECT_COLOURS), size=n_objects, replace=False)
    side = min(height, width)
    objects = []
    for colour in colours:
        shape = SHAPES[rng.integers(len(SHAPES))]
        motion = list(MOTIONS)[rng.integers(len(MOTIONS))]
        radius = float(rng.uniform(*RADIUS_RANGE) * side)
        dx, dy = MOTIONS[motion]
        axis = width if dx else height
        speed = 0.0 if motion == "still" else float(rng.uniform(*SPEED_RANGE) * axis)
        travel_x = dx * speed * (num_frames - 1)
        travel_y = dy * speed * (num_frames - 1)
        # Start range chosen so that both the start and the end positions keep the shape
        # (plus a 1 px margin for its anti-aliased edge) inside the frame.
        margin = radius + 1.0
        x = rng.uniform(margin - min(0.0, travel_x), width - margin - max(0.0, travel_x))
        y = rng.uniform(margin - min(0.0, travel_y), height - margin - max(0.0, travel_y))
        objects.append(SceneObject(shape, str(colour), motion, float(x), float(y), radius, speed))
    return Scene(height, width, num_frames, (str(c1), str(c2)), orientation, tuple(objects))


def _coverage(shape: str, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, r: float):
    """Anti-aliased coverage in [0, 1] of a shape centred at (cx, cy), per pixel centre.

    Uses a signed distance (positive inside) clipped over one pixel, which gives the soft
    1 px edge a real renderer would and keeps the world free of aliasing shimmer.
    """
    dx, dy = xs - cx, ys - cy
    if shape == "disk":
        inside = r - np.sqrt(dx * dx + dy * dy)
    elif shape == "square":
        inside = r - np.maximum(np.abs(dx), np.abs(dy))
    elif shape == "triangle":
        # Apex at the top (cy - r), base at cy + 0.8 r spanning [-r, r]: the minimum of the
        # signed distances to the three edges.
        base = 0.8 * r - dy
        # Side edges: lines through the apex (0, -r) and (+-r, 0.8 r); normalised normals.
        norm = np.hypot(1.8, 1.0)
        left = (1.8 * dx + (dy + r)) / norm
        right = (-1.8 * dx + (dy + r)) / norm
        inside = np.minimum(base, np.minimum(left, right))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.clip(inside + 0.5, 0.0, 1.0)


def render(scene: Scene) -> np.ndarray:
    """Draw a scene. Returns float32 ``(3, F, H, W)`` in ``[-1, 1]``."""
    h, w, f = scene.height, scene.width, scene.num_frames
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    c1 = np.asarray(BACKGROUND_COLOURS[scene.background[0]], np.float32)[:, None, None]
    c2 = np.asarray(BACKGROUND_COLOURS[scene.background[1]], np.float32)[:, None, None]
    ramp = ys / h if scene.orientation == "vertical" else xs / w
    background = c1 * (1.0 - ramp) + c2 * ramp  # (3, H, W)
    video = np.repeat(background[:, None], f, axis=1)  # (3, F, H, W)
    for obj in scene.objects:
        colour = np.asarray(OBJECT_COLOURS[obj.colour], np.float32)[:, None, None]
        for t in range(f):
            cx, cy = obj.centre(t)
            alpha = _coverage(obj.shape, xs, ys, cx, cy, obj.radius)[None]
            video[:, t] = video[:, t] * (1.0 - alpha) + colour * alpha
    return (video * 2.0 - 1.0).astype(np.float32)


def object_boxes(scene: Scene) -> np.ndarray:
    """Where the scene's objects are, shape aside: float32 ``(F, H, W)`` in ``[0, 1]``, the
    anti-aliased union of each object's bounding square, one pixel wider (which holds its disk,
    square or triangle alike, and the anti-aliased fringe of a triangle's apex). A trainer uses
    it to weight the pixels whose shape a caption decides."""
    h, w, f = scene.height, scene.width, scene.num_frames
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    boxes = np.zeros((f, h, w), np.float32)
    for obj in scene.objects:
        for t in range(f):
            cx, cy = obj.centre(t)
            boxes[t] = np.maximum(boxes[t], _coverage("square", xs, ys, cx, cy, obj.radius + 1.0))
    return boxes


def next_shape(shape: str, turns: int = 1) -> str:
    """The shape ``turns`` places after ``shape`` in :data:`SHAPES`, round the cycle
    (disk -> square -> triangle -> disk)."""
    return SHAPES[(SHAPES.index(shape) + turns) % len(SHAPES)]


def rotate_shapes(scene: Scene, turns: int = 1) -> Scene:
    """``scene`` with every object's shape turned ``turns`` places (:func:`next_shape`) and
    everything else kept: the same colours, sizes, paths and background. A minimal pair, whose
    clips differ where the objects are and only there."""
    return replace(scene, objects=tuple(replace(o, shape=next_shape(o.shape, turns)) for o in scene.objects))


def make_scene(seed: int, height: int = 128, width: int = 128, num_frames: int = 9) -> Scene:
    """The :class:`Scene` of ``seed`` (what :func:`make_clip` draws), without drawing it."""
    return sample_scene(np.random.default_rng(seed), height, width, num_frames)


def make_clip(seed: int, height: int = 128, width: int = 128, num_frames: int = 9):
    """Sample and draw the clip for ``seed``.

    Returns ``(video, scene)``: ``video`` float32 ``(3, F, H, W)`` in ``[-1, 1]`` and the
    :class:`Scene` it was drawn from (``scene.caption()`` is its caption).
    """
    scene = make_scene(seed, height, width, num_frames)
    return render(scene), scene


def make_batch(seeds, height: int = 128, width: int = 128, num_frames: int = 9):
    """Clips for several seeds: float32 ``(B, 3, F, H, W)`` and the list of captions."""
    videos, captions = [], []
    for seed in seeds:
        video, scene = make_clip(int(seed), height, width, num_frames)
        videos.append(video)
        captions.append(scene.caption())
    return np.stack(videos), captions
