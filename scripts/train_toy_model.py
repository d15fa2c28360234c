#!/usr/bin/env python
"""Train supergen's toy Wan model from nothing on the procedural world of ``supergen.toyworld``.

One command trains every part with real diffusers/transformers classes and writes a
diffusers folder that ``WanPipeline.from_pretrained`` loads offline::

    python scripts/train_toy_model.py --stage all --run-dir /work/runs/toy --out assets/toy-wan

Stages (each resumes from ``--run-dir`` when ``--resume`` is given, or starts from an exported
folder's weights with ``--init-from``):

``vae``     ``AutoencoderKLWan`` (8x spatial, 4x temporal; Wan 2.2-style residual blocks with
            a 2x2 pixel patch). ``--freeze-encoder`` freezes the encoder from then on and keeps
            training only the decoder: the latent space the DiT learns stays fixed, so both can
            train at the same time.
``dit``     ``WanTransformer3DModel`` (patch (1, 2, 2)) and a tiny ``UMT5EncoderModel``, trained
            jointly with flow matching exactly as ``WanPipeline`` samples. ``--dit-object-weight``
            weights the latent cells under objects more; ``--dit-time-limit-s`` and
            ``--dit-export-weights`` fit a run to a short GPU lease (``scripts/gpu_check.sh``).
``export``  writes the pipeline folder, a model card (with the prompt-following measure) and a
            strip of sample frames.
``eval``    measures an exported folder (``--out``): prompt following of its samples for held-out
            captions (colour recall, shape accuracy, frame 0 showing frame 1's objects) and its
            VAE on held-out clips (PSNR, lattice texture at the token period, prompt following
            of the reconstructions).
``all``     vae, then dit, then export.

Native size: 128x128 pixels, 9 frames (latent 16 x 3 x 16 x 16). With patch (1, 2, 2) the
DiT sees 3 x 8 x 8 = 192 tokens, the same patching as the real Wan checkpoints. The VAE is
fully convolutional, so it trains on 64x64 crops of 128x128 clips: 4x cheaper per step, with
the pixel statistics (shape sizes, edge sharpness) of the native size.

Flow-matching convention (``WanPipeline`` + its flow schedulers): ``x_s = (1 - s) x0 + s eps``,
the transformer predicts ``eps - x0`` and is called with ``timestep = s * 1000``. Latents are
normalised per channel with the mean/std stored as ``vae.config.latents_mean/latents_std``,
which the pipeline uses to undo the normalisation before decoding.

Text encoder: a 2-layer UMT5 encoder (d_model 64) trained jointly with the DiT. A frozen random
encoder gives distinct features per word, but binding "red" to "disk" rather than "square"
needs context mixing that random attention weights do not reliably provide; training the
encoder costs almost nothing (it is ~0.2 M parameters on ~30-token captions).

Continuing a shipped model: the run folder's checkpoints (with optimiser state) are not committed,
so a fresh clone continues from the exported weights instead::

    python scripts/train_toy_model.py --stage all --init-from assets/toy-wan --freeze-encoder \
        --vae-steps 4000 --dit-steps 8000 --run-dir runs/toy2 --device cuda

Step counts continue from the folder's ``training.json``, the EMA starts at the shipped weights,
the optimisers start fresh, and the latent normalisation is kept, so the DiT continues in the same
latent space as long as the encoder stays frozen. Without ``--freeze-encoder`` the encoder trains
too; the DiT stage then measures the new encoder's latent statistics on its bank and continues the
shipped transformer in that space (how the issue #17 model was made: docs/toy-model.md).

CPU: keep it polite on shared machines (``nice -n 19``; ``--threads 1`` is the default).
GPU: ``--device cuda`` runs the same code.

Why the samples are blobs: ``scripts/toy_diagnostics.py``, on validation clips (``VALIDATION_SEED``).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from supergen.eval import metrics, toyworld

REPO = Path(__file__).resolve().parents[1]



NATIVE = dict(height=128, width=128, num_frames=9)
HELD_OUT_SEED = 10**9  # training seeds are drawn below this, held-out clips use seeds above it
VALIDATION_SEED = 2 * 10**9  # clips for choosing sampler settings and diagnosing, never the held-out ones
MAX_SEQUENCE_LENGTH = 512  # WanPipeline's default; prompt embeddings are zero-padded to it
SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 (T5 conventions)

VAE_CONFIG = dict(
    base_dim=32,
    z_dim=16,
    dim_mult=[1, 2, 2],
    num_res_blocks=1,
    attn_scales=[],
    temperal_downsample=[True, True],
    is_residual=True,
    patch_size=2,  # 2x2 pixel patch, then two 2x stages: 8x spatial; two temporal stages: 4x
    in_channels=12,  # 3 colours x 2 x 2 patch
    out_channels=12,
    scale_factor_spatial=8,
    scale_factor_temporal=4,
)
TEXT_CONFIG = dict(
    d_model=64,
    d_kv=16,
    d_ff=128,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
    dropout_rate=0.0,
    feed_forward_proj="gated-gelu",
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)
DIT_CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=4,
    attention_head_dim=32,
    in_channels=16,
    out_channels=16,
    text_dim=TEXT_CONFIG["d_model"],
    freq_dim=256,
    ffn_dim=512,
    num_layers=4,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=256,
)
# Pixels per transformer token (VAE 8x, patch 2x2): the period of the texture a latent grid prints.
TOKEN_PX = VAE_CONFIG["scale_factor_spatial"] * DIT_CONFIG["patch_size"][-1]
# Sampler shipped with the model; FLOW_SHIFT > 1 spends more steps at high noise, where the
# layout is decided.
FLOW_SHIFT = 3.0
SAMPLE_PROMPTS = [
    "a red disk moving right on a vertical sky to sand background",
    "a yellow square moving down and a blue triangle staying still on a horizontal slate to white background",
    "a green triangle moving left on a vertical black to gray background",
    "a magenta disk moving up and a cyan square moving left and a green disk staying still on a horizontal rose to moss background",
]


# ----------------------------------------------------------------------------- helpers


class Logger:
    """Appends timestamped lines to ``run_dir/train.log`` and echoes them to stderr."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, msg: str):
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
        with open(self.path, "a") as f:
            f.write(line + "\n")
        tqdm.write(line, file=sys.stderr)


