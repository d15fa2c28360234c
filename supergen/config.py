"""Typed configuration: omegaconf structured dataclasses, YAML presets and ``key=value`` overrides.

A config is data. :func:`load_config` builds one from (in order) the defaults below, an optional YAML
preset and ``key=value`` overrides, and checks it: an unknown key, a wrong type or a value outside
its choices is a :class:`~supergen.errors.ConfigError` that names the key and what would be valid.

Sizes are in pixels; the library converts to latent units with the model's VAE and patch factors.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from .errors import ConfigError

logger = logging.getLogger("supergen")

CONFIG_DIR = Path(__file__).parent / "configs"


def choice(default: str, *choices: str) -> Any:
    """A string field that must be one of ``choices`` (checked by :func:`validate`, named in errors)."""
    assert default in choices
    return field(default=default, metadata={"choices": choices})


def bounded(default: Any, low: float | None = None, high: float | None = None, low_open: bool = False) -> Any:
    """A numeric field that must lie in ``[low, high]`` (``(low, high]`` when ``low_open``); None = unbounded."""
    return field(default=default, metadata={"range": (low, high, low_open)})


DTYPES = ("float32", "bfloat16", "float16")


# ---- method settings: what SuperGenPipeline reads --------------------------------------------


@dataclass
class SketchConfig:
    """Stage 1: the whole video at the model's native resolution."""

    #: Sketch size in pixels; null picks the model's native size (or, when unknown, the target's
    #: aspect at ``native_area`` pixels).
    height: int | None = bounded(None, 0, low_open=True)
    width: int | None = bounded(None, 0, low_open=True)
    #: follow: a sketch size whose aspect differs from the requested video's is replaced by its
    #: orientation-swapped size, or the video's aspect at the same area (never a stretched sketch) |
    #: fixed: exactly ``height × width``.
    aspect: str = choice("follow", "follow", "fixed")
    native_area: int = bounded(480 * 832, 256)
    num_inference_steps: int = bounded(50, 1)
    guidance_scale: float = 5.0
    #: Wan 2.2 low-noise expert; null means ``guidance_scale``.
    guidance_scale_2: float | None = None
    #: Pixel-space resize of the decoded sketch.
    upscale: str = choice("bicubic", "bicubic", "lanczos")
    #: Encode the upscaled video with the posterior's mode (false) or a seeded sample (true).
    sample_posterior: bool = False


@dataclass
class RefineConfig:
    """Stage 2: re-noise the upscaled sketch and denoise it in tiles."""

    #: Length N of the schedule that refinement enters part-way.
    num_inference_steps: int = bounded(50, 1)
    #: Fraction k/N of the schedule that is re-run: 1.0 ignores the sketch (pure noise), small values
    #: keep more of it.
    strength: float = bounded(0.5, 0.0, 1.0, low_open=True)
    #: null means the sketch's guidance scale.
    guidance_scale: float | None = None
    guidance_scale_2: float | None = None


