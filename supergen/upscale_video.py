"""``supergen upscale IN -o OUT``: an existing video of any length and frame rate to 2K/4K.

The input's frames are the sketch (stage 1 never runs): they are upscaled in pixel space, re-noised
and refined in shifted tiles (:mod:`supergen.pipeline`), in time windows of the model's native
length when the clip is longer (:class:`~supergen.tiling.TilePlan`). The output has the input's
frame count and frame rate, and its audio stream copied.

- **Frame counts the VAE cannot take** (Wan: ``4k + 1``) are padded by repeating the last frame up
  to the next count it takes, and the output is cut back to the input's count.
- **Memory**: the input is read one frame at a time into one uint8 array at its own (small) size;
  the output leaves the pipeline as uint8 (the decode converts each strip of rows) and goes to the
  encoder a chunk of frames at a time (:func:`~supergen.runtime.uint8_chunks`): the video never
  exists in float at full size on the host.
- **An empty prompt** (the default) conditions every tile on the empty text: the refinement then
  follows the re-noised input alone, which keeps its content and adds only detail the model finds
  plausible anywhere; a prompt that describes the video steers that detail.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .config import SuperGenConfig
from .errors import SuperGenError
from .preflight import check_output_path

#: Containers and formats the input may be in (anything the bundled ffmpeg decodes also works).
INPUT_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".gif", ".avi")
#: ``--scale`` factors.
SCALES = (2, 3, 4)


@dataclass(frozen=True)
class SourceVideo:
    """What ``supergen upscale`` needs to know of its input, read without decoding it to float."""

    path: Path
    frames: int
    fps: float
    #: ``(height, width)`` in pixels.
    size: tuple[int, int]
    has_audio: bool


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def probe(path: str | os.PathLike) -> SourceVideo:
    """Frame count, frame rate, size and whether there is an audio stream, or one clear error.

    Raises:
        SuperGenError: a missing file, a file ffmpeg cannot decode (not a video, an unknown codec), a
            video with no frames or a single frame (there is no motion to keep: upscale it as an image).
    """
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise SuperGenError(f"input video {str(path)!r} does not exist")
    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        frames = sum(1 for _ in reader)
    except (OSError, RuntimeError, StopIteration) as exc:
        raise SuperGenError(f"input {str(path)!r} is not a video ffmpeg can decode ({_first_line(exc)}); "
                            f"give an mp4, webm, mov or gif") from None
    if frames == 0:
        raise SuperGenError(f"input {str(path)!r} has no video frames")
    if frames == 1:
        raise SuperGenError(f"input {str(path)!r} has 1 frame: upscale needs a video of at least 2 frames")
    info = subprocess.run([_ffmpeg(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    has_audio = re.search(r"Stream #\S+.*: Audio:", info) is not None
    width, height = meta["size"]
    return SourceVideo(path, frames, float(meta["fps"]), (height, width), has_audio)


def target_size(source: tuple[int, int], height: int | None, width: int | None, scale: int | None) -> tuple[int, int]:
    """The output ``(height, width)``: ``--scale`` times the input, or ``--height``/``--width`` (one of
    them keeps the input's aspect); never smaller than the input."""
    h, w = source
    if scale is not None:
        if height is not None or width is not None:
            raise SuperGenError("give the target as --scale or as --height/--width, not both")
        if scale not in SCALES:
            raise SuperGenError(f"--scale {scale}: valid: {', '.join(map(str, SCALES))}")
        return h * scale, w * scale
    if height is None and width is None:
        raise SuperGenError("give the target size: --scale 2|3|4, or --height and/or --width")
    if height is None:
        height = round(h * width / w)
    if width is None:
        width = round(w * height / h)
    if height < h or width < w:
        raise SuperGenError(f"target {height}x{width} is smaller than the input's {h}x{w} (height x width); "
                            "upscale only enlarges: give a larger --height/--width or --scale 2|3|4")
    return height, width


def padded_frames(frames: int, temporal_scale: int) -> int:
    """The smallest frame count at least ``frames`` that a causal VAE of ``temporal_scale`` takes (``k·t + 1``)."""
    return math.ceil((frames - 1) / temporal_scale) * temporal_scale + 1


def read_frames(source: SourceVideo, count: int) -> np.ndarray:
    """The input's frames as ``(count, h, w, 3)`` uint8, read one at a time; frames past the input's end
    repeat its last frame (the padding the VAE needs)."""
    import imageio_ffmpeg

    h, w = source.size
    video = np.empty((count, h, w, 3), dtype=np.uint8)
    reader = imageio_ffmpeg.read_frames(str(source.path))
    next(reader)  # metadata
    read = 0
    for raw in reader:
        if read == source.frames:
            break
        video[read] = np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3)
        read += 1
    reader.close()
    video[read:] = video[read - 1]
    return video


