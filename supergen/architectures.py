"""Model architectures: a model's numbers without its weights, for the cost estimate, ``supergen plan --trace``
and the checks that need a model's family before loading it (its preset, whether it takes an image).

Data and size rules only, below the pipeline: the cost estimate (:mod:`supergen.cost`) prices renders
on them; :func:`architecture` finds one by model name, Hugging Face id or folder.

An :class:`Architecture` is the configs of a model's transformer(s), VAE and encoders and its diffusers
pipeline class. They come from :data:`KNOWN` (the released Wan 2.1/2.2, CogVideoX 1.5,
HunyuanVideo-I2V and LTX-Video, tiny, and a mid-size random one used to check the estimate), from a
local diffusers model folder (its ``*/config.json`` files), or from a loaded pipeline (the demo).
Parameter counts are exact: every module is built from its config on PyTorch's ``meta`` device,
which allocates nothing, and its parameters are counted.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import torch

from .config import SuperGenConfig
from .errors import SuperGenError
from .families import FamilySpec, FlopLayout, ModelRules, family_of, transformers_of, vae_tile
from .geometry import FromRules

#: The small trained model shipped inside the package (``--model toy``): a diffusers Wan folder.
TOY_MODEL_DIR = Path(__file__).parent / "toy-wan"

# The diffusers configs of the published checkpoints (transformer/, vae/, text_encoder/ config.json).
_UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
                 relative_attention_num_buckets=32, feed_forward_proj="gated-gelu")
_T5_XXL = dict(_UMT5_XXL, vocab_size=32128)  # CogVideoX's and LTX's T5-XXL: umT5-XXL's shape, English vocabulary
_WAN_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True])
_WAN_T = dict(patch_size=[1, 2, 2], attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
              freq_dim=256, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=1024)



@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    # Modules are built in their final dtype: ``.to(dtype)`` on fake parameters fails.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _with_defaults(class_name: str, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the defaults of the diffusers class ``class_name``'s ``__init__`` filled in (what
    ``from_config`` would register), read from its signature: no module is built."""
    import diffusers

    parameters = inspect.signature(getattr(diffusers, class_name).__init__).parameters
    return {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty} | config


