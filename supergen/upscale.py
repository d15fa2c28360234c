"""Pixel-space resizing of a decoded sketch (stage 1 → stage 2).

Resizing latents directly rings; resizing decoded frames does not (``docs/architecture.md``, "The method").
At 4K × 81 frames the resized video would be the largest tensor of the render (7.5 GiB in float32),
so the pipeline never makes it whole: :class:`UpscaledVideo` resizes the frames again for each band
of rows the tiled VAE encode reads, and keeps only that band.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def resize_video(
    video: torch.Tensor, height: int, width: int, method: str = "bicubic", frames_per_chunk: int = 8,
    rows: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Resize every frame.

    Args:
        video: ``(B, 3, frames, h, w)`` in [-1, 1].
        method: ``bicubic`` (torch, stays on the video's device) or ``lanczos`` (OpenCV, on the CPU).
        rows: only these output rows ``[top, bottom)`` (bit-identical to cropping the whole result;
            frames are resized whole, a few at a time, and cropped).

    Returns:
        ``(B, 3, frames, height, width)`` in [-1, 1] (``bottom - top`` rows with ``rows``), same dtype and device.
    """
    b, c, f, h, w = video.shape
    top, bottom = (0, height) if rows is None else (max(0, rows[0]), min(height, rows[1]))
    if (h, w) == (height, width):
        return video[..., top:bottom, :]
    if method not in ("bicubic", "lanczos"):
        raise ValueError(f"unknown resize method {method!r}; valid: bicubic, lanczos")
    frames = video.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    out = torch.empty(b * f, c, bottom - top, width, dtype=video.dtype, device=video.device)
    # A few frames at a time: the float32 working copy of a whole 4K video would be the largest
    # allocation of the render; the output keeps the video's own dtype.
    for i in range(0, b * f, frames_per_chunk):
        chunk = frames[i : i + frames_per_chunk].float()
        if method == "bicubic":
            resized = F.interpolate(chunk, size=(height, width), mode="bicubic", align_corners=False)
        else:  # torch has no Lanczos kernel; OpenCV's INTER_LANCZOS4 is the standard one.
            array = chunk.permute(0, 2, 3, 1).cpu().numpy()
            resized = np.stack([cv2.resize(frame, (width, height), interpolation=cv2.INTER_LANCZOS4) for frame in array])
            resized = torch.from_numpy(resized.reshape(len(chunk), height, width, c)).permute(0, 3, 1, 2).to(video.device)
        # Both kernels overshoot at edges; the VAE expects [-1, 1].
        out[i : i + len(chunk)] = resized[..., top:bottom, :].clamp(-1.0, 1.0)
        del resized
    return out.reshape(b, f, c, bottom - top, width).permute(0, 2, 1, 3, 4)


class UpscaledVideo:
    """The sketch resized to the canvas, made a band of rows at a time: indexed ``video[..., rows, cols]``
    (slices) like a tensor (a :class:`~supergen.parallel.vae.PixelWindows` for the tiled encode).

    The band of the last rows asked for is kept, so the windows of one row of tiles cost one resize;
    each band resizes the whole frames again and keeps its rows (on a GPU a 4K resize takes
    milliseconds, and the VAE encode of the band costs far more).

    Args:
        sketch: ``(1, 3, F, h, w)`` in [-1, 1].
        height, width: the canvas.
        method: see :func:`resize_video`.
    """

    def __init__(self, sketch: torch.Tensor, height: int, width: int, method: str = "bicubic"):
        self.sketch, self.method = sketch, method
        self.shape = torch.Size((*sketch.shape[:3], height, width))
        self._band: tuple[tuple[int, int], torch.Tensor] | None = None

    def __getitem__(self, index) -> torch.Tensor:
        if index is Ellipsis:  # the whole video (an untiled encode)
            return self.whole()
        if not (isinstance(index, tuple) and len(index) == 3 and index[0] is Ellipsis
                and all(isinstance(s, slice) and s.step is None for s in index[1:])):
            raise ValueError(f"UpscaledVideo is indexed as video[..., rows, cols] with slices; got {index!r}")
        rows = index[1].indices(self.shape[-2])[:2]
        if self._band is None or self._band[0] != rows:
            self._band = None  # freed before the next band is made
            self._band = (rows, resize_video(self.sketch, *self.shape[-2:], self.method, rows=rows))
        return self._band[1][..., index[2]]

    def whole(self) -> torch.Tensor:
        """The whole upscaled video ``(1, 3, F, height, width)`` (for an untiled encode)."""
        return resize_video(self.sketch, *self.shape[-2:], self.method)
