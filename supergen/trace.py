"""Full-size dry runs without weights or a GPU (``supergen plan --trace``).

The real architecture — any family's: :meth:`~supergen.cost.Architecture.build` makes the
family's diffusers pipeline from its classes and full-size configs — is built with *fake tensors*
(:class:`torch._subclasses.fake_tensor.FakeTensorMode`: shapes and dtypes, no storage) and the real
:class:`~supergen.pipeline.SuperGenPipeline` renders with it — sketch, upscale, encode, re-noise,
refinement steps, decode, output conversion. A dispatch mode (:class:`MemoryTrace`) watches every
operation and records, per stage, the peak of live tensor bytes, the FLOPs
(:class:`torch.utils.flop_counter.FlopCounterMode`) and the largest single allocation.

What is not traced, and said so in the output:

- the text encoders: the adapter's ``encode_text`` returns embeddings of their output shapes
  (:attr:`~supergen.families.FamilySpec.prompt_shapes`, :class:`TracedAdapter`; diffusers' T5 code trims padding with
  data-dependent slicing, and HunyuanVideo-I2V's LLaVA prompt crops its template at token positions,
  which fake tensors cannot run); their weights are counted exactly from the configs and added to
  the resident bytes. Image encoders (Wan 2.1 I2V's CLIP) run;
- transformer blocks beyond ``layers`` per block list (HunyuanVideo has two): the peak of inference
  does not depend on the block count (each block's activations are freed before the next), so a few
  blocks are traced and the missing blocks' parameter bytes are added exactly;
- steps: a few sketch and refinement steps are traced (peaks do not depend on the step count).

Fake tensors also prove what the refinement step does *not* do: any read of a device value on the
host (``.item()``, ``.tolist()``, ``nonzero``, boolean-mask indexing) raises under them, so a trace
that completes has none except the declared ones (:data:`DECLARED_SYNCS`). Tensors built from host
data (Python lists, numpy, CPU tables) are tracked too: in the refinement step, every use of such a
tensor with more than one element next to device data is reported as a host-to-device copy.

Two variants: :func:`trace_pipeline` traces diffusers' own pipeline call (no supergen) at the
model's native size, the reference of the "≤ 1.3× the plain pipeline" target; with
``model.offload=group``, :func:`trace_render` applies diffusers' block-level group offloading to the
fake pipeline and counts only the weights its hooks have onloaded (:class:`GroupOffloadMeter`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import weakref
from dataclasses import dataclass, field, replace
from typing import ContextManager, Iterator

import torch

from . import compat
from .compat import TorchDispatchMode, returns_alias, tree_flatten
from .config import SuperGenConfig
from .errors import SuperGenError
from .families import transformers_of
from .cost import Architecture, DTYPE_BYTES, ResourcePlan, component_dtype, estimate, human, flops as human_flops, with_native_sketch
from .pipeline import StageObserver
from .plan import STAGES

logger = logging.getLogger("supergen")

#: Host reads per refinement step that the method needs (and that a GPU run pays): the timestep
#: value (step statistics; Wan 2.2's choice of expert, as in diffusers' own loop). Timesteps are set
#: up on the host by the scheduler, so the trace runs them as real tensors.
DECLARED_SYNCS = ("timestep value per step (StepStats.timestep, Wan 2.2 expert choice)",)

#: Host work on real tensors is computed for real up to this many output elements (an image).
HOST_NUMEL = 1 << 26



@dataclass
class StageTrace:
    """What one stage did, measured on fake tensors."""

    peak: int = 0  # live bytes at the stage's peak, resident weights included
    flops: int = 0
    largest: int = 0  # bytes of the largest single allocation
    largest_what: str = ""
    peak_what: str = ""  # the largest live tensors at the peak
    peak_weights: int = 0  # of ``peak``, the weights on the device then
    transient: int = 0  # the most live bytes beyond the weights at any moment of the stage
    cpu_seconds: float = 0.0  # CPU time the trace of this stage took


@dataclass
class StagedTrace:
    """What any trace measured: one :class:`StageTrace` per stage, in the order they ran."""

    name: str
    size: tuple[int, int]
    num_frames: int
    stages: dict[str, StageTrace]
    resident: int  # bytes of weights on the device for the whole call (traced + added)

    @property
    def peak(self) -> int:
        return max(s.peak for s in self.stages.values())

    @property
    def peak_stage(self) -> str:
        return max(self.stages, key=lambda s: self.stages[s].peak)

    @property
    def largest(self) -> tuple[int, str]:
        stage = max(self.stages.values(), key=lambda s: s.largest)
        return stage.largest, stage.largest_what


@dataclass
class TraceResult(StagedTrace):
    """A traced render: per-stage measurements next to the planner's estimate."""

    added: dict[str, int]  # weights counted from the config but not built (text encoder, missing blocks)
    plan: ResourcePlan
    host_copies: list[str] = field(default_factory=list)  # host-to-device copies inside refinement steps
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    offload: str = "none"  # model.offload traced: none, or group (only the onloaded groups' weights are resident)


