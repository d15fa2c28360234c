"""The decoded video's conversion into the output type (supergen.output)."""

from __future__ import annotations

import torch
from diffusers.video_processor import VideoProcessor

from supergen.output import VideoOutput


def test_the_uint8_video_is_on_the_host_whatever_torchs_default_device():
    pixels = torch.rand(1, 3, 2, 8, 16) * 2 - 1  # a decoded strip, on the host
    video = VideoOutput(VideoProcessor(), "uint8", 2, (8, 16))
    # A caller's GPU default (with its index, so that torch needs no CUDA to name it): a buffer built
    # without a device would be the whole video on the GPU (or, on a CPU-only torch, fail).
    torch.set_default_device("cuda:0")
    try:
        video.write(0, pixels)
    finally:
        torch.set_default_device(None)
    frames = video.result()
    assert frames.device == torch.device("cpu") and frames.dtype == torch.uint8 and frames.shape == (1, 2, 8, 16, 3)
    assert torch.equal(frames, (pixels * 0.5 + 0.5).mul(255).round().to(torch.uint8).permute(0, 2, 3, 4, 1))
