"""Resource planner: what one render costs, before loading any weights (``supergen plan``).

The planner answers "what GPU do I need for 4K?". It takes a model *architecture* (the numbers in
its config files, no weights) and a config, and returns the render's geometry — sketch size, tile
grid, steps, tokens per tile — from the render plan the pipeline itself follows
(:func:`~supergen.plan.plan_render`), plus FLOPs and memory.

Architectures come from :data:`KNOWN` (the released Wan 2.1/2.2, CogVideoX 1.5, HunyuanVideo-I2V and
LTX-Video, tiny, and a mid-size random one used to check the estimate), from a local diffusers Wan model folder (its ``*/config.json`` files), or from a
loaded pipeline (the demo). Parameter counts are exact: every module is built from its config on
PyTorch's ``meta`` device, which allocates nothing, and its parameters are counted.

How the numbers are computed (also in ``docs/planner.md``)
----------------------------------------------------------

FLOPs (multiply-add = 2) of one transformer forward on a tile of ``L`` tokens, with width ``D``,
FFN width ``Fd``, ``N`` blocks, ``S`` text tokens (Wan pads prompts to 512), ``I`` image tokens (I2V)
— Wan's layout; the joint-attention families (CogVideoX, HunyuanVideo) are approximated by it::

    per block = 12·L·D² (self-attn q,k,v,o + cross-attn q,o) + 4·L²·D (self-attn scores and values)
              + 4·S·D² (cross-attn k,v on the text) + 4·L·S·D (cross-attn scores and values)
              + 4·L·D·Fd (FFN) [+ 4·I·D² + 4·L·I·D for the image keys of I2V]
    forward   = N · block + patch embedding + output projection + text and time embedders

Only matrix products are counted (what ``torch.utils.flop_counter`` counts; the test checks the
formula against it on the real tiny transformer). A step costs ``tiles × (2 with guidance) × forward``.

Memory, per process, in bytes; ``b`` is the weights dtype's size, the canvas latent is float32 as in
the pipeline. Weights (transformer in ``b``; VAE and image encoder in their own dtypes, float32 for
Wan) are resident from the start; with ``encoders.park`` (the default) the text encoder leaves the
device once the prompts are encoded and the image encoder after the sketch (:data:`PARKED`), so a
stage's peak is its resident weights plus its transient, and the render's peak is the largest of those:

- transformer (one forward of ``batch_tiles`` tiles): inference frees each block's activations before
  the next, so the live set is one block's widest point (:func:`block_bytes_per_token`): for Wan the
  larger of the FFN — the residual stream and its norm (2·D) and the FFN hidden before and after GELU
  (2·Fd) per token, ``(2D + 2Fd)·b`` — and the residual update after it, which Wan's blocks do in
  float32: three float32 and five model-dtype copies of the stream, ``D·(3·4 + 5·b)`` (wider where
  ``D`` is large against ``Fd``: Wan-14B); the other families' ``(a·D + f·Fd)·b``
  (:class:`~supergen.adapters.FamilyMemory`, fitted to their traces). Times ``B·L``. Attention is
  assumed fused (SDPA's flash / memory-efficient kernels on GPU and CPU): no ``L²`` score matrix.
- canvas state (the refinement loop): ``6`` float32 copies of the canvas latent — the latent, the
  blended prediction, the multistep scheduler's two stored outputs, its last sample and the new
  sample — plus the image condition for I2V.
- VAE (``v`` = the VAE dtype's size: float32 for Wan, diffusers' recipe; the model's dtype for the
  others): the decoder's working set at full resolution for one tile and the ``n`` frames it works on
  at once, ``k · c0 · n · tile_h · tile_w · v`` (``c0`` = the decoder's channels per pixel at full
  resolution, :attr:`Architecture.vae_channels`). For Wan ``n = 4`` (one latent frame) and ``k = 13``
  such activations: the upsampling's doubled channels, the residual blocks' input, norm, activation
  and convolution outputs, the causal caches — fitted to the fake-tensor trace,
  ``supergen plan --trace``; the encoder's ``k = 10`` (its full-resolution stage has ``c0``
  channels, no upsampling). The other families' ``n`` and ``k`` are their
  :class:`~supergen.adapters.FamilyMemory`, fitted to their traces at 2K and 4K.
- VAE decode (tiled, :class:`~supergen.parallel.TiledVAE`, a row of tiles at a time): the output video
  as uint8 ``3·F·H·W`` (what ``supergen render`` asks for), one row of decoded tiles and the overlap
  kept of the row above (``3·F·(tile_h + overlap)·Σ tile widths·v``), one finished strip of rows
  ``3·F·stride_h·W·v`` and the working set. Untiled: the whole decoded video and the working set at
  the canvas size.
- the sketch's decoded pixels ``3·F·h·w·v`` stay referenced until the render returns (the ``sketch``
  output), so every later stage carries them.
- upscale (resize the sketch a band of rows at a time, VAE-encode each band's tiles): the band
  ``3·F·tile_h·W·v``, plus the larger of the resize (a float32 copy of the sketch and one chunk of
  8 whole resized frames, ``3·8·H·W·4``) and the encoder's working set; the encoded latent and its
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

import contextlib
import functools
import inspect
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import torch

from .config import SuperGenConfig
from .errors import SuperGenError
from .geometry import SizeRules
from .plan import RenderPlan, plan_render
from .adapters.base import FamilyMemory
from .tiling import TilePlan

#: float32 canvas-sized tensors alive during refinement (see the module docstring).
CANVAS_COPIES = 6
#: whole frames resized at a time (:func:`~supergen.upscale.resize_video`'s ``frames_per_chunk``).
RESIZE_CHUNK = 8

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

#: The stages of a render, in order (``setup``: embeddings and the image condition).
STAGES = ("setup", "sketch", "upscale", "refine", "decode")
#: The encoders the pipeline parks on the host (``encoders.park``), as :meth:`Architecture.parameters`
#: names them, and the stages that run without them: the text encoder leaves once the prompts are
#: encoded (before the image condition), the image encoder after the sketch.
PARKED = {"text_encoder": ("setup", "sketch", "upscale", "refine", "decode"),
          "text_encoder_2": ("setup", "sketch", "upscale", "refine", "decode"), "image_encoder": ("upscale", "refine", "decode")}

# The diffusers configs of the published checkpoints (transformer/, vae/, text_encoder/ config.json).
_UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
                 relative_attention_num_buckets=32, feed_forward_proj="gated-gelu")
_T5_XXL = dict(_UMT5_XXL, vocab_size=32128)  # CogVideoX's and LTX's T5-XXL: umT5-XXL's shape, English vocabulary
_WAN_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True])
_WAN_T = dict(patch_size=[1, 2, 2], attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
              freq_dim=256, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=1024)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    # Modules are built in their final dtype: ``.to(dtype)`` on fake parameters fails.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@dataclass(frozen=True)
class Architecture(SizeRules):
    """A model's numbers: the configs of its transformer(s), VAE and encoders, its pipeline class and native size.

    Its family (the adapter of :attr:`pipeline`) names the classes these configs build
    (:class:`~supergen.adapters.base.FamilyModules`); :meth:`build` makes the real diffusers pipeline
    from them without weights, and the size rules (:class:`~supergen.geometry.SizeRules`) are the
    family adapter's own on that pipeline, so the planner and a loaded model cannot disagree.
    """

    name: str
    transformer: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    #: Training resolution (pixels); None lets the config's ``sketch.native_area`` rule decide, as the
    #: pipeline does for Wan checkpoints (they do not record it).
    native_size: tuple[int, int] | None = None
    #: Wan 2.2 A14B has two experts of the same shape (``transformer``, ``transformer_2``), both resident.
    experts: int = 1
    #: Image tokens the transformer cross-attends to (Wan 2.1 I2V: the CLIP embedding's length).
    image_tokens: int = 0
    #: Wan 2.1 I2V: the ``CLIPVisionConfig`` of its image encoder (resident weights too).
    image_encoder: dict[str, Any] | None = None
    note: str = ""
    #: Exact parameter counts when known from loaded modules (the demo); else counted on ``meta``.
    counted: dict[str, int] = field(default_factory=dict, compare=False)
    #: The diffusers pipeline class (it names the family: :func:`~supergen.adapters.adapter_named`).
    pipeline: str = "WanPipeline"
    #: HunyuanVideo: the config of its second text encoder (CLIP's text model, the pooled embedding).
    text_encoder_2: dict[str, Any] | None = None
    #: Arguments of the pipeline's own config (Wan 2.2 A14B: ``boundary_ratio``, where the experts switch).
    pipeline_config: dict[str, Any] = field(default_factory=dict)

    # ---- the family and its modules -----------------------------------------------------------
    @property
    def family(self):
        """The family's adapter class (:class:`~supergen.adapters.ModelAdapter`)."""
        from .adapters import adapter_named

        return adapter_named(self.pipeline)

    def encoder_configs(self) -> dict[str, dict[str, Any]]:
        """The configs of the encoders this architecture has, by pipeline component name."""
        configs = {"text_encoder": self.text_encoder, "text_encoder_2": self.text_encoder_2, "image_encoder": self.image_encoder}
        return {name: configs[name] for name in self.family.modules.encoders if configs.get(name) is not None}

    def build(
        self,
        dtypes: dict[str, torch.dtype] | None = None,
        layers: int | None = None,
        encoders: tuple[str, ...] = (),
        scheduler: Any = None,
    ):
        """The real diffusers pipeline of this architecture, built from its configs.

        Call it under ``torch.device("meta")`` (nothing allocated) or a ``FakeTensorMode`` (shapes
        only): its modules are initialised, never loaded.

        Args:
            dtypes: per component (``transformer``, ``vae``, encoder names), the dtype to build it in
                (``.to(dtype)`` fails on fake parameters); float32 where not given.
            layers: at most this many of each repeated block list of the transformer (None: all).
            encoders: the encoders to build (of :meth:`encoder_configs`); the others are None.
            scheduler: the scheduler to use; None: :meth:`scheduler`.
        """
        import diffusers
        import transformers

        spec = self.family.modules
        dtypes = dtypes or {}

        def built(name: str, make):
            with _default_dtype(dtypes.get(name, torch.float32)):
                return make().eval()

        t_cfg = dict(self.transformer)
        if layers is not None:
            t_cfg.update({key: min(layers, t_cfg[key]) for key in spec.block_counts})
        transformer_class = getattr(diffusers, spec.transformer)
        components: dict[str, Any] = {"vae": built("vae", lambda: getattr(diffusers, spec.vae).from_config(self.vae))}
        for i in range(self.experts):
            components["transformer" if i == 0 else f"transformer_{i + 1}"] = built("transformer", lambda: transformer_class.from_config(t_cfg))
        components["scheduler"] = scheduler if scheduler is not None else self.scheduler()
        for name in self.encoder_configs():
            if name in encoders:
                components[name] = built(name, lambda: self._encoder(name))
        if "image_encoder" in components:
            size = self.image_encoder["image_size"]
            components["image_processor"] = transformers.CLIPImageProcessor(crop_size=size, size=size)
        pipeline_class = getattr(diffusers, self.pipeline)
        # Components this architecture does not build (tokenizers, unbuilt encoders) are None.
        absent = {name: None for name, p in inspect.signature(pipeline_class.__init__).parameters.items()
                  if name != "self" and p.default is inspect.Parameter.empty and name not in components}
        return pipeline_class(**components, **absent, **self.pipeline_config)

    def _encoder(self, name: str):
        """The encoder ``name`` of :meth:`encoder_configs`, built from its config (initialised, not loaded)."""
        import transformers

        model_class, config_class = self.family.modules.encoders[name]
        return getattr(transformers, model_class)(getattr(transformers, config_class)(**self.encoder_configs()[name]))

    def scheduler(self):
        """The family's scheduler, as the released checkpoints configure it (its tables on the host)."""
        import diffusers

        scheduler_class, scheduler_args = self.family.modules.scheduler
        with torch.device("cpu"):
            return getattr(diffusers, scheduler_class)(**scheduler_args)

    @functools.cached_property
    def _rules(self):
        """The family adapter on this architecture's pipeline built on ``meta``: the size rules."""
        with torch.device("meta"):
            return self.family(self.build())

    # ---- geometry (SizeRules) ----------------------------------------------------------------
    @property
    def vae_scale(self) -> tuple[int, int, int]:
        return self._rules.vae_scale

    @property
    def patch(self) -> tuple[int, int, int]:
        return self._rules.patch

    @property
    def latent_channels(self) -> int:
        return self._rules.latent_channels

    @property
    def pixel_multiple(self) -> int:
        return self._rules.pixel_multiple

    def extra_latent_frames(self, num_frames: int) -> int:
        return self._rules.extra_latent_frames(num_frames)

    @property
    def vae_tile(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The VAE's spatial tiling in pixels, ``((tile_h, tile_w), (stride_h, stride_w))`` (the adapter's)."""
        return self._rules.vae_tile

    @property
    def image_to_video(self) -> bool:
        return self._rules.requires_image

    @property
    def width(self) -> int:
        return self.transformer["num_attention_heads"] * self.transformer["attention_head_dim"]

    @property
    def ffn_dim(self) -> int:
        """The transformer's feed-forward width: Wan's ``ffn_dim``, HunyuanVideo's ``mlp_ratio`` × width,
        CogVideoX's ``ff_inner_dim`` when set, else diffusers' ``FeedForward`` default of 4 × width."""
        t = self.transformer
        return t.get("ffn_dim") or t.get("ff_inner_dim") or int(t.get("mlp_ratio", 4.0) * self.width)

    @property
    def vae_channels(self) -> int:
        """Channels per output pixel at the VAE decoder's full resolution: its last convolution's input
        channels per pixel it writes (LTX's decoder ends at a quarter of the resolution and unpacks
        4×4 pixels from each position: 128 channels for 48 outputs count as 8)."""
        last = [m for m in self._rules.pipe.vae.decoder.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))][-1]
        return last.in_channels * 3 // last.out_channels

    @property
    def num_blocks(self) -> int:
        """Repeated transformer blocks per expert (HunyuanVideo: dual- and single-stream together)."""
        return sum(self.transformer[key] for key in self.family.modules.block_counts)

    # ---- parameters ------------------------------------------------------------------------
    def parameters(self) -> dict[str, int]:
        """Exact parameter counts of ``transformer`` (all experts), ``vae`` and each encoder."""
        return dict(self.counted or self._counts)

    @functools.cached_property
    def _counts(self) -> dict[str, int]:
        # Counted once per architecture: building the 8B text encoders on meta takes seconds. The
        # transformer and the VAE are those of the size rules' pipeline, so nothing is built twice.
        count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
        counts = {"transformer": sum(count(m) for m in self._rules.transformers), "vae": count(self._rules.pipe.vae)}
        with torch.device("meta"):  # builds the real modules without allocating their weights
            counts |= {name: count(self._encoder(name)) for name in self.encoder_configs()}
        return counts

    def block_parameters(self) -> tuple[int, int]:
        """``(per block, outside the blocks)`` parameters of one transformer expert, counted on ``meta``:
        what block-level group offloading moves at a time, and what it keeps together besides
        (HunyuanVideo's dual- and single-stream blocks averaged)."""
        import diffusers

        spec = self.family.modules
        with torch.device("meta"):
            empty = getattr(diffusers, spec.transformer).from_config(dict(self.transformer, **{k: 0 for k in spec.block_counts}))
            outside = sum(p.numel() for p in empty.parameters())
        whole = self.parameters()["transformer"] // self.experts
        return (whole - outside) // self.num_blocks, outside

    # ---- constructors -----------------------------------------------------------------------
    @classmethod
    def from_folder(cls, path: str | Path) -> "Architecture":
        """Read a diffusers Wan model folder's ``transformer/``, ``vae/`` and ``text_encoder/`` configs."""
        root = Path(path)

        def read(sub: str) -> dict[str, Any] | None:
            file = root / sub / "config.json"
            if not file.is_file():
                return None
            data = json.loads(file.read_text())
            return {k: v for k, v in data.items() if not k.startswith("_")}

        transformer, transformer_2 = read("transformer"), read("transformer_2")
        vae, text = read("vae"), read("text_encoder")
        if (transformer or transformer_2) is None or vae is None or text is None:
            raise SuperGenError(
                f"{str(root)!r} is not a diffusers Wan model folder (needs transformer/, vae/ and text_encoder/ "
                f"config.json); known architectures: {', '.join(KNOWN)}"
            )
        klass = json.loads((root / ("transformer" if transformer else "transformer_2") / "config.json").read_text()).get("_class_name")
        if klass != "WanTransformer3DModel":
            raise SuperGenError(f"the planner knows Wan transformers; {str(root)!r} has {klass}")
        main = transformer or transformer_2
        experts = 2 if transformer and transformer_2 else 1
        image = read("image_encoder")
        image_tokens = (image["image_size"] // image["patch_size"]) ** 2 + 1 if image and main.get("image_dim") else 0
        index_file = root / "model_index.json"
        index = json.loads(index_file.read_text()) if index_file.is_file() else {}
        pipeline = index.get("_class_name") or ("WanImageToVideoPipeline" if main["in_channels"] > vae["z_dim"] else "WanPipeline")
        boundary = {"boundary_ratio": index["boundary_ratio"]} if index.get("boundary_ratio") is not None else {}
        return cls(root.name, main, vae, text, experts=experts, image_tokens=image_tokens, image_encoder=image if image_tokens else None,
                   pipeline=pipeline, pipeline_config=boundary)

    @classmethod
    def from_pipeline(cls, pipe, name: str = "loaded") -> "Architecture":
        """The architecture of a loaded pipeline, with its modules' real parameter counts."""
        from .adapters import adapter_for

        transformers = adapter_for(pipe).transformers
        if type(transformers[0]).__name__ != "WanTransformer3DModel":
            raise SuperGenError(f"the planner knows Wan transformers; this pipeline has {type(transformers[0]).__name__}")
        count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
        counted = {"transformer": sum(map(count, transformers)), "vae": count(pipe.vae), "text_encoder": count(pipe.text_encoder)}
        image_tokens, image_encoder = 0, None
        encoder = getattr(pipe, "image_encoder", None)
        if encoder is not None and transformers[0].config.image_dim is not None:
            image_encoder = encoder.config.to_dict()
            image_tokens = (encoder.config.image_size // encoder.config.patch_size) ** 2 + 1
            counted["image_encoder"] = count(encoder)
        return cls(
            name, dict(transformers[0].config), dict(pipe.vae.config), pipe.text_encoder.config.to_dict(),
            experts=len(transformers), image_tokens=image_tokens, image_encoder=image_encoder, counted=counted,
            pipeline=type(pipe).__name__,
            pipeline_config={"boundary_ratio": pipe.config.boundary_ratio} if getattr(pipe.config, "boundary_ratio", None) is not None else {},
        )


#: Architectures the planner knows without any file. Native sizes are the published training sizes.
KNOWN: dict[str, Architecture] = {
    "Wan2.1-1.3B": Architecture(
        "Wan2.1-1.3B", dict(_WAN_T, num_attention_heads=12, ffn_dim=8960, num_layers=30), _WAN_VAE, _UMT5_XXL,
        native_size=(480, 832), note="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    ),
    "Wan2.1-14B": Architecture(
        "Wan2.1-14B", dict(_WAN_T, num_attention_heads=40, ffn_dim=13824, num_layers=40), _WAN_VAE, _UMT5_XXL,
        native_size=(720, 1280), note="Wan-AI/Wan2.1-T2V-14B-Diffusers",
    ),
    "Wan2.1-I2V-14B": Architecture(
        "Wan2.1-I2V-14B",
        dict(_WAN_T, num_attention_heads=40, ffn_dim=13824, num_layers=40, in_channels=36, image_dim=1280, added_kv_proj_dim=5120),
        _WAN_VAE, _UMT5_XXL, native_size=(720, 1280), image_tokens=257, pipeline="WanImageToVideoPipeline",
        # open-clip ViT-H/14 at 224 px: 16x16 patches + the class token.
        image_encoder=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                           image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu"),
        note="Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
    ),
    "Wan2.2-T2V-A14B": Architecture(
        "Wan2.2-T2V-A14B", dict(_WAN_T, num_attention_heads=40, ffn_dim=13824, num_layers=40), _WAN_VAE, _UMT5_XXL,
        native_size=(720, 1280), experts=2, pipeline_config={"boundary_ratio": 0.875},
        note="Wan-AI/Wan2.2-T2V-A14B-Diffusers (high- and low-noise experts)",
    ),
    "CogVideoX1.5-5B-I2V": Architecture(
        "CogVideoX1.5-5B-I2V",
        dict(num_attention_heads=48, attention_head_dim=64, in_channels=32, out_channels=16, time_embed_dim=512, ofs_embed_dim=512,
             text_embed_dim=4096, num_layers=42, attention_bias=True, sample_width=300, sample_height=300, sample_frames=81,
             patch_size=2, patch_size_t=2, temporal_compression_ratio=4, max_text_seq_length=226, patch_bias=False,
             use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False),
        dict(block_out_channels=[128, 256, 256, 512], latent_channels=16, layers_per_block=3, norm_num_groups=32,
             temporal_compression_ratio=4, sample_height=480, sample_width=720, scaling_factor=0.7, invert_scale_latents=True),
        _T5_XXL, native_size=(768, 1360), pipeline="CogVideoXImageToVideoPipeline", note="THUDM/CogVideoX1.5-5B-I2V",
    ),
    "HunyuanVideo-I2V": Architecture(
        "HunyuanVideo-I2V",
        dict(in_channels=33, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20, num_single_layers=40,
             num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1, qk_norm="rms_norm", guidance_embeds=False,
             text_embed_dim=4096, pooled_projection_dim=768, rope_theta=256.0, rope_axes_dim=[16, 56, 56],
             image_condition_type="latent_concat"),
        dict(latent_channels=16, block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32,
             scaling_factor=0.476986, spatial_compression_ratio=8, temporal_compression_ratio=4),
        # llava-llama-3-8b: LLaMA-3 8B with a CLIP ViT-L/14 at 336 px.
        dict(text_config=dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                              num_key_value_heads=8, vocab_size=128320, max_position_embeddings=8192),
             vision_config=dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768),
             image_token_index=128257),
        native_size=(720, 1280), pipeline="HunyuanVideoImageToVideoPipeline",
        text_encoder_2=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            max_position_embeddings=77, projection_dim=768),
        note="hunyuanvideo-community/HunyuanVideo-I2V",
    ),
    "LTX-Video": Architecture(
        "LTX-Video",
        dict(in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32, attention_head_dim=64,
             cross_attention_dim=2048, num_layers=28, caption_channels=4096),
        dict(latent_channels=128, block_out_channels=[128, 256, 512, 512], patch_size=4, patch_size_t=1),
        _T5_XXL, native_size=(512, 704), pipeline="LTXPipeline", note="Lightricks/LTX-Video (0.9.0)",
    ),
    # The built-in random model (supergen.builtin.tiny_wan_pipeline); native size = the tiny preset's sketch.
    "tiny": Architecture(
        "tiny",
        dict(_WAN_T, num_attention_heads=2, attention_head_dim=12, text_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32),
        dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]),
        dict(vocab_size=98, d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4, relative_attention_num_buckets=8),
        native_size=(128, 224), note="built-in random Wan (supergen.builtin)",
    ),
    # Wan-shaped but small enough to run on a CPU with random weights: checks the memory model where
    # the tiny one is below a process' memory noise (docs/benchmarks.md, "Planner").
    "wan-medium-random": Architecture(
        "wan-medium-random",
        dict(_WAN_T, num_attention_heads=4, text_dim=256, ffn_dim=2048, num_layers=4, rope_max_seq_len=256),
        dict(base_dim=32, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True]),
        dict(vocab_size=98, d_model=256, d_ff=512, d_kv=32, num_layers=2, num_heads=4, relative_attention_num_buckets=8),
        native_size=(256, 448), note="random, for checking the planner on CPU",
    ),
}
#: Hugging Face ids that name a known architecture.
ALIASES = {
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": "Wan2.1-1.3B",
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": "Wan2.1-14B",
    "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers": "Wan2.1-I2V-14B",
    "Wan-AI/Wan2.2-T2V-A14B-Diffusers": "Wan2.2-T2V-A14B",
    "THUDM/CogVideoX1.5-5B-I2V": "CogVideoX1.5-5B-I2V",
    "hunyuanvideo-community/HunyuanVideo-I2V": "HunyuanVideo-I2V",
    "Lightricks/LTX-Video": "LTX-Video",
    "tiny-i2v": "tiny",
}