class EMA:
    """Exponential moving average of a module's parameters (and buffers copied as is).

    The decay ramps up as ``(1 + n) / (10 + n)`` so early averages are not dominated by the
    random initialisation.
    """

    def __init__(self, module: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(module).requires_grad_(False).eval()
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module):
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for e, p in zip(self.module.parameters(), module.parameters()):
            e.lerp_(p.detach(), 1 - d)
        for e, b in zip(self.module.buffers(), module.buffers()):
            e.copy_(b)

    def state_dict(self):
        return {"module": self.module.state_dict(), "decay": self.decay, "updates": self.updates}

    def load_state_dict(self, state):
        self.module.load_state_dict(state["module"])
        self.decay, self.updates = state["decay"], state["updates"]


def save_checkpoint(path: Path, state: dict):
    """Write atomically, so an interrupted save never destroys the previous checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def module_digest(module: torch.nn.Module) -> str:
    """Short hash of a module's weights: ties the DiT's latent bank to one VAE encoder."""
    h = hashlib.sha1()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:12]


def encoder_digest(vae) -> str:
    """:func:`module_digest` of the part of a VAE that defines its latent space."""
    return module_digest(torch.nn.ModuleList([vae.encoder, vae.quant_conv]))


def training_seeds(base_seed: int, step: int, n: int) -> np.ndarray:
    """Clip seeds for one step: a pure function of (base seed, step), so resuming continues
    the same data stream without saving generator state."""
    return np.random.default_rng([base_seed, step]).integers(0, HELD_OUT_SEED, size=n)


def clips(seeds, device) -> torch.Tensor:
    """Native-size clips ``(B, 3, F, H, W)`` in [-1, 1] for the given seeds."""
    videos, _ = toyworld.make_batch(seeds, **NATIVE)
    return torch.from_numpy(videos).to(device)


def random_crops(x: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """One random ``size x size`` spatial crop per clip (same window on every frame)."""
    _, _, _, h, w = x.shape
    out = []
    for clip in x:
        top, left = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        out.append(clip[:, :, top : top + size, left : left + size])
    return torch.stack(out)


# ----------------------------------------------------------------------------- models


def build_tokenizer():
    """Word-level tokenizer over the caption grammar, as a ``PreTrainedTokenizerFast``.

    Lower-cases, splits on whitespace/punctuation, appends ``</s>`` like T5 tokenizers, pads
    with ``<pad>`` (id 0). Saved with the pipeline, it loads offline through ``AutoTokenizer``.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + toyworld.vocabulary())}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=MAX_SEQUENCE_LENGTH,
    )


def new_vae():
    from diffusers import AutoencoderKLWan

    # Placeholder statistics: the DiT stage measures the real ones and export stores them.
    return AutoencoderKLWan(**VAE_CONFIG, latents_mean=[0.0] * 16, latents_std=[1.0] * 16)


def new_text_encoder(vocab_size: int):
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(vocab_size=vocab_size, **TEXT_CONFIG))


def new_transformer():
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(**DIT_CONFIG)


def exported_card(folder: Path) -> dict:
    """``training.json`` of an exported folder (step counts and the numbers it was shipped with)."""
    card = Path(folder) / "training.json"
    if not card.exists():
        raise SystemExit(f"--init-from {folder}: no training.json there; expected a folder written by "
                         f"`--stage export` (e.g. assets/toy-wan)")
    return json.loads(card.read_text())


def exported_vae(folder: Path):
    """The VAE of an exported folder, with this script's architecture (refuses another one)."""
    from diffusers import AutoencoderKLWan

    def plain(v):  # the saved config holds lists where VAE_CONFIG may hold tuples
        return list(v) if isinstance(v, (list, tuple)) else v

    vae = AutoencoderKLWan.from_pretrained(Path(folder) / "vae")
    for key, value in VAE_CONFIG.items():
        if plain(vae.config[key]) != plain(value):
            raise SystemExit(f"--init-from {folder}: its VAE has {key}={vae.config[key]!r}, this script "
                             f"trains {key}={value!r}; change VAE_CONFIG or start from scratch")
    return vae


def shipped_latent_space(folder: Path) -> tuple[str, list[float], list[float]]:
    """The latent space an exported folder's DiT was trained in: its VAE's :func:`encoder_digest`
    and the per-channel ``latents_mean``/``latents_std`` stored in that VAE's config."""
    vae = exported_vae(folder)
    return encoder_digest(vae), list(vae.config.latents_mean), list(vae.config.latents_std)


def latent_scale(vae) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel ``(mean, std)`` ``(1, 16, 1, 1, 1)`` the DiT's latents are normalised
    with, as stored in the VAE's config (the pipeline un-normalises with exactly these)."""
    view = (1, -1, 1, 1, 1)
    return torch.tensor(vae.config.latents_mean).view(view), torch.tensor(vae.config.latents_std).view(view)


def encode_latents(vae, x: torch.Tensor) -> torch.Tensor:
    """Posterior mean ``(B, 16, F', H/8, W/8)``: the deterministic latent the pipeline's own
    ``retrieve_latents(..., sample_mode="argmax")`` convention uses."""
    return vae.encode(x).latent_dist.mode()


def encode_prompts(tokenizer, text_encoder, captions, device) -> torch.Tensor:
    """Prompt embeddings ``(B, 512, d_model)`` exactly as ``WanPipeline`` builds them: the
    encoder's output on the real tokens (``</s>`` included), zeros after them."""
    batch = tokenizer(captions, padding="longest", return_tensors="pt")
    ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
    emb = text_encoder(ids, mask).last_hidden_state * mask[..., None]
    return F.pad(emb, (0, 0, 0, MAX_SEQUENCE_LENGTH - emb.shape[1]))


# ----------------------------------------------------------------------------- VAE stage


@torch.no_grad()
def reconstruct(vae, videos: torch.Tensor) -> torch.Tensor:
    """The VAE's reconstructions of ``(N, 3, F, H, W)`` clips in [-1, 1], one clip at a time (not clamped)."""
    return torch.cat([vae.decode(encode_latents(vae, x[None])).sample for x in videos])


