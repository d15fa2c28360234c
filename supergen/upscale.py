"""Pixel-space resizing of a decoded sketch (stage 1 → stage 2).

Resizing latents directly rings; resizing decoded frames does not (design.md §1.2).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def resize_video(video: torch.Tensor, height: int, width: int, method: str = "bicubic") -> torch.Tensor:
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
    frames = video.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    if method == "bicubic":
        out = F.interpolate(frames.float(), size=(height, width), mode="bicubic", align_corners=False)
    elif method == "lanczos":
        # torch has no Lanczos kernel; OpenCV's INTER_LANCZOS4 is the standard one.
        array = frames.float().permute(0, 2, 3, 1).cpu().numpy()
        resized = np.stack([cv2.resize(frame, (width, height), interpolation=cv2.INTER_LANCZOS4) for frame in array])
        out = torch.from_numpy(resized.reshape(b * f, height, width, c)).permute(0, 3, 1, 2).to(video.device)
    else:
        raise ValueError(f"unknown resize method {method!r}; valid: bicubic, lanczos")
    # Both kernels overshoot at edges; the VAE expects [-1, 1].
    out = out.clamp(-1.0, 1.0).to(video.dtype)
    return out.reshape(b, f, c, height, width).permute(0, 2, 1, 3, 4)
