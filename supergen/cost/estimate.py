"""The cost estimate of one render: FLOPs and memory per stage, before loading any weights.

:func:`estimate` takes a config, an :class:`~supergen.architectures.Architecture` and the render's
:class:`~supergen.plan.RenderPlan` (the decisions the pipeline follows) and returns a
:class:`ResourcePlan`. It builds no per-tile or per-pixel table: its cost does not grow with the size.

How the numbers are computed (also in ``docs/planner.md``)
----------------------------------------------------------

FLOPs (multiply-add = 2) of one transformer forward on a tile of ``L`` tokens: the family's
:class:`~supergen.families.FlopLayout` (:attr:`~supergen.families.FamilySpec.flops`), every matrix
product its diffusers transformer runs — ``Linear(tokens, fan_in, fan_out)`` costs
``2·n·fan_in·fan_out`` and ``Attention(queries, keys, dim)`` ``4·q·k·dim`` — over the token sets
``video`` (``L``), ``text`` (``S``, the family's padded prompt), ``image`` (``I``, Wan I2V),
``joint`` (``S + L``) and ``sample`` (one vector). Wan's layout, for instance::

    per block = 12·L·D² (self-attn q,k,v,o + cross-attn q,o) + 4·L²·D (self-attn scores and values)
              + 4·S·D² (cross-attn k,v on the text) + 4·L·S·D (cross-attn scores and values)
              + 4·L·D·Fd (FFN) [+ 4·I·D² + 4·L·I·D for the image keys of I2V]
    forward   = N · block + patch embedding + output projection + text and time embedders

CogVideoX runs every block's linears and attention on ``[text; video]``; HunyuanVideo has a text
token refiner, dual-stream and single-stream blocks (``docs/planner.md``). Only matrix products are
counted (what ``torch.utils.flop_counter`` counts; the test checks every family's layout against it
on the real transformers). A step costs ``tiles × (2 with guidance) × forward``.

Memory, per process, in bytes; ``b`` is the weights dtype's size, the canvas latent is float32 as in
the pipeline. Weights (transformer in ``b``; VAE and image encoder in their own dtypes, float32 for
Wan) are resident from the start; with ``encoders.park`` (the default) the text encoder leaves the
device once the prompts are encoded and the image encoder after the sketch (:data:`~supergen.plan.PARKED_FROM`), so a
stage's peak is its resident weights plus its transient, and the render's peak is the largest of those:

- transformer (one forward of ``batch_tiles`` tiles): inference frees each block's activations before
  the next, so the live set is one block's widest point (:func:`block_bytes_per_token`): for Wan the
  larger of the FFN — the residual stream and its norm (2·D) and the FFN hidden before and after GELU
  (2·Fd) per token, ``(2D + 2Fd)·b`` — and the residual update after it, which Wan's blocks do in
  float32: three float32 and five model-dtype copies of the stream, ``D·(3·4 + 5·b)`` (wider where
  ``D`` is large against ``Fd``: Wan-14B); the other families' ``(a·D + f·Fd)·b``
  (:class:`~supergen.families.FamilyMemory`, fitted to their traces). Times ``B·L``. Attention is
  assumed fused (SDPA's flash / memory-efficient kernels on GPU and CPU): no ``L²`` score matrix.
- canvas state (the refinement loop): ``6`` float32 copies of the canvas latent — the latent, the
  blended prediction, the multistep scheduler's two stored outputs, its last sample and the new
  sample — plus the image condition for I2V.
- VAE (``v`` = the VAE dtype's size: float32 for Wan, diffusers' recipe; the model's dtype for the
  others): the decoder's working set at full resolution for one tile and the ``n`` frames it works on
  at once, ``k · c0 · n · tile_h · tile_w · v`` (``c0`` = the decoder's channels per pixel at full
  resolution, :attr:`~supergen.architectures.Architecture.vae_channels`). For Wan ``n = 4`` (one latent frame) and ``k = 13``
  such activations: the upsampling's doubled channels, the residual blocks' input, norm, activation
  and convolution outputs, the causal caches — fitted to the fake-tensor trace,
  ``supergen plan --trace``; the encoder's ``k = 10`` (its full-resolution stage has ``c0``
  channels, no upsampling). The other families' ``n`` and ``k`` are their
  :class:`~supergen.families.FamilyMemory`, fitted to their traces at 2K and 4K.
- VAE decode (tiled, :class:`~supergen.parallel.TiledVAE`, a row of tiles at a time): one row of
  decoded tiles and the overlap kept of the row above (``3·F·(tile_h + overlap)·Σ tile widths·v``),
  one finished strip of rows ``3·F·stride_h·W·v`` and the working set; the output video (uint8, what
  ``supergen render`` asks for) is on the host, each strip sent there as it is converted
  (:class:`~supergen.output.VideoOutput`), so it grows with the frames only through the strip and
  the row. Untiled: the whole decoded video and the working set at the canvas size.
- the sketch's decoded pixels ``3·F·h·w·v`` stay referenced until the render returns (the ``sketch``
  output), so every later stage carries them.
- upscale (resize the sketch a band of rows at a time, VAE-encode each band's tiles): the band
  ``3·F·tile_h·W·v``, plus the larger of the resize (one chunk of 8 sketch frames in float32 and
  those frames resized whole, ``3·8·H·W·4``) and the encoder's working set; the encoded latent and its
  re-noising (3 float32 canvas latents). Untiled (small canvases): the whole resized video twice
  (float32 result and its cast to the VAE dtype) and the working set at the canvas size.
- block cache (``cache.block``): per block and guidance branch, inputs and residuals of every canvas
  token in the model dtype (:func:`~supergen.cache.block.block_cache_bytes`), in the refinement stage.

- image condition (Wan I2V, the ``setup`` stage): the image followed by zero frames, encoded at the
  canvas size one VAE window at a time: the image, one window (float32 and the VAE's dtype), the
  encoder's working set, the windows' latents until blended, and the mask + latent kept for refinement.
  CogVideoX and HunyuanVideo I2V encode the one image frame with their pipeline's code: the image,
  one frame's encoder working set and the condition kept for refinement.
- block-level group offloading (``model.offload=group``; ``supergen plan --trace --offload group``
  traces it through diffusers' own hooks): two transformer blocks (the running one and the prefetched
  one), the transformer's layers outside its blocks and the VAE on the device, plus the stage's
  transient; in the setup at least the whole text encoder (UMT5 is one group: it has no block list
  of its own).

These are estimates of what the *allocator* must hold; a CPU process's RSS adds allocator slack, a GPU
adds the CUDA context (~0.5 GiB) and caching-allocator fragmentation. ``docs/benchmarks.md``
("Planner") compares them with measured peaks.
"""