def architecture(model: str) -> Architecture:
    """A known architecture by name or Hugging Face id, or a local model folder's."""
    if model in KNOWN:
        return KNOWN[model]
    if model in ALIASES:
        return KNOWN[ALIASES[model]]
    if model == "toy":  # the shipped trained model: its folder's configs
        from .builtin import TOY_MODEL_DIR

        return replace(Architecture.from_folder(TOY_MODEL_DIR), name="toy")
    if Path(model).is_dir():
        return Architecture.from_folder(model)
    raise SuperGenError(
        f"unknown model {model!r} for the planner; known: {', '.join([*KNOWN, *ALIASES, 'toy'])}, or a local diffusers model folder"
    )


# ---- the estimate ---------------------------------------------------------------------------


def transformer_flops(arch: Architecture, tokens: int, batch: int = 1, pairs: int | None = None) -> int:
    """Matrix-product FLOPs of one transformer forward on ``batch`` tiles of ``tokens`` tokens (module docstring).

    ``pairs``: (query, key) pairs of self-attention when it is sparse (``tiling.mode=attention``);
    None means dense, ``tokens²``.
    """
    t = arch.transformer
    d, ffn, n = arch.width, arch.ffn_dim, arch.num_blocks
    # The text the transformer reads: Wan's 512 padded umT5 tokens of 4096; other families' own lengths.
    s, text_dim = arch.family.prompt_shapes(t, arch.image_to_video)["prompt_embeds"]
    i, L = arch.image_tokens, tokens
    pairs = L * L if pairs is None else pairs
    block = 12 * L * d * d + 4 * pairs * d + 4 * s * d * d + 4 * L * s * d + 4 * L * d * ffn
    patch = math.prod(arch.patch)
    embed = 2 * L * t["in_channels"] * patch * d + 2 * L * d * t["out_channels"] * patch  # patch in, projection out
    embed += 2 * s * text_dim * d + 2 * s * d * d  # text embedder (two linears)
    embed += 2 * (t.get("freq_dim", 256) * d + d * d + d * 6 * d)  # time embedder and its 6-way modulation projection
    if i:
        image_dim = t["image_dim"]
        block += 4 * i * d * d + 4 * L * i * d
        embed += 2 * i * image_dim * image_dim + 2 * i * image_dim * d
    return batch * (n * block + embed)