@dataclass
class TilingConfig:
    #: shift (non-overlapping tiles whose grid moves) | overlap (fixed overlapping, feathered tiles) |
    #: attention (the whole canvas in one forward, each token attending to its tile grown by ``halo``).
    mode: str = choice("shift", "shift", "overlap", "attention")
    #: Tile size in pixels; null means the sketch size (the sequence length the model was trained on).
    tile_height: int | None = bounded(None, 0, low_open=True)
    tile_width: int | None = bounded(None, 0, low_open=True)
    #: shift and attention modes: the grid (attention: the tile windows) moves by tile/shift_divisor
    #: (rounded to the patch) on each axis ...
    shift_divisor: int = bounded(16, 1)
    #: ... every ``shift_every`` refinement steps (at least the step count: a fixed grid).
    shift_every: int = bounded(1, 1)
    #: shift and attention modes at the canvas edge: wrap (torus, the paper) | clamp (full-size tiles clamped
    #: inside the canvas; no opposite edges side by side).
    boundary: str = choice("clamp", "wrap", "clamp")
    #: overlap mode: minimum overlap between neighbouring tiles, in pixels; must be less than half
    #: the tile (more would compute most of the canvas several times a step). null: a quarter of
    #: the tile's shorter side, rounded down to the VAE × patch multiple.
    overlap: int | None = bounded(None, 0)
    #: attention mode: pixels by which each tile's attention window reaches into its neighbours
    #: (0: tile-local attention). A multiple of VAE scale x patch (16 for Wan).
    halo: int = bounded(64, 0)
    #: RoPE positions per tile: local (every tile from 0, the paper) | global (canvas offsets) |
    #: ntk (canvas offsets, NTK-scaled theta on spatial axes).
    positions: str = choice("global", "local", "global", "ntk")
    #: How many tiles of equal shape go through the transformer in one batch.
    batch_tiles: int = bounded(1, 1)
    #: Length in video frames of a tile's window in time: a longer clip is refined in windows of
    #: this many frames whose borders shift along time as the spatial grid does. null: the model
    #: family's native length (Wan: 81); a clip at or under it is one window (tiles span all frames).
    frames: int | None = bounded(None, 1)
    #: shift and attention modes with time windows: at the last refinement step neighbouring time
    #: windows blend linearly over a quarter window (at least one latent frame) across each border
    #: instead of cutting. Off by default: on the toy model (3-latent windows, a one-frame blend, a
    #: 10-step schedule) it did not lower the temporal seam score read on each border's first frame
    #: (docs/benchmarks.md, temporal windows); unmeasured on longer windows.
    feather_last: bool = False


@dataclass
class CacheRegionConfig:
    """``cache.policy=region``, supergen's region-aware cache: a tile is reused while the predicted
    relative change of its output stays under ``change_threshold × clamp((median volatility / tile
    volatility) ** strength, min_scale, max_scale) × (window area / owned area) ** cost``."""

    #: Base threshold on the predicted relative change of a tile's output since it was last
    #: computed; 0 reuses nothing.
    change_threshold: float = bounded(0.03, 0.0)
    #: 0 gives every tile the base threshold; larger values separate quiet and busy regions more.
    strength: float = bounded(1.0, 0.0)
    min_scale: float = bounded(0.5, 0.0, 1.0)
    max_scale: float = bounded(2.0, 1.0)
    #: Cost weighting: the threshold is also multiplied by ``(window area / owned area) ** cost``, so a
    #: tile that writes a thin strip of the canvas (clamp boundary) is recomputed only for a large
    #: change; 0 turns it off.
    cost: float = bounded(1.0, 0.0)


@dataclass
class CacheStepsConfig:
    """``cache.policy=steps``, uniform step skipping: every tile reuses on the same, evenly spread steps."""

    #: Share of refinement steps computed (the first ``cache.warmup_steps`` and the last included).
    fraction: float = bounded(0.7, 0.0, 1.0)


@dataclass
class CacheTeaCacheConfig:
    """``cache.policy=teacache``: the TeaCache rule (arXiv 2411.19108) per tile, on the model's timestep embedding."""

    #: Threshold on the relative L1 change of the timestep embedding accumulated since a canvas
    #: element was last computed (TeaCache's ``rel_l1_thresh``); 0 reuses nothing.
    rel_l1_threshold: float = bounded(0.03, 0.0)
    #: Rescale polynomial applied to each step's change, highest power first (TeaCache fits one per
    #: model); null: the change as it is.
    coefficients: list[float] | None = None


@dataclass
class CacheFbcConfig:
    """``cache.policy=fbc``: diffusers' First Block Cache (``FirstBlockCacheConfig``), one state per canvas region."""

    #: diffusers' ``threshold``: the tail blocks are skipped while the first block's output residual
    #: changed by less than this (relative) since they last ran.
    threshold: float = bounded(0.03, 0.0)


