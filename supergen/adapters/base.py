"""The interface between the family-agnostic engine and one model family.

The engine (sketch → upscale → re-noise → tiled refinement → decode) never looks inside a model. It
asks the family's :class:`ModelAdapter` for conditioning, a latent-space VAE round trip, the wrapped
pipeline's sketch, the schedule, the guided prediction of a batch of tiles and the scheduler step on
the canvas. The adapter in turn knows nothing about tiling schedules, caches or ranks: it receives
tiles already cropped and the :class:`~supergen.tiling.Tile` windows only to set positions.

The engine sees one latent layout for every family, the *canvas latent* ``(1, C, F, H, W)``,
normalised the way the family's transformer expects, with every latent frame the transformer
denoises (CogVideoX 1.5's padding frame, HunyuanVideo-I2V's image frame included). Each adapter
converts at its boundary: to the pipeline's layout (CogVideoX ``(B, F, C, H, W)``, LTX's packed
tokens) inside :meth:`ModelAdapter.predict`, to pixels with exactly the requested frames in
:meth:`ModelAdapter.decode`.
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, ContextManager, Iterator

import torch
from diffusers import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from .. import compat
from ..cache.windows import context_name
from ..errors import SuperGenError
from ..families import FamilySpec, ModelRules, transformers_of, vae_tile
from ..geometry import FromRules
from ..tiling import Tile, crop
from .positions import CanvasPositions, installed

#: Spatial-conditioning key of a latent frame the family holds fixed at index 0 (the image of
#: image-to-video families that condition by replacing the first latent frame): ``(1, C, 1, H, W)``.
FIRST_FRAME = "first_frame"

#: Classifier-free guidance branches: each one's name and the prefix of its embeddings in
#: :attr:`Conditioning.embeds`. A tile's branches can run on different ranks (CFG parallelism) and be
#: combined with :func:`combine_guidance` after the exchange.
BRANCHES: dict[str, str] = {"cond": "", "uncond": "negative_"}

#: ``step(prediction, timestep, latents) -> latents``: one scheduler step on the whole canvas.
Stepper = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def combine_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on float32 branch predictions, as the pipelines combine them. Every
    rank combines the same exchanged values in the same order, so any rank count gives the same numbers."""
    return uncond + scale * (cond - uncond)


class FirstFrameVideo:
    """An image followed by zero frames, ``(1, 3, num_frames, H, W)``, built one window at a time.

    Wan image-to-video conditions on the VAE encoding of this video. At 4K × 81 frames it would be
    8 GB in float32 while only its first frame holds data, so it is never built whole: indexing
    ``video[..., rows, cols]`` (slices) returns that window ``(1, 3, num_frames, h, w)`` as a tensor,
    and ``video[...]`` the whole video (for untiled encodes of small canvases).

    Args:
        image: ``(1, 3, H, W)``, the first frame (its dtype and device are the video's).
        num_frames: frames of the video, the image included.
    """

    def __init__(self, image: torch.Tensor, num_frames: int):
        if image.ndim != 4 or image.shape[:2] != (1, 3):
            raise SuperGenError(f"FirstFrameVideo takes an image of shape (1, 3, H, W); got {tuple(image.shape)}")
        self.image, self.num_frames = image, num_frames

    @property
    def shape(self) -> torch.Size:
        return torch.Size((1, 3, self.num_frames, *self.image.shape[-2:]))

    def __getitem__(self, index) -> torch.Tensor:
        window = (...,) if index is Ellipsis else index
        if not (isinstance(window, tuple) and window[:1] == (...,) and len(window) <= 3
                and all(isinstance(s, slice) for s in window[1:])):
            raise SuperGenError(f"FirstFrameVideo is indexed as video[..., rows, cols] with slices; got {index!r}")
        first = self.image[window].unsqueeze(2)
        return torch.cat([first, first.new_zeros(*first.shape[:2], self.num_frames - 1, *first.shape[-2:])], dim=2)


