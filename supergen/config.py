"""Typed configuration: omegaconf structured dataclasses, YAML presets and ``key=value`` overrides.

A config is data. :func:`load_config` builds one from (in order) the defaults below, an optional YAML
preset and ``key=value`` overrides, and checks it: an unknown key, a wrong type or a value outside
its choices is a :class:`~supergen.errors.ConfigError` that names the key and what would be valid.

Sizes are in pixels; the library converts to latent units with the model's VAE and patch factors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from .errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class ModelConfig:
    #: ``tiny`` (built-in random Wan, for tests), ``toy`` (the small trained model in assets/),
    #: or a diffusers model folder / Hugging Face id.
    name: str = "tiny"
    #: Weights dtype: float32 | bfloat16 | float16.
    dtype: str = "float32"
    #: ``auto`` picks cuda when available, else cpu.
    device: str = "auto"


@dataclass
class JobConfig:
    """What to render. Each row of a batch file overrides these fields."""

    prompt: str = "a red car in the city at night"
    negative_prompt: str = ""
    #: Path to the conditioning image for image-to-video models.
    image: str | None = None
    #: Optional low-resolution video to use as the sketch (supergen as a video upscaler).
    sketch_video: str | None = None
    height: int = 256
    width: int = 448
    num_frames: int = 9
    seed: int = 0


@dataclass
class SketchConfig:
    """Stage 1: the whole video at the model's native resolution."""

    #: Sketch size in pixels; null picks the model's native size (or, when unknown, the target's
    #: aspect at ``native_area`` pixels).
    height: int | None = None
    width: int | None = None
    native_area: int = 480 * 832
    num_inference_steps: int = 50
    guidance_scale: float = 5.0
    #: Wan 2.2 low-noise expert; null means ``guidance_scale``.
    guidance_scale_2: float | None = None
    #: Pixel-space resize of the decoded sketch: bicubic | lanczos.
    upscale: str = "bicubic"
    #: Encode the upscaled video with the posterior's mode (false) or a seeded sample (true).
    sample_posterior: bool = False


@dataclass
class RefineConfig:
    """Stage 2: re-noise the upscaled sketch and denoise it in tiles."""

    #: Length N of the schedule that refinement enters part-way.
    num_inference_steps: int = 50
    #: Fraction k/N of the schedule that is re-run: 1.0 ignores the sketch (pure noise), small values
    #: keep more of it.
    strength: float = 0.5
    #: null means the sketch's guidance scale.
    guidance_scale: float | None = None
    guidance_scale_2: float | None = None


@dataclass
class TilingConfig:
    #: shift (non-overlapping tiles whose grid moves) | overlap (fixed overlapping, feathered tiles) |
    #: attention (the whole canvas in one forward, each token attending to its tile grown by ``halo``).
    mode: str = "shift"
    #: Tile size in pixels; null means the sketch size (the sequence length the model was trained on).
    tile_height: int | None = None
    tile_width: int | None = None
    #: shift mode: the grid moves by tile/shift_divisor (rounded to the patch) on each axis ...
    shift_divisor: int = 16
    #: ... every ``shift_every`` refinement steps.
    shift_every: int = 1
    #: shift mode at the canvas edge: wrap (torus, the paper) | clamp (full-size tiles clamped
    #: inside the canvas; no opposite edges side by side).
    boundary: str = "clamp"
    #: overlap mode: minimum overlap between neighbouring tiles, in pixels.
    overlap: int = 128
    #: attention mode: pixels by which each tile's attention window reaches into its neighbours
    #: (0: tile-local attention). A multiple of VAE scale x patch (16 for Wan).
    halo: int = 64
    #: RoPE positions per tile: local (every tile from 0, the paper) | global (canvas offsets) |
    #: ntk (canvas offsets, NTK-scaled theta on spatial axes).
    positions: str = "global"
    #: How many tiles of equal shape go through the transformer in one batch.
    batch_tiles: int = 1


@dataclass
class CacheRegionConfig:
    """Per-tile thresholds: ``threshold × clamp((median volatility / tile volatility) ** strength, min_scale, max_scale)``."""

    #: 0 gives every tile the base threshold; larger values separate quiet and busy regions more.
    strength: float = 1.0
    min_scale: float = 0.5
    max_scale: float = 2.0


@dataclass
class CacheBlockConfig:
    """Block-level reuse inside computed tiles (per tile and per block)."""

    enabled: bool = False
    #: Relative L1 change of a block's input under which its last residual is reused.
    threshold: float = 0.05


