"""Tiled VAE encode/decode whose tiles are spread over the ranks of a group.

At 4K the VAE is as costly as a few refinement steps and must be tiled for memory. The tile grid
and the blending are those of diffusers' own tiled VAE (tile and stride from the adapter's
``vae_tile``, ``vae.blend_v`` / ``vae.blend_h``, same order of in-place blends);
each tile goes through the adapter's plain (untiled) ``decode``/``encode``, so the model code stays
diffusers'. The tiles are divided between ranks with the exchanger's :func:`balance`; the result
depends only on the tiles, not on who computed them, so 1, 2 or 3 ranks give identical pixels.

One difference from diffusers' ``tiled_decode``: each tile is clamped to [-1, 1] before blending
(the plain decode clamps) rather than once after; blends of clamped tiles stay in range.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

from ..adapters import FirstFrameVideo, ModelAdapter
from .exchanger import balance
from .launch import TileGroup, collective_buffer


class TiledVAE:
    """Spatially tiled, rank-parallel VAE for one adapter.

    Args:
        adapter: the model family's adapter (its ``decode``/``encode`` run on each tile).
        group: the ranks sharing the work, or None for this process alone.
    """

    def __init__(self, adapter: ModelAdapter, group: TileGroup | None = None):
        self.adapter = adapter
        self.vae = adapter.pipe.vae
        self.group = group

    def decode(self, latents: torch.Tensor, num_frames: int) -> torch.Tensor | None:
        """Canvas latent ``(1, C, f, h, w)`` → video ``(1, 3, num_frames, h·s, w·s)`` in [-1, 1] on the group's
        leader (the only rank that writes the video); None on the other ranks."""
        s = self.adapter.vae_scale[1]
        (th, tw), (sh, sw) = self.adapter.vae_tile
        return self._tiled(
            latents, lambda x: self.adapter.decode(x, num_frames),
            tile=(th // s, tw // s),
            stride=(sh // s, sw // s),
            out_tile=(th, tw),
            out_stride=(sh, sw),
            out_size=(latents.shape[-2] * s, latents.shape[-1] * s),
            everywhere=False, out_dtype=self.vae.dtype, label="decode",
        )

    def encode(self, video: torch.Tensor | FirstFrameVideo) -> torch.Tensor:
        """Video ``(1, 3, F, H, W)`` in [-1, 1] → normalised posterior-mode latent ``(1, C, f, H/s, W/s)`` on every rank.

        ``video`` may be a :class:`~supergen.adapters.FirstFrameVideo`, whose windows are built one at a time.
        """
        s = self.adapter.vae_scale[1]
        (th, tw), (sh, sw) = self.adapter.vae_tile
        return self._tiled(
            video, lambda x: self.adapter.encode(x, None),
            tile=(th, tw),
            stride=(sh, sw),
            out_tile=(th // s, tw // s),
            out_stride=(sh // s, sw // s),
            out_size=(video.shape[-2] // s, video.shape[-1] // s),
            everywhere=True, out_dtype=torch.float32, label="encode",
        )

    def _tiled(
        self,
        x: torch.Tensor,
        fn: Callable[[torch.Tensor], torch.Tensor],
        tile: tuple[int, int],
        stride: tuple[int, int],
        out_tile: tuple[int, int],
        out_stride: tuple[int, int],
        out_size: tuple[int, int],
        everywhere: bool,
        out_dtype: torch.dtype,
        label: str,
    ) -> torch.Tensor | None:
        """Apply ``fn`` to overlapping windows of ``x`` ``(..., H, W)`` and blend the outputs.

        Windows start every ``stride`` and span ``tile`` (in input units); their outputs overlap by
        ``out_tile - out_stride``, are blended there, and each keeps its first ``out_stride``.
        """
        height, width = x.shape[-2:]
        starts = [(i, j) for i in range(0, height, stride[0]) for j in range(0, width, stride[1])]
        # Windows are cut when their turn comes: ``x`` may build each window on demand
        # (:class:`~supergen.adapters.FirstFrameVideo`), never holding the whole input.
        windows = [(slice(i, min(i + tile[0], height)), slice(j, min(j + tile[1], width))) for i, j in starts]
        size = self.group.size if self.group is not None else 1
        me = self.group.rank if self.group is not None else 0
        owner = balance([float((r.stop - r.start) * (c.stop - c.start)) for r, c in windows], size)
        mine = [k for k in range(len(windows)) if owner[k] == me]
        outputs = {}
        # A bar per tile (the pipeline's progress-bar settings: off with -q and on ranks other than 0).
        with self.adapter.pipe.progress_bar(total=len(mine)) as progress:
            progress.set_description(label)
            for k in mine:
                outputs[k] = fn(x[(..., *windows[k])])
                progress.update()
        if size > 1:
            outputs = self._collect(outputs, owner, everywhere, out_dtype)
            if outputs is None:
                return None
        # diffusers' blending order: each tile takes the (already blended) tile above and to its left.
        columns = len(range(0, width, stride[1]))
        rows = [[outputs[r * columns + c] for c in range(columns)] for r in range(len(starts) // columns)]
        extent = (out_tile[0] - out_stride[0], out_tile[1] - out_stride[1])
        result_rows = []
        for i, row in enumerate(rows):
            kept = []
            for j, out in enumerate(row):
                if i > 0:
                    out = self.vae.blend_v(rows[i - 1][j], out, extent[0])
                if j > 0:
                    out = self.vae.blend_h(row[j - 1], out, extent[1])
                kept.append(out[..., : out_stride[0], : out_stride[1]])
            result_rows.append(torch.cat(kept, dim=-1))
        return torch.cat(result_rows, dim=-2)[..., : out_size[0], : out_size[1]]

    def _collect(
        self, mine: dict[int, torch.Tensor], owner: list[int], everywhere: bool, dtype: torch.dtype
    ) -> dict[int, torch.Tensor] | None:
        """Bring every window's output to every rank (``everywhere``) or to the leader only (None elsewhere).

        Shapes are not known in advance (they depend on the VAE), so each output is preceded by its shape.
        """
        group = self.group
        device = group.device
        # NCCL needs contiguous buffers on the group's device; a tile's output is a view (frames
        # trimmed) on the VAE's device, which differs from the group's under model offload.
        outputs: dict[int, torch.Tensor] = {k: collective_buffer(v, device, dtype) for k, v in mine.items()}
        for k, src in enumerate(owner):
            if not everywhere and src == 0:
                continue  # already on the leader
            if everywhere:
                shape = torch.tensor(mine[k].shape if src == group.rank else [0] * 5, dtype=torch.int64, device=device)
                dist.broadcast(shape, src=group.global_of(src), group=group.pg)
                if src != group.rank:
                    outputs[k] = torch.empty(tuple(shape.tolist()), dtype=dtype, device=device)
                else:
                    outputs[k] = outputs[k].contiguous()  # NCCL moves contiguous buffers only
                    group.count_bytes(outputs[k].nbytes)
                dist.broadcast(outputs[k], src=group.global_of(src), group=group.pg)
            elif src == group.rank:
                dist.send(torch.tensor(mine[k].shape, dtype=torch.int64, device=device), dst=group.global_of(0), group=group.pg)
                dist.send(outputs[k], dst=group.global_of(0), group=group.pg)
                group.count_bytes(outputs[k].nbytes)
            elif group.is_leader:
                shape = torch.empty(5, dtype=torch.int64, device=device)
                dist.recv(shape, src=group.global_of(src), group=group.pg)
                outputs[k] = torch.empty(tuple(shape.tolist()), dtype=dtype, device=device)
                dist.recv(outputs[k], src=group.global_of(src), group=group.pg)
        return outputs if everywhere or group.is_leader else None