def token_lattice(videos) -> float:
    """``metrics.lattice_texture`` at the token period (16 px: 8x VAE x 2x2 patch) of
    ``(N, 3, F, H, W)`` videos in [-1, 1] (tensor or array)."""
    frames = np.asarray(videos).transpose(0, 2, 3, 4, 1)
    return metrics.lattice_texture((frames + 1) / 2, TOKEN_PX)


def vae_held_out_psnr(vae, held_out: torch.Tensor) -> tuple[float, float, float]:
    """(PSNR over all frames, PSNR of frame 0) in dB on full native-size held-out clips, and the
    lattice texture of the reconstructions (:func:`token_lattice`)."""
    rec = reconstruct(vae, held_out)
    return (
        metrics.psnr(rec, held_out, data_range=2.0),
        metrics.psnr(rec[:, :, 0], held_out[:, :, 0], data_range=2.0),
        token_lattice(rec.clamp(-1, 1).cpu()),
    )


def pooled_baseline_psnr(held_out: torch.Tensor) -> float:
    """PSNR of 8x area-downsampling + bilinear upsampling per frame: what a VAE with 8x
    spatial compression has to beat to be worth anything."""
    b, c, f, h, w = held_out.shape
    frames = held_out.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    small = F.avg_pool2d(frames, 8)
    up = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return metrics.psnr(up, frames, data_range=2.0)


def texture_loss(rec: torch.Tensor, x: torch.Tensor, smooth: float = 0.02) -> torch.Tensor:
    """L1 between the pixel steps of ``rec`` and ``x`` ``(B, C, F, H, W)`` where ``x`` is smooth.

    The decoder's texture is a 2-px blockiness (the last nearest-neighbour upsampling, not quite
    smoothed away) whose strength varies with the 8/16-px grid: in a fold of line gradients it is
    a few 1e-3 per pixel step, far too small for MSE to notice, and an L1 on every pixel step
    (tried in an earlier session) drowns it in the errors at object edges. Toy-world backgrounds
    are flat or gentle gradients and objects are flat inside, so wherever every channel of ``x``
    steps by less than ``smooth`` (98 % of steps; an object's edge steps by far more), ``rec``
    must step as ``x`` does, and any other step is texture or ringing. Measured: 2440
    decoder-only steps at weight 1 (the first 781 in an earlier, flat-only form) lowered the
    held-out lattice texture from 0.0037 to 0.0032, slowly (docs/toy-model.md, "Issue #17: a
    texture loss").
    """
    total, count = rec.new_zeros(()), 0
    for dim in (-1, -2):
        step = x.diff(dim=dim)
        still = (step.abs().amax(dim=1, keepdim=True) < smooth).expand_as(step)
        total = total + (rec.diff(dim=dim) - step).abs()[still].sum()
        count += int(still.sum())
    return total / max(count, 1)


def train_vae(args, log):
    device = torch.device(args.device)
    path = args.run_dir / "vae.pt"
    torch.manual_seed(args.seed)
    vae = new_vae().to(device)
    ema = EMA(vae, args.vae_ema)
    step, start, frozen = 0, 0, False
    state = None
    if args.resume and path.exists():
        state = torch.load(path, map_location=device, weights_only=False)
        vae.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        step, frozen = state["step"], state["encoder_frozen"]
        start = state.get("schedule_start", 0)
        log(f"vae: resumed at step {step} (encoder frozen: {frozen})")
    elif args.init_from:
        vae.load_state_dict(exported_vae(args.init_from).state_dict())
        step = start = exported_card(args.init_from)["vae_steps"]
        ema = EMA(vae, args.vae_ema)
        ema.updates = step  # full decay at once: the shipped weights are already an average
        log(f"vae: starting from {args.init_from} (step {step}); fresh optimiser")
    if args.freeze_encoder and not frozen:
        # Freeze the EMA encoder: that is the one export ships and the DiT encodes with.
        vae.encoder.load_state_dict(ema.module.encoder.state_dict())
        vae.quant_conv.load_state_dict(ema.module.quant_conv.state_dict())
        frozen = True
        state = None  # fresh optimiser over the decoder only
        log("vae: encoder frozen from its EMA; training the decoder only from here")
    if frozen:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.vae_lr, weight_decay=0.0)
    if state is not None and "opt" in state:
        opt.load_state_dict(state["opt"])

    held_out = clips(range(HELD_OUT_SEED, HELD_OUT_SEED + args.vae_eval_clips), device)
    log(f"vae: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M parameters; "
        f"held-out baseline (8x area pool + bilinear) {pooled_baseline_psnr(held_out):.2f} dB")
    # Warm-up pool: a fixed handful of crops overfitted first. From the default init the
    # decoder otherwise tends to sit at "output ~ 0" for hundreds of steps (measured earlier).
    pool = random_crops(clips(range(args.vae_batch), device), args.vae_crop, np.random.default_rng(0))

    # Warm-up (from scratch only), then a cosine from --vae-lr to --vae-lr-min over the steps
    # this run adds; a run started from an exported folder skips the warm-up.
    warmup = 0 if start else args.vae_warmup

    def lr_at(s):
        if s < warmup and not frozen:
            return 2 * args.vae_lr
        span = max(1, args.vae_steps - start - warmup)
        frac = min(1.0, max(0.0, (s - start - warmup) / span))
        return args.vae_lr_min + 0.5 * (args.vae_lr - args.vae_lr_min) * (1 + math.cos(math.pi * frac))

    vae.train()
    last_save = time.time()
    bar = tqdm(total=args.vae_steps, initial=step, desc="vae", dynamic_ncols=True)
    while step < args.vae_steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        if step < warmup and not frozen:
            x = pool
        else:
            crop_rng = np.random.default_rng([args.seed, step, 1])
            x = random_crops(clips(training_seeds(args.seed, step, args.vae_batch), device), args.vae_crop, crop_rng)
        if frozen:
            with torch.no_grad():
                z = encode_latents(vae, x)
        else:
            z = encode_latents(vae, x)
        rec = vae.decode(z).sample
        # Plain MSE (PSNR is what we report) plus a tiny latent L2 that keeps the latent
        # scale bounded; a KL term collapsed the posterior in earlier trials.
        loss = F.mse_loss(rec, x) + 1e-5 * z.pow(2).mean()
        if args.vae_texture_weight:
            loss = loss + args.vae_texture_weight * texture_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(vae)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{10 * math.log10(4 / max(loss.item(), 1e-10)):.1f}")
        done = step == args.vae_steps
        if step % args.eval_every == 0 or done:
            p_all, p_first, lattice = vae_held_out_psnr(ema.module, held_out)
            log(f"vae step {step} lr {lr_at(step - 1):.2e} train_loss {loss.item():.5f} "
                f"held_out_psnr {p_all:.2f} dB (frame0 {p_first:.2f} dB) lattice {lattice:.4f}")
        if done or time.time() - last_save > args.save_every_s:
            save_checkpoint(path, {"model": vae.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                                   "step": step, "schedule_start": start, "encoder_frozen": frozen,
                                   "config": VAE_CONFIG})
            last_save = time.time()
    bar.close()