@dataclass
class CacheConfig:
    """Reuse the model output of tiles (and blocks) that barely change; see ``docs/cache.md``."""

    enabled: bool = False
    #: region (supergen's region-aware cache) | none | steps (uniform step skipping at ``fraction``) |
    #: teacache (timestep-embedding rule per tile) | fbc, magcache (diffusers' First Block Cache /
    #: MagCache hooks, one state per canvas region): the last three are baselines (docs/cache.md).
    policy: str = "region"
    #: Base threshold on the predicted relative change of a tile's output; 0 reuses nothing.
    threshold: float = 0.1
    #: The first refinement steps, always computed (two give the first gain estimate).
    warmup_steps: int = 2
    #: An element of the canvas is recomputed after at most this many consecutive reuses.
    max_consecutive: int = 3
    #: steps: target share of refinement steps computed (first ``warmup_steps`` and the last included).
    fraction: float = 0.7
    region: CacheRegionConfig = field(default_factory=CacheRegionConfig)
    block: CacheBlockConfig = field(default_factory=CacheBlockConfig)
    #: magcache: the model's per-step magnitude ratios; null runs diffusers' calibration (no skipping)
    #: and logs them.
    mag_ratios: list[float] | None = None


@dataclass
class ParallelConfig:
    """Tile parallelism across ranks (``torchrun``/``accelerate launch``); ignored in one process."""

    #: Dtype of the tile predictions moved between ranks: fp32 (exact) | bf16 | fp16 (half the bytes).
    #: Every rank, the tile's owner included, uses the transported value, so ranks stay identical.
    exchange_dtype: str = "fp32"
    #: Ranks per group in batch rendering: the world splits into groups of this many ranks and each
    #: group renders different jobs. 0 means one group of all ranks.
    group_size: int = 0
    #: Seconds a rank waits for its peers in any one collective before the job fails (a dead or
    #: hung rank is reported instead of hanging forever). Must exceed the slowest single tile.
    timeout_s: float = 300.0


@dataclass
class AttentionConfig:
    #: sdpa | flex | triton | xformers. Per-tile modes use diffusers' dispatcher (sdpa, flex,
    #: xformers); tiling.mode=attention uses the sparse tile kernels (sdpa with a mask, flex, triton).
    #: An unusable choice is an error naming what runs here (supergen/attention.py).
    backend: str = "sdpa"


@dataclass
class OutputConfig:
    path: str = "out.mp4"
    fps: int = 16
    #: Also write the sketch video beside the output (``<name>.sketch.mp4``).
    save_sketch: bool = False
    #: Tiled VAE encode/decode: auto (when larger than the sketch) | on | off.
    vae_tiling: str = "auto"
    #: H.264 quality for imageio-ffmpeg (0-10).
    quality: int = 8