@dataclass
class CacheMagCacheConfig:
    """``cache.policy=magcache``: diffusers' MagCache (``MagCacheConfig``), one state per canvas region."""

    #: diffusers' ``threshold``: steps are skipped while the error accumulated from the magnitude
    #: ratios stays under this.
    threshold: float = bounded(0.03, 0.0)
    #: The model's per-step magnitude ratios (diffusers' ``mag_ratios``); null runs diffusers'
    #: calibration (nothing skipped) and logs them.
    mag_ratios: list[float] | None = None


@dataclass
class CacheBlockConfig:
    """Block-level reuse inside computed tiles (per tile and per block), with ``cache.policy=region``."""

    enabled: bool = False
    #: Relative L1 change of a block's input under which its last residual is reused.
    input_threshold: float = bounded(0.05, 0.0)


@dataclass
class CacheConfig:
    """Reuse the model output of tiles (and blocks) that barely change; see ``docs/cache.md``.

    ``policy`` picks the technique; each has its own section with its own threshold (``region``,
    ``steps``, ``teacache``, ``fbc``, ``magcache``); the rules every technique shares stay here.
    """

    enabled: bool = False
    #: region (supergen's region-aware cache) | none | steps (uniform step skipping) | teacache
    #: (timestep-embedding rule per tile) | fbc, magcache (diffusers' First Block Cache / MagCache
    #: hooks, one state per canvas region): the last four are baselines (docs/cache.md).
    policy: str = choice("region", "region", "none", "steps", "teacache", "fbc", "magcache")
    #: The first refinement steps, always computed (two give the region cache its first gain
    #: estimate; MagCache's retention ratio is this share of the steps).
    warmup_steps: int = bounded(2, 0)
    #: An element of the canvas is recomputed after at most this many consecutive reuses (MagCache:
    #: its ``max_skip_steps``; First Block Cache has no cap).
    max_consecutive: int = bounded(2, 0)
    region: CacheRegionConfig = field(default_factory=CacheRegionConfig)
    steps: CacheStepsConfig = field(default_factory=CacheStepsConfig)
    teacache: CacheTeaCacheConfig = field(default_factory=CacheTeaCacheConfig)
    fbc: CacheFbcConfig = field(default_factory=CacheFbcConfig)
    magcache: CacheMagCacheConfig = field(default_factory=CacheMagCacheConfig)
    block: CacheBlockConfig = field(default_factory=CacheBlockConfig)


@dataclass
class ParallelConfig:
    """Tile parallelism across ranks (``torchrun``/``accelerate launch``); ignored in one process."""

    #: Dtype of the tile predictions moved between ranks: fp32 (exact) | bf16 | fp16 (half the bytes).
    #: Every rank, the tile's owner included, uses the transported value, so ranks stay identical.
    exchange_dtype: str = choice("fp32", "fp32", "bf16", "fp16")
    #: CFG parallelism: a tile's conditional and unconditional forwards as two units of work that
    #: may run on different ranks (combined after the exchange, identically on every rank); the
    #: sketch's two branches on the mesh's ``cfg`` dimension. auto: in the refinement when it lowers
    #: the busiest rank's load (ties keep whole tiles: half the bytes) | on: whenever the family
    #: runs classifier-free guidance | off: whole tiles, sketch replicated.
    cfg: str = choice("auto", "auto", "on", "off")
    #: The sketch across ranks: cfg (its guidance branches on the mesh's cfg dimension; identical to
    #: one process) | ulysses (diffusers' context parallelism, the token sequence split over all ranks
    #: of the group; equal to one process to float tolerance; falls back to cfg, with one log line
    #: saying why, where the transformer has no context-parallel plan or its heads do not split).
    sketch: str = choice("cfg", "cfg", "ulysses")
    #: Ranks per group in batch rendering: the world splits into groups of this many ranks and each
    #: group renders different jobs. 0 means one group of all ranks.
    group_size: int = bounded(0, 0)
    #: Seconds a rank waits for its peers in any one collective before the job fails (a dead or
    #: hung rank is reported instead of hanging forever). Must exceed the slowest single tile.
    timeout_s: float = bounded(300.0, 1.0)
    #: Ray farm (``--ray``): how many times a job is started on a render group whose death takes it
    #: down (a rank killed, a node lost) before it is recorded failed; a job whose render raises an
    #: error is recorded failed at once, as without Ray (the error would come back on every group).
    attempts: int = bounded(3, 1)