def load_vae_for_inference(args, device):
    """The EMA VAE (what export ships) in eval mode, no grads, and its step count: from the run
    folder when its VAE stage has saved, else from ``--init-from``."""
    path = args.run_dir / "vae.pt"
    vae = new_vae().to(device)
    if path.exists():
        state = torch.load(path, map_location=device, weights_only=False)
        vae.load_state_dict(state["ema"]["module"])
        steps = state["step"]
    elif args.init_from:
        vae.load_state_dict(exported_vae(args.init_from).state_dict())
        steps = exported_card(args.init_from)["vae_steps"]
    else:
        raise SystemExit(f"no VAE: {path} does not exist; run `--stage vae` first or pass --init-from")
    return vae.eval().requires_grad_(False), steps


# ----------------------------------------------------------------------------- DiT stage


@torch.no_grad()
def encode_clips(vae, seeds, device, desc: str) -> tuple[torch.Tensor, list[str]]:
    """Latents ``(N, 16, 3, 16, 16)`` float32 on the CPU and captions of the clips of ``seeds``."""
    lat, caps = [], []
    for i in tqdm(range(0, len(seeds), 16), desc=desc, dynamic_ncols=True):
        videos, c = toyworld.make_batch(seeds[i : i + 16], **NATIVE)
        lat.append(encode_latents(vae, torch.from_numpy(videos).to(device)).float().cpu())
        caps += c
    return torch.cat(lat), caps


def latent_object_masks(seeds) -> torch.Tensor:
    """Where each clip's objects are, on the latent grid: float32 ``(N, 1, F', H/8, W/8)``, 1 on
    every latent cell an object's bounding square touches (``toyworld.object_boxes``). Frames map
    to latent frames the way Wan's causal VAE groups them: frame 0 alone, then groups of four."""
    masks = []
    for seed in seeds:
        boxes = torch.from_numpy(toyworld.object_boxes(toyworld.make_scene(int(seed), **NATIVE)))  # (F, H, W)
        groups = [boxes[:1]] + list(boxes[1:].split(VAE_CONFIG["scale_factor_temporal"]))
        per_latent_frame = torch.stack([g.amax(0) for g in groups])  # (F', H, W)
        masks.append(F.max_pool2d(per_latent_frame[None], VAE_CONFIG["scale_factor_spatial"])[0])
    return (torch.stack(masks)[:, None] > 0).float()


def held_out_latents(args, vae, device) -> tuple[torch.Tensor, list[str]]:
    """The DiT's held-out set: the first ``--dit-eval-clips`` held-out seeds, encoded."""
    return encode_clips(vae, np.arange(HELD_OUT_SEED, HELD_OUT_SEED + args.dit_eval_clips), device, "encode held-out")


@torch.no_grad()
def latent_bank(args, vae, device, log):
    """Encode ``--bank`` training clips once (the encoder is frozen while the DiT trains).

    Returns latents ``(N, 16, 3, 16, 16)`` float32, their captions, and the held-out set
    (:func:`held_out_latents`). Cached in the run folder, keyed by the encoder's digest.
    """
    digest = encoder_digest(vae)
    path = args.run_dir / f"latents_{digest}_{args.bank}.pt"
    seeds = np.random.default_rng([args.seed, 2]).integers(0, HELD_OUT_SEED, size=args.bank)
    if path.exists():
        bank = torch.load(path, weights_only=False)
        if "object_masks" not in bank:  # a bank cached before the masks were kept
            bank["object_masks"] = latent_object_masks(seeds)
            save_checkpoint(path, bank)
        return bank, digest
    lat, caps = encode_clips(vae, seeds, device, "encode bank")
    held_lat, held_caps = held_out_latents(args, vae, device)
    bank = {"latents": lat, "captions": caps, "held_latents": held_lat, "held_captions": held_caps,
            "object_masks": latent_object_masks(seeds)}
    save_checkpoint(path, bank)
    log(f"dit: encoded a bank of {len(caps)} clips + {len(held_caps)} held-out with encoder {digest}")
    return bank, digest


def sample_sigmas(n: int, generator: torch.Generator) -> torch.Tensor:
    """Half uniform on (0, 1), half logit-normal (more weight mid-schedule, where most of
    the sampler's steps land after the flow shift)."""
    u = torch.rand(n, generator=generator)
    ln = torch.sigmoid(torch.randn(n, generator=generator))
    s = torch.where(torch.arange(n) % 2 == 0, u, ln)
    return s.clamp(1e-4, 1 - 1e-4)


def flow_residuals(transformer, x0, emb, sigma, noise) -> torch.Tensor:
    """Flow-matching residuals ``(B, C, F', H', W')`` in WanPipeline's convention (see module
    docstring): the prediction at the noisy latent at ``sigma`` minus the target ``noise - x0``."""
    s = sigma.view(-1, 1, 1, 1, 1)
    xs = (1 - s) * x0 + s * noise
    pred = transformer(xs, timestep=sigma * 1000, encoder_hidden_states=emb, return_dict=False)[0]
    return pred - noise + x0


def flow_errors(transformer, x0, emb, sigma, noise) -> torch.Tensor:
    """Squared flow-matching errors ``(B, C, F', H', W')`` (:func:`flow_residuals` squared)."""
    return flow_residuals(transformer, x0, emb, sigma, noise) ** 2


def flow_loss(transformer, x0, emb, sigma, noise, weight=None):
    """Flow-matching MSE. ``weight`` ``(B, 1, F', H', W')``, if given, weights each latent cell
    (a weighted mean)."""
    errors = flow_errors(transformer, x0, emb, sigma, noise)
    if weight is None:
        return errors.mean()
    weight = weight.expand_as(errors)
    return (weight * errors).sum() / weight.sum()


