"""Metrics on constructed videos whose answers are known."""

import math

import numpy as np
import pytest
import torch

from supergen.eval import metrics, toyworld


def toy_video(seed=3, size=64, frames=5):
    """A toyworld clip as (F, H, W, C) in [0, 1], the layout the metrics take."""
    clip, _ = toyworld.make_clip(seed, height=size, width=size, num_frames=frames)
    return (clip.transpose(1, 2, 3, 0) + 1) / 2


@pytest.mark.parametrize("seed", range(4))
def test_hard_vertical_seam_scores_high_and_clean_video_low(seed):
    # Toy content plus mild sensor-like noise: texture everywhere, like real footage, so
    # no single line dominates by chance.
    video = toy_video(seed, size=128)
    video = np.clip(video + np.random.default_rng(seed).normal(0, 0.03, video.shape), 0, 1)
    seamed = video.copy()
    # Tiles of 32 px: brighten every other tile column by 0.1, leaving a hard edge on each
    # tile border, the artefact tiled refinement produces when neighbouring tiles disagree.
    seamed[:, :, 32:64] += 0.1
    seamed[:, :, 96:] += 0.1
    seamed = np.clip(seamed, 0, 1)
    clean_score = metrics.seam_score(video, (32, None), offset=(0, 0))
    seam = metrics.seam_score(seamed, (32, None), offset=(0, 0))
    assert 0.8 < clean_score < 1.25
    assert seam > 2.0
    # Looking for the seam at the wrong phase does not find it.
    assert metrics.seam_score(seamed, (32, None), offset=(16, 0)) < 1.1


def test_seam_score_uses_the_worse_axis_and_accepts_torch():
    video = toy_video()
    seamed = video.copy()
    seamed[:, 16:] = np.clip(seamed[:, 16:] - 0.2, 0, 1)  # one horizontal border at y = 16
    score = metrics.seam_score(torch.from_numpy(seamed), (16, 16), offset=(0, 0))
    assert score > 3.0
    assert score == pytest.approx(metrics.seam_score(seamed, (None, 16), offset=(0, 0)))


def _scene_with_disks(n, size=128):
    """n saturated disks well apart on a muted gradient background."""
    colours = list(toyworld.OBJECT_COLOURS)
    centres = [(24, 24), (104, 24), (24, 104), (104, 104), (64, 64)]
    objects = tuple(
        toyworld.SceneObject("disk", colours[i], "still", float(x), float(y), 12.0, 0.0)
        for i, (x, y) in enumerate(centres[:n])
    )
    return toyworld.Scene(size, size, 1, ("slate", "sand"), "vertical", objects)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5])
def test_object_count_counts_disks(n):
    frame = toyworld.render(_scene_with_disks(n))[:, 0].transpose(1, 2, 0)  # (H, W, 3) in [-1, 1]
    assert metrics.object_count(frame, value_range=(-1, 1)) == n


def test_object_count_ignores_specks():
    frame = np.full((64, 64, 3), 0.5)
    frame[10:12, 10:12] = (1.0, 0.0, 0.0)  # 4 saturated pixels: noise, not an object
    frame[30:45, 30:45] = (0.0, 0.0, 1.0)
    assert metrics.object_count(frame) == 1


def test_psnr_known_values():
    video = toy_video()
    assert metrics.psnr(video, video) == math.inf
    # A uniform error of 0.1 on a [0, 1] scale is 20 dB; the same on [-1, 1] data is 26.02 dB.
    assert metrics.psnr(np.zeros((4, 4)), np.full((4, 4), 0.1)) == pytest.approx(20.0)
    assert metrics.psnr(np.zeros((4, 4)), np.full((4, 4), 0.1), data_range=2.0) == pytest.approx(26.0206, abs=1e-3)


def test_ssim_identical_is_one_and_degrades_with_noise():
    video = toy_video()
    assert metrics.ssim(video, video) == pytest.approx(1.0, abs=1e-9)
    rng = np.random.default_rng(0)
    light = np.clip(video + rng.normal(0, 0.02, video.shape), 0, 1)
    heavy = np.clip(video + rng.normal(0, 0.2, video.shape), 0, 1)
    s_light, s_heavy = metrics.ssim(video, light), metrics.ssim(video, heavy)
    assert 1.0 > s_light > s_heavy > 0.0
    assert metrics.ssim(light, video) == pytest.approx(s_light)


def test_temporal_flicker():
    video = toy_video()
    static = np.repeat(video[:1], 5, axis=0)
    assert metrics.temporal_flicker(static) == 0.0
    ramp = np.stack([np.full((8, 8, 3), 0.1 * t) for t in range(5)])  # steady brightening
    assert metrics.temporal_flicker(ramp) == pytest.approx(0.0, abs=1e-12)
    flicker = static.copy()
    flicker[1::2] = np.clip(flicker[1::2] + 0.1, 0, 1)
    assert metrics.temporal_flicker(flicker) > 10 * metrics.temporal_flicker(video)