@dataclass
class AttentionConfig:
    #: Per-tile modes use diffusers' dispatcher (sdpa, flex, xformers); tiling.mode=attention uses
    #: the sparse tile kernels (sdpa with a mask, flex, triton). An unusable choice is an error
    #: naming what runs here (supergen/attention.py).
    backend: str = choice("sdpa", "sdpa", "flex", "triton", "xformers")


@dataclass
class VaeConfig:
    #: Tiled VAE encode/decode at the canvas size: auto (when the canvas is larger than the sketch) | on | off.
    tiling: str = choice("auto", "auto", "on", "off")


@dataclass
class EncodersConfig:
    #: Move the text and image encoders to the host once this call no longer needs them (the text
    #: encoder after the prompts are encoded, the image encoder after the sketch) and back when the
    #: call returns. Only encoders on a GPU without diffusers' offload hooks; frees Wan's UMT5-XXL
    #: (10.6 GiB in bf16) and CLIP image encoder for the upscale, refinement and decode.
    park: bool = True


@dataclass
class MethodConfig:
    """What :class:`~supergen.pipeline.SuperGenPipeline` reads: the method, no files, no model loading."""

    sketch: SketchConfig = field(default_factory=SketchConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    tiling: TilingConfig = field(default_factory=TilingConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    encoders: EncodersConfig = field(default_factory=EncodersConfig)


# ---- application settings: what the CLI, batch runner and demo read --------------------------


@dataclass
class ModelConfig:
    #: ``tiny`` (built-in random Wan, for tests), ``toy`` (the small trained model in assets/),
    #: or a diffusers model folder / Hugging Face id.
    name: str = "tiny"
    #: Transformer (and text encoder) weights dtype.
    dtype: str = choice("float32", *DTYPES)
    #: VAE and image-encoder dtypes; null takes the family's recipe (Wan: float32, as diffusers'
    #: Wan examples load them).
    vae_dtype: str | None = None
    image_encoder_dtype: str | None = None
    #: ``auto`` picks cuda when available, else cpu.
    device: str = "auto"
    #: diffusers' memory savers: none | model (enable_model_cpu_offload) | sequential
    #: (enable_sequential_cpu_offload) | group (enable_group_offload, block level, with streams on CUDA).
    offload: str = choice("none", "none", "model", "sequential", "group")
    #: Refuse, before loading, a render the planner estimates cannot fit in the device's memory
    #: (host memory on CPU); false (``--no-memory-check``) tries anyway.
    memory_check: bool = True
    #: CPU renders: torch's intra-op thread count. The count enters the numbers (a CPU reduction is
    #: split by it) and launchers change it (torchrun starts every rank with ``OMP_NUM_THREADS=1``),
    #: so supergen sets it itself: null takes every core this process may use, whatever the
    #: launcher set, so a render under torchrun, Ray or no launcher gives the same video.
    cpu_threads: int | None = bounded(None, 1)


@dataclass
class JobConfig:
    """What to render. Each row of a batch file overrides these fields."""

    prompt: str = "a red car in the city at night"
    negative_prompt: str = ""
    #: Path to the conditioning image for image-to-video models.
    image: str | None = None
    #: Optional low-resolution video to use as the sketch (supergen as a video upscaler).
    sketch_video: str | None = None
    height: int = bounded(256, 16)
    width: int = bounded(448, 16)
    num_frames: int = bounded(9, 1)
    #: -1 draws a random seed (reported in the summary and the sidecar).
    seed: int = bounded(0, -1, 2**63 - 1)


@dataclass
class OutputConfig:
    path: str = "out.mp4"
    #: At most 240: no display shows more (and from 1000 on ffmpeg reports the rate as "1k", which
    #: imageio reads back as 0 fps).
    fps: int = bounded(16, 1, 240)
    #: Also write the sketch video beside the output (``<name>.sketch.mp4``).
    save_sketch: bool = False
    #: H.264 quality for imageio-ffmpeg (0-10).
    quality: int = bounded(8, 0, 10)


@dataclass
class SuperGenConfig(MethodConfig):
    """The method plus what the applications need: which model to load, what to render, where to write it."""

    model: ModelConfig = field(default_factory=ModelConfig)
    job: JobConfig = field(default_factory=JobConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    @property
    def method(self) -> MethodConfig:
        return MethodConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(MethodConfig)})


#: The user-facing names of config keys: the command line's flags (``--num-frames``, the name with ``-``)
#: and a batch row's fields (:data:`supergen.jobs.FIELDS`, the job's subset). One table, so a flag and a
#: field of the same name always set the same key.
SHORTHANDS = {
    "model": "model.name",
    "dtype": "model.dtype",
    "device": "model.device",
    "offload": "model.offload",
    "prompt": "job.prompt",
    "negative_prompt": "job.negative_prompt",
    "image": "job.image",
    "sketch_video": "job.sketch_video",
    "height": "job.height",
    "width": "job.width",
    "num_frames": "job.num_frames",
    "seed": "job.seed",
    "steps": "refine.num_inference_steps",
    "strength": "refine.strength",
    "output": "output.path",
    "fps": "output.fps",
}

#: Each cache policy's threshold: the one number that trades compute for fidelity (``steps`` is set by
#: ``cache.steps.fraction``; ``none`` has none).
THRESHOLDS = {
    "region": "cache.region.change_threshold",
    "teacache": "cache.teacache.rel_l1_threshold",
    "fbc": "cache.fbc.threshold",
    "magcache": "cache.magcache.threshold",
}

#: Keys that moved, old → new key, or → ``{cache.policy: new key}`` where the new place depends on the
#: technique in use (under a policy not listed the old key means nothing: an error). Presets and
#: overrides using an old name keep working, with one line naming the new key.
RENAMED: dict[str, str | dict[str, str]] = {
    "output.vae_tiling": "vae.tiling",
    "cache.threshold": THRESHOLDS,
    "cache.fraction": {"steps": "cache.steps.fraction"},
    "cache.mag_ratios": {"magcache": "cache.magcache.mag_ratios"},
    "cache.block.threshold": "cache.block.input_threshold",
}

#: Moved keys a batch's job fingerprint still names as before (:func:`as_fingerprinted`): they moved
#: after fingerprints existed, so a finished job whose settings did not change stays finished.
FINGERPRINTED_BY_OLD_NAME = ("cache.threshold", "cache.fraction", "cache.mag_ratios", "cache.block.threshold")


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
    config: str | Path | MethodConfig | Mapping[str, Any] | None = None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
) -> SuperGenConfig:
    """Build and validate a config.

    Args:
        config: a preset name (``"tiny"``), a YAML path, a :class:`SuperGenConfig` (or
            :class:`MethodConfig`), a nested mapping, or None for the defaults.
        overrides: ``["tiling.mode=overlap", ...]`` (CLI style) or ``{"tiling.mode": "overlap"}``.

    Returns:
        A :class:`SuperGenConfig` instance (plain dataclasses, typed).

    Raises:
        ConfigError: naming the offending key and the valid keys or choices.
    """
    base = SuperGenConfig()
    layers: list[dict[str, Any]] = []  # nested plain values, in order, under the names the caller wrote
    if isinstance(config, MethodConfig):  # copied: the result shares no section with the argument
        base = SuperGenConfig(**{f.name: copy.deepcopy(getattr(config, f.name)) for f in dataclasses.fields(config)})
    elif isinstance(config, Mapping):
        layers.append(dict(config))
    elif config is not None:
        layers.append(_load_yaml(preset_path(str(config))))
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
            layers.append(nested)
        else:
            for item in overrides:
                if "=" not in item:
                    raise ConfigError(f"override {item!r} is not of the form key=value (e.g. tiling.mode=overlap)")
            items = [_dotlist_item(key, value) for key, _, value in (item.partition("=") for item in overrides)]
            try:
                dotlist = OmegaConf.from_dotlist(items)
            except OmegaConfBaseException as exc:
                raise ConfigError(f"invalid override: {' '.join(str(exc).split())}") from None
            layers.append(OmegaConf.to_container(dotlist))
    layers = [_layer(layer) for layer in _moved(layers, base.cache.policy)]
    cfg = _merged(base, layers)
    validate(cfg)
    return cfg