class MemoryTrace(TorchDispatchMode):
    """Live bytes of the tensors created under it (by storage), per stage.

    Enter it *inside* a ``FakeTensorMode`` so it sees every operation first, with host (real)
    tensors still recognisable as such. With ``real=True`` (no fake mode: :func:`measure_render`)
    every tensor is device data and counted: the same bookkeeping on a real execution.
    """

    def __init__(self, resident: int, real: bool = False):
        super().__init__()
        self.resident, self.real = resident, real
        self.live: dict[int, tuple[int, str]] = {}
        self.current = 0
        self.high = 0  # highest ``resident + current`` since the last :meth:`ShapeMemo` mark
        self.stage = "setup"
        self.stages: dict[str, StageTrace] = {}
        self.host_copies: list[str] = []
        #: In the refinement stage, tensors built without a device are real host tensors (the
        #: default device is set to ``meta`` to tell them from those built on the pipeline's device) ...
        self.host_default = False
        #: Storages of real tensors that stand for device tensors of a GPU run (the scheduler's
        #: timesteps, set up on the host here) and of host work derived from them: not copies.
        self.device_values: set[int] = set()
        #: ... and inside a refinement step their use with device data — a host-to-device copy on a
        #: GPU — is reported (the refiner's preload before the first step may copy).
        self.watch_copies = False

    def set_stage(self, name: str) -> None:
        self.stage = name
        trace = self.stages.setdefault(name, StageTrace())
        self._note_peak(trace)

    def _note_peak(self, trace: StageTrace, extra: int = 0) -> None:
        total = self.resident + self.current + extra
        self.high = max(self.high, total)
        trace.transient = max(trace.transient, self.current + extra)
        if total > trace.peak:
            trace.peak, trace.peak_weights = total, self.resident
            top = sorted(self.live.values(), reverse=True)[:3]
            trace.peak_what = ", ".join(f"{what} {human(n)}" for n, what in top)

    def mark_device(self, t: torch.Tensor) -> None:
        """Count the real tensor ``t`` (and host work derived from it) as device data, not a host copy."""
        key = _storage_key(t)
        if key not in self.device_values:
            self.device_values.add(key)
            weakref.finalize(t.untyped_storage(), self.device_values.discard, key)

    def _free(self, key: int) -> None:
        nbytes, _ = self.live.pop(key, (0, ""))
        self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from .compat import DataDependentOutputException, DynamicOutputShapeException, unset_fake_temporarily

        kwargs = kwargs or {}
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if not self.real and inputs and all(_is_real(t) for t in inputs):
            # Host work on real tensors (scheduler tables, timesteps, the input image) stays real, as
            # on a GPU run, so the host may read its values; it is not device memory. Unless its
            # output is large (a video made from the image): then it is traced as device memory.
            try:
                shapes = [] if func is compat.LOCAL_SCALAR_DENSE else func(*args, **kwargs)
            except (DataDependentOutputException, DynamicOutputShapeException):
                # Its output's size depends on the values (nonzero: diffusers' schedulers look their
                # step index up that way): host work on host tables, bounded by its inputs.
                shapes = []
            if all(t.numel() <= HOST_NUMEL for t in tree_flatten(shapes)[0] if isinstance(t, torch.Tensor)):
                with unset_fake_temporarily():
                    out = func(*args, **kwargs)
                if any(_storage_key(t) in self.device_values for t in inputs):
                    for t in tree_flatten(out)[0]:
                        if isinstance(t, torch.Tensor):
                            self.mark_device(t)
                return out
        if self.host_default:
            device = kwargs.get("device")
            if device is not None and torch.device(device).type == "meta":
                # Built without a device (see host_default): a real host tensor, as in a GPU run.
                with unset_fake_temporarily():
                    return func(*args, **dict(kwargs, device=torch.device("cpu")))
        if self.watch_copies:
            host = [t for t in inputs if _is_real(t) and t.numel() > 1 and _storage_key(t) not in self.device_values]
            if host:
                self.host_copies.append(f"{func}: host tensor {tuple(host[0].shape)} used with device data")
        out = func(*args, **kwargs)
        trace = self.stages.setdefault(self.stage, StageTrace())
        if returns_alias(func):
            # A view or in-place result allocates nothing, also where the fake mode stood a fake copy
            # in for a host tensor (a strip written into the host's output video).
            self._note_peak(trace)
            return out
        # A view (or in-place result) of an input allocates nothing: e.g. ``t()`` of a weight, which
        # exists since before the trace (counted in ``resident``), not in ``live``.
        existing = {_storage_key(t) for t in inputs if t.device.type != "meta"}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = compat.storage_key(storage)
            if key in self.live or key in existing:
                continue
            nbytes = storage.nbytes()
            what = f"{func.__name__}{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"
            self.live[key] = (nbytes, what)
            self.current += nbytes
            weakref.finalize(storage, self._free, key)
            if nbytes > trace.largest:
                trace.largest, trace.largest_what = nbytes, what
        self._note_peak(trace)
        return out

