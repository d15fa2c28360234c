"""Video files: atomic mp4 writing and reading, through imageio-ffmpeg (bundled ffmpeg, works offline)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import imageio.v2 as imageio
import imageio.v3 as iio
import numpy as np

from .errors import SuperGenError
from .preflight import check_output_path

def to_uint8(frames: np.ndarray) -> np.ndarray:
    """``(frames, H, W, 3)`` float in [0, 1] (diffusers' ``np`` output) → uint8."""
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 16, quality: int = 8) -> Path:
    """Write ``frames`` ``(F, H, W, 3)`` (uint8, or float in [0, 1]) as H.264, atomically.

    The file is written under a temporary name in the same folder and renamed when complete, so a
    crash never leaves a half-written video under the final name.
    """
    path = check_output_path(path)
    if frames.dtype != np.uint8:
        frames = to_uint8(frames)
    with atomic_file(path) as tmp:
        # macro_block_size=1: keep the exact size (ffmpeg would otherwise pad to multiples of 16).
        imageio.mimwrite(tmp, list(frames), fps=fps, codec="libx264", quality=quality, macro_block_size=1)
    return path


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


def read_video(path: str | os.PathLike) -> np.ndarray:
    """All frames of a video file as ``(F, H, W, 3)`` uint8."""
    path = Path(path)
    if not path.is_file():
        raise SuperGenError(f"video {str(path)!r} does not exist")
    return np.asarray(iio.imread(path))