def _merged(base: SuperGenConfig, layers: list[dict[str, Any]]) -> SuperGenConfig:
    """``base`` with ``layers`` (nested plain values, in order) merged in by omegaconf, which types and
    checks them. Only the sections the layers name are rebuilt: omegaconf is slow to build a whole
    config's typed nodes (0.1 s on a busy 2-core machine), and a batch file's rows each set a few
    ``job`` keys (a 1,000-row ``--dry-run`` took 50 s)."""
    for name in dict.fromkeys(key for layer in layers for key in layer):
        if not any(f.name == name for f in dataclasses.fields(SuperGenConfig)):
            raise ConfigError(_unknown_key_message(name))
        try:
            merged = OmegaConf.merge(OmegaConf.structured(getattr(base, name)), *(OmegaConf.create(layer[name]) for layer in layers if name in layer))
        except (ConfigKeyError, ConfigAttributeError) as exc:
            raise ConfigError(_unknown_key_message(f"{name}.{exc.full_key or exc.key}")) from None
        except ValidationError as exc:
            key = f"{name}.{exc.full_key}" if exc.full_key else name
            raise ConfigError(f"config key {key!r}: {(exc.msg or str(exc)).splitlines()[0]}") from None
        except OmegaConfBaseException as exc:
            raise ConfigError(f"invalid config in section {name!r}: {exc}") from None
        base = dataclasses.replace(base, **{name: OmegaConf.to_object(merged)})
    return base