def test_find_objects_names_colour_and_shape_of_drawn_shapes():
    objects = (
        toyworld.SceneObject("disk", "red", "still", 20.0, 20.0, 12.0, 0.0),
        toyworld.SceneObject("square", "blue", "still", 60.0, 25.0, 11.0, 0.0),
        toyworld.SceneObject("triangle", "yellow", "still", 30.0, 62.0, 14.0, 0.0),
    )
    scene = toyworld.Scene(96, 96, 1, ("slate", "sand"), "vertical", objects)
    frame = toyworld.render(scene)[:, 0].transpose(1, 2, 0)
    blobs = metrics.find_objects(frame, toyworld.OBJECT_COLOURS, value_range=(-1, 1))
    assert sorted((b.colour, b.shape) for b in blobs) == [("blue", "square"), ("red", "disk"), ("yellow", "triangle")]

    asked = [("red", "disk"), ("blue", "disk"), ("green", "square")]
    m = metrics.match_prompt(blobs, asked)
    # red disk right; blue present but a square; green missing; yellow not asked for.
    assert m == metrics.PromptMatch(asked=3, colours_found=2, shapes_right=1, extra_colours=1)


def test_find_objects_on_random_toyworld_clips():
    """The detector reads the toy world's own clips correctly (its upper bound on samples)."""
    total = right = 0
    for seed in range(40):
        clip, scene = toyworld.make_clip(seed, height=128, width=128, num_frames=5)
        blobs = metrics.find_objects(clip[:, 2].transpose(1, 2, 0), toyworld.OBJECT_COLOURS, value_range=(-1, 1))
        m = metrics.match_prompt(blobs, [(o.colour, o.shape) for o in scene.objects])
        total += m.asked
        right += m.shapes_right
    # Overlapping shapes merge or hide each other, so a few misses are expected.
    assert right >= 0.85 * total


def _lattice(amplitude, phase, size=128, period=16):
    """A faint texture on a ``period``-px lattice at ``phase`` px, (H, W, 1): the artefact a
    latent grid of 16-px tokens prints."""
    yy, xx = np.mgrid[0:size, 0:size]
    return (amplitude * np.cos(2 * np.pi * (xx - phase) / period) * np.cos(2 * np.pi * (yy - phase) / period))[..., None]


def test_lattice_texture_finds_a_16px_texture_at_any_phase_and_not_on_clean_clips():
    clean = np.stack([toy_video(seed, size=128) for seed in range(6)])  # (B, F, H, W, C)
    clean_score = metrics.lattice_texture(clean, 16)
    assert clean_score < 5e-4  # object edges fall on every phase; the median ignores them
    for phase in (0, 5):
        textured = np.clip(clean + _lattice(0.005, phase), 0, 1)  # 1.3 / 255: barely visible
        assert metrics.lattice_texture(textured, 16) > 2.5 * max(clean_score, 5e-4)
    # One frame, one clip, torch input: the same answer.
    frame = np.clip(clean[0, 0] + _lattice(0.02, 3), 0, 1)
    assert metrics.lattice_texture(torch.from_numpy(frame), 16) == pytest.approx(metrics.lattice_texture(frame, 16))
    with pytest.raises(ValueError, match="period 200"):
        metrics.lattice_texture(frame, 200)


def test_same_objects_compares_the_colours_of_two_frames():
    video = toy_video(seed=5, size=128)
    assert metrics.same_objects(video[0], video[1], toyworld.OBJECT_COLOURS)
    other = toy_video(seed=6, size=128)
    colours = [{b.colour for b in metrics.find_objects(v[0], toyworld.OBJECT_COLOURS)} for v in (video, other)]
    assert colours[0] != colours[1]  # the two seeds draw different objects
    assert not metrics.same_objects(other[0], video[1], toyworld.OBJECT_COLOURS)


def test_temporal_seam_score_sees_a_pulse_at_window_borders():
    rng = np.random.default_rng(0)
    # Smooth motion: a gradient drifting one pixel a frame, plus a little noise.
    x = np.linspace(0, 1, 64)
    video = np.stack([np.tile(np.roll(x, t), (32, 1)) for t in range(33)])[..., None] + rng.normal(0, 0.01, (33, 32, 64, 1))
    clean = metrics.temporal_seam_score(video, [9, 21])
    pulsed = video.copy()
    pulsed[9:21] += 0.1  # a brightness jump where a window begins, and back where the next one does
    assert 0.8 < clean < 1.25
    assert metrics.temporal_seam_score(pulsed, [9, 21]) > 2.0 * clean
    with pytest.raises(ValueError):
        metrics.temporal_seam_score(video, [0])


def test_temporal_seam_score_over_a_latent_frame_sees_a_pulse_inside_it():
    """A jump two frames into a window (inside its first latent frame of 4 video frames) is missed
    by the first-frame score and seen by ``span=4``; ``span=1`` is the first-frame score."""
    rng = np.random.default_rng(1)
    x = np.linspace(0, 1, 64)
    video = np.stack([np.tile(np.roll(x, t), (32, 1)) for t in range(33)])[..., None] + rng.normal(0, 0.01, (33, 32, 64, 1))
    pulsed = video.copy()
    pulsed[11:23] += 0.1  # the windows begin at 9 and 21; the jumps land at 11 and 23
    assert metrics.temporal_seam_score(pulsed, [9, 21], span=1) == metrics.temporal_seam_score(pulsed, [9, 21])
    assert metrics.temporal_seam_score(pulsed, [9, 21]) < 1.25
    assert metrics.temporal_seam_score(pulsed, [9, 21], span=4) > 1.3 * metrics.temporal_seam_score(pulsed, [9, 21])
    assert 0.8 < metrics.temporal_seam_score(video, [9, 21], span=4) < 1.25
    with pytest.raises(ValueError, match="span"):
        metrics.temporal_seam_score(video, [9, 21], span=0)