from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..families import Attention, FamilyMemory, Linear
from ..config import SuperGenConfig
from ..plan import PARKED_FROM, STAGES, RenderPlan, parked_during, plan_render
from ..tiling import TilePlan
from ..architectures import Architecture

#: float32 canvas-sized tensors alive during refinement (see the module docstring).
CANVAS_COPIES = 6
#: whole frames resized at a time (:func:`~supergen.upscale.resize_video`'s ``frames_per_chunk``).
RESIZE_CHUNK = 8

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def transformer_flops(arch: Architecture, tokens: int, batch: int = 1, pairs: int | None = None) -> int:
    """Matrix-product FLOPs of one transformer forward on ``batch`` tiles of ``tokens`` tokens: the
    family's :class:`~supergen.families.FlopLayout` priced at this many video tokens (module docstring).

    ``pairs``: (query, key) pairs of video self-attention when it is sparse (``tiling.mode=attention``);
    None means dense, ``tokens²``. In joint attention the text tokens still attend to and from every token.
    """
    text = arch.spec.prompt_shapes(arch.transformer, arch.image_to_video)["prompt_embeds"][0]
    count = {"video": tokens, "text": text, "image": arch.image_tokens, "joint": tokens + text, "sample": 1}
    video_pairs = tokens * tokens if pairs is None else pairs
    attended = {("video", "video"): video_pairs, ("joint", "joint"): video_pairs + 2 * tokens * text + text * text}

    def term_flops(term: Linear | Attention) -> int:
        if isinstance(term, Linear):
            return 2 * count[term.tokens] * term.fan_in * term.fan_out
        return 4 * attended.get((term.queries, term.keys), count[term.queries] * count[term.keys]) * term.dim

    return batch * sum(stack.count * sum(map(term_flops, stack.terms)) for stack in arch.flop_layout.stacks)