@torch.no_grad()
def dit_held_out_losses(transformer, text_encoder, tokenizer, x0, captions, device) -> torch.Tensor:
    """Flow loss ``(N,)`` of each held-out clip, with fixed noise and an even sigma grid
    (comparable across steps and runs)."""
    g = torch.Generator().manual_seed(1234)
    noise = torch.randn(x0.shape, generator=g).to(device)
    sigma = torch.linspace(0.05, 0.95, len(x0)).to(device)
    losses = []
    for i in range(0, len(x0), 16):
        emb = encode_prompts(tokenizer, text_encoder, captions[i : i + 16], device)
        errors = flow_errors(transformer, x0[i : i + 16], emb, sigma[i : i + 16], noise[i : i + 16])
        losses.append(errors.mean(dim=(1, 2, 3, 4)).cpu())
    return torch.cat(losses)


def rotate_shape_words(caption: str) -> str:
    """``caption`` with every shape word turned once (``toyworld.next_shape``): the caption of
    ``toyworld.rotate_shapes`` of its scene."""
    return " ".join(toyworld.next_shape(w) if w in toyworld.SHAPES else w for w in caption.split(" "))


def dit_held_out_scores(transformer, text_encoder, tokenizer, x0, captions, device) -> dict:
    """Held-out flow loss and how much the model uses its prompt: ``text_gap`` is the loss with
    each clip given the next clip's caption minus the loss with its own (0 = it ignores the
    prompt); ``shape_gap`` the same with only the shape words changed (0 = it ignores them).
    Each gap comes with its standard error over the clips (``*_se``): the shape gap is small."""
    def losses(caps):
        return dit_held_out_losses(transformer, text_encoder, tokenizer, x0, caps, device)

    right = losses(captions)
    scores = {"loss": right.mean().item()}
    for name, caps in (("text_gap", captions[1:] + captions[:1]),
                       ("shape_gap", [rotate_shape_words(c) for c in captions])):
        gap = losses(caps) - right
        scores[name], scores[f"{name}_se"] = gap.mean().item(), (gap.std() / len(gap) ** 0.5).item()
    return scores


