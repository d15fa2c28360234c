"""Host memory of writing a 4K × 81 video through supergen's output path (issue 14: ≤ 2 GiB above the loaded model).

What ``supergen render`` does after the canvas is decoded, run for real on this machine:

1. **decode → uint8**: the tiled decode hands over finished strips of rows, float ``(1, 3, F, 192, W)``
   in [-1, 1] in the VAE's dtype (float32 for Wan), one at a time
   (:meth:`~supergen.parallel.TiledVAE.decode_strips`); :class:`~supergen.output.VideoOutput` converts
   each into its ``uint8`` video ``(1, F, H, W, 3)`` at once. The strips are made here with the
   decode's shapes and dtype (a smooth moving pattern, so the encoder's work is a video's, not noise's)
   instead of by a VAE, which at 4K takes hours on a CPU.
   *On a GPU these strips and the uint8 video are device memory; on a CPU render they are host memory.*
2. **write**: the uint8 video to the H.264 encoder, 16 frames at a time
   (:func:`~supergen.runtime.uint8_chunks` → :func:`~supergen.videoio.write_video`, which also reads the
   file back to check it). This part is host memory in every render; each chunk is copied as a GPU
   render's ``.cpu()`` copies it (on a CPU render the chunks are views of the video).

Peaks are this process' peak resident set (``VmHWM``, reset between the phases through
``/proc/self/clear_refs``) above its resident set before the phase, and the encoder's own process
(ffmpeg, a child process: its ``VmHWM`` sampled every 0.1 s). Prints one JSON line.

    python scripts/bench_host_memory.py                        # 2160x3840x81
    python scripts/bench_host_memory.py --height 480 --width 832 --frames 17
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

GiB = 2**30
#: Rows of a finished decode strip at 4K: the VAE tiles' stride (diffusers' Wan tiling, 192 px).
STRIP_ROWS = 192


def status(field: str) -> int:
    """``field`` (``VmRSS``, ``VmHWM``) of this process in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> int:
    """Reset ``VmHWM`` to the current resident set (Linux ``clear_refs`` 5); returns that resident set."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status("VmRSS")


class ChildPeak:
    """The largest peak resident set (``VmHWM``) of this process' child processes (the encoder),
    sampled every ``every`` seconds while the ``with`` block runs. (``getrusage(RUSAGE_CHILDREN)``
    would count the forking Python's own resident set: the child is counted before it ``exec``s.)"""

    def __init__(self, every: float = 0.1):
        self.every, self.peak = every, 0
        self._stop = threading.Event()

    def _children(self) -> list[str]:
        me, found = str(os.getpid()), []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[1] == me:
                        found.append(pid)
            except OSError:
                continue
        return found

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            for pid in self._children():
                try:
                    with open(f"/proc/{pid}/status") as f:
                        for line in f:
                            if line.startswith("VmHWM:"):
                                self.peak = max(self.peak, int(line.split()[1]) * 1024)
                except OSError:
                    continue

    def __enter__(self) -> "ChildPeak":
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def strips(frames: int, height: int, width: int, dtype: torch.dtype):
    """``(top, strip)`` pairs as the tiled decode yields them: ``(1, 3, frames, ≤STRIP_ROWS, width)`` in [-1, 1]."""
    t = torch.arange(frames, dtype=dtype).view(1, 1, frames, 1, 1)
    x = torch.linspace(-1, 1, width, dtype=dtype).view(1, 1, 1, 1, width)
    channel = torch.tensor([1.0, 2.0, 3.0], dtype=dtype).view(1, 3, 1, 1, 1)
    for top in range(0, height, STRIP_ROWS):
        rows = min(STRIP_ROWS, height - top)
        y = torch.linspace(top / height, (top + rows) / height, rows, dtype=dtype).view(1, 1, 1, rows, 1)
        strip = torch.empty((1, 3, frames, rows, width), dtype=dtype)
        strip[:] = t * 0.1  # filled in place: no full-size temporary besides the strip itself
        yield top, strip.add_(channel * (x + y) * 3).sin_()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--height", type=int, default=2160)
    parser.add_argument("--width", type=int, default=3840)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--output", help="where to write the video (default: a temporary folder)")
    args = parser.parse_args(argv)

    from diffusers.video_processor import VideoProcessor

    from supergen.output import VideoOutput
    from supergen.runtime import uint8_chunks
    from supergen.videoio import write_video

    torch.set_num_threads(1)
    size = (args.height, args.width)
    start = reset_peak()
    began = time.perf_counter()
    video = VideoOutput(VideoProcessor(vae_scale_factor=8), "uint8", args.frames, size)
    for top, strip in strips(args.frames, *size, torch.float32):
        video.write(top, strip)
        del strip
    frames = video.result()[0]  # (F, H, W, 3) uint8
    decode_peak = status("VmHWM") - start
    decoded = time.perf_counter() - began

    before_write = reset_peak()
    with tempfile.TemporaryDirectory() as tmp, ChildPeak() as encoder_peak:
        path = Path(args.output or Path(tmp) / "host-memory.mp4")
        # On a GPU, uint8_chunks' .cpu() copies each chunk to the host; on the CPU it is a view: copy
        # here so that the figure is a GPU render's (and bounds a CPU render's).
        write_video(path, (chunk.copy() for chunk in uint8_chunks(frames)), fps=16, quality=8)
        written = path.stat().st_size
    write_peak = status("VmHWM") - before_write
    encoder = encoder_peak.peak
    result = {
        "size": f"{args.height}x{args.width}x{args.frames}",
        "uint8_video_gib": round(frames.numel() / GiB, 3),
        "decode_to_uint8_peak_gib": round(decode_peak / GiB, 3),
        "write_peak_gib": round(write_peak / GiB, 3),
        "encoder_process_peak_gib": round(encoder / GiB, 3),
        "gpu_render_host_peak_gib": round((write_peak + encoder) / GiB, 3),
        "cpu_render_host_peak_gib": round(max(decode_peak, frames.numel() + write_peak + encoder) / GiB, 3),
        "file_mib": round(written / 2**20, 1),
        "seconds": {"decode_to_uint8": round(decoded, 1), "write": round(time.perf_counter() - began - decoded, 1)},
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