def mux_audio(video: Path, source: Path, output: Path) -> None:
    """``video``'s picture and ``source``'s audio streams in ``output`` (atomically): the audio copied as
    it is, or encoded to AAC where the output's container cannot hold its codec (e.g. Vorbis in mp4)."""
    from .videoio import atomic_file

    with atomic_file(output) as tmp:
        for audio in (["-c:a", "copy"], ["-c:a", "aac"]):
            done = subprocess.run(
                [_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(video), "-i", str(source),
                 "-map", "0:v:0", "-map", "1:a", "-c:v", "copy", *audio, str(tmp)],
                capture_output=True, text=True,
            )
            if done.returncode == 0:
                return
        raise SuperGenError(f"copying the audio of {str(source)!r} into {str(output)!r} failed: {done.stderr.strip().splitlines()[-1]}")


def upscale_config(cfg: SuperGenConfig, source: SourceVideo, size: tuple[int, int], frames: int, prompt: str | None) -> SuperGenConfig:
    """The render job of an upscale: the target size, the padded frame count, the prompt (empty unless
    given) and the input's frame rate (``output.fps`` is an integer: the video is written at the
    input's exact rate, e.g. 29.97, by :func:`render_upscale`)."""
    job = replace(cfg.job, height=size[0], width=size[1], num_frames=frames, prompt=prompt or "", sketch_video=None, image=None)
    return replace(cfg, job=job, output=replace(cfg.output, fps=max(1, round(source.fps))))


def upscale(
    cfg: SuperGenConfig,
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    scale: int | None = None,
    height: int | None = None,
    width: int | None = None,
    prompt: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> tuple[Path, SourceVideo, tuple[int, int]]:
    """Upscale the video ``input`` to ``output`` with the model and method of ``cfg``.

    Everything a bad input can break is checked before the model loads; nothing is left under
    ``output`` when anything fails (the video is written under a temporary name and renamed).

    Returns:
        The output path, the probed input and the output ``(height, width)``.
    """
    from .runtime import Runtime

    output = check_output_path(output, overwrite=overwrite)
    source = probe(input)
    size = target_size(source.size, height, width, scale)
    job = upscale_config(cfg, source, size, source.frames, prompt)
    # Checked (memory) before the load at the input's length; planned again on the loaded model.
    runtime = Runtime.start(job, quiet=quiet)
    render_upscale(runtime, job, source, output)
    return output, source, size


def render_upscale(runtime, job: SuperGenConfig, source: SourceVideo, output: Path):
    """Render the upscale ``job`` (:func:`upscale_config`) of ``source`` on a loaded
    :class:`~supergen.runtime.Runtime` and, on the leader, write it to ``output`` with the source's
    fps and audio (batch rows with an input video run this too). Returns the runtime's
    :class:`~supergen.runtime.Rendered` (its ``path`` None: the file is written here)."""
    from .pipeline import SuperGenPipeline
    from .runtime import uint8_chunks
    from .videoio import write_video

    count = padded_frames(source.frames, SuperGenPipeline(runtime.pipe, job, runtime.group).adapter.vae_scale[0])
    job = replace(job, job=replace(job.job, num_frames=count))
    done = runtime.render(job, sketch_video=read_frames(source, count))
    if not runtime.leader:
        return done
    frames = uint8_chunks(done.output.frames[0][: source.frames])  # the padding cut back
    if not source.has_audio:
        write_video(output, frames, fps=source.fps, quality=job.output.quality)
        return done
    silent = output.with_name(f".{output.stem}.silent{output.suffix}")
    try:
        write_video(silent, frames, fps=source.fps, quality=job.output.quality)
        mux_audio(silent, source.path, output)
    finally:
        silent.unlink(missing_ok=True)
    return done