def validate(cfg: Any, prefix: str = "") -> None:
    """Check the choices and ranges declared on the fields (:func:`choice`, :func:`bounded`), recursively."""
    for f in dataclasses.fields(cfg):
        key, value = prefix + f.name, getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, key + ".")
            continue
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"config key {key!r} is {value!r}; valid choices: {', '.join(choices)}")
        bounds = f.metadata.get("range")
        # NaN passes every range comparison (a cache threshold of nan turned the cache off without a word).
        if any(isinstance(n, float) and not math.isfinite(n) for n in (value if isinstance(value, list) else [value])):
            raise ConfigError(f"config key {key!r} is {value!r}; it must be a finite number" + (f" in {_interval(*bounds)}" if bounds else ""))
        if bounds is not None and value is not None:
            low, high, low_open = bounds
            if (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high):
                raise ConfigError(f"config key {key!r} is {value!r}; it must lie in {_interval(*bounds)}")
    if isinstance(cfg, MethodConfig):
        if (cfg.sketch.height is None) != (cfg.sketch.width is None):
            raise ConfigError("sketch.height and sketch.width must be given together (or both null for the native size)")
        if (cfg.tiling.tile_height is None) != (cfg.tiling.tile_width is None):
            raise ConfigError("tiling.tile_height and tiling.tile_width must be given together (or both null)")
        ratios = cfg.cache.magcache.mag_ratios
        if ratios is not None and len(ratios) < 2:
            raise ConfigError(f"config key 'cache.magcache.mag_ratios' is {ratios!r}; it needs one ratio per refinement step "
                              "(at least two), or null to calibrate them")


