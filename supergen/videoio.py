"""Video files: atomic, verified mp4 writing and reading, through imageio-ffmpeg (bundled ffmpeg, works offline);
and conditioning images read as 8-bit RGB whatever their bit depth (:func:`load_image`).

Sizes: H.264 in 4:2:0 (``yuv420p``, what every player plays) cannot hold an odd width or height, so
videos with an odd side are written in 4:4:4 (``yuv444p``, High 4:4:4 profile): exactly the requested
size, played by ffmpeg-based players (VLC, mpv) but not by most browsers or QuickTime. Even sizes keep
``yuv420p``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import imageio.v3 as iio
import numpy as np

from .errors import SuperGenError
from .preflight import check_output_path

#: Frames converted and sent to the encoder at a time (bounds the host memory of the uint8 copy).
ENCODER_CHUNK_FRAMES = 16
#: libx264's threads and lookahead, bounded: the encoder holds about (lookahead + threads) frames, and
#: its automatic thread count grows with the machine's cores (1.5 per core). Measured at 1080p × 60
#: frames, crf 10 (``docs/benchmarks.md``, host memory): 0.50 GB with 3 threads (2 cores), 1.28 GB with
#: 48 (a 32-core server), 0.37 GB with these; 4K frames are 4× larger. Files differ by < 0.1 %.
ENCODER_PARAMS = ["-threads", "4", "-x264-params", "rc-lookahead=16"]


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """``(frames, H, W, 3)`` float in [0, 1] (diffusers' ``np`` output) → uint8."""
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def pixel_format(height: int, width: int) -> str:
    """The H.264 pixel format a ``height``×``width`` video is written in (see the module docstring)."""
    return "yuv420p" if height % 2 == 0 and width % 2 == 0 else "yuv444p"


def chunks(frames: np.ndarray, size: int = ENCODER_CHUNK_FRAMES) -> Iterator[np.ndarray]:
    """``frames`` ``(F, H, W, 3)`` as consecutive ``(≤size, H, W, 3)`` views."""
    for start in range(0, len(frames), size):
        yield frames[start:start + size]


def write_video(path: str | os.PathLike, frames: np.ndarray | Iterable[np.ndarray], fps: int = 16, quality: int = 8) -> Path:
    """Write a video as H.264 of exactly the frames' size, atomically, and check the written file.

    Args:
        frames: ``(F, H, W, 3)``, or an iterable of such chunks (e.g. converted one at a time from a
            larger float array, so the whole video never exists as uint8 and float at once); uint8,
            or float in [0, 1] (converted one chunk at a time).

    The file is written under a temporary name in the same folder, read back (frame count and size)
    and renamed only then, so an encoder failure raises :class:`SuperGenError` and never leaves an
    empty or broken file under the final name.
    """
    import imageio_ffmpeg

    path = check_output_path(path)
    parts = chunks(frames) if isinstance(frames, np.ndarray) else iter(frames)
    with atomic_file(path) as tmp:
        writer, count, size = None, 0, None
        try:
            for part in parts:
                part = part if part.dtype == np.uint8 else to_uint8(part)
                if part.ndim != 4 or part.shape[-1] != 3:
                    raise SuperGenError(f"video frames must have shape (frames, height, width, 3); got {part.shape}")
                if writer is None:
                    size = part.shape[1:3]
                    # macro_block_size=1: keep the exact size (ffmpeg would otherwise pad to multiples of 16).
                    writer = imageio_ffmpeg.write_frames(
                        str(tmp), (size[1], size[0]), fps=fps, codec="libx264", quality=quality,
                        pix_fmt_out=pixel_format(*size), macro_block_size=1, ffmpeg_log_level="error",
                        output_params=ENCODER_PARAMS)
                    writer.send(None)
                elif part.shape[1:3] != size:
                    raise SuperGenError(f"video frames change size from {size[0]}x{size[1]} to {part.shape[1]}x{part.shape[2]} (height x width)")
                for frame in part:
                    writer.send(np.ascontiguousarray(frame))
                count += len(part)
                del part  # sent: not held while the next chunk is made (a device-to-host copy)
            if writer is None or count == 0:
                raise SuperGenError(f"no frames to write to {str(path)!r}")
            writer.close()
        except (OSError, RuntimeError) as exc:  # ffmpeg exited (broken pipe) or reported an error
            raise SuperGenError(f"writing {str(path)!r} failed in the video encoder: {str(exc).splitlines()[0]}") from exc
        except BaseException as exc:
            if writer is not None and not isinstance(exc, Exception):
                # Interrupted (Ctrl-C, or SIGTERM through supergen.cli): imageio-ffmpeg kills the encoder when
                # the interrupt reaches it; a plain close() would wait for it to finish a file that is removed.
                stopping, writer = writer, None
                with contextlib.suppress(BaseException):
                    stopping.throw(exc)
            raise
        finally:
            if writer is not None:
                writer.close()
        check_video(tmp, count, size, name=path)
    return path


def check_video(path: Path, frames: int, size: tuple[int, int], name: os.PathLike | None = None) -> None:
    """Raise :class:`SuperGenError` unless ``path`` decodes to ``frames`` frames of ``size`` (height, width)."""
    import imageio_ffmpeg

    name = name or path
    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        reader.close()
        counted, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    except (OSError, RuntimeError, StopIteration) as exc:
        raise SuperGenError(f"the video written to {str(name)!r} cannot be read back: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    got = (meta["size"][1], meta["size"][0])
    if counted != frames or got != tuple(size):
        raise SuperGenError(f"the video written to {str(name)!r} has {counted} frames of {got[0]}x{got[1]}; "
                            f"expected {frames} of {size[0]}x{size[1]} (height x width)")


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed to ``path`` when the ``with`` block succeeds.

    The file gets the permissions a plain ``open`` would give (``mkstemp`` makes it owner-only).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent or ".")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temporaries(path: Path) -> list[Path]:
    """Temporary files :func:`atomic_file` made for ``path`` and never renamed: left by a process killed
    while writing (``kill -9`` runs no cleanup). Only :func:`atomic_file`'s pattern matches
    (``.<stem>.`` + ``mkstemp``'s 8 random characters + the suffix), so another file's never does."""
    pattern = re.compile(rf"\.{re.escape(path.stem)}\.[a-z0-9_]{{8}}{re.escape(path.suffix)}")
    return [p for p in path.parent.glob(f".{glob.escape(path.stem)}.*") if pattern.fullmatch(p.name)]


def read_video(path: str | os.PathLike) -> np.ndarray:
    """All frames of a video file as ``(F, H, W, 3)`` uint8."""
    path = Path(path)
    if not path.is_file():
        raise SuperGenError(f"video {str(path)!r} does not exist")
    try:
        return np.asarray(iio.imread(path))
    except Exception as exc:  # imageio raises many types for a file that is not a video
        raise SuperGenError(f"{str(path)!r} is not a readable video: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc


#: Pillow modes of integer images deeper than 8 bits (a 16-bit grayscale PNG opens as ``I;16``).
#: Pillow's own ``convert("RGB")`` clips these at 255 instead of scaling them: a mid-grey 16-bit
#: image (32768) would become white.
_DEEP_MODES = {"I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16, "I": 16}


def load_image(image) -> "PIL.Image.Image":
    """A conditioning image (a path or a PIL image) as 8-bit RGB, scaled by its bit depth.

    16-bit grayscale (``I;16``, and ``I``, which Pillow uses for 16-bit PNGs too) is scaled by
    255/65535; Pillow already reads 16-bit RGB(A) PNGs as 8-bit. Alpha is dropped, palettes are
    expanded (the image encoders take RGB); a file's EXIF rotation is applied.
    """
    from PIL import Image, ImageOps

    if not isinstance(image, Image.Image):
        from .preflight import check_image

        check_image(str(image))
        with Image.open(image) as opened:
            image = ImageOps.exif_transpose(opened)  # as diffusers' load_image: a camera's rotation applied
    bits = _DEEP_MODES.get(image.mode)
    if bits is not None:
        values = np.asarray(image, dtype=np.float64) * (255.0 / (2**bits - 1))
        image = Image.fromarray(np.clip(values.round(), 0, 255).astype(np.uint8), mode="L")
    return image if image.mode == "RGB" else image.convert("RGB")
