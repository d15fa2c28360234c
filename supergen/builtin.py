"""Models that need no download: ``tiny`` (random weights, built in code) and ``toy`` (trained, in assets/).

``tiny`` is a real ``WanPipeline`` made of real diffusers/transformers classes at toy sizes (the
configs diffusers' own tests use), with weights drawn from a fixed seed: the same model on every
machine, so tests can compare videos. It generates noise-like video — it proves exactness, not quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, DiffusionPipeline, UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline, WanTransformer3DModel
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from . import compat
from .config import CONFIG_DIR, load_config
from .architectures import TOY_MODEL_DIR
from .errors import SuperGenError

#: The small trained model (assets/toy-wan in the checkout), installed with the package as
#: ``supergen/toy-wan`` (a link to it in the checkout).

_CHARS = [chr(c) for c in range(32, 127)]


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer built offline: every printable ASCII character is a token."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {c: i + 3 for i, c in enumerate(_CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_wan_pipeline(image_to_video: bool = False, seed: int = 0) -> DiffusionPipeline:
    """A tiny random Wan 2.1 pipeline (text- or image-to-video); identical weights for the same ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
            in_channels=36 if image_to_video else 16, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32,
            num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
            image_dim=4 if image_to_video else None,
        )
        vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
        text_encoder = UMT5EncoderModel(
            UMT5Config(vocab_size=len(_CHARS) + 3, d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                       relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        )
        # Real Wan 2.1 checkpoints ship this scheduler (flow-matching UniPC).
        scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
        components = dict(tokenizer=char_tokenizer(), text_encoder=text_encoder.eval(), vae=vae.eval(),
                          transformer=transformer.eval(), scheduler=scheduler)
        if not image_to_video:
            return WanPipeline(**components)
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

        image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2,
                             image_size=32, intermediate_size=16, patch_size=1)
        )
        image_processor = CLIPImageProcessor(crop_size=32, size=32)
        return WanImageToVideoPipeline(**components, image_encoder=image_encoder.eval(), image_processor=image_processor)


def load_pipeline(name: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", **options) -> DiffusionPipeline:
    """``tiny`` | ``tiny-i2v`` | ``toy`` | a diffusers folder or Hugging Face id → a pipeline on ``device``.

    ``options`` (``variant``, ``revision``, ``local_files_only``, ``cache_dir``, ...) go to
    ``DiffusionPipeline.from_pretrained``; the models built in code take none.
    """
    if name not in ("tiny", "tiny-i2v"):
        source = str(TOY_MODEL_DIR) if name == "toy" else name
        if name == "toy" and not TOY_MODEL_DIR.is_dir():
            raise SuperGenError(f"the toy model folder {TOY_MODEL_DIR} is missing: reinstall supergen "
                                "(it ships in the package), or use --model tiny")
        try:
            pipe = DiffusionPipeline.from_pretrained(source, **{compat.dtype_keyword(): dtype}, **options)
        except (OSError, ValueError) as exc:
            raise SuperGenError(
                f"could not load model {name!r}: {exc}. Valid: tiny, tiny-i2v, toy, a diffusers model folder, or a Hugging Face id"
            ) from None
    elif options:
        raise SuperGenError(f"{name!r} is built in code: loading options ({', '.join(sorted(options))}) do not apply")
    else:  # built in code, in float32
        pipe = tiny_wan_pipeline(image_to_video=name == "tiny-i2v")
        if dtype != torch.float32:
            pipe = pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(leave=False)
    return pipe.to(device)


#: Transformer config keys that tell the sizes of one family apart.
_SIZE_KEYS = ("num_layers", "num_single_layers", "num_attention_heads", "attention_head_dim", "in_channels", "ffn_dim")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _presets_by_model() -> dict[str, list[str]]:
    """Preset names (sorted: the 2K one before the 4K one) by the ``model.name`` they are made for."""
    by_model: dict[str, list[str]] = {}
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        by_model.setdefault(load_config(path.stem).model.name, []).append(path.stem)
    return by_model


def _folder_preset(folder: Path) -> tuple[str | None, str]:
    """:func:`model_preset` for a local diffusers folder: its pipeline class (``model_index.json``) is the
    family, its transformer's config (``transformer/config.json``) the size."""
    from .architectures import ALIASES, KNOWN  # the released models' configs

    pipeline = _read_json(folder / "model_index.json").get("_class_name")
    transformer = _read_json(folder / "transformer" / "config.json") or _read_json(folder / "transformer_2" / "config.json")
    if pipeline is None or not transformer:
        raise SuperGenError(f"--model {str(folder)!r} is a folder without model_index.json and transformer/config.json: "
                            "not a diffusers model folder")
    ids = {name: [name, *(alias for alias, known in ALIASES.items() if known == name)] for name in KNOWN}
    candidates = {name: (arch.pipeline, arch.transformer, ids[name]) for name, arch in KNOWN.items()}
    candidates["toy"] = (_read_json(TOY_MODEL_DIR / "model_index.json").get("_class_name"), _read_json(TOY_MODEL_DIR / "transformer" / "config.json"),
                         ["toy"])
    by_model = _presets_by_model()
    family = []
    for name, (klass, config, model_ids) in candidates.items():
        if klass != pipeline:
            continue
        presets = [preset for model_id in model_ids for preset in by_model.get(model_id, [])]
        family += presets
        if presets and all(transformer.get(key) == config[key] for key in _SIZE_KEYS if key in config):
            return presets[0], f"{folder} is {name} ({pipeline}, its transformer's config): preset {presets[0]}"
    if family:
        return family[0], f"{folder}: {pipeline} of a size no preset is made for: the family's preset {family[0]}"
    return None, f"{folder}: {pipeline}, for which no preset is made: supergen's default settings"


def model_preset(model: str) -> tuple[str | None, str]:
    """The preset made for ``model`` and a line saying how it was chosen.

    ``model`` is a built-in model (``tiny``, ``tiny-i2v``, ``toy``: their presets), a local diffusers
    folder (recognised by its pipeline class and transformer config: the preset of the released model
    it matches, else the first preset of its family, else None: the default settings), or a Hugging
    Face id (the presets made for it; None when there is none).
    """
    if model in ("tiny", "tiny-i2v", "toy"):
        preset = "toy" if model == "toy" else "tiny"
        return preset, f"{model} is built in: preset {preset}"
    if Path(model).is_dir():
        return _folder_preset(Path(model))
    presets = _presets_by_model().get(model, [])
    if not presets:
        return None, f"no preset is made for {model!r}"
    return presets[0], f"{model}: preset {presets[0]}"