def train_dit(args, log):
    device = torch.device(args.device)
    path = args.run_dir / "dit.pt"
    vae, _ = load_vae_for_inference(args, device)
    tokenizer = build_tokenizer()
    bank, digest = latent_bank(args, vae, device, log)
    lat = bank["latents"]
    state = torch.load(path, map_location=device, weights_only=False) if args.resume and path.exists() else None
    # Per-channel statistics over the bank; the pipeline un-normalises with exactly these. A run
    # continuing a checkpoint, or an exported model whose encoder this is, keeps its statistics:
    # the transformer learned in that scale. A new encoder gets its own (the DiT then adapts).
    shipped = shipped_latent_space(args.init_from) if args.init_from and state is None else None
    if state is not None:
        mean, std = torch.tensor(state["latents_mean"]), torch.tensor(state["latents_std"])
    elif shipped is not None and shipped[0] == digest:
        mean, std = torch.tensor(shipped[1]), torch.tensor(shipped[2])
    else:
        mean = lat.mean(dim=(0, 2, 3, 4))
        std = lat.std(dim=(0, 2, 3, 4))
    view = (1, -1, 1, 1, 1)
    lat = ((lat - mean.view(view)) / std.view(view)).to(device)
    held = ((bank["held_latents"] - mean.view(view)) / std.view(view)).to(device)
    captions = bank["captions"]
    masks = bank["object_masks"].to(device)

    torch.manual_seed(args.seed)
    transformer = new_transformer().to(device)
    text_encoder = new_text_encoder(len(tokenizer)).to(device)
    models = torch.nn.ModuleDict({"transformer": transformer, "text_encoder": text_encoder})
    ema = EMA(models, args.dit_ema)
    opt = torch.optim.AdamW(models.parameters(), lr=args.dit_lr, weight_decay=0.01)
    step = start = 0
    if state is not None:
        if state["encoder_digest"] != digest:
            raise SystemExit(f"dit checkpoint was trained on VAE encoder {state['encoder_digest']}, "
                             f"the run folder's VAE encoder is {digest}: refusing to mix them")
        models.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, start = state["step"], state.get("schedule_start", 0)
        log(f"dit: resumed at step {step}")
    elif args.init_from:
        from diffusers import WanTransformer3DModel
        from transformers import UMT5EncoderModel

        transformer.load_state_dict(WanTransformer3DModel.from_pretrained(Path(args.init_from) / "transformer").state_dict())
        text_encoder.load_state_dict(UMT5EncoderModel.from_pretrained(Path(args.init_from) / "text_encoder").state_dict())
        step = start = exported_card(args.init_from)["dit_steps"]
        ema = EMA(models, args.dit_ema)
        ema.updates = step
        log(f"dit: starting from {args.init_from} (step {step}); fresh optimiser")
    log(f"dit: transformer {sum(p.numel() for p in transformer.parameters()) / 1e6:.2f} M, "
        f"text encoder {sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f} M parameters; "
        f"latent std per channel {std.min():.3f}..{std.max():.3f}")

    def lr_at(s):  # linear warm-up over the steps this run adds (fresh Adam moments)
        return args.dit_lr * min(1.0, (s - start + 1) / args.dit_warmup)

    models.train()
    began = last_save = time.time()
    bar = tqdm(total=args.dit_steps, initial=step, desc="dit", dynamic_ncols=True)
    while step < args.dit_steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        idx = torch.randint(len(lat), (args.dit_batch,), generator=gen)
        rows = idx.to(device)
        # 10 % empty prompts teach the unconditional branch classifier-free guidance needs
        # (WanPipeline's default negative prompt is "").
        drop = torch.rand(args.dit_batch, generator=gen) < 0.1
        batch_caps = ["" if d else captions[i] for i, d in zip(idx.tolist(), drop.tolist())]
        x0 = lat[rows]
        sigma = sample_sigmas(args.dit_batch, gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        emb = encode_prompts(tokenizer, text_encoder, batch_caps, device)
        # Objects cover a tenth of a clip, and their shape is the one thing only the caption
        # decides: without extra weight there, the background's loss drowns the shape words.
        weight = 1.0 + args.dit_object_weight * masks[rows] if args.dit_object_weight else None
        loss = flow_loss(transformer, x0, emb, sigma, noise, weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(models.parameters(), 1.0)
        opt.step()
        ema.update(models)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        # A lease-bound run (a GPU for a few minutes) stops on time, evaluated and saved.
        out_of_time = args.dit_time_limit_s is not None and time.time() - began > args.dit_time_limit_s
        done = step == args.dit_steps or out_of_time
        if step % args.eval_every == 0 or done:
            e = ema.module
            held_out = dit_held_out_scores(e["transformer"], e["text_encoder"], tokenizer, held,
                                           bank["held_captions"], device)
            log(f"dit step {step} lr {lr_at(step - 1):.2e} train_loss {loss.item():.4f} "
                f"held_out_loss {held_out['loss']:.4f} text_gap {held_out['text_gap']:.4f} "
                f"shape_gap {held_out['shape_gap']:.5f} ± {held_out['shape_gap_se']:.5f}")
        if done or time.time() - last_save > args.save_every_s:
            exported = {"ema": ema.state_dict(), "step": step, "encoder_digest": digest,
                        "latents_mean": mean.tolist(), "latents_std": std.tolist()}
            save_checkpoint(path, {**exported, "model": models.state_dict(), "opt": opt.state_dict(),
                                   "schedule_start": start})
            if args.dit_export_weights:
                save_checkpoint(Path(args.dit_export_weights), exported)
            last_save = time.time()
        if out_of_time:
            break
    bar.close()


# ----------------------------------------------------------------------------- evaluation


def following_scores(frames, asked, value_range) -> dict:
    """Colour recall, shape accuracy and extra colours of ``frames`` ``(N, H, W, 3)`` against the
    ``asked`` ``[(colour, shape), ...]`` of each."""
    totals = np.zeros(4)
    for frame, want in zip(frames, asked):
        m = metrics.match_prompt(metrics.find_objects(frame, toyworld.OBJECT_COLOURS, value_range), want)
        totals += (m.asked, m.colours_found, m.shapes_right, m.extra_colours)
    n_asked = totals[0]
    return {"colour_recall": round(totals[1] / n_asked, 3), "shape_accuracy": round(totals[2] / n_asked, 3),
            "extra_colours_per_video": round(totals[3] / len(frames), 2)}


def _frame0_consistency(videos, value_range) -> float:
    """Fraction of ``(N, F, H, W, 3)`` videos whose frame 0 shows the same objects as frame 1."""
    same = [metrics.same_objects(v[0], v[1], toyworld.OBJECT_COLOURS, value_range) for v in videos]
    return round(float(np.mean(same)), 3)


def held_out_scenes(n: int, first_seed: int = HELD_OUT_SEED):
    """The first ``n`` held-out clips ``(N, 3, F, H, W)`` in [-1, 1], their captions and asked
    objects (``first_seed=VALIDATION_SEED``: the validation clips instead)."""
    drawn = [toyworld.make_clip(s, **NATIVE) for s in range(first_seed, first_seed + n)]
    truth = np.stack([clip for clip, _ in drawn])
    captions = [scene.caption() for _, scene in drawn]
    asked = [[(o.colour, o.shape) for o in scene.objects] for _, scene in drawn]
    return truth, captions, asked


@torch.no_grad()
def prompt_following(pipe, n_prompts: int, steps: int, guidance: float, first_seed: int = HELD_OUT_SEED) -> dict:
    """Does the model draw what its prompt asks for? Held-out captions are sampled at native
    size; the middle frame's saturated blobs (``metrics.find_objects``) are compared with the
    caption's objects. The same measure on the true clips of those captions is the detector's
    ceiling (overlapping shapes hide each other), reported beside it. ``frame0_consistency``:
    the fraction of videos whose frame 0 shows the same objects as frame 1.
    """
    truth, captions, asked = held_out_scenes(n_prompts, first_seed)
    videos = []
    for i in range(0, n_prompts, 16):
        videos.append(pipe(prompt=captions[i : i + 16], negative_prompt=[""] * len(captions[i : i + 16]),
                           **NATIVE, num_inference_steps=steps, guidance_scale=guidance,
                           generator=torch.Generator().manual_seed(i), output_type="np").frames)
    videos = np.concatenate(videos)  # (N, F, H, W, 3) in [0, 1]
    truth = truth.transpose(0, 2, 3, 4, 1)  # (N, F, H, W, 3) in [-1, 1]
    mid = NATIVE["num_frames"] // 2
    samples = following_scores(videos[:, mid], asked, (0.0, 1.0))
    samples["frame0_consistency"] = _frame0_consistency(videos, (0.0, 1.0))
    true_clips = following_scores(truth[:, mid], asked, (-1.0, 1.0))
    true_clips["frame0_consistency"] = _frame0_consistency(truth, (-1.0, 1.0))
    return {"prompts": n_prompts, "frame": mid, "samples": samples, "true_clips": true_clips}


@torch.no_grad()
def vae_checks(vae, n_clips: int) -> dict:
    """The VAE alone on the first ``n_clips`` held-out clips: PSNR (all frames, frame 0), the
    lattice texture at the token period (``metrics.lattice_texture``, 16 px: 8x VAE x 2x2 patch)
    of its reconstructions and of the true clips, and prompt following of the reconstructions
    (the most a DiT sampling in this latent space can reach)."""
    truth, _, asked = held_out_scenes(n_clips)
    x = torch.from_numpy(truth)
    rec = reconstruct(vae, x).clamp(-1, 1)
    rec_np = rec.permute(0, 2, 3, 4, 1).numpy()
    mid = NATIVE["num_frames"] // 2
    following = following_scores(rec_np[:, mid], asked, (-1.0, 1.0))
    following["frame0_consistency"] = _frame0_consistency(rec_np, (-1.0, 1.0))
    return {
        "clips": n_clips,
        "psnr_db": round(metrics.psnr(rec, x, data_range=2.0), 2),
        "psnr_frame0_db": round(metrics.psnr(rec[:, :, 0], x[:, :, 0], data_range=2.0), 2),
        "lattice_period_px": TOKEN_PX,
        "lattice_texture": round(token_lattice(rec), 4),
        "lattice_texture_true_clips": round(token_lattice(truth), 4),
        "reconstructions": following,
    }


def measure(pipe, args) -> dict:
    """Every target of the model on held-out data: ``{"vae": vae_checks, "prompt_following": ...}``."""
    return {"vae": vae_checks(pipe.vae, args.eval_prompts),
            "prompt_following": prompt_following(pipe, args.eval_prompts, args.sample_steps, args.guidance)}


def evaluate(args, log):
    """Prompt following and VAE checks of an exported folder (``--out``), printed and logged."""
    from diffusers import WanPipeline

    os.environ["HF_HUB_OFFLINE"] = "1"
    pipe = WanPipeline.from_pretrained(args.out)
    result = measure(pipe, args)
    log(f"eval {args.out}: {json.dumps(result)}")
    return result


# ----------------------------------------------------------------------------- export


def frames_strip(videos: np.ndarray, frame_ids) -> np.ndarray:
    """uint8 grid: one row per video, one column per chosen frame. videos: (B, F, H, W, C)."""
    rows = [np.concatenate([v[i] for i in frame_ids], axis=1) for v in videos]
    return (np.clip(np.concatenate(rows, axis=0), 0, 1) * 255).round().astype(np.uint8)


def dit_for_export(args, vae, device) -> dict:
    """The DiT to export, as the run folder's ``dit.pt`` holds it (``ema.module``, ``step``,
    ``latents_mean``/``latents_std``): that checkpoint when the DiT stage saved one, else the
    ``--init-from`` folder's transformer and text encoder (a run that fine-tuned only the VAE
    decoder). Refuses a DiT trained on another VAE encoder than ``vae``'s."""
    digest = encoder_digest(vae)
    path = args.run_dir / "dit.pt"
    if path.exists():
        state = torch.load(path, map_location=device, weights_only=False)
    elif args.init_from:
        from diffusers import WanTransformer3DModel
        from transformers import UMT5EncoderModel

        folder = Path(args.init_from)
        shipped_digest, shipped_mean, shipped_std = shipped_latent_space(folder)
        parts = {"transformer": WanTransformer3DModel.from_pretrained(folder / "transformer"),
                 "text_encoder": UMT5EncoderModel.from_pretrained(folder / "text_encoder")}
        module = {f"{name}.{k}": v for name, part in parts.items() for k, v in part.state_dict().items()}
        state = {"ema": {"module": module}, "step": exported_card(folder)["dit_steps"],
                 "encoder_digest": shipped_digest, "latents_mean": shipped_mean, "latents_std": shipped_std}
    else:
        raise SystemExit(f"no DiT: {path} does not exist; run `--stage dit` first or pass --init-from")
    if state["encoder_digest"] != digest:
        raise SystemExit("the VAE encoder changed since the DiT was trained: retrain the DiT or "
                         "restore the VAE checkpoint it was trained with")
    return state


def export(args, log):
    from diffusers import UniPCMultistepScheduler, WanPipeline
    from PIL import Image

    device = torch.device("cpu")  # export and the sample strip are cheap; keep them portable
    vae, vae_steps = load_vae_for_inference(args, device)
    tokenizer = build_tokenizer()
    transformer = new_transformer()
    text_encoder = new_text_encoder(len(tokenizer))
    models = torch.nn.ModuleDict({"transformer": transformer, "text_encoder": text_encoder})
    dit_state = dit_for_export(args, vae, device)
    models.load_state_dict(dit_state["ema"]["module"])
    vae.register_to_config(latents_mean=dit_state["latents_mean"], latents_std=dit_state["latents_std"])
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        flow_shift=FLOW_SHIFT, num_train_timesteps=1000)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae,
                       transformer=transformer.eval(), scheduler=scheduler)
    out = Path(args.out)
    pipe.save_pretrained(out, safe_serialization=True)

    # Sample through a fresh offline load, exactly as a user would.
    os.environ["HF_HUB_OFFLINE"] = "1"
    loaded = WanPipeline.from_pretrained(out)
    videos = loaded(prompt=SAMPLE_PROMPTS, negative_prompt=[""] * len(SAMPLE_PROMPTS), **NATIVE,
                    num_inference_steps=args.sample_steps, guidance_scale=args.guidance,
                    generator=torch.Generator().manual_seed(0), output_type="np").frames
    # A 256-colour palette keeps the PNG small (it goes into git history) and is visually
    # lossless for these flat-coloured frames.
    Image.fromarray(frames_strip(videos, [0, 4, 8])).quantize(256, dither=Image.Dither.NONE).save(
        args.samples_png, optimize=True)

    # The numbers the model card quotes come from the logs of the checkpoints exported.
    held_out = clips(range(HELD_OUT_SEED, HELD_OUT_SEED + args.vae_eval_clips), device)
    p_all, p_first, _ = vae_held_out_psnr(vae, held_out)
    held_lat, caps = held_out_latents(args, vae, device)
    mean, std = latent_scale(vae)
    dit_scores = dit_held_out_scores(transformer, text_encoder, tokenizer, (held_lat - mean) / std, caps, device)
    measured = measure(loaded, args)
    following = measured["prompt_following"]
    card = {
        "native_size": NATIVE,
        "vae_steps": vae_steps,
        "vae_held_out_psnr_db": round(p_all, 2),
        "vae_held_out_psnr_frame0_db": round(p_first, 2),
        "pooled_baseline_psnr_db": round(pooled_baseline_psnr(held_out), 2),
        "dit_steps": dit_state["step"],
        "dit_held_out_flow_loss": round(dit_scores["loss"], 4),
        "dit_text_gap": round(dit_scores["text_gap"], 4),
        "dit_shape_gap": [round(dit_scores["shape_gap"], 5), round(dit_scores["shape_gap_se"], 5)],
        "prompt_following": following,
        "vae_checks": measured["vae"],
        "scheduler": f"UniPCMultistepScheduler(flow_prediction, use_flow_sigmas, flow_shift={FLOW_SHIFT})",
        "sample_settings": {"num_inference_steps": args.sample_steps, "guidance_scale": args.guidance},
        "training_device": args.train_device_note,
    }
    (out / "training.json").write_text(json.dumps(card, indent=2) + "\n")
    (out / "README.md").write_text(
        "# toy-wan: supergen's small Wan-architecture model of a synthetic world\n\n"
        "Trained from scratch by `scripts/train_toy_model.py` on `supergen.toyworld` clips "
        "(gradient backgrounds, 1-3 moving disks/squares/triangles, captions from a fixed grammar).\n"
        "Not a general video model: it only knows that world.\n\n"
        f"- native size: {NATIVE['width']}x{NATIVE['height']} px, {NATIVE['num_frames']} frames\n"
        f"- VAE (AutoencoderKLWan, 8x spatial / 4x temporal): {vae_steps} steps, "
        f"held-out PSNR {card['vae_held_out_psnr_db']} dB "
        f"(8x pool + bilinear baseline {card['pooled_baseline_psnr_db']} dB)\n"
        f"- DiT (WanTransformer3DModel, patch (1, 2, 2)) + UMT5 text encoder: {dit_state['step']} steps, "
        f"held-out flow-matching loss {card['dit_held_out_flow_loss']} (with each other's captions: "
        f"+{card['dit_text_gap']})\n"
        f"- prompt following ({following['prompts']} held-out captions, frame {following['frame']}): "
        f"colour recall {following['samples']['colour_recall']}, shape accuracy "
        f"{following['samples']['shape_accuracy']}, {following['samples']['extra_colours_per_video']} colours per "
        f"video not asked for (the detector on the true clips: {following['true_clips']['colour_recall']}, "
        f"{following['true_clips']['shape_accuracy']}, {following['true_clips']['extra_colours_per_video']}); "
        f"frame 0 shows frame 1's objects in {following['samples']['frame0_consistency']:.0%} of samples\n"
        f"- VAE on {measured['vae']['clips']} held-out clips: PSNR {measured['vae']['psnr_db']} dB, lattice texture at "
        f"{measured['vae']['lattice_period_px']} px {measured['vae']['lattice_texture']} (true clips "
        f"{measured['vae']['lattice_texture_true_clips']}); its reconstructions' shape accuracy "
        f"{measured['vae']['reconstructions']['shape_accuracy']}, colour recall "
        f"{measured['vae']['reconstructions']['colour_recall']} (what a DiT sampling through it can reach)\n"
        f"- scheduler: {card['scheduler']}; samples use {args.sample_steps} steps, guidance {args.guidance}\n"
        f"- trained on: {args.train_device_note}\n"
        "- training notes (every session, its commands, the runs that did not ship): `docs/toy-model.md` "
        "in the supergen repository\n\n"
        "```python\nfrom diffusers import WanPipeline\n"
        "pipe = WanPipeline.from_pretrained(\"assets/toy-wan\")\n"
        f"video = pipe(\"{SAMPLE_PROMPTS[0]}\", height={NATIVE['height']}, width={NATIVE['width']}, "
        f"num_frames={NATIVE['num_frames']}, num_inference_steps={args.sample_steps}, "
        f"guidance_scale={args.guidance}).frames[0]\n```\n\n"
        f"Vocabulary: {' '.join(toyworld.vocabulary())}\n"
    )
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log(f"export: wrote {out} ({size / 2**20:.1f} MiB), samples {args.samples_png}; {json.dumps(card)}")


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["vae", "dit", "export", "eval", "all"], default="all")
    p.add_argument("--run-dir", type=Path, default=Path("runs/toy"), help="checkpoints and log (not committed)")
    p.add_argument("--out", default=str(REPO / "assets" / "toy-wan"), help="exported pipeline folder")
    p.add_argument("--samples-png", default=str(REPO / "assets" / "toy-wan-samples.png"))
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoints")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start stages that have no run-folder checkpoint from an exported folder's weights "
                        "(e.g. assets/toy-wan); step counts continue from its training.json")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--save-every-s", type=float, default=300.0)
    # VAE
    p.add_argument("--vae-steps", type=int, default=4000)
    p.add_argument("--vae-batch", type=int, default=4)
    p.add_argument("--vae-crop", type=int, default=64, help="training crop (pixels); the VAE is fully convolutional")
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--vae-lr-min", type=float, default=2e-4)
    p.add_argument("--vae-warmup", type=int, default=80, help="steps overfitting a fixed pool at 2x lr")
    p.add_argument("--vae-eval-clips", type=int, default=8)
    p.add_argument("--vae-ema", type=float, default=0.999,
                   help="EMA decay of the exported VAE weights (lower for a short fine-tune, so it is not "
                        "mostly the starting weights)")
    p.add_argument("--vae-texture-weight", type=float, default=0.0,
                   help="weight of the pixel-step L1 where the clip is smooth (texture_loss) added to the MSE")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="freeze the VAE encoder (from its EMA) and train only the decoder from now on")
    # DiT
    p.add_argument("--dit-steps", type=int, default=6000)
    p.add_argument("--dit-batch", type=int, default=16)
    p.add_argument("--dit-lr", type=float, default=4e-4)
    p.add_argument("--dit-warmup", type=int, default=200)
    p.add_argument("--dit-ema", type=float, default=0.998)
    p.add_argument("--dit-time-limit-s", type=float, default=None,
                   help="stop the DiT stage (evaluated and saved) after this many seconds of training")
    p.add_argument("--dit-export-weights", default=None,
                   help="also save the DiT's EMA weights and latent statistics alone (about 5 MB, what "
                        "--stage export reads as the run folder's dit.pt) to this file")
    p.add_argument("--dit-object-weight", type=float, default=0.0,
                   help="extra loss weight on latent cells under an object (0: plain MSE)")
    p.add_argument("--bank", type=int, default=1024, help="training clips encoded once for the DiT")
    p.add_argument("--dit-eval-clips", type=int, default=64)
    # export
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--train-device-note", default="CPU", help="recorded in training.json")
    p.add_argument("--eval-prompts", type=int, default=32, help="held-out captions sampled to measure prompt following")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    log = Logger(args.run_dir / "train.log")
    log(f"start: {' '.join(sys.argv)}")
    if args.stage in ("vae", "all"):
        train_vae(args, log)
    if args.stage in ("dit", "all"):
        train_dit(args, log)
    if args.stage in ("export", "all"):
        export(args, log)
    if args.stage == "eval":
        evaluate(args, log)


if __name__ == "__main__":
    main()
