"""Tiled VAE encode/decode whose tiles are spread over the ranks of a group, one row of tiles at a time.

At 4K the VAE is as costly as a few refinement steps and must be tiled for memory. The tile grid
and the blending are those of diffusers' own tiled VAE (tile and stride from the adapter's
``vae_tile``, ``vae.blend_v`` / ``vae.blend_h``, same order of in-place blends);
each tile goes through the adapter's plain (untiled) ``decode``/``encode``, so the model code stays
diffusers'. The tiles are divided between ranks with the exchanger's :func:`balance`; the result
depends only on the tiles, not on who computed them, so 1, 2 or 3 ranks give identical pixels.

Rows of tiles are computed, blended and handed on in order (:meth:`TiledVAE.decode_strips`): a row
is final once it is blended with the row above, so only one row of tile outputs and the overlap of
the row above are held, never the whole canvas. Windows of the input are cut when their turn comes
(:class:`PixelWindows`), so an input made on demand (the upscaled sketch, the image-to-video
condition video) need not exist whole either.

One difference from diffusers' ``tiled_decode``: each tile is clamped to [-1, 1] before blending
(the plain decode clamps) rather than once after; blends of clamped tiles stay in range.
"""

from __future__ import annotations

from typing import Callable, Iterator, Protocol

import torch
import torch.distributed as dist

from ..adapters import ModelAdapter
from .exchanger import balance
from .launch import TileGroup, collective_buffer


class PixelWindows(Protocol):
    """A video ``(1, C, F, H, W)`` whose windows are made when asked for: ``video[..., rows, cols]``
    (slices) returns that window as a tensor (a tensor is one; so are
    :class:`~supergen.adapters.FirstFrameVideo` and :class:`~supergen.upscale.UpscaledVideo`)."""

    shape: torch.Size

    def __getitem__(self, index) -> torch.Tensor: ...