def _interval(low: float | None, high: float | None, low_open: bool) -> str:
    """``(0.0, 1.0]``, ``[16, inf)``: a :func:`bounded` range as an interval."""
    return f"{'(' if low_open or low is None else '['}{'-inf' if low is None else low}, {'inf)' if high is None else f'{high}]'}"


def choices_of(key: str) -> tuple[str, ...]:
    """The valid values of a choice field, e.g. ``choices_of("tiling.mode")``."""
    found = _field(key)
    if found is None or "choices" not in found.metadata:
        raise KeyError(key)
    return found.metadata["choices"]


def _field(key: str) -> dataclasses.Field | None:
    """The dataclass field of a dotted key of :class:`SuperGenConfig`, or None."""
    node: Any = SuperGenConfig
    *sections, leaf = key.split(".")
    try:
        for section in sections:
            node = {f.name: f for f in dataclasses.fields(node)}[section].default_factory
        return {f.name: f for f in dataclasses.fields(node)}[leaf]
    except (KeyError, TypeError):
        return None


def _dotlist_item(key: str, value: str) -> str:
    """``key=value`` for omegaconf's dotlist, which parses values as YAML 1.1: a choice's ``off`` or
    ``on`` would arrive as a boolean, so choice values are quoted."""
    found = _field(key)
    if found is not None and "choices" in found.metadata and value[:1] not in ("'", '"'):
        value = "'" + value.replace("'", "''") + "'"
    return f"{key}={value}"


def to_yaml(cfg: MethodConfig) -> str:
    """The fully resolved config as YAML (for sidecar files and logs)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: MethodConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _load_yaml(path: Path) -> dict[str, Any]:
    """A preset file's nested values; a malformed file or a non-mapping is a one-line ConfigError."""
    try:
        data = OmegaConf.load(path)
    except Exception as exc:  # yaml's ScannerError/ParserError: their message names the line
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, DictConfig):
        raise ConfigError(f"config file {str(path)!r} must be a mapping of sections (e.g. 'tiling: {{mode: shift}}'), not a list or a value")
    return OmegaConf.to_container(data)


def _layer(data: Mapping[str, Any]) -> dict[str, Any]:
    """A config layer (nested plain values) checked against the schema's shape, see :func:`_shaped`."""
    return _shaped(data, SuperGenConfig)


def _shaped(data: Mapping[str, Any], node: type, prefix: str = "") -> dict[str, Any]:
    """``data`` with a mapping checked for wherever the schema has a section (omegaconf's merge fails
    on ``tiling: [1, 2]`` without naming the key; an empty section changes nothing) and YAML 1.1's
    booleans turned back into the ``on`` / ``off`` a choice was written as (``vae: {tiling: off}``
    reads as False). Unknown keys pass through: the merge names them with the valid ones."""
    known = {f.name: f for f in dataclasses.fields(node)}
    shaped = dict(data)
    for key, value in data.items():
        found = known.get(key)
        if found is None:
            continue
        section = found.default_factory
        if isinstance(section, type) and dataclasses.is_dataclass(section):
            value = {} if value is None else value  # a YAML section whose keys are all commented out
            if not isinstance(value, Mapping):
                keys = ", ".join(f.name for f in dataclasses.fields(section))
                raise ConfigError(f"config key {prefix + key!r} is {value!r}; it is a section: give it keys ({keys})")
            shaped[key] = _shaped(value, section, f"{prefix}{key}.")
        elif isinstance(value, bool) and {"on", "off"} <= set(found.metadata.get("choices", ())):
            shaped[key] = "on" if value else "off"
    return shaped


