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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

import torch

from .config import JobConfig, ModelConfig, SuperGenConfig
from .errors import SuperGenError
from .plan import RenderPlan, plan_render
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
    from .families import family_of
    from .builtin import load_pipeline as load_named

    dtype = getattr(torch, model.dtype)
    pipe = load_named(model.name, dtype, "cpu")
    defaults = family_of(type(pipe).__name__).component_dtypes
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


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "process_cpu_count"):  # Python 3.13+
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def fix_cpu_threads(requested: int | None) -> int:
    """Set torch's intra-op thread count for a render on the CPU and return it.

    ``requested`` (``model.cpu_threads``) or, when None, every usable core. Deliberately not
    ``OMP_NUM_THREADS``: launchers set it (torchrun to 1 per rank, Ray to a worker's CPUs), and the
    thread count changes a CPU render's low bits, so the same seed would give a different video
    under each launcher and rank count (issue #28 saw 2 uint8 levels with the region cache).
    """
    threads = requested if requested is not None else usable_cores()
    torch.set_num_threads(threads)
    return threads


def plan_job(cfg: SuperGenConfig, rules, sketch_video_size: tuple[int, int] | None = None) -> RenderPlan:
    """The render plan of the job ``cfg.job`` with the method ``cfg`` on a model's size rules: what the
    runtime checks against the device and hands to the pipeline."""
    job = cfg.job
    return plan_render(cfg, rules, job.height, job.width, job.num_frames, sketch_video_size=sketch_video_size)


def check_memory(cfg: SuperGenConfig, device: torch.device, render: RenderPlan | None = None, loaded: bool = False) -> RenderPlan | None:
    """Plan the render on the model's architecture (so a bad size, tile or position length is refused
    before any weights load) and refuse it when the cost estimate says it cannot fit on ``device``
    (:func:`~supergen.cost.check_fits`; skipped with ``model.memory_check=false``). Returns the
    render's plan (``render``, or planned here), or None when the model's architecture is not known
    (an info line says so).

    Args:
        loaded: the model's weights are already resident (they count as available then).
    """
    from .cost import architecture, check_fits

    try:
        arch = architecture(cfg.model.name)
    except SuperGenError as exc:
        logger.info("pre-load checks skipped: %s", exc)
        return render
    render = render or plan_job(cfg, arch.rules)
    if cfg.model.memory_check:
        check_fits(cfg, arch, render, device, loaded)
    return render


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
    #: The config whose memory check already passed (before the load) and the plan it checked: that
    #: render is not planned again.
    checked: SuperGenConfig | None = None
    checked_plan: RenderPlan | None = None

    @classmethod
    def start(cls, config: SuperGenConfig, quiet: bool = False, load: bool = True) -> "Runtime":
        """Join the launcher's ranks (if any) and load ``config.model`` on this rank's device."""
        from . import parallel

        group = parallel.init(config)
        device = group.device if group is not None else resolve_device(config.model.device)
        if device.type == "cpu":
            fix_cpu_threads(config.model.cpu_threads)
        if group is not None and group.global_rank != 0:
            # Logs come from rank 0 only (the other ranks' progress bars are disabled below).
            logging.getLogger("supergen").setLevel(logging.ERROR)
        runtime = cls(config, None, group, device)
        if load:
            # Before the (multi-GB) load: planned on the architecture's size rules, the same as the loaded model's.
            runtime.checked, runtime.checked_plan = config, check_memory(config, device)
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

        if sketch_video is None and cfg.job.sketch_video is not None:
            sketch_video = read_video(cfg.job.sketch_video)
        pipeline = SuperGenPipeline(self.pipe, cfg, self.group)
        # One plan per render, made here and handed down: the pre-load check's when this is its job
        # (without a sketch video, whose size it did not know), else planned on the loaded model and checked.
        plan = self.checked_plan if cfg is self.checked and sketch_video is None else None
        if plan is None:
            sketch_size = None if sketch_video is None else tuple(sketch_video.shape[1:3])
            plan = check_memory(cfg, self.device, plan_job(cfg, pipeline.adapter, sketch_size), loaded=self.pipe is not None)
        generator, seed = seeded_generator(cfg.job.seed)
        arguments = call_arguments(cfg.job)
        if image is not None:
            arguments["image"] = image
        # "uint8": the decode converts each finished strip of rows to uint8 at once, and the frames go to
        # the host and the encoder a chunk at a time: never a float copy of the whole video, on either side.
        out = pipeline(
            **arguments, plan=plan, sketch_video=sketch_video, generator=generator, output_type="uint8",
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