@dataclass
class ResourcePlan:
    """One render's geometry, compute and memory estimate (bytes), as :func:`estimate` computes it."""

    arch: Architecture
    dtype: str
    size: tuple[int, int]
    canvas: tuple[int, int]
    sketch: tuple[int, int] | None
    num_frames: int
    latent: tuple[int, int, int, int]
    plan: TilePlan
    sketch_steps: int
    refine_steps: int
    guidance: bool
    batch_tiles: int
    vae_tiling: bool
    parameters: dict[str, int]
    tiles_per_step: int = 0
    tokens_per_tile: int = 0
    flops_per_step: int = 0
    #: ``tiling.mode=attention``: the supergen_kernels ``LayoutCycle`` of the canvas-wide forwards
    #: (``layout[step]`` is one step's ``TileLayout``).
    layout: Any = None
    #: transformer FLOPs of one sketch step (the plain pipeline at sketch size, with its own guidance).
    sketch_flops_per_step: int = 0
    #: The render plan these estimates are computed from (what the pipeline will do).
    render: RenderPlan | None = None
    memory: dict[str, int] = field(default_factory=dict)

    #: Components whose weights leave the device after the sketch (``encoders.park``).
    parked: tuple[str, ...] = ()
    #: Weights on the device at once under block-level group offloading (``model.offload=group``).
    group_offload_weights: int = 0

    @property
    def weights(self) -> int:
        return sum(self.memory[f"weights.{k}"] for k in self.parameters)

    def resident(self, stage: str) -> int:
        """Weights on the device during ``stage``'s transient: all of them, less the parked encoders."""
        return self.weights - sum(self.memory.get(f"weights.{k}", 0) for k in self.parked if k in parked_during(stage))

    def stage_breakdown(self, stage: str) -> tuple[int, int]:
        """``(weights on the device, transient)`` at ``stage``'s estimated peak. Every weight is on the
        device when the render starts: the setup's peak is all of them if its transient, after the
        text encoder is parked, holds less than the encoder did."""
        weights, transient = self.resident(stage), self.memory.get(f"stage.{stage}", 0)
        if stage == "setup" and self.weights > weights + transient:
            return self.weights, 0
        return weights, transient

    def stage_peak(self, stage: str) -> int:
        """Estimated peak of ``stage``: the weights on the device then plus its transient (:meth:`stage_breakdown`)."""
        return sum(self.stage_breakdown(stage))

    def group_offload_breakdown(self, stage: str) -> tuple[int, int]:
        """``(weights on the device, transient)`` at ``stage``'s estimated peak under block-level group
        offloading (``model.offload=group``): :attr:`group_offload_weights` and the stage's transient;
        in the setup, the text encoder if larger: the hooks onload UMT5 as one group (its blocks are
        not a block list of the top module), all of its weights while it encodes."""
        weights, transient = self.group_offload_weights, self.memory.get(f"stage.{stage}", 0)
        text = self.memory.get("weights.text_encoder", 0)
        if stage == "setup" and text > weights + transient:
            return text, 0
        return weights, transient

    def group_offload_peak(self, stage: str) -> int:
        """Estimated peak of ``stage`` under block-level group offloading (:meth:`group_offload_breakdown`)."""
        return sum(self.group_offload_breakdown(stage))

    @property
    def peak(self) -> int:
        """Estimated peak: the largest :meth:`stage_peak`."""
        return self.stage_peak(self.peak_stage)

    @property
    def transient(self) -> int:
        """The largest stage transient (weights not counted): what offloading leaves on the device."""
        return max(self.memory.get(f"stage.{s}", 0) for s in STAGES)

    @property
    def peak_stage(self) -> str:
        return max(STAGES, key=self.stage_peak)


