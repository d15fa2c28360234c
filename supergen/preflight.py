"""Checks that run before anything expensive: every input path and output location of a job.

A typo must cost a one-line error, not a multi-GB model load followed by a traceback. Nothing here
imports diffusers or loads a model.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .config import SuperGenConfig
from .errors import SuperGenError

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov")


def check_output_path(path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Fail early if ``path`` cannot be written: wrong suffix, missing or unwritable folder, a folder
    of that name, or (unless ``overwrite``) an existing file.

    Writability is tested by creating (and removing) a temporary file there: ``os.access`` says yes
    for root on read-only file systems such as ``/sys``.
    """
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise SuperGenError(f"output {str(path)!r} must end in one of {', '.join(VIDEO_SUFFIXES)}")
    if path.is_dir():
        raise SuperGenError(f"output {str(path)!r} is a folder, not a file name")
    if path.exists() and not overwrite:
        raise SuperGenError(f"output {str(path)!r} exists; pass --overwrite to replace it")
    check_writable_folder(path.parent if str(path.parent) else Path("."), "output folder")
    return path


def check_writable_folder(folder: Path, what: str) -> None:
    if not folder.is_dir():
        raise SuperGenError(f"{what} {str(folder)!r} does not exist" if not folder.exists() else f"{what} {str(folder)!r} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".supergen-probe-"):
            pass
    except OSError as exc:
        raise SuperGenError(f"{what} {str(folder)!r} is not writable ({exc.strerror})") from None


def check_cache_map_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise SuperGenError(f"--cache-map {str(path)!r} must be a .png file")
    check_writable_folder(path.parent if str(path.parent) else Path("."), "cache-map folder")
    return path


def check_image(path: str) -> None:
    """``path`` exists and is an image PIL can read."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise SuperGenError(f"image {path!r} does not exist")
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise SuperGenError(f"image {path!r} is not an image PIL can read ({type(exc).__name__})") from None


def check_video(path: str, what: str = "sketch video") -> int:
    """``path`` exists and ffmpeg can decode it; returns its frame count (decoded: containers' counts
    are estimates, and a sketch video is small)."""
    import imageio_ffmpeg

    if not os.path.isfile(path):
        raise SuperGenError(f"{what} {path!r} does not exist")
    try:
        reader = imageio_ffmpeg.read_frames(path)
        next(reader)  # the metadata
        return sum(1 for _ in reader)
    except (OSError, RuntimeError, StopIteration) as exc:
        raise SuperGenError(f"{what} {path!r} is not a video ffmpeg can read ({type(exc).__name__})") from None


def image_to_video_models() -> list[str]:
    """The model names that take ``--image``: the built-in one and the planner's known image-to-video models."""
    from .architectures import KNOWN

    # By the pipeline class name the planner records (building each architecture to ask would take seconds).
    return ["tiny-i2v", *(name for name, arch in KNOWN.items() if "ImageToVideo" in arch.pipeline)]


def image_refused(model: str) -> SuperGenError:
    """The error for an image given to the text-to-video model ``model`` (it would be ignored)."""
    return SuperGenError(f"{model} is a text-to-video model and takes no image (--image / job.image); image-to-video models: "
                         f"{', '.join(image_to_video_models())}, or a diffusers image-to-video model folder")


def check_image_use(cfg: SuperGenConfig) -> None:
    """``job.image`` given exactly when the model, known without loading it, is image-to-video: refused
    for a text-to-video model (it would be ignored), required by an image-to-video one (the pipeline
    checks both again after the load, for the models only the load can tell)."""
    arch = known_architecture(cfg.model.name)
    if arch is None:
        return  # a Hugging Face id the planner does not know: the pipeline decides after the load
    # By the pipeline class the planner records (building the architecture to ask would take seconds);
    # the planner plans tiny-i2v as tiny (the same sizes), a text-to-video pipeline.
    image_to_video = "ImageToVideo" in arch.pipeline or cfg.model.name == "tiny-i2v"
    if cfg.job.image is not None and not image_to_video:
        raise image_refused(cfg.model.name)
    if cfg.job.image is None and image_to_video:
        raise SuperGenError(f"{cfg.model.name} is image-to-video: pass image= (or job.image / --image)")


def known_architecture(model: str):
    """The planner's architecture of ``model`` (its configs, no weights), or None for a model it does not know."""
    from .architectures import architecture

    try:
        return architecture(model)
    except SuperGenError:
        return None


def check_sketch_video_frames(cfg: SuperGenConfig, frames: int) -> None:
    """The sketch video has the frame count the render needs (``job.num_frames`` as the model's VAE
    takes it), known before the load for the planner's models."""
    arch = known_architecture(cfg.model.name)
    if arch is None:
        return
    needed = arch.snap_frames(cfg.job.num_frames)
    if frames != needed:
        fits = f"; pass --num-frames {frames}" if arch.snap_frames(frames) == frames else ""
        raise SuperGenError(f"sketch video {cfg.job.sketch_video!r} has {frames} frames; this render needs {needed} "
                            f"(job.num_frames={cfg.job.num_frames}){fits}")


def check_one_group(cfg: SuperGenConfig, refusal: str) -> None:
    """Refuse (with ``refusal``) a ``parallel.group_size`` that would split the launcher's ranks into several
    render groups where only one job renders: read from the launcher's ``WORLD_SIZE``, so before the ranks
    join and before the model loads."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if 0 < cfg.parallel.group_size < world:
        raise SuperGenError(refusal)


def check_job(cfg: SuperGenConfig) -> None:
    """Every input a job names, and the device it asks for."""
    if cfg.job.image is not None:
        check_image(cfg.job.image)
    check_image_use(cfg)
    if cfg.job.sketch_video is not None:
        check_sketch_video_frames(cfg, check_video(cfg.job.sketch_video))
    resolve_device(cfg.model.device)


def resolve_device(name: str) -> "torch.device":
    """``auto`` → cuda when available, else cpu; a device that does not exist here is a SuperGenError."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise SuperGenError(f"model.device={name!r} is not a device; valid: auto, cpu, cuda, cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise SuperGenError(f"model.device={name!r}: supergen runs on cpu or cuda; valid: auto, cpu, cuda, cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SuperGenError(f"model.device={name!r} but no CUDA device is available; valid here: auto, cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SuperGenError(f"model.device={name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
