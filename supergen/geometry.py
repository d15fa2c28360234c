"""Size rules shared by a loaded model (``ModelAdapter``) and the planner's weight-free description of one."""

from __future__ import annotations


class SizeRules:
    """Derives the size rules from ``vae_scale`` ``(t, h, w)`` and ``patch`` ``(t, h, w)``, which subclasses provide."""

    vae_scale: tuple[int, int, int]
    patch: tuple[int, int, int]

    @property
    def pixel_multiple(self) -> int:
        """Height and width must be multiples of this (VAE scale × patch)."""
        return self.vae_scale[1] * self.patch[1]

    def snap_frames(self, num_frames: int) -> int:
        """The nearest frame count a causal VAE accepts, rounded down: ``k·t + 1`` (Wan: ``4k + 1``)."""
        t = self.vae_scale[0]
        return max(1, (num_frames - 1) // t * t + 1)