#: ``encode(video) -> latent``: a canvas-sized video ``(1, 3, F, H, W)`` (a tensor or a
#: :class:`FirstFrameVideo`) in [-1, 1] → its normalised posterior-mode canvas latent ``(1, C, f, h, w)``.
CanvasEncoder = Callable[["torch.Tensor | FirstFrameVideo"], torch.Tensor]


@dataclass
class Conditioning:
    """Everything a tile forward needs besides the latent.

    ``embeds`` are global (text, image embeddings) and go to every tile unchanged; ``spatial`` are
    canvas-sized latent maps ``(1, C, F, H, W)`` that every tile sees through its own window (e.g. the
    image-to-video condition), cropped by :meth:`for_tiles`.
    """

    embeds: dict[str, torch.Tensor | None]
    spatial: dict[str, torch.Tensor] = field(default_factory=dict)
    guidance_scale: float = 5.0
    guidance_scale_2: float | None = None

    @property
    def do_guidance(self) -> bool:
        return self.guidance_scale > 1.0

    def for_tiles(self, tiles: list[Tile]) -> "Conditioning":
        """This conditioning for a batch of tiles: spatial maps cropped and stacked, ``(len(tiles), C, F, h, w)``."""
        spatial = {name: torch.cat([crop(value, t) for t in tiles]) for name, value in self.spatial.items()}
        return replace(self, spatial=spatial)

    def select(self, index: int) -> "Conditioning":
        """The conditioning of tile ``index`` of a batch made by :meth:`for_tiles`."""
        return replace(self, spatial={name: value[index : index + 1] for name, value in self.spatial.items()})


@dataclass
class Request:
    """One video to render, as the engine hands it to the adapter."""

    prompt: str
    negative_prompt: str
    num_frames: int
    image: Any | None = None  # PIL image for image-to-video
    #: Precomputed text embeddings (the call's ``prompt_embeds=``), used instead of encoding the prompts.
    prompt_embeds: torch.Tensor | None = None
    negative_prompt_embeds: torch.Tensor | None = None
    #: Text tokens the encoder reads; None takes the family's default.
    max_sequence_length: int | None = None


@contextlib.contextmanager
def processors_replaced(attentions: list[nn.Module], make: Callable[[], Any]) -> Iterator[None]:
    """Inside the block every attention module of ``attentions`` runs a processor from ``make()``; the
    original processors are restored on exit, also when the block raises."""
    saved = [(attn, attn.processor) for attn in attentions]
    try:
        for attn, _ in saved:
            attn.set_processor(make())
        yield
    finally:
        for attn, processor in saved:
            attn.set_processor(processor)