class GroupOffloadMeter:
    """Counts diffusers' block-level group offloading on the device: the weights of the onloaded groups.

    diffusers' hooks (``enable_group_offload``) are applied to the fake pipeline for real and decide
    when which group of modules is onloaded and offloaded; in the trace host and device are the same
    fake CPU, so the moves themselves are not run: :meth:`patched` turns each group's ``onload_`` /
    ``offload_`` into adding / removing its parameter and buffer bytes on the :class:`MemoryTrace`'s
    resident weights. With CUDA streams (what ``supergen render --offload group`` uses on a GPU) a
    block's hook also prefetches the next block while it runs: ``prefetch`` counts each onloaded block
    group twice (itself and the next one, same-shaped for transformer blocks).
    """

    def __init__(self, memory: MemoryTrace, prefetch: bool = True):
        self.memory, self.prefetch = memory, prefetch
        self.on_device: dict[int, int] = {}
        self.groups: set[int] = set()

    def _bytes(self, group) -> int:
        tensors = [t for m in group.modules for t in (*m.parameters(), *m.buffers())] + [*group.parameters, *group.buffers]
        nbytes = sum({compat.storage_key(t.untyped_storage()): t.untyped_storage().nbytes() for t in tensors}.values())
        # A block group's hook sits on its own block; the group of a module's layers outside its block
        # lists (led by that module, onloaded by itself) is not prefetched.
        block = self.prefetch and any(m is group.offload_leader for m in group.modules)
        return nbytes * (2 if block else 1)

    def onload(self, group) -> None:
        self.groups.add(id(group))
        if id(group) not in self.on_device:
            self.on_device[id(group)] = nbytes = self._bytes(group)
            self.memory.resident += nbytes
            self.memory._note_peak(self.memory.stages.setdefault(self.memory.stage, StageTrace()))

    def offload(self, group) -> None:
        self.memory.resident -= self.on_device.pop(id(group), 0)

    def patched(self) -> ContextManager[None]:
        """Inside the block, every group's ``onload_`` / ``offload_`` counts its bytes instead of moving them."""
        # Functions, not bound methods: as class attributes they bind the group they are called on.
        return compat.methods_replaced(compat.ModuleGroup, onload_=lambda group: self.onload(group),
                                       offload_=lambda group: self.offload(group))


class StageMeter:
    """Moves a :class:`MemoryTrace` from stage to stage and books each stage's FLOPs and CPU time."""

    def __init__(self, memory: MemoryTrace, flop_counter, name: str):
        self.memory, self.flop_counter, self.name = memory, flop_counter, name
        self.stage, self.flops, self.cpu = memory.stage, 0, time.process_time()

    def enter(self, stage: str) -> None:
        """End the current stage (its FLOPs and CPU time go to its :class:`StageTrace`) and start ``stage``."""
        now, total = time.process_time(), self.flop_counter.get_total_flops()
        done = self.memory.stages.setdefault(self.stage, StageTrace())
        done.cpu_seconds += now - self.cpu
        done.flops += total - self.flops
        logger.info("trace %s: %s done in %.1f s CPU; %s", self.name, self.stage, now - self.cpu, stage)
        self.stage, self.flops, self.cpu = stage, total, now
        self.memory.set_stage(stage)