@dataclass(frozen=True)
class Architecture(FromRules):
    """A model's numbers: the configs of its transformer(s), VAE and encoders, its pipeline class and native size.

    Its family (:attr:`spec`, named by :attr:`pipeline`) names the classes these configs build
    (:class:`~supergen.families.FamilyModules`); :meth:`build` makes the real diffusers pipeline
    from them without weights. The size rules (:class:`~supergen.geometry.SizeRules`) are the
    family's functions of these configs (:attr:`rules`), the same a loaded model's adapter applies to
    its own, so the planner and a loaded model cannot disagree; no adapter or pipeline is built for them.
    """

    name: str
    transformer: dict[str, Any]
    vae: dict[str, Any]
    #: None for a pipeline loaded or saved without it (its embeddings passed in): not counted.
    text_encoder: dict[str, Any] | None
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
    #: The diffusers pipeline class (it names the family: :func:`~supergen.families.family_of`).
    pipeline: str = "WanPipeline"
    #: HunyuanVideo: the config of its second text encoder (CLIP's text model, the pooled embedding).
    text_encoder_2: dict[str, Any] | None = None
    #: Arguments of the pipeline's own config (Wan 2.2 A14B: ``boundary_ratio``, where the experts switch).
    pipeline_config: dict[str, Any] = field(default_factory=dict)

    # ---- the family and its modules -----------------------------------------------------------
    @property
    def spec(self) -> FamilySpec:
        """The model's family (:class:`~supergen.families.FamilySpec`)."""
        return family_of(self.pipeline)

    def encoder_configs(self) -> dict[str, dict[str, Any]]:
        """The configs of the encoders this architecture has, by pipeline component name."""
        configs = {"text_encoder": self.text_encoder, "text_encoder_2": self.text_encoder_2, "image_encoder": self.image_encoder}
        return {name: configs[name] for name in self.spec.modules.encoders if configs.get(name) is not None}

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

        spec = self.spec.modules
        dtypes = dtypes or {}

        def built(name: str, make):
            with default_dtype(dtypes.get(name, torch.float32)):
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

        model_class, config_class = self.spec.modules.encoders[name]
        return getattr(transformers, model_class)(getattr(transformers, config_class)(**self.encoder_configs()[name]))

    def scheduler(self):
        """The family's scheduler, as the released checkpoints configure it (its tables on the host)."""
        import diffusers

        scheduler_class, scheduler_args = self.spec.modules.scheduler
        with torch.device("cpu"):
            return getattr(diffusers, scheduler_class)(**scheduler_args)

    @functools.cached_property
    def rules(self) -> ModelRules:
        """The family's size rules on this architecture's configs (the diffusers classes' defaults filled
        in): what a loaded model of this architecture plans with (``native_size`` None, not
        :attr:`native_size`, which ``supergen plan`` suggests as the sketch size through :func:`with_native_sketch`)."""
        modules = self.spec.modules
        return self.spec.rules(_with_defaults(modules.transformer, self.transformer), _with_defaults(modules.vae, self.vae), self.pipeline)

    @functools.cached_property
    def flop_layout(self) -> FlopLayout:
        """The matrix products of one transformer forward (the family's :attr:`~supergen.families.FamilySpec.flops`
        on this architecture's transformer config, the diffusers class's defaults filled in)."""
        config = _with_defaults(self.spec.modules.transformer, self.transformer)
        return self.spec.flops(config, self.image_to_video)

    @functools.cached_property
    def _vae(self) -> torch.nn.Module:
        """The VAE built on ``meta`` (nothing allocated): its tiling and decoder are set by its class, not its config."""
        import diffusers

        with torch.device("meta"):
            return getattr(diffusers, self.spec.modules.vae).from_config(self.vae)

    @property
    def vae_tile(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The VAE's spatial tiling in pixels, ``((tile_h, tile_w), (stride_h, stride_w))`` (as a loaded model's adapter reads it)."""
        return vae_tile(self._vae, self.vae_scale[1])

    @property
    def image_to_video(self) -> bool:
        return self.rules.requires_image

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
        last = [m for m in self._vae.decoder.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))][-1]
        return last.in_channels * 3 // last.out_channels

    @property
    def num_blocks(self) -> int:
        """Repeated transformer blocks per expert (HunyuanVideo: dual- and single-stream together)."""
        return sum(self.transformer[key] for key in self.spec.modules.block_counts)

    # ---- parameters ------------------------------------------------------------------------
    def parameters(self) -> dict[str, int]:
        """Exact parameter counts of ``transformer`` (all experts), ``vae`` and each encoder."""
        return dict(self.counted or self._counts)

    @functools.cached_property
    def _counts(self) -> dict[str, int]:
        # Counted once per architecture: building the 8B text encoders on meta takes seconds.
        import diffusers

        count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
        with torch.device("meta"):  # builds the real modules without allocating their weights
            # Experts have the same shape: one is built.
            transformer = getattr(diffusers, self.spec.modules.transformer).from_config(self.transformer)
            counts = {"transformer": self.experts * count(transformer), "vae": count(self._vae)}
            counts |= {name: count(self._encoder(name)) for name in self.encoder_configs()}
        return counts

    def block_parameters(self) -> tuple[int, int]:
        """``(per block, outside the blocks)`` parameters of one transformer expert, counted on ``meta``:
        what block-level group offloading moves at a time, and what it keeps together besides
        (HunyuanVideo's dual- and single-stream blocks averaged)."""
        import diffusers

        spec = self.spec.modules
        with torch.device("meta"):
            empty = getattr(diffusers, spec.transformer).from_config(dict(self.transformer, **{k: 0 for k in spec.block_counts}))
            outside = sum(p.numel() for p in empty.parameters())
        whole = self.parameters()["transformer"] // self.experts
        return (whole - outside) // self.num_blocks, outside

    # ---- constructors -----------------------------------------------------------------------
    @classmethod
    def from_folder(cls, path: str | Path) -> "Architecture":
        """Read a diffusers model folder of any supported family: ``model_index.json`` (the pipeline class
        names the family), the ``transformer/`` (and ``transformer_2/``) and ``vae/`` configs, and the
        configs of the encoders the family has (:attr:`~supergen.families.FamilySpec.modules`)."""
        root = Path(path)

        def read(sub: str) -> dict[str, Any] | None:
            file = root / sub / "config.json"
            if not file.is_file():
                return None
            data = json.loads(file.read_text())
            return {k: v for k, v in data.items() if not k.startswith("_")}

        transformer, transformer_2, vae = read("transformer"), read("transformer_2"), read("vae")
        index_file = root / "model_index.json"
        index = json.loads(index_file.read_text()) if index_file.is_file() else {}
        pipeline = index.get("_class_name")
        if (transformer or transformer_2) is None or vae is None or pipeline is None:
            raise SuperGenError(
                f"{str(root)!r} is not a diffusers model folder (needs model_index.json and transformer/ and vae/ "
                f"config.json); known architectures: {', '.join(KNOWN)}"
            )
        # An encoder the folder lacks (a pipeline saved without it: embeddings passed in) is None: not counted.
        encoders = {name: read(name) for name in family_of(pipeline).modules.encoders}
        main = transformer or transformer_2
        image = encoders.get("image_encoder")
        # Wan 2.1 I2V cross-attends to CLIP's tokens: its patches and the class token.
        image_tokens = (image["image_size"] // image["patch_size"]) ** 2 + 1 if image and main.get("image_dim") else 0
        boundary = {"boundary_ratio": index["boundary_ratio"]} if index.get("boundary_ratio") is not None else {}
        return cls(root.name, main, vae, encoders.get("text_encoder"), experts=2 if transformer and transformer_2 else 1,
                   image_tokens=image_tokens, image_encoder=image, text_encoder_2=encoders.get("text_encoder_2"),
                   pipeline=pipeline, pipeline_config=boundary)

    @classmethod
    def from_pipeline(cls, pipe, name: str = "loaded") -> "Architecture":
        """The architecture of a loaded pipeline of any supported family, with its modules' real parameter counts."""
        transformers = transformers_of(pipe)
        count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
        counted = {"transformer": sum(map(count, transformers)), "vae": count(pipe.vae)}
        encoders = {}
        for component in family_of(type(pipe).__name__).modules.encoders:
            module = getattr(pipe, component, None)
            if module is not None:
                encoders[component], counted[component] = module.config.to_dict(), count(module)
        image = encoders.get("image_encoder")
        image_tokens = (image["image_size"] // image["patch_size"]) ** 2 + 1 if image and getattr(transformers[0].config, "image_dim", None) else 0
        return cls(
            name, dict(transformers[0].config), dict(pipe.vae.config), encoders.get("text_encoder"),
            experts=len(transformers), image_tokens=image_tokens, image_encoder=image, text_encoder_2=encoders.get("text_encoder_2"),
            counted=counted, pipeline=type(pipe).__name__,
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
    """A known architecture by name or Hugging Face id, the shipped toy model's, or a local model folder's."""
    if model in KNOWN:
        return KNOWN[model]
    if model in ALIASES:
        return KNOWN[ALIASES[model]]
    if model == "toy":  # the shipped trained model: its folder's configs
        return replace(Architecture.from_folder(TOY_MODEL_DIR), name="toy")
    if Path(model).is_dir():
        return Architecture.from_folder(model)
    raise SuperGenError(
        f"unknown model {model!r} for the planner; known: {', '.join([*KNOWN, *ALIASES, 'toy'])}, or a local diffusers model folder"
    )


def with_native_sketch(config: SuperGenConfig, arch: Architecture) -> SuperGenConfig:
    """``config`` with the architecture's native size as the sketch size, unless the config sets one."""
    if config.sketch.height is not None or arch.native_size is None:
        return config
    return replace(config, sketch=replace(config.sketch, height=arch.native_size[0], width=arch.native_size[1]))
