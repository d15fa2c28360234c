"""Decoded pixels → the caller's ``output_type``, filled a horizontal strip at a time.

The tiled decode hands over finished strips of rows (:meth:`~supergen.parallel.TiledVAE.decode_strips`);
each is converted at once into the output's own representation, so the decoded video never exists
whole in the VAE's float dtype (7.5 GiB in float32 at 4K × 81). The conversions are diffusers'
``VideoProcessor.postprocess_video`` applied to each strip (elementwise, so bit-identical to
converting the whole video), and ``uint8`` is what its ``pil`` output holds: ``round(255 · x)`` of
the float32 ``np`` values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: Pixel output types (``latent`` skips the decode).
PIXEL_TYPES = ("np", "pil", "pt", "uint8")
#: Frames converted at a time (the float temporaries of a 4K strip of 192 rows: 8 frames, 68 MiB each).
CONVERT_CHUNK_FRAMES = 8


class VideoOutput:
    """One output video of ``(num_frames, height, width)``, written a strip of rows at a time.

    Representations (diffusers' for ``np``, ``pt``, ``pil``):

    - ``np``: ``(1, F, H, W, 3)`` float32 numpy in [0, 1] (on the host);
    - ``pt``: ``(1, F, 3, H, W)`` in [0, 1], the decoded pixels' dtype, on their device;
    - ``uint8``: ``(1, F, H, W, 3)`` uint8 on the host (what ``supergen render`` writes): each
      finished chunk of a strip goes to the host as soon as it is converted, so the device never
      holds the decoded video (1.9 GiB at 4K × 81, 5.6 GiB at 4K × 241), only one chunk of it;
    - ``pil``: a list (one video) of lists of PIL images, made from the ``uint8`` array.

    Args:
        processor: the pipeline's ``video_processor`` (its denormalisation).
        output_type: one of :data:`PIXEL_TYPES`.
        num_frames: frames of the video.
        size: ``(height, width)``: strips are cropped to it (the canvas may be larger).
    """

    def __init__(self, processor, output_type: str, num_frames: int, size: tuple[int, int]):
        self.processor, self.output_type, self.num_frames, self.size = processor, output_type, num_frames, size
        self.buffer: np.ndarray | torch.Tensor | None = None

    def write(self, top: int, pixels: torch.Tensor) -> None:
        """Rows ``[top, top + h)`` of the video from ``pixels`` ``(1, 3, F, h, w)`` in [-1, 1] (cropped to the size).

        Converted :data:`CONVERT_CHUNK_FRAMES` frames at a time, so the float temporaries stay small.
        """
        height, width = self.size
        rows = min(pixels.shape[-2], height - top)
        for start in range(0, pixels.shape[2] if rows > 0 else 0, CONVERT_CHUNK_FRAMES):
            self._write(top, start, pixels[:, :, start : start + CONVERT_CHUNK_FRAMES, :rows, :width])

    def _write(self, top: int, start: int, pixels: torch.Tensor) -> None:
        """Frames ``[start, start + f)`` of rows ``[top, top + h)`` from ``pixels`` ``(1, 3, f, h, W)``."""
        frames = self.processor.postprocess_video(pixels, output_type="pt")  # (1, f, 3, h, W) in [0, 1]
        b, f, c, rows, width = frames.shape
        shape, where = (self.size[0], width), (slice(None), slice(start, start + f), slice(top, top + rows))
        if self.output_type == "pt":
            if self.buffer is None:
                self.buffer = frames.new_empty((b, self.num_frames, c, *shape))
            self.buffer[:, start : start + f, :, top : top + rows] = frames
            return
        frames = frames.permute(0, 1, 3, 4, 2).float()  # (1, f, h, W, 3), as diffusers' pt_to_numpy
        if self.output_type == "np":
            if self.buffer is None:
                self.buffer = np.empty((b, self.num_frames, *shape, c), dtype=np.float32)
            self.buffer[where] = frames.cpu().numpy()
        else:  # uint8 and pil: diffusers' numpy_to_pil rounding on the pixels' device, then to the host
            if self.buffer is None:
                # On the host, named: torch's default device may be a caller's GPU (set_default_device),
                # and the whole video there is what this output avoids. uint8 on the host is the host-memory
                # rule's allowance; the whole video in float never exists on either side. A meta default is
                # the trace's mark for tensors built for the host (supergen.trace makes them real host
                # tensors, booked apart from device memory): kept.
                host = "meta" if torch.get_default_device().type == "meta" else "cpu"
                self.buffer = torch.empty((b, self.num_frames, *shape, c), dtype=torch.uint8, device=host)
            self.buffer[where] = frames.mul(255).round().to(torch.uint8)

    def result(self) -> Any:
        """The finished video in ``output_type`` (every row written)."""
        if self.output_type == "pil":
            from PIL import Image

            return [[Image.fromarray(frame) for frame in video.cpu().numpy()] for video in self.buffer]
        return self.buffer