class ShapeMemo:
    """Traces a function once per input shape and replays it for the next calls of that shape.

    The VAE runs once per spatial tile (hundreds at 4K) with identical shapes, so identical fake
    work: a replay adds the first call's transient peak and FLOPs and returns an empty output of
    the recorded shape, which keeps a 4K trace to minutes. Exact for fake tensors, whose work
    depends only on shapes.

    The tiles at the canvas' bottom and right edges are smaller (up to four more shapes per
    function, each a VAE trace of its own, tens of seconds at 81 frames): a call whose window is
    smaller than a traced one in height and width only (``(..., h, w)``, everything else equal) is
    *scaled* from it: transient bytes and FLOPs in proportion to the area (the VAE's convolutions
    are linear in it; its one attention, at the lowest resolution, is counted linearly too) and
    the output's spatial size in the traced ratio. Such calls are counted in ``scaled``.
    """

    def __init__(self, memory: MemoryTrace, flop_counter):
        self.memory, self.flop_counter = memory, flop_counter
        self.seen: dict[tuple, tuple[int, int, torch.Size, torch.dtype]] = {}
        self.replayed_flops: dict[str, int] = {}
        self.calls = self.replays = self.scaled = 0

    def _scalable(self, key: tuple) -> tuple[tuple, float] | None:
        """A traced call ``key`` can be scaled from (the largest), and the area ratio; None if none."""
        shape, rest = key[0], key[1:]
        best = None
        for seen in self.seen:
            other = seen[0]
            if seen[1:] != rest or len(other) != len(shape) or other[:-2] != shape[:-2]:
                continue
            if other[-2] >= shape[-2] and other[-1] >= shape[-1] and (best is None or other[-2] * other[-1] > best[0][-2] * best[0][-1]):
                best = seen
        if best is None:
            return None
        _, _, out, _ = self.seen[best]
        # The output's spatial size must scale to whole numbers (VAE windows are multiples of 8 px).
        for i in (-2, -1):
            if (shape[i] * out[i]) % best[0][i]:
                return None
        return best, shape[-2] * shape[-1] / (best[0][-2] * best[0][-1])

    def _replay(self, x: torch.Tensor, transient: int, flops: int, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        memory = self.memory
        memory._note_peak(memory.stages.setdefault(memory.stage, StageTrace()), transient)
        self.replayed_flops[memory.stage] = self.replayed_flops.get(memory.stage, 0) + flops
        return torch.empty(shape, dtype=dtype, device=x.device)

    def __call__(self, fn, x: torch.Tensor, *args) -> torch.Tensor:
        """``fn(x, *args)``, traced for the first call of its shape, replayed or scaled for the next ones."""
        self.calls += 1
        key = (tuple(x.shape), x.dtype, *args)
        memory = self.memory
        if key in self.seen:
            self.replays += 1
            return self._replay(x, *self.seen[key])
        scalable = self._scalable(key)
        if scalable is not None:
            self.scaled += 1
            (traced, area) = scalable
            transient, flops, out, dtype = self.seen[traced]
            shape = torch.Size((*out[:-2], *(key[0][i] * out[i] // traced[0][i] for i in (-2, -1))))
            return self._replay(x, int(transient * area), int(flops * area), shape, dtype)
        start, flops = memory.resident + memory.current, self.flop_counter.get_total_flops()
        memory.high = start
        out = fn(x, *args)
        self.seen[key] = (memory.high - start, self.flop_counter.get_total_flops() - flops, out.shape, out.dtype)
        return out


def _storage_key(t: torch.Tensor) -> int:
    return compat.storage_key(t.untyped_storage())


def vectorised_blend(dim: int):
    """diffusers' ``vae.blend_v`` (``dim=-2``) / ``blend_h`` (``-1``) as one operation instead of one per row.

    The same arithmetic (``a * (1 - i/e) + b * (i/e)`` on the ``e`` overlapping rows, written into
    ``b``), so the same shapes and outputs; its temporaries span ``e`` rows instead of one (tens of MB
    at 4K). Diffusers' row loop is ~10^5 fake operations per 4K decode, most of a trace's time.
    """

    def blend(a: torch.Tensor, b: torch.Tensor, blend_extent: int) -> torch.Tensor:
        extent = min(a.shape[dim], b.shape[dim], blend_extent)
        if extent == 0:
            return b
        shape = [1] * b.ndim
        shape[dim] = extent
        weight = (torch.arange(extent, dtype=torch.float64) / extent).view(shape).to(b.dtype)
        ours = b.narrow(dim, 0, extent)
        ours.copy_(a.narrow(dim, a.shape[dim] - extent, extent) * (1 - weight) + ours * weight)
        return b

    return blend


def _is_real(t: torch.Tensor) -> bool:
    from .compat import FakeTensor

    return not isinstance(t, FakeTensor) and t.device.type != "meta"


# ---- the fake model ---------------------------------------------------------------------------


def _unfaked(fn):
    """``fn`` run on real tensors: scheduler set-up is host work (and its timestep look-ups are
    data-dependent, which fake tensors cannot run)."""
    from .compat import unset_fake_temporarily

    @functools.wraps(fn)  # keeps the signature: diffusers' retrieve_timesteps inspects it for sigmas=
    def call(*args, **kwargs):
        with unset_fake_temporarily():
            return fn(*args, **kwargs)

    return call


def _host_scheduler(scheduler_class: type) -> type:
    """A subclass of ``scheduler_class`` whose ``set_timesteps`` runs on real tensors."""
    return type(scheduler_class.__name__, (scheduler_class,), {"set_timesteps": _unfaked(scheduler_class.set_timesteps)})


def _text_embeddings(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, device, guided: bool) -> dict[str, torch.Tensor | None]:
    """Embeddings of the text encoders' output ``shapes`` for both guidance branches (the unconditional
    one None unless ``guided``): zeros, and masks of ones. Keys are the pipelines' own argument names."""
    from .adapters import BRANCHES

    embeds: dict[str, torch.Tensor | None] = {}
    for branch, prefix in BRANCHES.items():
        used = branch == "cond" or guided
        for key, shape in shapes.items():
            make = torch.ones if "mask" in key else torch.zeros
            embeds[prefix + key] = make((1, *shape), dtype=dtype, device=device) if used else None
    return embeds


def _param_bytes(module: torch.nn.Module) -> int:
    storages = {}
    for t in [*module.parameters(), *module.buffers()]:
        storages[compat.storage_key(t.untyped_storage())] = t.untyped_storage().nbytes()
    return sum(storages.values())


def fake_pipeline(arch: Architecture, dtypes: dict[str, torch.dtype], layers: int | None):
    """``arch``'s real diffusers pipeline built on fake tensors (call inside a ``FakeTensorMode``):
    the transformer(s) with at most ``layers`` of each block list, the VAE, the image encoder if any,
    in the component ``dtypes``; its scheduler sets its timesteps on the host.

    Returns the pipeline and the weights' bytes not built: each text encoder (not run, see
    :class:`TracedAdapter`) and ``transformer blocks`` (when ``layers`` is below the config's).
    """
    from .compat import unset_fake_temporarily

    with unset_fake_temporarily():  # host tables, as in a GPU run; parameters counted on ``meta``
        plain = arch.scheduler()
        scheduler = _host_scheduler(type(plain)).from_config(plain.config)
        counts = arch.parameters()
    pipe = arch.build(dtypes, layers, encoders=("image_encoder",), scheduler=scheduler)
    b = DTYPE_BYTES[str(dtypes["transformer"]).removeprefix("torch.")]
    added = {name: counts[name] * b for name in arch.encoder_configs() if getattr(pipe, name, None) is None}
    experts = transformers_of(pipe)
    if layers is not None and layers < max(arch.transformer[key] for key in arch.spec.modules.block_counts):
        added["transformer blocks"] = counts["transformer"] * b - sum(_param_bytes(e) for e in experts)
    pipe.set_progress_bar_config(disable=True)
    return pipe, added


# ---- the traced render ------------------------------------------------------------------------


def trace_steps(config: SuperGenConfig, steps: int) -> SuperGenConfig:
    """``config`` with ``steps`` sketch steps and the shortest refinement schedule giving ``steps`` steps at its strength."""
    strength = config.refine.strength
    total = next(n for n in range(1, 10_000) if int(n * strength) >= min(steps, n))
    return replace(config, sketch=replace(config.sketch, num_inference_steps=steps),
                   refine=replace(config.refine, num_inference_steps=total))


def trace_render(
    config: SuperGenConfig,
    arch: Architecture,
    height: int,
    width: int,
    num_frames: int,
    steps: int = 2,
    layers: int | None = 2,
) -> TraceResult:
    """Render ``height × width × num_frames`` with ``arch`` on fake tensors through :class:`SuperGenPipeline`.

    Args:
        config: the method and model config (``model.dtype``, ``model.vae_dtype`` are used).
        steps: sketch and refinement steps traced (peaks do not depend on the count).
        layers: transformer blocks built per block list and expert (None: all); the rest are added as parameter bytes.
    """
    from PIL import Image
    from .compat import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    from .adapters import adapter_class
    from .pipeline import SuperGenPipeline

    config = with_native_sketch(config, arch)
    offload = config.model.offload
    if offload not in ("none", "group"):
        raise SuperGenError(f"the trace models model.offload=none or group (block-level group offloading); got {offload!r}")
    traced_cfg = trace_steps(config, steps)
    plan = estimate(config, arch, height=height, width=width, num_frames=num_frames)
    dtypes = {name: getattr(torch, component_dtype(config, arch, name)) for name in ("transformer", "vae", "image_encoder")}
    start = time.perf_counter()
    memory = MemoryTrace(0)
    offloader = GroupOffloadMeter(memory) if offload == "group" else None
    with FakeTensorMode(allow_non_fake_inputs=True), (offloader.patched() if offloader else contextlib.nullcontext()):
        pipe, added = fake_pipeline(arch, dtypes, layers)
        text_encoders = sum(v for k, v in added.items() if k != "transformer blocks")
        if offloader is None:
            resident = sum(_param_bytes(m) for m in pipe.components.values() if isinstance(m, torch.nn.Module)) + sum(added.values())
        else:
            # What supergen.runtime.place does for model.offload=group (on CUDA with streams, see the meter).
            # Every component gets hooks: no weights are on the device until a hook onloads them.
            pipe.enable_group_offload(onload_device=torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1)
            resident = 0
        memory.resident = resident
        flop_counter = FlopCounterMode(display=False)
        memo = ShapeMemo(memory, flop_counter)
        shapes = arch.spec.prompt_shapes(arch.transformer, arch.image_to_video)
        adapter = traced_adapter(adapter_class(pipe))(pipe, memory, memo, shapes, dtypes["transformer"],
                                                      text_encoders if offloader is not None else 0)
        sg = SuperGenPipeline(pipe, traced_cfg, adapter=adapter)
        stages = StageMeter(memory, flop_counter, arch.name)
        parked: dict[str, int] = {}
        observer = _TraceObserver(stages, memory, pipe, added if offloader is None else {}, added, parked)
        image = Image.new("RGB", (width, height), (128, 128, 128)) if arch.image_to_video else None
        # diffusers' row-by-row VAE blends as one operation each (the same arithmetic, see vectorised_blend).
        blends = compat.methods_replaced(pipe.vae, blend_v=vectorised_blend(-2), blend_h=vectorised_blend(-1))
        try:
            with flop_counter, memory, blends:
                sg(prompt="a traced render", image=image, height=height, width=width, num_frames=num_frames,
                   generator=torch.Generator().manual_seed(0), output_type="uint8", observers=[observer])
                stages.enter("end")
        finally:
            torch.set_default_device(None)
    stages = {name: memory.stages[name] for name in STAGES if name in memory.stages}
    for name, trace in stages.items():
        trace.flops += memo.replayed_flops.get(name, 0)
    notes = [f"VAE calls: {memo.calls}, {memo.replays} of them replayed from an earlier call of the same shape, "
             f"{memo.scaled} (smaller edge windows) scaled by area from a larger traced one"]
    text = [name for name in added if name != "transformer blocks"]
    notes += [f"text encoders not run (embeddings of their output shape); their weights added: "
              + ", ".join(f"{name} {human(added[name])}" for name in text)]
    if "transformer blocks" in added:
        notes.append(f"at most {layers} of the {arch.num_blocks} transformer blocks built per block list and expert; "
                     f"the other blocks' {human(added['transformer blocks'])} of weights added (FLOPs are of the traced blocks)")
    if parked:
        notes.append("parked on the host once used (encoders.park; text encoders after the prompts, image encoder after the sketch): "
                     + ", ".join(f"{name} {human(n)}" for name, n in parked.items()))
    refine_steps = int(traced_cfg.refine.num_inference_steps * traced_cfg.refine.strength)
    notes.append(f"{steps} sketch and {refine_steps} refinement steps traced; output_type='uint8' (what supergen render writes)")
    if offloader is not None:
        notes.append(f"model.offload=group: diffusers' block-level hooks applied to the fake pipeline ({len(offloader.groups)} groups "
                     "onloaded); only onloaded groups' weights are on the device, each block group counted twice (the stream "
                     "prefetches the next block while one runs); the text encoder's weights while it encodes (one group: "
                     "UMT5 has no block list of its own)")
    return TraceResult(arch.name, (height, width), plan.num_frames, stages, resident, added, plan,
                       memory.host_copies, time.perf_counter() - start, notes, offload)


def measure_render(pipe, config: SuperGenConfig, height: int, width: int, num_frames: int, steps: int = 2) -> StagedTrace:
    """Render for real with ``pipe`` (a loaded diffusers pipeline) and count, per stage, the live tensor
    bytes as :func:`trace_render` does on fake tensors (:class:`MemoryTrace` with ``real=True``): the
    tracer's check against a real execution (``tests/test_trace_reality.py``).

    The render is the one :func:`trace_render` traces for the same config: native sketch, ``steps``
    sketch and refinement steps, ``output_type='uint8'``. What differs is only what the trace models
    instead of running: the text encoder runs here (its setup stage is not comparable), diffusers'
    row-by-row VAE blend, every VAE window computed (not replayed or scaled). Buffers inside one kernel
    (convolution workspaces) are not tensors the dispatcher sees, in either.
    """
    from PIL import Image
    from torch.utils.flop_counter import FlopCounterMode

    from .pipeline import SuperGenPipeline

    arch = Architecture.from_pipeline(pipe)
    resident = sum(_param_bytes(m) for m in pipe.components.values() if isinstance(m, torch.nn.Module))
    memory = MemoryTrace(resident, real=True)
    flop_counter = FlopCounterMode(display=False)
    meter = StageMeter(memory, flop_counter, arch.name)
    sg = SuperGenPipeline(pipe, trace_steps(with_native_sketch(config, arch), steps))
    image = Image.new("RGB", (width, height), (128, 128, 128)) if arch.image_to_video else None
    with flop_counter, memory:
        sg(prompt="a traced render", image=image, height=height, width=width, num_frames=num_frames,
           generator=torch.Generator().manual_seed(0), output_type="uint8", observers=[_MeasureObserver(meter)])
        meter.enter("end")
    stages = {name: memory.stages[name] for name in STAGES if name in memory.stages}
    return StagedTrace(arch.name, (height, width), num_frames, stages, resident)


class _MeasureObserver(StageObserver):
    """:func:`measure_render`'s view of the stages: moves the :class:`StageMeter` along."""

    def __init__(self, meter: StageMeter):
        self.meter = meter

    def started(self, stage: str, info: dict) -> None:
        self.meter.enter(stage)


class _TraceObserver(StageObserver):
    """The trace's view of a render's stages: books each stage's memory, FLOPs and CPU time
    (:class:`StageMeter`), watches host copies inside refinement steps and counts parked encoders."""

    def __init__(self, meter: StageMeter, memory: MemoryTrace, pipe, stubbed: dict[str, int], added: dict[str, int],
                 freed: dict[str, int]):
        self.meter, self.memory, self.pipe, self.stubbed, self.added, self.freed = meter, memory, pipe, stubbed, added, freed

    def started(self, stage: str, info: dict) -> None:
        self.meter.enter(stage)
        # In the refinement and the decode, tensors built without a device are host tensors (the
        # decode's uint8 output video, supergen.output): ``meta`` tells them apart.
        host = stage in ("refine", "decode")
        self.memory.host_default = host
        torch.set_default_device("meta" if host else None)

    @contextlib.contextmanager
    def refinement_step(self, step: int) -> Iterator[None]:
        # Copies are reported inside refinement steps only: the preload before the first step puts
        # the tables on the device, and the scheduler's step runs outside (its tables are device
        # tensors in a real run; here real host tensors set up outside the fake mode).
        self.memory.watch_copies = True
        try:
            yield
        finally:
            self.memory.watch_copies = False

    def parked(self, names: tuple[str, ...]) -> None:
        # What the pipeline does on a GPU (here every fake tensor sits on the CPU, which it skips): the
        # encoders' weights, built or counted from the config, leave the device. Stubbed text encoders
        # count as resident (under group offload only while they encode).
        for name in names:
            module = getattr(self.pipe, name, None)
            if name in self.stubbed or (isinstance(module, torch.nn.Module) and not compat.diffusers_hooked(module)):  # as the pipeline
                freed = self.added[name] if name in self.added else _param_bytes(module)
                self.memory.resident -= freed
                self.freed[name] = freed


class TracedAdapter:
    """What the trace runs differently from a render, as overrides of :class:`~supergen.adapters.ModelAdapter`'s
    documented methods, handed to the pipeline as its adapter (``SuperGenPipeline(adapter=...)``);
    :func:`traced_adapter` puts this class before the family's adapter class:

    - ``encode_text``: the text encoders are not run; embeddings of their output shapes (the family's
      :attr:`~supergen.families.FamilySpec.prompt_shapes`, :func:`_text_embeddings`). Under group
      offloading their ``text_onload`` bytes are on the device while they would encode (diffusers'
      hooks onload UMT5 as one group: its blocks sit in ``encoder.block``, not in a block list of the top module);
    - ``schedule``: set up on the host as real tensors (data-dependent look-ups), marked as device data
      (a GPU run's timesteps live there: ``set_timesteps(device=...)``);
    - ``encode`` / ``decode``: one VAE call per window, traced once per shape and replayed (:class:`ShapeMemo`).
    """

    #: The :class:`~supergen.adapters.ModelAdapter` methods overridden; :func:`traced_adapter` checks the
    #: adapter still has them, so a rename there fails the trace instead of silently measuring more.
    OVERRIDES = ("encode_text", "schedule", "encode", "decode")

    def __init__(self, pipe, memory: MemoryTrace, memo: ShapeMemo, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype,
                 text_onload: int = 0):
        super().__init__(pipe)
        self.memory, self.memo, self.shapes, self.dtype, self.text_onload = memory, memo, shapes, dtype, text_onload

    def encode_text(self, request, guidance_scale: float) -> dict[str, torch.Tensor | None]:
        if not self.text_onload:
            return _text_embeddings(self.shapes, self.dtype, self.device, self.runs_branches(guidance_scale))
        memory = self.memory
        memory.resident += self.text_onload
        memory._note_peak(memory.stages.setdefault(memory.stage, StageTrace()))
        try:
            return _text_embeddings(self.shapes, self.dtype, self.device, self.runs_branches(guidance_scale))
        finally:
            memory.resident -= self.text_onload

    def schedule(self, *args, **kwargs) -> torch.Tensor:
        timesteps = _unfaked(super().schedule)(*args, **kwargs)
        self.memory.mark_device(timesteps)
        return timesteps

    def encode(self, video: torch.Tensor, generator) -> torch.Tensor:
        return self.memo(super().encode, video, generator)

    def decode(self, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
        return self.memo(super().decode, latents, num_frames)


def traced_adapter(family_adapter: type):
    """The adapter class the trace renders with: :class:`TracedAdapter` before ``family_adapter`` (a
    :class:`~supergen.adapters.ModelAdapter` subclass)."""
    from .adapters import ModelAdapter

    lost = [name for name in TracedAdapter.OVERRIDES if not callable(getattr(ModelAdapter, name, None))]
    if lost:
        raise SuperGenError(f"ModelAdapter has no {', '.join(lost)} any more: update supergen.trace.TracedAdapter")
    return type(f"Traced{family_adapter.__name__}", (TracedAdapter, family_adapter), {})


#: The stages of a plain diffusers call: prompt embeddings and latents, the denoising loop, the VAE decode.
PIPELINE_STAGES = ("setup", "denoise", "decode")


@dataclass
class PipelineTrace(StagedTrace):
    """A traced call of the plain diffusers pipeline (no supergen): the reference of the 1.3x target.
    ``resident`` holds every component, the text encoder included."""

    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def trace_pipeline(
    config: SuperGenConfig,
    arch: Architecture,
    height: int | None = None,
    width: int | None = None,
    num_frames: int = 81,
    steps: int = 2,
    layers: int | None = 2,
) -> PipelineTrace:
    """Trace diffusers' own ``WanPipeline.__call__`` (``WanImageToVideoPipeline`` for I2V), as a user
    calls it without supergen: every component on the device, untiled VAE decode, ``output_type="pt"``.

    Args:
        config: ``model.dtype`` and ``model.vae_dtype`` are used (the same dtypes as the supergen trace).
        height, width: the call's size; default: the architecture's native (training) size.
        steps: denoising steps traced (the peak does not depend on the count).
        layers: transformer blocks built per expert (None: all); the rest are added as parameter bytes.
    """
    from PIL import Image
    from .compat import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    if height is None or width is None:
        if arch.native_size is None:
            raise SuperGenError(f"{arch.name} records no native size; pass the plain pipeline's height and width")
        height, width = arch.native_size
    dtypes = {name: getattr(torch, component_dtype(config, arch, name)) for name in ("transformer", "vae", "image_encoder")}
    start = time.perf_counter()
    with FakeTensorMode(allow_non_fake_inputs=True):
        pipe, added = fake_pipeline(arch, dtypes, layers)
        resident = sum(_param_bytes(m) for m in pipe.components.values() if isinstance(m, torch.nn.Module)) + sum(added.values())
        memory = MemoryTrace(resident)
        flop_counter = FlopCounterMode(display=False)
        stages = StageMeter(memory, flop_counter, arch.name)

        def denoising(*_) -> None:
            if stages.stage != "denoise":
                stages.enter("denoise")

        for transformer in transformers_of(pipe):
            transformer.register_forward_pre_hook(denoising)
        vae_decode = pipe.vae.decode

        def decode(*args, **kwargs):
            stages.enter("decode")
            return vae_decode(*args, **kwargs)

        image = {"image": Image.new("RGB", (width, height), (128, 128, 128))} if arch.image_tokens else {}
        # The VAE decode starts the decode stage (diffusers' pipeline has no stage events).
        with flop_counter, memory, compat.methods_replaced(pipe.vae, decode=decode):
            # The text encoders' outputs given as the call's embeddings (not run, as in the supergen trace).
            text = _text_embeddings(arch.spec.prompt_shapes(arch.transformer, arch.image_to_video), dtypes["transformer"],
                                    torch.device("cpu"), guided=True)
            pipe(**text, **image, height=height, width=width, num_frames=num_frames,
                 num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="pt")
            stages.enter("end")
    notes = [f"text encoder not run (embeddings of its output shape); its {human(added['text_encoder'])} of weights "
             "on the device throughout, as after pipe.to(device)"]
    if "transformer blocks" in added:
        notes.append(f"{layers} of {arch.transformer['num_layers']} transformer blocks built per expert; "
                     f"the other blocks' {human(added['transformer blocks'])} of weights added")
    notes.append(f"{steps} denoising steps traced; untiled VAE decode (diffusers' default); output_type='pt' (the float "
                 "video stays on the device; 'np' moves the same video to the host after the peak)")
    stages_ = {name: memory.stages[name] for name in PIPELINE_STAGES if name in memory.stages}
    return PipelineTrace(arch.name, (height, width), num_frames, stages_, resident, time.perf_counter() - start, notes)


def format_pipeline_trace(baseline: PipelineTrace, result: TraceResult | None = None) -> str:
    """The plain pipeline's traced peak per stage, and ``result``'s peak as a multiple of it."""
    lines = [f"trace of the plain diffusers pipeline ({baseline.name}) at {baseline.size[0]}x{baseline.size[1]}x"
             f"{baseline.num_frames} (fake tensors, no weights)"]
    lines += [f"  {name}: {human(s.peak)}; largest live tensors: {s.peak_what}; largest allocation {human(s.largest)} {s.largest_what}"
              for name, s in baseline.stages.items()]
    lines.append(f"peak: {human(baseline.peak)} in {baseline.peak_stage} (weights {human(baseline.resident)})")
    if result is not None:
        lines.append(f"supergen at {result.size[0]}x{result.size[1]}x{result.num_frames}: {human(result.peak)} = "
                     f"{result.peak / baseline.peak:.2f}x the plain pipeline's peak")
    lines += [f"note: {n}" for n in baseline.notes]
    return "\n".join(lines)


def estimated(result: TraceResult, stage: str) -> int:
    """The planner's peak for ``stage``: its resident weights (or with group offload, the weights on
    the device at once) plus the stage's transient."""
    if result.offload == "group":
        return result.plan.group_offload_peak(stage)
    return result.plan.stage_peak(stage)


def estimated_peak_stage(result: TraceResult) -> str:
    """The stage of the planner's largest :func:`estimated` peak."""
    return max(STAGES, key=lambda stage: estimated(result, stage))


def format_trace(result: TraceResult) -> str:
    """Per stage: traced peak, the planner's estimate, traced FLOPs and the largest allocation."""
    header = ("stage", "traced peak", "weights then", "estimated", "traced FLOPs", "largest allocation", "CPU s")
    rows = [header]
    for name, s in result.stages.items():
        rows.append((name, human(s.peak), human(s.peak_weights), human(estimated(result, name)), human_flops(s.flops),
                     f"{human(s.largest)} {s.largest_what}", f"{s.cpu_seconds:.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [f"trace of {result.name} at {result.size[0]}x{result.size[1]}x{result.num_frames} (fake tensors, no weights)"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    peak = result.stages[result.peak_stage]
    plan_stage = estimated_peak_stage(result)
    plan_peak = estimated(result, plan_stage)
    lines.append(f"peak: {human(result.peak)} in {result.peak_stage} = weights on the device {human(peak.peak_weights)} + "
                 f"{human(result.peak - peak.peak_weights)} (estimated {human(plan_peak)} in {plan_stage}, "
                 f"{(plan_peak - result.peak) / result.peak:+.0%}); largest live tensors there: {peak.peak_what}")
    if result.offload == "group":
        lines.append("weights: block-level group offloading, only the onloaded groups on the device")
    else:
        lines.append(f"resident weights {human(result.resident)}, of which not built but counted from the config: "
                     + ", ".join(f"{k} {human(v)}" for k, v in result.added.items()))
    copies = sorted(set(result.host_copies))
    lines.append("refinement step: no host synchronisation except " + "; ".join(DECLARED_SYNCS) + "; "
                 + (f"{len(result.host_copies)} host-to-device copies: " + "; ".join(copies) if copies else "no host-to-device copy"))
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)