def estimate(
    config: SuperGenConfig,
    arch: Architecture,
    render: RenderPlan | None = None,
    *,
    height: int | None = None,
    width: int | None = None,
    num_frames: int | None = None,
) -> ResourcePlan:
    """The cost of the render ``render`` with ``config`` on ``arch``.

    Args:
        render: the render's plan (what the runtime hands the pipeline). None: planned here from
            ``config`` (``supergen plan``), sizes defaulting to ``config.job``.

    Raises:
        SuperGenError: the same size errors the pipeline raises (e.g. a size below the VAE × patch multiple).
    """
    if render is None:
        render = plan_render(config, arch, height if height is not None else config.job.height,
                             width if width is not None else config.job.width,
                             num_frames if num_frames is not None else config.job.num_frames)
    req = render.size
    canvas, sketch, frames = render.canvas, render.sketch, render.num_frames
    vt, vs, _ = arch.vae_scale
    latent = render.latent_shape[1:]
    plan = render.tiles
    refine_steps = render.refine_steps
    b = DTYPE_BYTES[config.model.dtype]
    vae_tiling = render.vae_tiling
    parameters = arch.parameters()
    out = ResourcePlan(
        arch=arch, dtype=config.model.dtype, size=req, canvas=canvas, sketch=sketch if render.from_sketch else None,
        num_frames=frames, latent=latent, plan=plan, sketch_steps=render.sketch_steps,
        refine_steps=refine_steps, guidance=render.do_guidance, batch_tiles=config.tiling.batch_tiles, vae_tiling=vae_tiling,
        parameters=parameters, render=render, parked=tuple(k for k in PARKED_FROM if k in parameters) if config.encoders.park else (),
    )
    # Tiles per step vary with the shift (clamp adds a segment when the grid is offset): plan for the most.
    # Counted, not built (TilePlan.count): the estimate costs the same at any size.
    out.tiles_per_step = max(plan.count(step) for step in range(refine_steps))
    pt, ph, pw = arch.patch
    # A tile spans its time window's frames (all of them when the clip is one window).
    out.tokens_per_tile = ((plan.frames or latent[1]) // pt) * (plan.tile[0] // ph) * (plan.tile[1] // pw)
    forwards = 2 if render.do_guidance else 1
    pairs = None
    if render.layout is not None:
        out.layout = render.layout
        # The windows move (clamp adds a row or column of tiles when offset): plan for the costliest step.
        pairs = max(attended_pairs(out.layout[step]) for step in range(refine_steps))
    out.flops_per_step = out.tiles_per_step * forwards * transformer_flops(arch, out.tokens_per_tile, pairs=pairs)

    d, ffn = arch.width, arch.ffn_dim
    # The VAE and image encoder in their own dtypes (Wan's recipe: float32, as the pipeline loads them).
    mem = {f"weights.{k}": v * DTYPE_BYTES[component_dtype(config, arch, k)] for k, v in parameters.items()}
    batch = min(config.tiling.batch_tiles, out.tiles_per_step)
    family = arch.spec.memory
    mem["transformer"] = int(batch * out.tokens_per_tile * block_bytes_per_token(d, ffn, b, family))
    canvas_elems = math.prod(latent)
    condition = (arch.transformer["in_channels"] - latent[0]) * canvas_elems // latent[0]  # I2V mask + image latent
    mem["canvas"] = CANVAS_COPIES * canvas_elems * 4 + condition * 4
    vb = DTYPE_BYTES[component_dtype(config, arch, "vae")]
    video = 3 * frames * canvas[0] * canvas[1]
    full_res_channels = arch.vae_channels
    vae_tile, vae_stride = arch.vae_tile
    tile_px = _vae_tile_area(canvas, vae_tile) if vae_tiling else canvas[0] * canvas[1]
    # Frames the VAE works on at once: Wan one latent frame (vt pixel frames), CogVideoX and HunyuanVideo
    # their frame batches, LTX all frames (the families' FamilyMemory).
    vae_frames = min(family.vae_frames or frames, frames)
    working = int(family.vae_decode_copies * full_res_channels * vae_frames * tile_px * vb)
    encode_working = int(family.vae_encode_copies * full_res_channels * vae_frames * tile_px * vb)
    latent_bytes = canvas_elems * 4
    sketch_px = 3 * frames * sketch[0] * sketch[1]
    if vae_tiling:
        tile_h = min(vae_tile[0], canvas[0])
        row_width = _vae_spans(canvas[1], vae_tile[1], vae_stride[1])
        rows = 3 * frames * (tile_h + min(vae_tile[0] - vae_stride[0], tile_h)) * row_width * vb
        strip = 3 * frames * min(vae_stride[0], canvas[0]) * canvas[1] * vb
        mem["vae_decode"] = rows + strip + working  # the uint8 output video is on the host
        band = 3 * frames * tile_h * canvas[1] * vb
        # The resize: one chunk of the sketch's frames in float32 (no copy when the VAE is float32; the
        # frames' reordering is a view: the decoded sketch is frame-major) resized to whole canvas frames.
        # (It counted a whole copy of the sketch in float32 too: +25 % on Wan-14B's 4K upscale transient.)
        chunk = 3 * min(RESIZE_CHUNK, frames)
        resize = (chunk * sketch[0] * sketch[1] * 4 if vb != 4 else 0) + chunk * canvas[0] * canvas[1] * 4
        mem["upscale"] = band + max(resize, encode_working) + 3 * latent_bytes
    else:
        mem["vae_decode"] = video * vb + working  # the decoded video and its working set (the output: on the host)
        mem["upscale"] = video * (4 + vb) + encode_working + 3 * latent_bytes
    # Stage transients: what each stage holds beyond the resident weights. The sketch is the plain
    # pipeline at sketch size: a transformer forward there, then an untiled decode of the sketch.
    sketch_tokens = (latent[1] // pt) * (sketch[0] // vs // ph) * (sketch[1] // vs // pw)
    sketch_forward = int(sketch_tokens * block_bytes_per_token(d, ffn, b, family))
    if out.sketch is not None:
        out.sketch_flops_per_step = (2 if render.sketch_guidance_scale > 1.0 else 1) * transformer_flops(arch, sketch_tokens)
    sketch_decode = sketch_px * vb + int(family.vae_decode_copies * full_res_channels * vae_frames * sketch[0] * sketch[1] * vb)
    mem["stage.sketch"] = 0 if out.sketch is None else max(sketch_forward, sketch_decode)
    # The sketch's pixels stay referenced until the render returns (the sketch output).
    held = 0 if out.sketch is None else sketch_px * vb
    mem["stage.upscale"] = 0 if out.sketch is None else mem["upscale"] + held
    mem["block_cache"] = 0
    cache = config.cache
    if cache.enabled and cache.policy == "region" and cache.block.enabled:
        from ..cache.block import block_cache_bytes

        grid = (latent[1] // pt, latent[2] // ph, latent[3] // pw)
        blocks = arch.num_blocks * arch.experts
        mem["block_cache"] = block_cache_bytes(grid, d, blocks, forwards, b)
    mem["stage.refine"] = mem["transformer"] + mem["canvas"] + held + mem["block_cache"]
    mem["stage.decode"] = mem["vae_decode"] + latent_bytes + held
    # Block-level group offloading (one block per group, the next prefetched on a CUDA stream): two
    # transformer blocks, the transformer's layers outside its blocks (embeddings, output head) and
    # the VAE, whole (small; its convolutions are not in block lists). Encoders leave the device.
    per_block, outside = arch.block_parameters()
    out.group_offload_weights = (2 * per_block + outside) * b + mem["weights.vae"]
    if condition and arch.spec.canvas_condition:
        # Wan I2V's condition (image + zero frames) encoded at the canvas size, window by window: the
        # image, one window in float32 and in the VAE's dtype, the encoder's working set, the windows'
        # latents (they overlap) until they are blended, and the condition kept for the refinement.
        # (Terms as calibrated on branch i2v, before TiledVAE held one row of windows at a time.)
        window = 3 * frames * tile_px
        overlap = _vae_tiles_total_area(canvas, vae_tile, vae_stride) / (canvas[0] * canvas[1]) if vae_tiling else 0.0
        i2v_working = 6 * full_res_channels * vt * tile_px * b
        mem["stage.setup"] = (3 * canvas[0] * canvas[1] * 4 + window * (4 + (b if b != 4 else 0)) + i2v_working
                              + int(canvas_elems * 4 * (1 + overlap)) + condition * 4)
    elif condition:
        # The image frame encoded by the family's pipeline (VAE-tiled as the plan says), in float32 and
        # the VAE's dtype, one frame's encoder working set, and the condition kept for the refinement.
        mem["stage.setup"] = (3 * canvas[0] * canvas[1] * (4 + vb)
                              + int(family.vae_encode_copies * full_res_channels * tile_px * vb) + condition * 4)
    # The prompt embeddings (both guidance branches, in the model dtype) stay referenced for the whole
    # call: every stage carries them (8 MiB for Wan's 512 x 4096; a visible share of small renders only).
    branches = 2 if render.do_guidance or render.sketch_guidance_scale > 1.0 else 1
    shapes = arch.spec.prompt_shapes(arch.transformer, arch.image_to_video)
    mem["prompt_embeds"] = branches * sum(math.prod(shape) for shape in shapes.values()) * b
    for stage in STAGES:
        if f"stage.{stage}" in mem:
            mem[f"stage.{stage}"] += mem["prompt_embeds"]
    out.memory = mem
    return out


#: Copies of the residual stream alive at a Wan block's residual update after its FFN, traced
#: (``hidden_states.float() + ff_output.float() * gate``): float32 ones, and ones in the model dtype
#: (the block's input, its attention and FFN outputs, the norm's output and a cast).
RESIDUAL_F32_COPIES, RESIDUAL_MODEL_COPIES = 3, 5


def block_bytes_per_token(d: int, ffn: int, b: int, family: FamilyMemory = FamilyMemory()) -> int:
    """Bytes per token at a transformer block's widest point: the FFN, ``(a·D + f·Fd)·b`` with the
    family's ``(a, f)`` (Wan: ``(2D + 2Fd)·b``), or, where the family's blocks add their residual
    updates in float32 (Wan) in a model dtype below it, that update (``D·(3·4 + 5·b)``), whichever is
    larger (in float32 its casts are no-ops)."""
    a, f = family.block_tokens
    ffn_point = (a * d + f * ffn) * b
    if b >= 4 or not family.float32_residual:
        return int(ffn_point)
    return int(max(ffn_point, d * (RESIDUAL_F32_COPIES * 4 + RESIDUAL_MODEL_COPIES * b)))


def attended_pairs(layout) -> int:
    """Useful (query, key) pairs of tile(+halo) attention: each tile's tokens × its window's tokens.

    The tiles are the product of a row and a column split (each tile's window too), so the sum over
    tiles factors into one sum per axis: no per-tile list, whatever the canvas size. The
    block-sparse kernels compute a little more (partly filled blocks); see kernels/README.md.
    """
    frames = layout.canvas[0]
    rows, cols = layout._axes()  # per axis (own_lo, own_hi, win_lo, win_hi): supergen_kernels' own split
    per_axis = [sum((hi - lo) * (whi - wlo) for lo, hi, wlo, whi in axis) for axis in (rows, cols)]
    return frames * frames * per_axis[0] * per_axis[1]


def _vae_tile_area(canvas: tuple[int, int], tile: tuple[int, int]) -> int:
    """Pixel area of the largest tile the tiled VAE (tiles of ``tile`` pixels) works on."""
    return min(tile[0], canvas[0]) * min(tile[1], canvas[1])


def _vae_spans(length: int, tile: int, stride: int) -> int:
    """Summed length of the tiled VAE's tiles along one axis (they overlap), for the loop bounds of
    ``tiled_decode`` (tiles start every ``stride``, each ``min(tile, length - start)`` long), in closed form."""
    n = -(-length // stride)  # tiles: starts 0, stride, ... below length
    full = min(n, max(0, (length - tile) // stride + 1))  # those with a whole tile before the end
    # The rest end at the canvas edge: sum of (length - start) over their starts.
    rest = n - full
    return full * tile + rest * length - stride * (full + n - 1) * rest // 2


def _vae_tiles_total_area(canvas: tuple[int, int], tile: tuple[int, int], stride: tuple[int, int]) -> int:
    """Summed pixel area of the tiled VAE's tiles (they overlap)."""
    return _vae_spans(canvas[0], tile[0], stride[0]) * _vae_spans(canvas[1], tile[1], stride[1])


def component_dtype(config: SuperGenConfig, arch: Architecture, component: str) -> str:
    """The dtype ``component`` runs in: ``model.vae_dtype`` / ``model.image_encoder_dtype`` when set,
    else the family's recipe (:attr:`~supergen.families.FamilySpec.component_dtypes`: Wan's VAE and
    image encoder in float32, as diffusers' examples), else the model's ``model.dtype``."""
    override = {"vae": config.model.vae_dtype, "image_encoder": config.model.image_encoder_dtype}.get(component)
    return override or arch.spec.component_dtypes.get(component, config.model.dtype)

