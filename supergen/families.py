"""Family facts: one frozen :class:`FamilySpec` per model family, read from its configs alone.

What a family *is* (its pipelines, the classes its pipeline is made of, its size rules as functions
of its configs, how its modules use memory, its prompt shapes, its context-parallel plan) lives
here, apart from the runtime adapter (:class:`~supergen.adapters.ModelAdapter`, which holds its
family's spec and keeps only what a render calls). The planner and the trace
(:class:`~supergen.architectures.Architecture`) and parallelism read a spec without building an
adapter or a pipeline; a loaded model's adapter applies the same functions to its modules'
configs, so ``supergen plan`` and a render cannot disagree.

Nothing here imports diffusers: configs are plain dicts (with the diffusers classes' defaults filled
in by the caller), and the context-parallel plans are built when asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

from .errors import SuperGenError
from .geometry import SizeRules


@dataclass(frozen=True)
class FamilyModules:
    """The classes a family's pipeline is made of, by name, so that it can be built from configs
    alone, without weights: on PyTorch's ``meta`` device (``supergen plan``'s parameter counts) or on
    fake tensors (``supergen plan --trace``). See :class:`~supergen.cost.Architecture`.
    """

    #: diffusers model classes of the denoiser (every expert) and of the VAE.
    transformer: str
    vae: str
    #: The diffusers scheduler class and its arguments as the released checkpoints ship them (the
    #: trace steps it on the host; its values do not change any shape).
    scheduler: tuple[str, dict[str, Any]]
    #: Encoders by pipeline component name → (transformers model class, its config class), built
    #: when the architecture gives a config for that component.
    encoders: dict[str, tuple[str, str]]
    #: Transformer config keys that count its repeated blocks (the trace builds fewer of them).
    block_counts: tuple[str, ...] = ("num_layers",)


@dataclass(frozen=True)
class FamilyMemory:
    """How a family's modules use memory beyond their weights, for the planner (:mod:`supergen.cost`).

    The defaults are Wan's (fitted to fake-tensor traces of Wan2.1 at 480p, 2K and 4K); the other
    families' values are fitted to traces of their released architectures at 2K and 4K
    (``supergen plan --trace``, ``docs/benchmarks.md``) and say what they stand for.
    """

    #: Live activations per token at a transformer block's widest point, in the model dtype:
    #: ``(a, f)`` → ``a × width + f × FFN width`` (Wan: the residual stream and its norm, the FFN
    #: hidden before and after GELU).
    block_tokens: tuple[float, float] = (2.0, 2.0)
    #: Pixel frames the VAE decodes and encodes at once (Wan: one latent frame, 4 pixel frames);
    #: None: all of them.
    vae_frames: int | None = 4
    #: Activations of the decoder's (encoder's) full-resolution channels
    #: (:attr:`~supergen.cost.Architecture.vae_channels`), per frame in flight, alive at its peak.
    vae_decode_copies: float = 13.0
    vae_encode_copies: float = 10.0
    #: Whether the blocks add their residual updates in float32 (Wan), which can be wider than the FFN.
    float32_residual: bool = True


@dataclass(frozen=True)
class ModelRules(SizeRules):
    """One model's size rules (:class:`~supergen.geometry.SizeRules`), computed by its family's
    :attr:`FamilySpec.rules` from its configs: the same object for a loaded model and for ``supergen plan``.
    ``native_size`` stays None: checkpoints do not record it (presets set ``sketch.height/width``)."""

    vae_scale: tuple[int, int, int]
    patch: tuple[int, int, int]
    latent_channels: int
    #: Whether the pipeline takes an image (image-to-video).
    requires_image: bool
    native_frames: int | None = None
    position_limit: int | None = None
    #: A pixel multiple the pipeline insists on whatever its VAE (LTX: 32); 1: VAE × patch only.
    pipeline_multiple: int = 1
    #: Leading latent frames the transformer denoises beyond the video's: ``none``; ``patch``
    #: (CogVideoX 1.5 pads up to a multiple of the temporal patch, dropped before decoding); ``image``
    #: (HunyuanVideo-I2V ``latent_concat``: the image's frame, decoded and its pixel frames dropped).
    leading_frames: str = "none"
    #: Why the model's forwards cannot be windows in time of a longer clip (:meth:`time_window_blocker`); "" when they can.
    window_blocker: str = ""

    @property
    def pixel_multiple(self) -> int:
        return math.lcm(self.pipeline_multiple, self.vae_scale[1] * self.patch[1])

    def extra_latent_frames(self, num_frames: int) -> int:
        if self.leading_frames == "patch":
            return -((num_frames - 1) // self.vae_scale[0] + 1) % self.patch[0]
        return 1 if self.leading_frames == "image" else 0

    def time_window_blocker(self) -> str:
        return self.window_blocker


#: The token sets a FLOP term runs over, per sample: the tile's ``video`` tokens, the ``text`` tokens
#: (:attr:`FamilySpec.prompt_shapes`' ``prompt_embeds`` length), Wan I2V's CLIP ``image`` tokens,
#: ``joint``: text and video together (joint attention), and ``sample``: one vector per sample
#: (timestep embeddings, modulation projections).
Tokens = Literal["video", "text", "image", "joint", "sample"]


@dataclass(frozen=True)
class Linear:
    """A matrix product of every token of ``tokens`` with a ``fan_in × fan_out`` weight: ``2·n·fan_in·fan_out`` FLOPs."""

    tokens: Tokens
    fan_in: int
    fan_out: int


@dataclass(frozen=True)
class Attention:
    """Scores and values of ``queries`` attending to ``keys`` at width ``dim`` (heads × head dim):
    ``4·q·k·dim`` FLOPs (``Q·Kᵀ`` and ``softmax·V``, as ``torch.utils.flop_counter`` counts SDPA)."""

    queries: Tokens
    keys: Tokens
    dim: int


@dataclass(frozen=True)
class Stack:
    """``count`` repeats of the same matrix products (a block list; 1 for the layers outside the blocks)."""

    count: int
    terms: tuple[Linear | Attention, ...]


@dataclass(frozen=True)
class FlopLayout:
    """The matrix products of one transformer forward, as the family's diffusers class computes them:
    what :func:`supergen.cost.transformer_flops` prices for any number of tokens."""

    stacks: tuple[Stack, ...]


def _linears(tokens: Tokens, *widths: int) -> tuple[Linear, ...]:
    """Linears chained through ``widths`` (an MLP ``d → h → d`` is ``_linears(t, d, h, d)``)."""
    return tuple(Linear(tokens, a, b) for a, b in zip(widths, widths[1:]))


#: ``rules(transformer config, VAE config, pipeline class name) -> ModelRules``; configs are dicts with
#: the diffusers classes' defaults filled in.
RulesOf = Callable[[Mapping[str, Any], Mapping[str, Any], str], ModelRules]
#: ``prompt_shapes(transformer config, image_to_video)``: what the family's text encoders return for
#: one guidance branch (keys without the ``negative_`` prefix), shapes without the batch axis.
PromptShapes = Callable[[Mapping[str, Any], bool], dict[str, tuple[int, ...]]]
#: ``flops(transformer config, image_to_video) -> FlopLayout``.
FlopsOf = Callable[[Mapping[str, Any], bool], FlopLayout]


@dataclass(frozen=True, eq=False)  # one object per family: compared (and hashed) by identity
class FamilySpec:
    """Everything known about a model family without its weights or its pipeline."""

    name: str
    #: diffusers pipeline classes of the family, text-to-video first; ``image_pipelines`` take an image.
    pipelines: tuple[str, ...]
    image_pipelines: tuple[str, ...]
    #: The family's component classes, to build its pipeline without weights.
    modules: FamilyModules
    #: The size rules of a model of this family, from its configs.
    rules: RulesOf
    #: The shapes of its text embeddings (the trace feeds embeddings of these shapes instead of running
    #: the encoders; the estimate counts the text tokens).
    prompt_shapes: PromptShapes
    #: The matrix products of its transformer's forward, from its config (the planner's FLOPs).
    flops: FlopsOf
    #: How its modules use memory beyond their weights, for the planner.
    memory: FamilyMemory = FamilyMemory()
    #: The optional request text fields (``prompt_embeds``, ``negative_prompt_embeds``,
    #: ``max_sequence_length``) the family's prompt encoding honours; the others are refused.
    prompt_options: frozenset[str] = frozenset()
    #: Text tokens the pipeline's encoder reads by default (longer prompts are cut); None: not known here.
    max_sequence_length: int | None = None
    #: Dtypes of components that must not follow the transformer's (diffusers' own recipes for the
    #: family), applied when a model is loaded unless the config sets them (``model.vae_dtype``...).
    component_dtypes: Mapping[str, str] = field(default_factory=dict)
    #: Whether the image-to-video condition is a canvas-sized video (the image, then zero frames) that
    #: the engine's encoder encodes (Wan); else the family's pipeline encodes the one image frame. The
    #: planner counts the first at every frame, the second at one.
    canvas_condition: bool = False
    #: Whether one transformer call can give each tile of a batch its own positions. Families whose
    #: rotary tables are one per call (no batch axis) run tiles one at a time unless positions are
    #: ``local`` (then every tile has the same table).
    batched_positions: bool = True
    #: Whether the extra leading latent frames (:meth:`ModelRules.extra_latent_frames`) are decoded and
    #: their pixel frames dropped after the VAE (a real frame the causal VAE conditions the next ones
    #: on, HunyuanVideo-I2V), else dropped before it (padding, CogVideoX 1.5).
    decode_extra_frames: bool = False
    #: Whether the wrapped pipeline runs the sketch's guidance branches as separate transformer calls
    #: under the cache contexts ``cond`` and ``uncond`` (diffusers' convention), so that CFG
    #: parallelism can put them on two ranks. Pipelines that batch both branches into one call do not.
    sketch_branches_separate: bool = False
    #: The transformer's context-parallel plan (diffusers' ``ContextParallelModelPlan``, built when
    #: called: it names diffusers classes) for families whose diffusers transformer ships none; None:
    #: the transformer's own ``_cp_plan`` (Wan, LTX). Used by :func:`supergen.parallel.ulysses`.
    cp_plan: Callable[[], dict] | None = None
    #: Whether the plan also splits token sequences that do not divide over the ranks (diffusers'
    #: ``ulysses_anything``: unequal shards): for plans with no mask that depends on the split.
    cp_uneven: bool = False
    #: Whether a refinement tile's forward may run under the context-parallel plan on a sub-group of
    #: ranks (when the ranks outnumber the units of work). Set where a multi-rank test covers it.
    tile_context_parallel: bool = False


def transformers_of(pipe: Any) -> list:
    """A pipeline's denoisers: ``transformer``, and Wan 2.2's low-noise expert ``transformer_2``."""
    return [m for m in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None)) if m is not None]


def vae_tile(vae: Any, spatial_scale: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """A VAE module's own spatial tiling in pixels, ``((tile_h, tile_w), (stride_h, stride_w))``, as
    diffusers' ``tiled_decode`` uses it (read from the module: diffusers sets it in ``__init__``, not the config)."""
    tile = (vae.tile_sample_min_height, vae.tile_sample_min_width)
    if hasattr(vae, "tile_sample_stride_height"):
        return tile, (vae.tile_sample_stride_height, vae.tile_sample_stride_width)
    # CogVideoX's VAE states its overlap as a fraction; its stride is that of the latent tile, rounded
    # down in latent units (as its tiled_decode does), so latent and pixel strides agree.
    overlap = (vae.tile_overlap_factor_height, vae.tile_overlap_factor_width)
    return tile, tuple(int(t // spatial_scale * (1 - o)) * spatial_scale for t, o in zip(tile, overlap))  # type: ignore[return-value]


# ---- Wan ---------------------------------------------------------------------------------------

def _wan_rules(transformer, vae, pipeline):
    return ModelRules(
        vae_scale=(vae["scale_factor_temporal"], vae["scale_factor_spatial"], vae["scale_factor_spatial"]),
        patch=tuple(transformer["patch_size"]), latent_channels=vae["z_dim"], requires_image=pipeline in WAN.image_pipelines,
        native_frames=81,  # Wan 2.1/2.2 are trained and sampled on 81-frame clips (diffusers' default)
        position_limit=transformer["rope_max_seq_len"],
    )


def _wan_prompt_shapes(transformer, image_to_video):
    # umT5's last hidden state, padded to max_sequence_length tokens.
    return {"prompt_embeds": (WAN.max_sequence_length, transformer["text_dim"])}


def _wan_flops(t, image_to_video):
    # WanTransformer3DModel: self-attention, cross-attention to the text (and to the CLIP image tokens
    # of Wan 2.1 I2V, through add_k/add_v), FFN; no per-block modulation projection (a table).
    d, ffn, patch = t["num_attention_heads"] * t["attention_head_dim"], t["ffn_dim"], math.prod(t["patch_size"])
    block = (*_linears("video", d, d) * 4, Attention("video", "video", d),  # self-attention q, k, v, o
             *_linears("video", d, d) * 2, *_linears("text", d, d) * 2, Attention("video", "text", d),  # cross q, o; k, v
             *_linears("video", d, ffn, d))
    outside = (Linear("video", t["in_channels"] * patch, d), Linear("video", d, t["out_channels"] * patch),  # patch in, out
               *_linears("text", t["text_dim"], d, d),  # text embedder
               *_linears("sample", t["freq_dim"], d, d), Linear("sample", d, 6 * d))  # time embedder, modulation
    # diffusers builds the image embedder when image_dim is set, and the blocks' add_k/add_v (the
    # attention to the image tokens) only when added_kv_proj_dim is set too.
    if t.get("image_dim"):
        outside += _linears("image", t["image_dim"], t["image_dim"], d)  # image embedder
        if t.get("added_kv_proj_dim"):
            block += (*_linears("image", t["added_kv_proj_dim"], d) * 2, Attention("video", "image", d))
    return FlopLayout((Stack(t["num_layers"], block), Stack(1, outside)))


WAN = FamilySpec(
    "Wan", ("WanPipeline", "WanImageToVideoPipeline"), ("WanImageToVideoPipeline",),
    FamilyModules(
        transformer="WanTransformer3DModel", vae="AutoencoderKLWan",
        scheduler=("UniPCMultistepScheduler", dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)),
        encoders={"text_encoder": ("UMT5EncoderModel", "UMT5Config"),
                  "image_encoder": ("CLIPVisionModelWithProjection", "CLIPVisionConfig")},
    ),
    _wan_rules, _wan_prompt_shapes, _wan_flops,
    prompt_options=frozenset({"prompt_embeds", "negative_prompt_embeds", "max_sequence_length"}),
    max_sequence_length=512,
    # diffusers' Wan examples load the VAE and the CLIP image encoder in float32 beside a bf16 transformer.
    component_dtypes={"vae": "float32", "image_encoder": "float32"},
    # I2V conditions on the VAE encoding of the image followed by zero frames (FirstFrameVideo).
    canvas_condition=True,
    # WanPipeline / WanImageToVideoPipeline call the transformer once per branch, in cache_context("cond"/"uncond").
    sketch_branches_separate=True,
    # Tiles on sub-groups of ranks with Ulysses (diffusers' Wan plan; tests/test_parallel_attention.py).
    tile_context_parallel=True,
)


# ---- CogVideoX ---------------------------------------------------------------------------------

def _cogvideox_rules(transformer, vae, pipeline):
    if transformer["patch_size_t"] is None or not transformer["use_rotary_positional_embeddings"] \
            or transformer["use_learned_positional_embeddings"]:
        raise SuperGenError(
            "only CogVideoX 1.5-style transformers (rotary positions, patch_size_t set) are supported: "
            "CogVideoX 1.0 positions are tied to its training size (learned or crop-interpolated)"
        )
    s = 2 ** (len(vae["block_out_channels"]) - 1)  # the pipelines' vae_scale_factor_spatial
    return ModelRules(
        vae_scale=(vae["temporal_compression_ratio"], s, s),
        patch=(transformer["patch_size_t"], transformer["patch_size"], transformer["patch_size"]),
        latent_channels=vae["latent_channels"], requires_image=pipeline in COGVIDEOX.image_pipelines,
        native_frames=81,  # CogVideoX 1.5's clip length (the 1.5-style transformer supergen runs)
        leading_frames="patch",  # as the pipeline: latent frames padded to a multiple of patch_size_t
    )


def _cogvideox_prompt_shapes(transformer, image_to_video):
    # T5's last hidden state, padded to max_sequence_length tokens.
    return {"prompt_embeds": (COGVIDEOX.max_sequence_length, transformer["text_embed_dim"])}


def _cogvideox_flops(t, image_to_video):
    # CogVideoXTransformer3DModel: every block attends over [text; video] and runs both through one
    # FFN with the same weights; two modulation projections of the time embedding per block.
    d, te = t["num_attention_heads"] * t["attention_head_dim"], t["time_embed_dim"]
    ffn, patch = 4 * d, t["patch_size"] ** 2 * (t["patch_size_t"] or 1)  # its blocks' FeedForward default: 4 × width
    block = (*_linears("joint", d, d) * 4, Attention("joint", "joint", d), *_linears("joint", d, ffn, d),
             *_linears("sample", te, 6 * d) * 2)  # norm1, norm2
    outside = (Linear("video", t["in_channels"] * patch, d), Linear("text", t["text_embed_dim"], d),  # patch and text embedding
               *_linears("sample", d, te, te), Linear("sample", te, 2 * d),  # time embedding, norm_out
               Linear("video", d, t["out_channels"] * patch))
    if t["ofs_embed_dim"]:
        outside += _linears("sample", t["ofs_embed_dim"], t["ofs_embed_dim"], t["ofs_embed_dim"])
    return FlopLayout((Stack(t["num_layers"], block), Stack(1, outside)))


def _cogvideox_cp_plan() -> dict:
    """Where CogVideoX's token sequence is split over the ranks of a context-parallel sketch (diffusers
    ships no plan for it): video and text tokens at the first block (the joint attention concatenates
    each rank's text and video shares, and Ulysses gathers keys in the same per-rank order, so every
    query sees every key once), the rotary table the pipeline passes in by video token, and the
    output gathered at ``proj_out``. The text is the pipeline's padded ``max_sequence_length`` tokens
    (226), with no mask, so shards of unequal length are fine (``cp_uneven``: 8 ranks get 29 or 28)."""
    from .compat import ContextParallelInput, ContextParallelOutput

    return {
        "": {"image_rotary_emb": (ContextParallelInput(split_dim=0, expected_dims=2), ContextParallelInput(split_dim=0, expected_dims=2))},
        "transformer_blocks.0": {
            "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3),
            "encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3),
        },
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


COGVIDEOX = FamilySpec(
    "CogVideoX", ("CogVideoXPipeline", "CogVideoXImageToVideoPipeline"), ("CogVideoXImageToVideoPipeline",),
    # THUDM/CogVideoX1.5-5B(-I2V): T5-XXL text encoder, v-prediction DDIM with zero terminal SNR.
    FamilyModules(
        transformer="CogVideoXTransformer3DModel", vae="AutoencoderKLCogVideoX",
        scheduler=("CogVideoXDDIMScheduler", dict(prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                                  timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False)),
        encoders={"text_encoder": ("T5EncoderModel", "T5Config")},
    ),
    _cogvideox_rules, _cogvideox_prompt_shapes, _cogvideox_flops,
    # Fitted to the traces of CogVideoX1.5-5B-I2V at 2K and 4K (docs/benchmarks.md): its VAE decodes
    # 2 latent frames (8 pixel frames) and encodes 8 frames at a time; at 720p its untiled decode
    # holds ~22 full-resolution activations per frame (the 2-D upsampling runs the frames as a batch
    # of 256-channel images), 40 GiB: the sketch's peak.
    memory=FamilyMemory(block_tokens=(2.0, 2.5), vae_frames=8, vae_decode_copies=22.5, vae_encode_copies=10.0,
                        float32_residual=False),
    prompt_options=frozenset({"prompt_embeds", "negative_prompt_embeds", "max_sequence_length"}),
    max_sequence_length=226,
    batched_positions=False,  # the rotary table is 2-D (tokens × dim): one table per transformer call
    # Context-parallel sketch (parallel.sketch=ulysses): its 226 padded text tokens (no mask) divide
    # over 2 ranks, not 4 or 8: unequal shards are split too.
    cp_plan=_cogvideox_cp_plan, cp_uneven=True,
)


# ---- HunyuanVideo ------------------------------------------------------------------------------

#: HunyuanVideo's text tokens of the LLaMA embedding (the pipelines' max_sequence_length, template
#: cropped) and, for image-to-video, the LLaVA image tokens kept with them: 576 tokens of the image,
#: every 2nd (latent_concat) or 4th (token_replace), less the 4 assistant-header tokens the I2V pipeline cuts.
HUNYUAN_TEXT_TOKENS, HUNYUAN_IMAGE_TOKENS, HUNYUAN_ASSISTANT_TOKENS = 256, 576, 4


def hunyuan_image_interleave(condition_type: str | None) -> int:
    """Every how many LLaVA image tokens HunyuanVideo-I2V keeps one, by ``image_condition_type``."""
    return 2 if condition_type == "latent_concat" else 4


def _hunyuan_rules(transformer, vae, pipeline):
    image = pipeline in HUNYUAN.image_pipelines
    condition = transformer["image_condition_type"] if image else None
    s = vae["spatial_compression_ratio"]
    return ModelRules(
        vae_scale=(vae["temporal_compression_ratio"], s, s),
        patch=(transformer["patch_size_t"], transformer["patch_size"], transformer["patch_size"]),
        latent_channels=vae["latent_channels"], requires_image=image,
        native_frames=129,  # diffusers' default clip length for HunyuanVideo
        # The latent_concat image frame is a real frame the causal VAE decodes the next ones from.
        leading_frames="image" if condition == "latent_concat" else "none",
        # token_replace's transformer gives the first latent frame of every forward the image's
        # clean-timestep modulation: in a window past frame 0 that frame is not the image.
        window_blocker=("HunyuanVideo-I2V token_replace treats the first frame of every window as the image; "
                        "render at most tiling.frames frames or use a latent_concat checkpoint") if condition == "token_replace" else "",
    )


def _hunyuan_prompt_shapes(transformer, image_to_video):
    n = HUNYUAN_TEXT_TOKENS
    if image_to_video:
        n += HUNYUAN_IMAGE_TOKENS // hunyuan_image_interleave(transformer.get("image_condition_type")) - HUNYUAN_ASSISTANT_TOKENS
    return {"prompt_embeds": (n, transformer["text_embed_dim"]), "pooled_prompt_embeds": (transformer["pooled_projection_dim"],),
            "prompt_attention_mask": (n,)}


def _hunyuan_flops(t, image_to_video):
    # HunyuanVideoTransformer3DModel: the token refiner (self-attention blocks over the text alone),
    # then dual-stream blocks (video and text with their own weights, one attention over both), then
    # single-stream blocks (one set of weights on [video; text], the MLP beside the attention).
    d = t["num_attention_heads"] * t["attention_head_dim"]
    ffn, patch = int(t["mlp_ratio"] * d), t["patch_size"] ** 2 * t["patch_size_t"]
    # token_replace runs every modulation projection twice: the timestep's and the clean image frame's.
    twice = 2 if t["image_condition_type"] == "token_replace" else 1
    time = _linears("sample", 256, d, d)  # a TimestepEmbedding of the 256 sinusoidal channels
    refiner = (*_linears("text", d, d) * 4, Attention("text", "text", d), *_linears("text", d, 4 * d, d), Linear("sample", d, 2 * d))
    dual = (*_linears("video", d, d) * 4, *_linears("text", d, d) * 4, Attention("joint", "joint", d),  # q, k, v, out of each stream
            *_linears("video", d, ffn, d), *_linears("text", d, ffn, d),
            *_linears("sample", d, 6 * d) * (twice + 1))  # norm1 (video), norm1_context (text)
    single = (*_linears("joint", d, d) * 3, Attention("joint", "joint", d), Linear("joint", d, ffn), Linear("joint", d + ffn, d),
              *_linears("sample", d, 3 * d) * twice)
    outside = (Linear("video", t["in_channels"] * patch, d), Linear("video", d, (t["out_channels"] or t["in_channels"]) * patch),
               *time, *_linears("sample", t["text_embed_dim"], d, d), Linear("text", t["text_embed_dim"], d),  # the refiner's embedders
               # the blocks' conditioning: timestep (again for token_replace's clean frame), guidance, pooled text
               *time * (twice + bool(t["guidance_embeds"])), *_linears("sample", t["pooled_projection_dim"], d, d),
               Linear("sample", d, 2 * d))  # norm_out
    return FlopLayout((Stack(t["num_refiner_layers"], refiner), Stack(t["num_layers"], dual),
                       Stack(t["num_single_layers"], single), Stack(1, outside)))


def _hunyuan_cp_plan() -> dict:
    """Where HunyuanVideo's token sequence is split over the ranks of a context-parallel sketch (diffusers
    ships no plan for it): video and text tokens at the first dual-stream block (the text after the
    token refiner, which attends over the whole prompt), the rotary table by video token, the output
    gathered at ``proj_out``. Every block's attention concatenates its rank's video and text shares;
    Ulysses gathers keys in that per-rank order, so the text-padding mask is reordered to match
    (``mask_in_rank_order``, installed by the adapter's ``context_parallel_extras``)."""
    from .compat import ContextParallelInput, ContextParallelOutput

    return {
        "rope": {
            0: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
            1: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
        },
        "transformer_blocks.0": {
            "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3),
            "encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3),
        },
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


HUNYUAN = FamilySpec(
    "HunyuanVideo", ("HunyuanVideoPipeline", "HunyuanVideoImageToVideoPipeline"), ("HunyuanVideoImageToVideoPipeline",),
    # hunyuanvideo-community/HunyuanVideo(-I2V): a LLaVA (I2V) or LLaMA text encoder and CLIP's text
    # model (the pooled embedding), flow matching on explicit sigmas; dual- then single-stream blocks.
    FamilyModules(
        transformer="HunyuanVideoTransformer3DModel", vae="AutoencoderKLHunyuanVideo",
        scheduler=("FlowMatchEulerDiscreteScheduler", dict(shift=7.0)),
        encoders={"text_encoder": ("LlavaForConditionalGeneration", "LlavaConfig"), "text_encoder_2": ("CLIPTextModel", "CLIPTextConfig")},
        block_counts=("num_layers", "num_single_layers"),
    ),
    _hunyuan_rules, _hunyuan_prompt_shapes, _hunyuan_flops,
    # Fitted to the traces of HunyuanVideo-I2V at 2K and 4K (docs/benchmarks.md): a single-stream
    # block holds its attention and MLP outputs concatenated (width + FFN width) beside the MLP hidden
    # and its activation (~20 widths a token); the VAE decodes framewise, 4 + 1 latent frames
    # (17 pixel frames) at a time, its last up block at 256 channels. Its encoder holds about 5
    # full-resolution copies of 17 frames: the upscale's transient traced at 480x832x17, 1080x1920x61
    # and 2160x3840x125 (10.5, fitted to that stage's total at 2K/4K, was +47 % to +100 % on the transient).
    memory=FamilyMemory(block_tokens=(2.0, 4.4), vae_frames=17, vae_decode_copies=9.5, vae_encode_copies=5.0,
                        float32_residual=False),
    batched_positions=False,  # the rotary table is 2-D (tokens × dim): one table per transformer call
    decode_extra_frames=True,
    cp_plan=_hunyuan_cp_plan,
)


# ---- LTX ---------------------------------------------------------------------------------------

def _ltx_rules(transformer, vae, pipeline):
    # As AutoencoderKLLTXVideo: compression from its patch and scaling layers unless the config sets it.
    scaling = 2 ** sum(vae["spatio_temporal_scaling"])
    s = vae["spatial_compression_ratio"] or vae["patch_size"] * scaling
    t = vae["temporal_compression_ratio"] or vae["patch_size_t"] * scaling
    return ModelRules(
        vae_scale=(t, s, s), patch=(transformer["patch_size_t"], transformer["patch_size"], transformer["patch_size"]),
        latent_channels=transformer["in_channels"], requires_image=pipeline in LTX.image_pipelines,
        # The pipelines insist on multiples of 32 (the released VAE's compression) whatever the VAE.
        pipeline_multiple=32,
    )


def _ltx_prompt_shapes(transformer, image_to_video):
    # T5's last hidden state padded to max_sequence_length tokens, and its padding mask.
    n = LTX.max_sequence_length
    return {"prompt_embeds": (n, transformer["caption_channels"]), "prompt_attention_mask": (n,)}


def _ltx_flops(t, image_to_video):
    # LTXVideoTransformer3DModel: Wan's layout (self-attention, cross-attention to the text, FFN) on
    # tokens the pipeline has packed. Image-to-video gives every token its own timestep (the held
    # frame's are 0), so the time embedding runs per video token.
    d = t["num_attention_heads"] * t["attention_head_dim"]
    block = (*_linears("video", d, d) * 4, Attention("video", "video", d),
             *_linears("video", d, d) * 2, *_linears("text", t["cross_attention_dim"], d) * 2, Attention("video", "text", d),
             *_linears("video", d, 4 * d, d))
    timed: Tokens = "video" if image_to_video else "sample"
    outside = (Linear("video", t["in_channels"], d), Linear("video", d, t["out_channels"] or t["in_channels"]),  # proj_in, proj_out
               *_linears("text", t["caption_channels"], d, d),  # caption projection
               *_linears(timed, 256, d, d), Linear(timed, d, 6 * d))  # time embedding and its modulation
    return FlopLayout((Stack(t["num_layers"], block), Stack(1, outside)))


LTX = FamilySpec(
    "LTX", ("LTXPipeline", "LTXImageToVideoPipeline"), ("LTXImageToVideoPipeline",),
    # Lightricks/LTX-Video: T5-XXL text encoder, flow matching shifted by the token count.
    FamilyModules(
        transformer="LTXVideoTransformer3DModel", vae="AutoencoderKLLTXVideo",
        scheduler=("FlowMatchEulerDiscreteScheduler", dict(use_dynamic_shifting=True, base_image_seq_len=1024, base_shift=0.95,
                                                           max_image_seq_len=4096, max_shift=2.05)),
        encoders={"text_encoder": ("T5EncoderModel", "T5Config")},
    ),
    _ltx_rules, _ltx_prompt_shapes, _ltx_flops,
    # Fitted to the traces of LTX-Video at 2K and 4K (docs/benchmarks.md): the VAE works on every frame
    # at once (no temporal chunks), its last stage at a quarter of the resolution in float32; the
    # blocks' rotary tables are float32 per token (~19 widths a token at the widest point).
    memory=FamilyMemory(block_tokens=(2.0, 4.35), vae_frames=None, vae_decode_copies=6.4, vae_encode_copies=7.5,
                        float32_residual=False),
    prompt_options=frozenset({"max_sequence_length"}),
    max_sequence_length=128,
)


#: Every family, in lookup order.
FAMILIES: tuple[FamilySpec, ...] = (WAN, COGVIDEOX, HUNYUAN, LTX)


def supported_pipelines() -> list[str]:
    """The diffusers pipeline class names supergen renders with."""
    return [name for family in FAMILIES for name in family.pipelines]


def family_of(pipeline: str) -> FamilySpec:
    """The family of the diffusers pipeline class ``pipeline``, or a :class:`SuperGenError` naming the supported classes."""
    for family in FAMILIES:
        if pipeline in family.pipelines:
            return family
    raise SuperGenError(f"{pipeline} is not supported; supported diffusers pipelines: {', '.join(supported_pipelines())}")