@dataclass
class ResourcePlan:
    """One render's geometry, compute and memory estimate (bytes), as :func:`make_plan` computes it."""

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
        return self.weights - sum(self.memory.get(f"weights.{k}", 0) for k in self.parked if stage in PARKED[k])

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

    def rows(self) -> list[tuple[str, str]]:
        """The table :func:`format_plan` prints and the demo shows, as ``(quantity, value)`` pairs."""
        f, lh, lw = self.latent[1:]
        grid = "x".join(str(len(axis.segments(0))) for axis in self.plan.axes)
        tile_px = tuple(s * self.arch.vae_scale[1] for s in self.plan.tile)
        tiling = f"{self.plan.mode}/{self.plan.boundary} {grid} tiles of {tile_px[0]}x{tile_px[1]} px ({self.plan.tile[0]}x{self.plan.tile[1]} latent)"
        if self.layout is not None:
            rows_, cols_ = self.layout[0].grid
            halo = self.layout.halo * self.arch.pixel_multiple
            moves = "fixed" if self.layout.shift_every >= self.refine_steps else (
                f"moving {'x'.join(str(s * self.arch.pixel_multiple) for s in self.layout.strides)} px "
                f"every {self.layout.shift_every} step(s), {self.layout.boundary}")
            tiling = f"attention: one canvas forward, {rows_}x{cols_} tiles ({moves}) attending to tile + {halo} px halo"
        rows = [
            ("model", f"{self.arch.name} ({self.dtype})" + (f" — {self.arch.note}" if self.arch.note else "")),
            # Every size is height x width, as in the render summary.
            ("output", f"{self.size[0]}x{self.size[1]} (height x width), {self.num_frames} frames" + (
                f" (rendered {self.canvas[0]}x{self.canvas[1]}, cropped)" if self.canvas != self.size else "")),
            ("sketch", f"{self.sketch[0]}x{self.sketch[1]}, {self.sketch_steps} steps" if self.sketch else "none (strength 1: from noise)"),
            ("canvas latent", f"{self.latent[0]}x{f}x{lh}x{lw} (channels x frames x height x width)"),
            ("tile grid", tiling),
            ("refinement steps", f"{self.refine_steps} ({self.tiles_per_step} tiles/step, {'2' if self.guidance else '1'} forwards/tile)"
             if self.layout is None else f"{self.refine_steps} ({'2' if self.guidance else '1'} canvas-wide forwards/step)"),
            ("tokens per tile", f"{self.tokens_per_tile:,}"),
            ("transformer FLOPs/step", flops(self.flops_per_step)),
            ("parameters", ", ".join(f"{k} {count(v)}" for k, v in self.parameters.items())),
            ("weights (resident)", human(self.weights)),
            ("transformer activations", f"{human(self.memory['transformer'])} ({self.batch_tiles} tile(s)/call)"),
            ("canvas state", human(self.memory["canvas"])),
            ("VAE decode", f"{human(self.memory['vae_decode'])} ({'tiled' if self.vae_tiling else 'untiled'})"),
            ("upscale (VAE encode)", human(self.memory["upscale"])),
            *([("block cache", human(self.memory["block_cache"]))] if self.memory["block_cache"] else []),
            ("estimated peak", self._peak_row()),
        ]
        if "stage.setup" in self.memory:
            rows.insert(-1, ("image condition (VAE encode)", human(self.memory["stage.setup"])))
        offloaded = max(STAGES, key=self.group_offload_peak)
        weights, transient = self.group_offload_breakdown(offloaded)
        held = (f"the text encoder {human(weights)}, onloaded whole while it encodes" if weights != self.group_offload_weights
                else f"weights on the device {human(weights)} + {offloaded} transient {human(transient)}")
        rows.append(("with group offload", f"{human(weights + transient)} in {offloaded} = {held} "
                     "(model.offload=group; supergen plan --trace --offload group traces it)"))
        return rows

    @property
    def peak_stage(self) -> str:
        return max(STAGES, key=self.stage_peak)

    def _peak_row(self) -> str:
        """The estimated peak and what is on the device when it happens."""
        stage = self.peak_stage
        weights, transient = self.stage_breakdown(stage)
        parked = [k for k in self.parked if stage in PARKED[k] and (stage != "setup" or weights < self.weights)]
        if weights == self.weights:
            which = "all of them" + (f": {', '.join(self.parked)} not yet parked" if self.parked else "")
        else:
            which = f"{', '.join(parked)} parked on the host by then"
        return f"{human(self.peak)} in {stage} = weights {human(weights)} ({which}) + {stage} transient {human(transient)}"


