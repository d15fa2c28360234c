"""The toy world is deterministic and its captions describe what it drew."""

import re

import numpy as np
import pytest

from supergen.eval import toyworld

SIZE, FRAMES = 64, 9

CAPTION_RE = re.compile(
    r"^(?P<objects>.+) on a (?P<orient>vertical|horizontal) (?P<c1>\w+) to (?P<c2>\w+) background$"
)
OBJECT_RE = re.compile(r"^a (?P<colour>\w+) (?P<shape>\w+) (?:moving (?P<dir>\w+)|staying still)$")


def parse(caption):
    """Caption -> (orientation, (c1, c2), [(colour, shape, motion), ...]) by the grammar."""
    m = CAPTION_RE.match(caption)
    assert m, caption
    objects = []
    for phrase in m["objects"].split(" and "):
        o = OBJECT_RE.match(phrase)
        assert o, phrase
        objects.append((o["colour"], o["shape"], o["dir"] or "still"))
    return m["orient"], (m["c1"], m["c2"]), objects


def test_deterministic_for_a_seed():
    a, scene_a = toyworld.make_clip(7, SIZE, SIZE, FRAMES)
    b, scene_b = toyworld.make_clip(7, SIZE, SIZE, FRAMES)
    c, scene_c = toyworld.make_clip(8, SIZE, SIZE, FRAMES)
    assert a.dtype == np.float32 and a.shape == (3, FRAMES, SIZE, SIZE)
    assert np.array_equal(a, b) and scene_a == scene_b
    assert not np.array_equal(a, c)
    assert -1.0 <= a.min() and a.max() <= 1.0


def test_captions_follow_the_grammar_and_the_scene():
    vocab = set(toyworld.vocabulary())
    seen_counts = set()
    for seed in range(30):
        _, scene = toyworld.make_clip(seed, SIZE, SIZE, FRAMES)
        caption = scene.caption()
        assert set(caption.split()) <= vocab
        orient, bg, objects = parse(caption)
        assert orient == scene.orientation and bg == scene.background
        assert objects == [(o.colour, o.shape, o.motion) for o in scene.objects]
        assert 1 <= len(objects) <= 3 and len({c for c, _, _ in objects}) == len(objects)
        seen_counts.add(len(objects))
    assert seen_counts == {1, 2, 3}


def _colour_mask(frame, rgb, tol=0.02):
    """Pixels of exactly this colour. frame: (3, H, W) in [-1, 1]."""
    target = np.asarray(rgb)[:, None, None] * 2 - 1
    return np.all(np.abs(frame - target) < tol, axis=0)


def _apart(scene, obj):
    """True when obj never overlaps another object (so its pixels are all its own)."""
    for other in scene.objects:
        if other is obj:
            continue
        for t in range(scene.num_frames):
            (x1, y1), (x2, y2) = obj.centre(t), other.centre(t)
            if np.hypot(x1 - x2, y1 - y2) < 1.5 * (obj.radius + other.radius) + 2:
                return False
    return True


def test_pixels_show_the_captioned_objects_moving_as_captioned():
    checked = 0
    for seed in range(40):
        video, scene = toyworld.make_clip(seed, SIZE, SIZE, FRAMES)
        _, _, objects = parse(scene.caption())
        for (colour, _, motion), obj in zip(objects, scene.objects):
            if not _apart(scene, obj):
                continue
            rgb = toyworld.OBJECT_COLOURS[colour]
            first, last = _colour_mask(video[:, 0], rgb), _colour_mask(video[:, -1], rgb)
            assert first.sum() > 20 and last.sum() > 20, (seed, colour)
            ys0, xs0 = np.nonzero(first)
            ys1, xs1 = np.nonzero(last)
            dx, dy = xs1.mean() - xs0.mean(), ys1.mean() - ys0.mean()
            travel = obj.speed * (FRAMES - 1)
            expected = {"left": (-travel, 0), "right": (travel, 0), "up": (0, -travel),
                        "down": (0, travel), "still": (0, 0)}[motion]
            assert dx == pytest.approx(expected[0], abs=1.0) and dy == pytest.approx(expected[1], abs=1.0)
            checked += 1
    assert checked >= 30


def test_background_gradient_matches_caption():
    scene = toyworld.Scene(SIZE, SIZE, 1, ("black", "white"), "horizontal", ())
    frame = (toyworld.render(scene)[:, 0] + 1) / 2  # (3, H, W) in [0, 1]
    left, right = frame[:, :, 0].mean(axis=1), frame[:, :, -1].mean(axis=1)
    assert np.allclose(left, toyworld.BACKGROUND_COLOURS["black"], atol=0.02)
    assert np.allclose(right, toyworld.BACKGROUND_COLOURS["white"], atol=0.02)
    vertical = toyworld.render(toyworld.Scene(SIZE, SIZE, 1, ("black", "white"), "vertical", ()))
    assert np.allclose(vertical[:, 0, 0, :], vertical[:, 0, 0, :1])  # rows are constant


def test_object_colours_are_saturated_and_backgrounds_muted():
    chroma = lambda c: max(c) - min(c)  # noqa: E731
    assert min(chroma(c) for c in toyworld.OBJECT_COLOURS.values()) >= 0.75
    assert max(chroma(c) for c in toyworld.BACKGROUND_COLOURS.values()) <= 0.3


def test_object_boxes_hold_every_drawn_object_pixel_and_little_else():
    """Every pixel an object changes lies in ``object_boxes``; the boxes are the objects'
    bounding squares one pixel wider, so they cover at most (2r + 4)^2 pixels per object and
    frame."""
    for seed in range(20):
        video, scene = toyworld.make_clip(seed, SIZE, SIZE, FRAMES)
        background = toyworld.render(toyworld.Scene(SIZE, SIZE, FRAMES, scene.background, scene.orientation, ()))
        drawn = np.abs(video - background).max(axis=0) > 1e-6  # (F, H, W)
        boxes = toyworld.object_boxes(scene)
        assert boxes.shape == drawn.shape
        assert (boxes[drawn] > 0).all()
        bound = sum((2 * o.radius + 4) ** 2 for o in scene.objects) * FRAMES
        assert 0 < (boxes > 0).sum() <= bound


def test_rotated_shapes_change_the_shapes_and_nothing_else():
    """``rotate_shapes`` turns each shape word ``turns`` places (three turns: back where it was)
    and keeps colours, sizes, paths and background, so the drawing changes only where objects are."""
    for seed in range(10):
        video, scene = toyworld.make_clip(seed, SIZE, SIZE, FRAMES)
        once, thrice = toyworld.rotate_shapes(scene), toyworld.rotate_shapes(scene, 3)
        assert thrice == scene
        for a, b in zip(scene.objects, once.objects):
            assert b.shape == toyworld.SHAPES[(toyworld.SHAPES.index(a.shape) + 1) % 3]
            assert (a.colour, a.motion, a.x, a.y, a.radius, a.speed) == (b.colour, b.motion, b.x, b.y, b.radius, b.speed)
        assert parse(once.caption())[:2] == parse(scene.caption())[:2]
        changed = np.abs(toyworld.render(once) - video).max(axis=0) > 1e-6  # (F, H, W)
        assert changed.any()
        assert (toyworld.object_boxes(scene)[changed] > 0).all()