class ModelAdapter(FromRules, abc.ABC):
    """One model family behind the engine, on one loaded pipeline: what a render calls.

    The family's facts (pipelines, modules, memory terms, prompt shapes, context-parallel plan, the
    size rules as functions of its configs) are its :attr:`spec`, readable without an adapter; the
    adapter applies the size rules to its pipeline's configs (:attr:`rules`) and answers the
    :class:`~supergen.geometry.SizeRules` questions from them.
    """

    #: The family (:class:`~supergen.families.FamilySpec`).
    spec: ClassVar[FamilySpec]

    #: The family's :class:`~.positions.CanvasPositions` for ``transformer.rope``; None for families
    #: that take positions another way (CogVideoX's tables, LTX's coordinates).
    position_module: ClassVar[type[CanvasPositions] | None] = None

    def __init__(self, pipe: DiffusionPipeline):
        self.pipe = pipe
        #: This pipeline's size rules, from its modules' configs (as ``supergen plan`` computes them).
        self.rules: ModelRules = self.spec.rules(dict(self.transformers[0].config), dict(pipe.vae.config), type(pipe).__name__)

    @property
    def transformers(self) -> list[nn.Module]:
        """The pipeline's denoisers: ``transformer``, and Wan 2.2's low-noise expert ``transformer_2``."""
        return transformers_of(self.pipe)

    # ---- geometry: this pipeline's rules (the SizeRules answers come from FromRules) ----------
    @property
    def requires_image(self) -> bool:
        return self.rules.requires_image

    # ---- context-parallel sketch ------------------------------------------------------------
    @property
    def cp_plans(self) -> list[dict | None]:
        """Per transformer, the context-parallel plan to apply (the family's :attr:`~supergen.families.FamilySpec.cp_plan`;
        None: the transformer's own)."""
        plan = self.spec.cp_plan() if self.spec.cp_plan is not None else None
        return [plan] * len(self.transformers)

    def context_parallel_blocker(self, ranks: int) -> str:
        """Why this family's sketch cannot split its token sequence over ``ranks`` ranks for a reason
        the plan and the head count do not show (a text length that does not divide); ``""`` when it can."""
        return ""

    def context_parallel_extras(self, ranks: int) -> ContextManager:
        """What the family needs, beyond its plan, for a context-parallel sketch on ``ranks`` ranks,
        inside the block (entered before the plan is applied): attention through diffusers'
        dispatcher, where its context parallelism lives (CogVideoX), or an attention mask in the
        ranks' token order (HunyuanVideo). The default: nothing."""
        return contextlib.nullcontext()

    # ---- pipeline ---------------------------------------------------------------------------
    def pipeline_frames(self, num_frames: int) -> int:
        """The ``num_frames`` to ask the wrapped pipeline for, so that its video has ``num_frames`` frames."""
        return num_frames

    @property
    def device(self) -> torch.device:
        return compat.execution_device(self.pipe)

    @property
    def scheduler(self):
        return self.pipe.scheduler

    # ---- conditioning -----------------------------------------------------------------------
    def unknown_prompt_words(self, prompt: str) -> list[str]:
        """Words of ``prompt`` the pipeline's (first) tokenizer can only encode as its unknown
        token, so the model never sees them. Large sentencepiece vocabularies rarely have any;
        a small word-level vocabulary (the toy model's) makes this the commonest prompt mistake.
        """
        tokenizer = getattr(self.pipe, "tokenizer", None)
        unk = getattr(tokenizer, "unk_token_id", None)
        if unk is None:
            return []
        words = dict.fromkeys(w.strip(".,;:!?\"'()") for w in prompt.split())
        return [w for w in words if w and unk in tokenizer(w, add_special_tokens=False).input_ids]

    def prompt_tokens(self, prompt: str) -> int:
        """Tokens ``prompt`` takes in the pipeline's (first) tokenizer, with its special tokens."""
        tokenizer = getattr(self.pipe, "tokenizer", None)
        return 0 if tokenizer is None else len(tokenizer(prompt).input_ids)

    def encode_prompt(self, request: Request, guidance_scale: float) -> dict[str, torch.Tensor | None]:
        """Text (and image) embeddings, computed once and shared by both stages: :meth:`encode_text`
        and :meth:`image_embeds` together."""
        return self.encode_text(request, guidance_scale) | self.image_embeds(request)

    @abc.abstractmethod
    def encode_text(self, request: Request, guidance_scale: float) -> dict[str, torch.Tensor | None]:
        """The text encoders' embeddings (of the prompt and, with guidance, the negative prompt), in
        the shapes the family's :attr:`~supergen.families.FamilySpec.prompt_shapes` gives."""

    def _pipeline_text_embeds(self, request: Request, guidance_scale: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(prompt_embeds, negative_prompt_embeds)`` from the wrapped pipeline's own ``encode_prompt``,
        for the families whose pipelines share diffusers' Wan/CogVideoX signature; embeddings the
        caller precomputed pass through it."""
        return self.pipe.encode_prompt(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            do_classifier_free_guidance=guidance_scale > 1.0,
            num_videos_per_prompt=1,
            prompt_embeds=request.prompt_embeds,
            negative_prompt_embeds=request.negative_prompt_embeds,
            max_sequence_length=request.max_sequence_length or self.spec.max_sequence_length,
            device=self.device,
        )

    def image_embeds(self, request: Request) -> dict[str, torch.Tensor | None]:
        """Global image embeddings of an image encoder separate from the text encoders; none by default."""
        return {}

    def spatial_conditioning(
        self, request: Request, height: int, width: int, generator: torch.Generator | None = None,
        encode: CanvasEncoder | None = None,
    ) -> dict[str, torch.Tensor]:
        """Canvas-sized conditioning maps at pixel size ``(height, width)``; none by default.

        Called before the initial noise is drawn, as the pipelines' ``prepare_latents`` encode the image
        first: families that sample the image posterior take ``generator`` in the same order.

        Args:
            encode: the engine's encoder for canvas-sized videos (tiled and split across ranks when the
                render plan tiles the VAE); families whose condition is a canvas-sized video (Wan
                image-to-video) encode it with this. None: :meth:`encode` untiled, in posterior mode.
        """
        return {}

    # ---- stage 1 ----------------------------------------------------------------------------
    @abc.abstractmethod
    def pipeline_kwargs(
        self, request: Request, embeds: dict[str, torch.Tensor | None], guidance_scale: float, guidance_scale_2: float | None
    ) -> dict[str, Any]:
        """The wrapped pipeline's conditioning arguments (prompt embeddings, image, guidance) for the sketch."""

    def from_pipeline_latents(self, latents: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """The pipeline's own latent layout → the canvas latent of ``shape`` (identity by default)."""
        return latents.float()

    def sketch(
        self,
        request: Request,
        embeds: dict[str, torch.Tensor | None],
        height: int,
        width: int,
        num_inference_steps: int,
        guidance_scale: float,
        guidance_scale_2: float | None,
        generator: torch.Generator | None,
        callback: Callable[[Any, int, torch.Tensor, dict], dict | None] | None = None,
    ) -> torch.Tensor:
        """Run the wrapped pipeline at ``(height, width)``; return its canvas latent ``(1, C, F, h, w)``.

        The latents are taken after the last step (a step callback), not from ``output_type="latent"``,
        which some pipelines return trimmed (HunyuanVideo-I2V drops its image frame).

        Args:
            callback: diffusers' ``callback_on_step_end(pipe, step, timestep, {"latents": ...})`` after
                every sketch step, with the pipeline's own latents; it may return ``{"latents": new}``.
        """
        final: dict[str, torch.Tensor] = {}

        def keep(pipe, step, timestep, tensors):
            changed = (callback(pipe, step, timestep, tensors) or {}) if callback is not None else {}
            final["latents"] = changed.get("latents", tensors["latents"])
            return changed

        self.pipe(
            **self.pipeline_kwargs(request, embeds, guidance_scale, guidance_scale_2),
            height=height,
            width=width,
            num_frames=self.pipeline_frames(request.num_frames),
            num_inference_steps=num_inference_steps,
            generator=generator,
            output_type="latent",
            callback_on_step_end=keep,
        )
        return self.from_pipeline_latents(final["latents"], self.latent_shape(request.num_frames, height, width))

    # ---- VAE --------------------------------------------------------------------------------
    @abc.abstractmethod
    def to_vae(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latent → the VAE's raw latent (the pipeline's own arithmetic, for bit-exact decoding)."""

    @abc.abstractmethod
    def from_vae(self, latents: torch.Tensor) -> torch.Tensor:
        """The VAE's raw latent → normalised latent (the inverse of :meth:`to_vae`)."""

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw latent → pixels with the VAE's own call."""
        return self.pipe.vae.decode(latents, return_dict=False)[0]

    def decode(self, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Canvas latent ``(1, C, F, h, w)`` → video ``(1, 3, num_frames, H, W)`` in [-1, 1]."""
        vae = self.pipe.vae
        if not self.spec.decode_extra_frames:
            latents = latents[:, :, self.extra_latent_frames(num_frames) :]
        # The pipeline's execution device, not ``vae.device``: under diffusers' offloading the VAE's
        # weights sit on the CPU (model offload) or ``meta`` (sequential) until its hook moves them.
        video = self.vae_decode(self.to_vae(latents.to(self.device, vae.dtype)))
        return video[:, :, video.shape[2] - num_frames :]

    def encode(self, video: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Video ``(1, 3, frames, H, W)`` in [-1, 1] → canvas latent; posterior mode when ``generator`` is None.

        Extra leading latent frames (:meth:`extra_latent_frames`) repeat the first one: the nearest clean
        content for a frame the output never shows directly.
        """
        vae = self.pipe.vae
        dist = vae.encode(video.to(self.device, vae.dtype)).latent_dist  # execution device: see decode
        latents = self.from_vae((dist.mode() if generator is None else dist.sample(generator)).float())
        extra = self.extra_latent_frames(video.shape[2])
        return torch.cat([latents[:, :, :1]] * extra + [latents], dim=2)

    @property
    def vae_tile(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The VAE's own spatial tiling in pixels, ``((tile_h, tile_w), (stride_h, stride_w))``, which
        :class:`~supergen.parallel.TiledVAE` reproduces with its tiles spread over ranks."""
        return vae_tile(self.pipe.vae, self.vae_scale[1])

    def vae_tiling_enabled(self) -> bool:
        return bool(getattr(self.pipe.vae, "use_tiling", False))

    def set_vae_tiling(self, enabled: bool) -> None:
        vae = self.pipe.vae
        if enabled and hasattr(vae, "enable_tiling"):
            vae.enable_tiling()
        elif not enabled and hasattr(vae, "disable_tiling"):
            vae.disable_tiling()

    # ---- schedule and noise -------------------------------------------------------------------
    def set_timesteps(self, scheduler, num_inference_steps: int, latent_shape: tuple[int, ...]) -> None:
        """Set ``scheduler``'s timesteps as the wrapped pipeline does for a latent of ``latent_shape``."""
        scheduler.set_timesteps(num_inference_steps, device=self.device)

    def schedule(self, scheduler, num_inference_steps: int, begin_index: int, latent_shape: tuple[int, ...]) -> torch.Tensor:
        """The timesteps from step ``begin_index`` of the family's ``num_inference_steps``-step schedule."""
        self.set_timesteps(scheduler, num_inference_steps, latent_shape)
        # Schedulers with a step index (flow matching, UniPC) must enter it part-way; DDIM-style ones
        # look their coefficients up by timestep value and have no index.
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(begin_index)
        return scheduler.timesteps[begin_index * scheduler.order :]

    def draw_noise(self, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        """Gaussian noise of canvas ``shape``, drawn in the pipeline's latent layout (same seed, same values)."""
        return randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)

    def hold(self, latents: torch.Tensor, spatial: dict[str, torch.Tensor]) -> torch.Tensor:
        """``latents`` with the frames the family holds fixed written in (:data:`FIRST_FRAME`)."""
        first = spatial.get(FIRST_FRAME)
        if first is None:
            return latents
        return torch.cat([first.to(latents.dtype), latents[:, :, 1:]], dim=2)

    def initial_latents(
        self, shape: tuple[int, ...], spatial: dict[str, torch.Tensor], generator: torch.Generator | None
    ) -> torch.Tensor:
        """The starting latent of a full schedule (strength 1), drawn exactly as the pipeline's ``prepare_latents``."""
        # DDIM-style pipelines scale the noise by init_noise_sigma; flow-matching schedulers have none.
        sigma = getattr(self.scheduler, "init_noise_sigma", 1.0)
        return self.hold(self.draw_noise(shape, generator) * sigma, spatial)

    def renoise(
        self, scheduler, x0: torch.Tensor, timestep: torch.Tensor, spatial: dict[str, torch.Tensor], generator: torch.Generator | None
    ) -> torch.Tensor:
        """Forward-diffuse the clean canvas latent ``x0`` to ``timestep`` with the scheduler's own method."""
        noise = self.draw_noise(tuple(x0.shape), generator)
        if hasattr(scheduler, "scale_noise"):  # flow matching
            noisy = scheduler.scale_noise(x0, timestep, noise)
        else:  # DDIM-style
            noisy = scheduler.add_noise(x0, noise, timestep)
        return self.hold(noisy, spatial)

    def stepper(self, scheduler, spatial: dict[str, torch.Tensor], generator: torch.Generator | None) -> Stepper:
        """The scheduler step of one render on the canvas, then the held frames written back."""

        def step(prediction: torch.Tensor, timestep: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
            # Steps are elementwise, so stepping a held frame and overwriting it equals the pipelines'
            # stepping only the other frames.
            return self.hold(scheduler.step(prediction, timestep, latents, return_dict=False)[0], spatial)

        return step

    # ---- stage 2 ----------------------------------------------------------------------------
    def predict(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        cond: Conditioning,
        tiles: list[Tile],
        canvas: tuple[int, int],
        positions: str,
        branch: str | None = None,
    ) -> torch.Tensor:
        """Guided model output for a batch of tiles (or one guidance branch's output).

        Args:
            latents: ``(B, C, F, h, w)`` float32, the tiles' windows of the canvas latent.
            timestep: scalar tensor, the scheduler's current timestep.
            cond: conditioning already cropped to these tiles (:meth:`Conditioning.for_tiles`).
            tiles: the ``B`` windows (all of shape ``(h, w)``), for positions.
            canvas: canvas latent size ``(H, W)``.
            positions: ``local`` | ``global`` | ``ntk``.
            branch: None for the guided prediction; a :data:`BRANCHES` name for that branch's output
                alone (only when :meth:`cfg_scale` is not None), to be combined with :func:`combine_guidance`.

        Returns:
            ``(B, C, F, h, w)`` float32, what the scheduler's ``step`` expects.
        """
        with self.positions(positions):  # a no-op inside the refinement, which installs them once
            if self.spec.batched_positions or positions == "local" or len(tiles) == 1:
                return self.predict_batch(latents, timestep, cond, tiles, canvas, positions, branch)
            return torch.cat(
                [
                    self.predict_batch(latents[i : i + 1], timestep, cond.select(i), [tile], canvas, positions, branch)
                    for i, tile in enumerate(tiles)
                ]
            )

    @abc.abstractmethod
    def predict_batch(
        self, latents: torch.Tensor, timestep: torch.Tensor, cond: Conditioning, tiles: list[Tile], canvas: tuple[int, int],
        positions: str, branch: str | None = None,
    ) -> torch.Tensor:
        """:meth:`predict` for tiles the family can run in one call (see :attr:`~supergen.families.FamilySpec.batched_positions`)."""

    def runs_branches(self, guidance_scale: float) -> bool:
        """Whether guidance at ``guidance_scale`` runs an unconditional branch (not when guidance is
        off, or embedded in the transformer)."""
        return guidance_scale > 1.0

    def cfg_scale(self, timestep: torch.Tensor, cond: Conditioning) -> float | None:
        """The classifier-free guidance scale at ``timestep``; None when only the conditional branch runs."""
        return cond.guidance_scale if self.runs_branches(cond.guidance_scale) else None

    # ---- shared by the families' predict ----------------------------------------------------
    @staticmethod
    def guided(
        model: nn.Module, tiles: list[Tile], scale: float | None, forward: Callable[[str], torch.Tensor], branch: str | None = None
    ) -> torch.Tensor:
        """Classifier-free guidance around ``forward(prefix)``, which runs the transformer with the
        embeddings named ``prefix + name`` (:data:`BRANCHES`); ``scale`` None runs the conditional branch only.

        With ``branch`` set, only that branch runs and its output is returned uncombined. Each branch
        runs under its own cache context per tile batch, so diffusers' cache hooks keep separate state
        for every tile and branch. Returns float32 (the pipelines guide in float32).
        """
        name = context_name(tiles)

        def run(which: str) -> torch.Tensor:
            with model.cache_context(f"{which}/{name}"):
                return forward(BRANCHES[which]).float()

        if branch is not None:
            return run(branch)
        pred = run("cond")
        return pred if scale is None else combine_guidance(pred, run("uncond"), scale)

    def token_positions(self, tiles: list[Tile]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Canvas position (in patches) of every token row and column of each tile: ``(rows, cols)``,
        lists of int64 ``(h / p_h,)`` and ``(w / p_w,)`` tensors. Tiles start on the patch grid."""
        _, p_h, p_w = self.patch
        return [t.rows.positions()[::p_h] // p_h for t in tiles], [t.cols.positions()[::p_w] // p_w for t in tiles]

    @staticmethod
    def ntk_factors(canvas: tuple[int, int], tile: tuple[int, int], dims: tuple[int, int]) -> tuple[float, float]:
        """NTK-aware theta factors for the (height, width) rotary axes of dimensions ``dims``.

        ``s ** (d / (d - 2))`` with ``s`` the canvas/tile ratio on the axis: the standard NTK-aware
        rule, which stretches the lowest frequency's period to the canvas and keeps the highest.
        """
        return tuple(max(1.0, c / t) ** (d / max(d - 2, 1)) for c, t, d in zip(canvas, tile, dims))  # type: ignore[return-value]

    # ---- positions and attention mode --------------------------------------------------------
    def positions(self, mode: str) -> ContextManager[None]:
        """For one render: the family's canvas position module installed (for ``global``/``ntk``) and
        restored on exit; :meth:`set_positions` then updates it per forward."""
        if mode == "local" or self.position_module is None:
            return contextlib.nullcontext()
        return installed(self.transformers, self.position_module)

    def set_positions(self, model: nn.Module, tiles: list[Tile], canvas: tuple[int, int], mode: str, dims: tuple[int, int]) -> None:
        """Tell ``model``'s installed position module the canvas positions of this forward's ``tiles``.

        Args:
            dims: rotary dimensions of the (height, width) axes, for the ``ntk`` factors.
        """
        rows, cols = self.token_positions(tiles)
        ntk = self.ntk_factors(canvas, tiles[0].shape, dims) if mode == "ntk" else (1.0, 1.0)
        # Time windows: canvas frame numbers (in temporal patches); tiles spanning all frames count from 0.
        p_t = self.patch[0]
        frames = None if tiles[0].frames is None else [t.frames.positions()[::p_t] // p_t for t in tiles]
        model.rope.set_tiles(rows, cols, ntk, frames)

    def preload_positions(self, tiles: list[Tile], canvas: tuple[int, int], mode: str, frames: int, device: torch.device) -> None:
        """Build on ``device``, before the first refinement step, the position tables of forwards on
        ``tiles`` (every window of the render's grid cycle), so no step copies one from the host.

        Only installed position modules that cache their tables per render do work here
        (:meth:`~.positions.CanvasPositions.preload`); ``frames``: latent frames of the canvas.
        """
        if mode == "local":
            return
        for model in self.transformers:
            rope = getattr(model, "rope", None)
            if isinstance(rope, CanvasPositions):
                for tile in tiles:
                    self.set_positions(model, [tile], canvas, mode, rope.axis_dims())
                    rope.preload(frames, device)
                rope.set_tiles(None, None)

    def tile_attention(self, layouts, backend: str, heads=None) -> ContextManager:
        """``tiling.mode=attention``: self-attention restricted to tile(+halo) windows inside the ``with``
        block; ``layouts`` a ``LayoutCycle`` or ``TileLayout``, yields the
        :class:`~supergen.attention.StepLayouts` the refiner advances every step.

        ``heads``: None in one process; on a group that splits the canvas forward, the
        :class:`~supergen.parallel.canvas.HeadExchange` that trades this rank's tokens for its heads
        around the kernel (the token split itself is :func:`~supergen.parallel.canvas.split_tokens`)."""
        raise SuperGenError(f"tiling.mode=attention supports Wan transformers; got {type(self.transformers[0]).__name__}")
