"""Models that need no download: ``tiny`` (random weights, built in code) and ``toy`` (trained, in assets/).

``tiny`` is a real ``WanPipeline`` made of real diffusers/transformers classes at toy sizes (the
configs diffusers' own tests use), with weights drawn from a fixed seed: the same model on every
machine, so tests can compare videos. It generates noise-like video — it proves exactness, not quality.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, DiffusionPipeline, UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline, WanTransformer3DModel
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from . import compat
from .errors import SuperGenError

#: The small trained model (assets/toy-wan in the checkout), installed with the package as
#: ``supergen/toy-wan`` (a link to it in the checkout).
TOY_MODEL_DIR = Path(__file__).parent / "toy-wan"

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