def make_plan(
    config: SuperGenConfig,
    arch: Architecture,
    height: int | None = None,
    width: int | None = None,
    num_frames: int | None = None,
) -> ResourcePlan:
    """The plan of one render with ``config`` on ``arch``; sizes default to ``config.job``.

    Raises:
        SuperGenError: the same size errors the pipeline raises (e.g. a size below the VAE × patch multiple).
    """
    req = (height if height is not None else config.job.height, width if width is not None else config.job.width)
    render = plan_render(config, arch, *req, num_frames if num_frames is not None else config.job.num_frames)
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
        parameters=parameters, render=render, parked=tuple(k for k in PARKED if k in parameters) if config.encoders.park else (),
    )
    # Tiles per step vary with the shift (clamp adds a segment when the grid is offset): plan for the most.
    out.tiles_per_step = max(len(plan.tiles(step)) for step in range(refine_steps))
    pt, ph, pw = arch.patch
    out.tokens_per_tile = (latent[1] // pt) * (plan.tile[0] // ph) * (plan.tile[1] // pw)
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
    family = arch.family.memory
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
        row_width = sum(_vae_spans(canvas[1], vae_tile[1], vae_stride[1]))
        rows = 3 * frames * (tile_h + min(vae_tile[0] - vae_stride[0], tile_h)) * row_width * vb
        strip = 3 * frames * min(vae_stride[0], canvas[0]) * canvas[1] * vb
        mem["vae_decode"] = video + rows + strip + working
        band = 3 * frames * tile_h * canvas[1] * vb
        resize = sketch_px * 4 + 3 * min(RESIZE_CHUNK, frames) * canvas[0] * canvas[1] * 4
        mem["upscale"] = band + max(resize, encode_working) + 3 * latent_bytes
    else:
        mem["vae_decode"] = video * vb + working + video  # the decoded video, its working set, the output
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
        from .cache.block import block_cache_bytes

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
    if condition and arch.family.canvas_condition:
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

    The block-sparse kernels compute a little more (partly filled blocks); see kernels/README.md.
    """
    frames = layout.canvas[0]
    return sum(
        frames * (r1 - r0) * (c1 - c0) * frames * (wr1 - wr0) * (wc1 - wc0)
        for (r0, r1, c0, c1), (wr0, wr1, wc0, wc1) in zip(layout.tile_rects(), layout.tile_windows())
    )


def _vae_tile_area(canvas: tuple[int, int], tile: tuple[int, int]) -> int:
    """Pixel area of the largest tile the tiled VAE (tiles of ``tile`` pixels) works on."""
    return min(tile[0], canvas[0]) * min(tile[1], canvas[1])


def _vae_spans(length: int, tile: int, stride: int) -> list[int]:
    """Lengths of the tiled VAE's tiles along one axis (they overlap): the loop bounds of ``tiled_decode``."""
    return [min(tile, length - start) for start in range(0, length, stride)]


def _vae_tiles_total_area(canvas: tuple[int, int], tile: tuple[int, int], stride: tuple[int, int]) -> int:
    """Summed pixel area of the tiled VAE's tiles (they overlap)."""
    return sum(_vae_spans(canvas[0], tile[0], stride[0])) * sum(_vae_spans(canvas[1], tile[1], stride[1]))


def component_dtype(config: SuperGenConfig, arch: Architecture, component: str) -> str:
    """The dtype ``component`` runs in: ``model.vae_dtype`` / ``model.image_encoder_dtype`` when set,
    else the family's recipe (:attr:`~supergen.adapters.ModelAdapter.component_dtypes`: Wan's VAE and
    image encoder in float32, as diffusers' examples), else the model's ``model.dtype``."""
    override = {"vae": config.model.vae_dtype, "image_encoder": config.model.image_encoder_dtype}.get(component)
    return override or arch.family.component_dtypes.get(component, config.model.dtype)


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
    rows = plan.rows()
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 2 + max(len(v) for _, v in rows))
    return "\n".join([line, *(f"{k.ljust(width)}  {v}" for k, v in rows), line])


def with_native_sketch(config: SuperGenConfig, arch: Architecture) -> SuperGenConfig:
    """``config`` with the architecture's native size as the sketch size, unless the config sets one."""
    if config.sketch.height is not None or arch.native_size is None:
        return config
    return replace(config, sketch=replace(config.sketch, height=arch.native_size[0], width=arch.native_size[1]))
