"""Pixel-space resizing of the sketch."""

import pytest
import torch
import torch.nn.functional as F

from supergen.upscale import UpscaledVideo, resize_video


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_chunked_bicubic_equals_one_call(chunk):
    video = torch.rand(1, 3, 7, 12, 20) * 2 - 1
    out = resize_video(video, 24, 36, "bicubic", frames_per_chunk=chunk)
    frames = video.permute(0, 2, 1, 3, 4).reshape(7, 3, 12, 20)
    expected = F.interpolate(frames, size=(24, 36), mode="bicubic", align_corners=False).clamp(-1, 1)
    assert out.shape == (1, 3, 7, 24, 36)
    torch.testing.assert_close(out, expected.reshape(1, 7, 3, 24, 36).permute(0, 2, 1, 3, 4), atol=0, rtol=0)


def test_lanczos_keeps_range_dtype_and_constant_frames():
    video = torch.full((1, 3, 2, 8, 8), 0.25, dtype=torch.bfloat16)
    out = resize_video(video, 16, 24, "lanczos")
    assert out.dtype == torch.bfloat16 and out.shape == (1, 3, 2, 16, 24)
    torch.testing.assert_close(out.float(), torch.full(out.shape, 0.25), atol=1e-2, rtol=0)
    with pytest.raises(ValueError, match="valid: bicubic, lanczos"):
        resize_video(video, 16, 24, "nearest")


@pytest.mark.parametrize("method", ["bicubic", "lanczos"])
def test_bands_of_rows_are_bit_identical_to_the_whole_upscaled_video(method):
    # The tiled encode reads the upscaled sketch a band at a time (overlapping bands, the last one short).
    video = torch.rand(1, 3, 5, 12, 20) * 2 - 1
    upscaled = UpscaledVideo(video, 54, 90, method)
    whole = upscaled.whole()
    assert upscaled.shape == whole.shape == (1, 3, 5, 54, 90)
    for top in range(0, 54, 16):
        assert torch.equal(upscaled[..., top:top + 24, 8:40], whole[..., top:top + 24, 8:40])