#: ``(top, strip)``: finished output rows ``[top, top + strip.shape[-2])`` at full output width.
Strip = tuple[int, torch.Tensor]


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

    def decode_strips(self, latents: torch.Tensor, num_frames: int) -> Iterator[Strip]:
        """Canvas latent ``(1, C, f, h, w)`` → the video ``(1, 3, num_frames, h·s, w·s)`` in [-1, 1] as
        finished horizontal strips, top to bottom, on the group's leader (the only rank that writes the
        video); nothing on the other ranks, which must still run the iterator to its end (collectives)."""
        s = self.adapter.vae_scale[1]
        (th, tw), (sh, sw) = self.adapter.vae_tile
        return self._strips(
            latents, lambda x: self.adapter.decode(x, num_frames),
            tile=(th // s, tw // s),
            stride=(sh // s, sw // s),
            out_tile=(th, tw),
            out_stride=(sh, sw),
            out_size=(latents.shape[-2] * s, latents.shape[-1] * s),
            everywhere=False, out_dtype=self.vae.dtype, label="decode",
        )

    def decode(self, latents: torch.Tensor, num_frames: int) -> torch.Tensor | None:
        """:meth:`decode_strips` joined into one video (the VAE's dtype) on the leader; None on the other ranks."""
        strips = [strip for _, strip in self.decode_strips(latents, num_frames)]
        return torch.cat(strips, dim=-2) if strips else None

    def encode(self, video: torch.Tensor | PixelWindows) -> torch.Tensor:
        """Video ``(1, 3, F, H, W)`` in [-1, 1] → normalised posterior-mode latent ``(1, C, f, H/s, W/s)``
        float32 on every rank. ``video`` may make its windows on demand (:class:`PixelWindows`)."""
        s = self.adapter.vae_scale[1]
        (th, tw), (sh, sw) = self.adapter.vae_tile
        source = video
        out_size = (source.shape[-2] // s, source.shape[-1] // s)
        latent = None
        for top, strip in self._strips(
            source, lambda x: self.adapter.encode(x, None),
            tile=(th, tw),
            stride=(sh, sw),
            out_tile=(th // s, tw // s),
            out_stride=(sh // s, sw // s),
            out_size=out_size,
            everywhere=True, out_dtype=torch.float32, label="encode",
        ):
            if latent is None:
                latent = strip.new_empty((*strip.shape[:-2], *out_size))
            latent[..., top : top + strip.shape[-2], :] = strip
        return latent

    def _strips(
        self,
        source: torch.Tensor | PixelWindows,
        fn: Callable[[torch.Tensor], torch.Tensor],
        tile: tuple[int, int],
        stride: tuple[int, int],
        out_tile: tuple[int, int],
        out_stride: tuple[int, int],
        out_size: tuple[int, int],
        everywhere: bool,
        out_dtype: torch.dtype,
        label: str,
    ) -> Iterator[Strip]:
        """Apply ``fn`` to overlapping windows of ``source`` ``(..., H, W)`` and blend the outputs, a row at a time.

        Windows start every ``stride`` and span ``tile`` (in input units); their outputs overlap by
        ``out_tile - out_stride``, are blended there, and each keeps its first ``out_stride``.
        """
        height, width = source.shape[-2:]
        tops, lefts = range(0, height, stride[0]), range(0, width, stride[1])
        size = self.group.size if self.group is not None else 1
        me = self.group.rank if self.group is not None else 0
        owner = balance([float(min(tile[0], height - i) * min(tile[1], width - j)) for i in tops for j in lefts], size)
        extent = (out_tile[0] - out_stride[0], out_tile[1] - out_stride[1])
        above: list[torch.Tensor] | None = None
        # A bar per tile (the pipeline's progress-bar settings: off with -q and on ranks other than 0).
        with self.adapter.pipe.progress_bar(total=owner.count(me)) as progress:
            progress.set_description(label)
            for r, top in enumerate(tops):
                keys = range(r * len(lefts), (r + 1) * len(lefts))
                outputs: dict[int, torch.Tensor] | None = {}
                rows = slice(top, min(top + tile[0], height))
                for k, left in zip(keys, lefts):
                    if owner[k] == me:  # cut when its turn comes (the source may make it on demand)
                        outputs[k] = fn(source[..., rows, left : min(left + tile[1], width)])
                        progress.update()
                if size > 1:
                    outputs = self._collect(outputs, keys, owner, everywhere, out_dtype)
                    if outputs is None:
                        continue
                # diffusers' blending order: each tile takes the (already blended) tile above and to
                # its left; the blends write into the tile itself, so ``row`` holds blended tiles.
                row, kept = [outputs[k] for k in keys], []
                for j, out in enumerate(row):
                    if above is not None:
                        out = self.vae.blend_v(above[j], out, extent[0])
                    if j > 0:
                        out = self.vae.blend_h(row[j - 1], out, extent[1])
                    kept.append(out[..., : out_stride[0], : out_stride[1]])
                out_top = r * out_stride[0]
                strip = torch.cat(kept, dim=-1)[..., : out_size[0] - out_top, : out_size[1]]
                # The next row blends into this one's lower overlap only: keep copies of that, not the tiles.
                above = [out[..., out.shape[-2] - min(extent[0], out.shape[-2]) :, :].clone() for out in row]
                del row, kept, outputs, out
                yield out_top, strip
                del strip  # not held while the next row is computed

    def _collect(
        self, mine: dict[int, torch.Tensor], keys: range, owner: list[int], everywhere: bool, dtype: torch.dtype
    ) -> dict[int, torch.Tensor] | None:
        """Bring the outputs of windows ``keys`` (one row) to every rank (``everywhere``) or to the
        leader only (None elsewhere).

        Shapes are not known in advance (they depend on the VAE), so each output is preceded by its shape.
        """
        group = self.group
        device = group.device
        # NCCL needs contiguous buffers on the group's device; a tile's output is a view (frames
        # trimmed) on the VAE's device, which differs from the group's under model offload.
        outputs: dict[int, torch.Tensor] = {k: collective_buffer(v, device, dtype) for k, v in mine.items()}
        for k in keys:
            src = owner[k]
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