def _moved(layers: list[dict[str, Any]], policy: Any) -> list[dict[str, Any]]:
    """``layers`` with the keys of :data:`RENAMED` moved to their new place, one warning line per old
    key. A key whose place depends on the technique moves to that of the ``cache.policy`` the config
    ends with (the last layer that sets it, else ``policy``, the base's), whichever layer set the key."""
    for layer in layers:
        section = layer.get("cache")
        if isinstance(section, Mapping) and "policy" in section:
            policy = section["policy"]
    moved, said = [], set()
    for layer in layers:
        for old, new in RENAMED.items():
            value = _lookup(layer, old)
            if value is _ABSENT:
                continue
            target = _new_key(old, new, policy)
            if _lookup(layer, target) is not _ABSENT:
                raise ConfigError(f"config keys {old!r} and {target!r} are one setting (the first is its old name); give only {target!r}")
            layer = _with(_without(layer, old), target, value)
            if old not in said:
                said.add(old)
                where = f"with cache.policy={policy} " if isinstance(new, dict) else ""
                logger.warning("config key %r is deprecated: %sit is now %r", old, where, target)
        moved.append(layer)
    return moved


def _new_key(old: str, new: str | dict[str, str], policy: Any) -> str:
    """Where ``old`` moved under ``policy``; a :class:`ConfigError` when it means nothing there."""
    if isinstance(new, str):
        return new
    valid = choices_of("cache.policy")
    if policy not in valid:
        raise ConfigError(f"config key 'cache.policy' is {policy!r}; valid choices: {', '.join(valid)}")
    if policy not in new:
        now = ", ".join(f"{key} (cache.policy={name})" for name, key in new.items())
        raise ConfigError(f"config key {old!r} means nothing with cache.policy={policy}; it was the setting now named {now}")
    return new[policy]


_ABSENT = object()


def _lookup(data: Mapping[str, Any], key: str) -> Any:
    """The value at dotted ``key`` of nested ``data``, or ``_ABSENT``."""
    for name in key.split("."):
        if not isinstance(data, Mapping) or name not in data:
            return _ABSENT
        data = data[name]
    return data


def _without(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    """A copy of nested ``data`` without dotted ``key`` (copied along its path: the caller's mapping is untouched)."""
    head, _, rest = key.partition(".")
    copied = dict(data)
    if rest:
        copied[head] = _without(copied[head], rest)
    else:
        del copied[head]
    return copied


def _with(data: Mapping[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of nested ``data`` with dotted ``key`` set to ``value`` (a null or missing section becomes one)."""
    head, _, rest = key.partition(".")
    copied = dict(data)
    section = copied.get(head)
    if rest and section is not None and not isinstance(section, Mapping):
        return copied  # not a section where the schema has one: _shaped names it
    copied[head] = _with(section or {}, rest, value) if rest else value
    return copied


def as_fingerprinted(settings: Mapping[str, Any], policy: str) -> dict[str, Any]:
    """``settings`` (dotted key → value) with the keys of :data:`FINGERPRINTED_BY_OLD_NAME` under their
    old names, for ``policy``'s technique: a batch job fingerprinted before they moved keeps its
    fingerprint when its effective settings are the same (:attr:`supergen.jobs.Job.fingerprint`)."""
    old_name = {}
    for old in FINGERPRINTED_BY_OLD_NAME:
        new = RENAMED[old]
        new = new if isinstance(new, str) else new.get(policy)
        if new is not None:
            old_name[new] = old
    return {old_name.get(key, key): value for key, value in settings.items()}


def _unknown_key_message(full_key: str) -> str:
    parent, _, leaf = full_key.rpartition(".")
    node: Any = SuperGenConfig
    try:
        for part in filter(None, parent.split(".")):
            node = {f.name: f for f in dataclasses.fields(node)}[part].default_factory  # type: ignore[misc]
        valid = [f.name for f in dataclasses.fields(node)]
    except (KeyError, TypeError):
        valid = []
    where = f"section {parent!r}" if parent else "the top level"
    return f"unknown config key {full_key!r}; valid keys in {where}: {', '.join(valid) if valid else '(none)'}"
