"""The cost estimate as text: the table ``supergen plan`` prints and the demo shows, and units."""

from __future__ import annotations

from ..plan import STAGES, parked_during
from .estimate import ResourcePlan


def human(n: float) -> str:
    """Bytes as KiB/MiB/GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{int(n)} B"


def flops(n: float) -> str:
    """FLOPs as GFLOP/TFLOP/PFLOP."""
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n / 1e6:,.2f} MFLOP"


def count(n: int) -> str:
    """A parameter count as k/M/B."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    return str(n)


def format_plan(plan: ResourcePlan) -> str:
    """The plan as one two-column text table."""
    table = rows(plan)
    width = max(len(k) for k, _ in table)
    line = "-" * (width + 2 + max(len(v) for _, v in table))
    return "\n".join([line, *(f"{k.ljust(width)}  {v}" for k, v in table), line])



def rows(plan: ResourcePlan) -> list[tuple[str, str]]:
    """The table :func:`format_plan` prints and the demo shows, as ``(quantity, value)`` pairs."""
    f, lh, lw = plan.latent[1:]
    grid = "x".join(str(axis.count(0)) for axis in plan.plan.axes)
    tile_px = tuple(s * plan.arch.vae_scale[1] for s in plan.plan.tile)
    tiling = f"{plan.plan.mode}/{plan.plan.boundary} {grid} tiles of {tile_px[0]}x{tile_px[1]} px ({plan.plan.tile[0]}x{plan.plan.tile[1]} latent)"
    if plan.plan.time is not None:
        tiling += f" x {plan.plan.windows()} time windows of {plan.plan.frames} latent frames, shifting"
    # The grid above is the unshifted one; a shifted clamp grid cuts partial tiles at the edges.
    shifted = f"{plan.plan.count(0)} unshifted, up to " if plan.tiles_per_step != plan.plan.count(0) else ""
    if plan.layout is not None:
        rows_, cols_ = plan.layout[0].grid
        halo = plan.layout.halo * plan.arch.pixel_multiple
        moves = "fixed" if plan.layout.shift_every >= plan.refine_steps else (
            f"moving {'x'.join(str(s * plan.arch.pixel_multiple) for s in plan.layout.strides)} px "
            f"every {plan.layout.shift_every} step(s), {plan.layout.boundary}")
        forward = "one canvas forward" if plan.plan.time is None else (
            f"one canvas forward per time window ({plan.plan.windows()} of {plan.plan.frames} latent frames, shifting)")
        tiling = f"attention: {forward}, {rows_}x{cols_} tiles ({moves}) attending to tile + {halo} px halo"
    rows = [
        ("model", f"{plan.arch.name} ({plan.dtype})" + (f" — {plan.arch.note}" if plan.arch.note else "")),
        # Every size is height x width, as in the render summary.
        ("output", f"{plan.size[0]}x{plan.size[1]} (height x width), {plan.num_frames} frames" + (
            f" (rendered {plan.canvas[0]}x{plan.canvas[1]}, cropped)" if plan.canvas != plan.size else "")),
        ("sketch", f"{plan.sketch[0]}x{plan.sketch[1]}, {plan.sketch_steps} steps" if plan.sketch else "none (strength 1: from noise)"),
        ("canvas latent", f"{plan.latent[0]}x{f}x{lh}x{lw} (channels x frames x height x width)"),
        ("tile grid", tiling),
        ("refinement steps", f"{plan.refine_steps} ({shifted}{plan.tiles_per_step} tiles/step, {'2' if plan.guidance else '1'} forwards/tile)"
         if plan.layout is None else f"{plan.refine_steps} ({'up to ' if plan.plan.time is not None else ''}"
                                     f"{plan.tiles_per_step * (2 if plan.guidance else 1)} canvas-wide forwards/step)"),
        ("tokens per tile", f"{plan.tokens_per_tile:,}"),
        ("transformer FLOPs/step", flops(plan.flops_per_step)),
        ("parameters", ", ".join(f"{k} {count(v)}" for k, v in plan.parameters.items())),
        ("weights (resident)", human(plan.weights)),
        ("transformer activations", f"{human(plan.memory['transformer'])} ({plan.batch_tiles} tile(s)/call)"),
        ("canvas state", human(plan.memory["canvas"])),
        ("VAE decode", f"{human(plan.memory['vae_decode'])} ({'tiled' if plan.vae_tiling else 'untiled'})"),
        ("upscale (VAE encode)", human(plan.memory["upscale"])),
        *([("block cache", human(plan.memory["block_cache"]))] if plan.memory["block_cache"] else []),
        ("estimated peak", _peak_row(plan)),
    ]
    if "stage.setup" in plan.memory:
        rows.insert(-1, ("image condition (VAE encode)", human(plan.memory["stage.setup"])))
    offloaded = max(STAGES, key=plan.group_offload_peak)
    weights, transient = plan.group_offload_breakdown(offloaded)
    held = (f"the text encoder {human(weights)}, onloaded whole while it encodes" if weights != plan.group_offload_weights
            else f"weights on the device {human(weights)} + {offloaded} transient {human(transient)}")
    rows.append(("with group offload", f"{human(weights + transient)} in {offloaded} = {held} "
                 "(model.offload=group; supergen plan --trace --offload group traces it)"))
    return rows


def _peak_row(plan: ResourcePlan) -> str:
    """The estimated peak and what is on the device when it happens."""
    stage = plan.peak_stage
    weights, transient = plan.stage_breakdown(stage)
    parked = [k for k in plan.parked if k in parked_during(stage) and (stage != "setup" or weights < plan.weights)]
    if weights == plan.weights:
        which = "all of them" + (f": {', '.join(plan.parked)} not yet parked" if plan.parked else "")
    else:
        which = f"{', '.join(parked)} parked on the host by then"
    return f"{human(plan.peak)} in {stage} = weights {human(weights)} ({which}) + {stage} transient {human(transient)}"