@dataclass
class SuperGenConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    job: JobConfig = field(default_factory=JobConfig)
    sketch: SketchConfig = field(default_factory=SketchConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    tiling: TilingConfig = field(default_factory=TilingConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


#: Fields whose string value must be one of a fixed set.
CHOICES: dict[str, tuple[str, ...]] = {
    "model.dtype": ("float32", "bfloat16", "float16"),
    "sketch.upscale": ("bicubic", "lanczos"),
    "tiling.mode": ("shift", "overlap", "attention"),
    "attention.backend": ("sdpa", "flex", "triton", "xformers"),
    "tiling.boundary": ("wrap", "clamp"),
    "tiling.positions": ("local", "global", "ntk"),
    "output.vae_tiling": ("auto", "on", "off"),
    "cache.policy": ("region", "none", "steps", "teacache", "fbc", "magcache"),
    "parallel.exchange_dtype": ("fp32", "bf16", "fp16"),
}

#: Numeric fields and the closed interval they must lie in (None = unbounded).
RANGES: dict[str, tuple[float | None, float | None]] = {
    "job.height": (16, None),
    "job.width": (16, None),
    "job.num_frames": (1, None),
    "sketch.num_inference_steps": (1, None),
    "sketch.native_area": (256, None),
    "refine.num_inference_steps": (1, None),
    "refine.strength": (0.0, 1.0),
    "tiling.shift_divisor": (1, None),
    "tiling.shift_every": (1, None),
    "tiling.overlap": (0, None),
    "tiling.halo": (0, None),
    "tiling.batch_tiles": (1, None),
    "output.fps": (1, None),
    "output.quality": (0, 10),
    "cache.threshold": (0.0, None),
    "cache.warmup_steps": (0, None),
    "cache.max_consecutive": (0, None),
    "cache.fraction": (0.0, 1.0),
    "cache.region.strength": (0.0, None),
    "cache.region.min_scale": (0.0, 1.0),
    "cache.region.max_scale": (1.0, None),
    "cache.block.threshold": (0.0, None),
    "parallel.group_size": (0, None),
    "parallel.timeout_s": (1.0, None),
}


def preset_path(name: str) -> Path:
    """Resolve a preset name (``tiny``) or a path (``configs/tiny.yaml``) to a YAML file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file {name!r} does not exist")
        return path
    packaged = CONFIG_DIR / f"{name}.yaml"
    if not packaged.is_file():
        available = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown preset {name!r}; available presets: {', '.join(available)} (or a path to a .yaml file)")
    return packaged


def load_config(
    config: str | Path | SuperGenConfig | Mapping[str, Any] | None = None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
) -> SuperGenConfig:
    """Build and validate a config.

    Args:
        config: a preset name (``"tiny"``), a YAML path, a :class:`SuperGenConfig`, a nested mapping,
            or None for the defaults.
        overrides: ``["tiling.mode=overlap", ...]`` (CLI style) or ``{"tiling.mode": "overlap"}``.

    Returns:
        A :class:`SuperGenConfig` instance (plain dataclasses, typed).

    Raises:
        ConfigError: naming the offending key and the valid keys or choices.
    """
    schema = OmegaConf.structured(SuperGenConfig)
    layers: list[DictConfig] = []
    if isinstance(config, SuperGenConfig):
        layers.append(OmegaConf.structured(config))
    elif isinstance(config, Mapping):
        layers.append(OmegaConf.create(dict(config)))
    elif config is not None:
        layers.append(OmegaConf.load(preset_path(str(config))))
    if overrides:
        if isinstance(overrides, Mapping):
            # Python values keep their types (a YAML round trip would turn "on"/"off" into booleans).
            nested: dict[str, Any] = {}
            for key, value in overrides.items():
                *sections, leaf = key.split(".")
                node = nested
                for section in sections:
                    node = node.setdefault(section, {})
                node[leaf] = value
            layers.append(OmegaConf.create(nested))
        else:
            for item in overrides:
                if "=" not in item:
                    raise ConfigError(f"override {item!r} is not of the form key=value (e.g. tiling.mode=overlap)")
            layers.append(OmegaConf.from_dotlist(list(overrides)))
    try:
        merged = OmegaConf.merge(schema, *layers)
    except (ConfigKeyError, ConfigAttributeError) as exc:
        raise ConfigError(_unknown_key_message(exc)) from None
    except ValidationError as exc:
        key = exc.full_key or "?"
        raise ConfigError(f"config key {key!r}: {exc.msg.splitlines()[0]}") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid config: {exc}") from None
    cfg: SuperGenConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate(cfg)
    return cfg


def validate(cfg: SuperGenConfig) -> None:
    """Check choices and ranges that the type system cannot express."""
    for key, choices in CHOICES.items():
        value = _get(cfg, key)
        if value not in choices:
            raise ConfigError(f"config key {key!r} is {value!r}; valid choices: {', '.join(choices)}")
    for key, (low, high) in RANGES.items():
        value = _get(cfg, key)
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
            raise ConfigError(f"config key {key!r} is {value!r}; it must lie in {bounds}")
    if (cfg.sketch.height is None) != (cfg.sketch.width is None):
        raise ConfigError("sketch.height and sketch.width must be given together (or both null for the native size)")
    if (cfg.tiling.tile_height is None) != (cfg.tiling.tile_width is None):
        raise ConfigError("tiling.tile_height and tiling.tile_width must be given together (or both null)")


def to_yaml(cfg: SuperGenConfig) -> str:
    """The fully resolved config as YAML (for sidecar files and logs)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: SuperGenConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _unknown_key_message(exc: OmegaConfBaseException) -> str:
    full_key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
    parent, _, leaf = str(full_key).rpartition(".")
    node: Any = SuperGenConfig
    try:
        for part in filter(None, parent.split(".")):
            node = {f.name: f for f in dataclasses.fields(node)}[part].default_factory  # type: ignore[misc]
        valid = [f.name for f in dataclasses.fields(node)]
    except (KeyError, TypeError):
        valid = []
    where = f"section {parent!r}" if parent else "the top level"
    return f"unknown config key {full_key!r}; valid keys in {where}: {', '.join(valid) if valid else '(none)'}"
