"""Video files as written by supergen: exactly the requested size, verified, never left broken."""

import numpy as np
import pytest
import torch

from supergen import videoio
from supergen.errors import SuperGenError
from supergen.videoio import pixel_format, read_video, to_uint8, write_video


@pytest.mark.parametrize("size", [(17, 17), (33, 47), (64, 63), (255, 449), (64, 128)])
def test_any_size_is_written_exactly(tmp_path, size):
    frames = np.random.default_rng(0).integers(0, 256, (5, *size, 3), dtype=np.uint8)
    path = write_video(tmp_path / "v.mp4", frames)
    assert read_video(path).shape == (5, *size, 3)
    assert pixel_format(*size) == ("yuv420p" if size == (64, 128) else "yuv444p")


def test_an_encoder_failure_is_an_error_and_leaves_no_file(tmp_path, monkeypatch):
    # 4:2:0 cannot hold an odd width: ffmpeg writes nothing and, unchecked, this was a 0-byte "success".
    monkeypatch.setattr(videoio, "pixel_format", lambda height, width: "yuv420p")
    with pytest.raises(SuperGenError, match="v.mp4"):
        write_video(tmp_path / "v.mp4", np.zeros((5, 17, 17, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_no_frames_is_an_error(tmp_path):
    with pytest.raises(SuperGenError, match="no frames"):
        write_video(tmp_path / "v.mp4", iter([]))
    assert list(tmp_path.iterdir()) == []


def test_chunks_write_the_same_video_as_one_array(tmp_path):
    video = np.random.default_rng(1).random((20, 32, 48, 3), dtype=np.float32)
    whole = write_video(tmp_path / "a.mp4", video)
    parts = write_video(tmp_path / "b.mp4", (to_uint8(video[i:i + 3]) for i in range(0, 20, 3)))
    assert whole.read_bytes() == parts.read_bytes()


def test_uint8_chunks_move_a_uint8_video_to_the_host_in_chunks():
    from supergen.runtime import uint8_chunks

    video = torch.randint(0, 256, (21, 8, 10, 3), dtype=torch.uint8)
    parts = list(uint8_chunks(video, size=4))
    assert [len(p) for p in parts] == [4] * 5 + [1] and all(p.dtype == np.uint8 for p in parts)
    assert np.array_equal(np.concatenate(parts), video.numpy())
    # By default a chunk holds at most 128 MiB: 5 frames at 4K (a broadcast view: no 4K video is allocated).
    four_k = torch.zeros(1, 1, 1, 3, dtype=torch.uint8).expand(21, 2160, 3840, 3)
    assert [len(p) for p in uint8_chunks(four_k)] == [5] * 4 + [1]
    assert [len(p) for p in uint8_chunks(video)] == [16, 5]


def test_a_file_that_is_not_a_video_is_one_clear_error(tmp_path):
    bad = tmp_path / "not.mp4"
    bad.write_text("hello")
    with pytest.raises(SuperGenError, match="is not a readable video"):
        read_video(bad)
