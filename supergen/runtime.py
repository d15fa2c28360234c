"""One way for the applications (``supergen render``, the batch runner, the demo) to run a render.

The library (:class:`~supergen.pipeline.SuperGenPipeline`) takes a loaded diffusers pipeline and the
method config. Everything around it lives here, once: which device, which ranks, loading a model
with its component dtypes and memory savers, turning a job's config into the call's arguments and a
seeded generator, and writing the video. The applications differ only in where jobs come from.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

import torch

from .config import JobConfig, ModelConfig, SuperGenConfig
from .errors import SuperGenError
from .preflight import resolve_device

logger = logging.getLogger("supergen")

#: The largest seed torch's generators accept.
MAX_SEED = 2**63 - 1


def seeded_generator(seed: int) -> tuple[torch.Generator, int]:
    """A CPU generator (the same noise on every device and every rank) and the seed it uses;
    ``-1`` draws a random seed, which the caller reports so the video can be made again."""
    if seed == -1:
        seed = random.SystemRandom().randrange(2**31)
    return torch.Generator("cpu").manual_seed(seed), seed


def load_pipeline(model: ModelConfig, device: torch.device):
    """The diffusers pipeline ``model.name`` on ``device``, in ``model.dtype``, with the VAE and image
    encoder in their own dtypes (the family's recipe unless set) and the offload ``model.offload`` asks for."""
    from .adapters import adapter_class
    from .builtin import load_pipeline as load_named

    dtype = getattr(torch, model.dtype)
    pipe = load_named(model.name, dtype, "cpu")
    defaults = adapter_class(pipe).component_dtypes
    for component, override in (("vae", model.vae_dtype), ("image_encoder", model.image_encoder_dtype)):
        module = getattr(pipe, component, None)
        wanted = override or defaults.get(component)
        if module is not None and wanted is not None and module.dtype != getattr(torch, wanted):
            module.to(getattr(torch, wanted))
    return place(pipe, model.offload, device)


def place(pipe, offload: str, device: torch.device):
    """Move ``pipe`` to ``device``, or let one of diffusers' memory savers manage it there.

    The savers move weights between the host and a GPU; on the CPU they save nothing but still run
    (diffusers' hooks on the CPU as onload device), so a CPU run tests the same code path. Except
    ``sequential``: accelerate's per-parameter hooks fail when the onload device is the CPU (plain
    diffusers too, measured with accelerate 1.15 and torch 2.13), so it is refused there up front.
    """
    if offload == "none":
        return pipe.to(device)
    if device.type == "cpu":
        if offload == "sequential":
            raise SuperGenError("model.offload=sequential needs a GPU: accelerate's sequential offload hooks fail when the "
                                "onload device is the CPU; on the CPU use model.offload=none (or model / group, which run but save nothing)")
        logger.warning("model.offload=%s on the CPU moves weights from the CPU to the CPU: it saves no memory here", offload)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:  # block-level group offloading; on CUDA with streams, which prefetch the next block while one runs
        pipe.enable_group_offload(onload_device=device, offload_type="block_level", num_blocks_per_group=1,
                                  use_stream=device.type == "cuda")
    return pipe


def available_memory(device: torch.device) -> int:
    """Bytes a render can still allocate on ``device``: free CUDA memory, or the host's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:  # MemAvailable counts reclaimable page cache, unlike the free-pages count below
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def device_need(plan, offload: str) -> tuple[int, int]:
    """``(weights, transient)`` bytes a planned render holds on its device at its peak: with
    ``model`` offload only the largest component is resident at a time, with ``group`` two
    transformer blocks and what lies outside them (:attr:`~supergen.planner.ResourcePlan.group_offload_weights`;
    in the setup the whole text encoder, :meth:`~supergen.planner.ResourcePlan.group_offload_peak`),
    with ``sequential`` one layer's parameters (counted as nothing)."""
    if offload == "none":
        return plan.weights, plan.peak - plan.weights
    if offload == "group":  # per stage, with the text encoder onloaded whole while it encodes
        from .planner import STAGES

        return plan.group_offload_weights, max(map(plan.group_offload_peak, STAGES)) - plan.group_offload_weights
    # Offload hooks manage the encoders (nothing is parked): the largest transient of any stage.
    largest = max(plan.memory[f"weights.{k}"] for k in plan.parameters)
    return {"model": largest}.get(offload, 0), plan.transient


def check_memory(cfg: SuperGenConfig, device: torch.device, loaded: bool = False) -> None:
    """Refuse a render the planner's estimate says cannot fit on ``device``, with what would make it fit.

    Args:
        loaded: the model's weights are already resident (they count as available then).

    Models the planner does not know (it reads Wan architectures) are not checked (an info line says so).
    ``model.memory_check=false`` turns the check off.
    """
    if not cfg.model.memory_check:
        return
    from .planner import architecture, human, make_plan

    try:
        arch = architecture(cfg.model.name)
    except SuperGenError as exc:
        logger.info("memory check skipped: %s", exc)
        return
    arch = replace(arch, counted=arch.parameters())  # counted once, reused by the searches below
    if device.type == "cpu":  # the encoders are parked on the host, which is this device
        cfg = replace(cfg, encoders=replace(cfg.encoders, park=False))
    plan = make_plan(cfg, arch)
    weights, transient = device_need(plan, cfg.model.offload)
    available = available_memory(device) + (weights if loaded else 0)
    if weights + transient <= available:
        return

    def need(candidate: SuperGenConfig, frames: int | None = None) -> int:
        return sum(device_need(make_plan(candidate, arch, num_frames=frames), candidate.model.offload))

    hints = []
    # Every stage's memory is a maximum of terms affine in the latent frame count, so the need is
    # convex in it and the chord from 1 frame to this render's count never underestimates it: the
    # frame count the chord allows is sure to fit (two plans instead of a search).
    step, one = arch.vae_scale[0], need(cfg, 1)
    if one <= available and plan.num_frames > step:
        per_step = (weights + transient - one) / ((plan.num_frames - 1) // step)
        hints.append(f"--num-frames {1 + step * int((available - one) // per_step)}")
    if plan.memory["block_cache"] and need(replace(cfg, cache=replace(cfg.cache, block=replace(cfg.cache.block, enabled=False)))) <= available:
        hints.append(f"cache.block.enabled=false (its state is {human(plan.memory['block_cache'])})")
    if device.type == "cuda":
        for offload in ("model", "sequential"):
            if cfg.model.offload == "none" and need(replace(cfg, model=replace(cfg.model, offload=offload))) <= available:
                hints.append(f"model.offload={offload}")
                break
        hints.append("more ranks (torchrun: tiles and VAE tiles are split across GPUs)")
    raise SuperGenError(
        f"{plan.size[0]}x{plan.size[1]}x{plan.num_frames} (height x width x frames) needs about "
        f"{human(weights + transient)} on {device} (planner estimate: {human(weights)} weights + "
        f"{human(transient)} for the {plan.peak_stage} stage); {human(available)} is available. "
        f"It fits with {' or '.join(hints) if hints else 'a smaller size'}; --no-memory-check "
        f"(model.memory_check=false) tries anyway"
    )


def call_arguments(job: JobConfig) -> dict[str, Any]:
    """The :class:`~supergen.pipeline.SuperGenPipeline` call arguments a job's fields give."""
    return dict(prompt=job.prompt, negative_prompt=job.negative_prompt, image=job.image, height=job.height,
                width=job.width, num_frames=job.num_frames)


@dataclass
class Rendered:
    """One finished job."""

    #: The :class:`~supergen.pipeline.SuperGenPipelineOutput`, frames as ``uint8`` (``(1, F, H, W, 3)``).
    output: Any
    seed: int
    #: The written video (None on ranks other than the group's leader, or when not asked to write).
    path: Path | None


@dataclass
class Runtime:
    """A loaded model on this process' device, and the ranks it renders with.

    Attributes:
        group: the :class:`~supergen.parallel.TileGroup` of this process, or None without a launcher.
    """

    config: SuperGenConfig
    pipe: Any
    group: Any
    device: torch.device
    #: The config whose memory check already passed (before the load): not checked again.
    checked: SuperGenConfig | None = None

    @classmethod
    def start(cls, config: SuperGenConfig, quiet: bool = False, load: bool = True) -> "Runtime":
        """Join the launcher's ranks (if any) and load ``config.model`` on this rank's device."""
        from . import parallel

        group = parallel.init(config)
        device = group.device if group is not None else resolve_device(config.model.device)
        if group is not None and group.global_rank != 0:
            # Logs come from rank 0 only (the other ranks' progress bars are disabled below).
            logging.getLogger("supergen").setLevel(logging.ERROR)
        runtime = cls(config, None, group, device)
        if load:
            check_memory(config, device)  # before the (multi-GB) load
            runtime.checked = config
            runtime.load(quiet)
        return runtime

    def load(self, quiet: bool = False) -> None:
        """Load ``config.model`` on this rank's device (progress bars on global rank 0 only)."""
        self.pipe = load_pipeline(self.config.model, self.device)
        self.pipe.set_progress_bar_config(disable=quiet or not (self.group is None or self.group.global_rank == 0), leave=False)

    @property
    def leader(self) -> bool:
        """Whether this process writes the group's outputs and speaks for it."""
        return self.group is None or self.group.is_leader

    def render(
        self,
        cfg: SuperGenConfig,
        output: str | Path | None = None,
        sketch_output: str | Path | None = None,
        image: Any | None = None,
        sketch_video: np.ndarray | None = None,
        callback_on_stage: Callable[[str, dict], None] | None = None,
        callback_on_step_end: Callable | None = None,
    ) -> Rendered:
        """Render the job ``cfg.job`` with the method ``cfg``; on the leader, write it to ``output``.

        Args:
            image: overrides ``cfg.job.image`` (an image already in memory, e.g. an upload).
            sketch_video: overrides ``cfg.job.sketch_video``: frames ``(F, h, w, 3)`` uint8 already read
                (``supergen upscale`` reads and pads them).
            sketch_output: also write the sketch there (when the render has one).
        """
        from .pipeline import SuperGenPipeline
        from .videoio import read_video, write_video

        if cfg is not self.checked:
            check_memory(cfg, self.device, loaded=self.pipe is not None)
        if sketch_video is None and cfg.job.sketch_video is not None:
            sketch_video = read_video(cfg.job.sketch_video)
        generator, seed = seeded_generator(cfg.job.seed)
        arguments = call_arguments(cfg.job)
        if image is not None:
            arguments["image"] = image
        # "uint8": the decode converts each finished strip of rows to uint8 at once, and the frames go to
        # the host and the encoder a chunk at a time: never a float copy of the whole video, on either side.
        out = SuperGenPipeline(self.pipe, cfg, self.group)(
            **arguments, sketch_video=sketch_video, generator=generator, output_type="uint8",
            callback_on_stage=callback_on_stage, callback_on_step_end=callback_on_step_end,
        )
        path = None
        if output is not None and self.leader:
            path = write_video(output, uint8_chunks(out.frames[0]), fps=cfg.output.fps, quality=cfg.output.quality)
            if sketch_output is not None and out.sketch is not None:
                write_video(sketch_output, uint8_chunks(out.sketch[0]), fps=cfg.output.fps, quality=cfg.output.quality)
        return Rendered(out, seed, path)


#: Host bytes of one chunk of frames on its way to the encoder (5 frames at 4K, 16 at 720p and below).
CHUNK_BYTES = 128 * 2**20


def uint8_chunks(video: torch.Tensor, size: int | None = None) -> Iterator[np.ndarray]:
    """A ``uint8`` output video ``(F, H, W, 3)`` (on any device) as ``(≤size, H, W, 3)`` host numpy chunks,
    so the host holds one chunk at a time when the frames live on a GPU. ``size``: frames per chunk;
    default as many as fit in :data:`CHUNK_BYTES` (at least one, at most 16)."""
    if size is None:
        size = max(1, min(16, CHUNK_BYTES // max(1, video[0].numel())))
    for start in range(0, video.shape[0], size):
        yield video[start:start + size].cpu().numpy()
