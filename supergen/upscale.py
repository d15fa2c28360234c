"""Pixel-space resizing of a decoded sketch (stage 1 → stage 2).

Resizing latents directly rings; resizing decoded frames does not (``docs/architecture.md``, "The method").
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def resize_video(video: torch.Tensor, height: int, width: int, method: str = "bicubic", frames_per_chunk: int = 8) -> torch.Tensor:
    """Resize every frame.

    Args:
        video: ``(B, 3, frames, h, w)`` in [-1, 1].
        method: ``bicubic`` (torch, stays on the video's device) or ``lanczos`` (OpenCV, on the CPU).

    Returns:
        ``(B, 3, frames, height, width)`` in [-1, 1], same dtype and device.
    """
    b, c, f, h, w = video.shape
    if (h, w) == (height, width):
        return video
    if method not in ("bicubic", "lanczos"):
        raise ValueError(f"unknown resize method {method!r}; valid: bicubic, lanczos")
    frames = video.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    out = torch.empty(b * f, c, height, width, dtype=video.dtype, device=video.device)
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
        out[i : i + len(chunk)] = resized.clamp(-1.0, 1.0)
    return out.reshape(b, f, c, height, width).permute(0, 2, 1, 3, 4)
