"""Why does the toy model draw blobs? Three diagnostics of an exported toy-model folder, on the
validation clips (``train_toy_model.VALIDATION_SEED``), never the held-out ones the targets use.

``sampler``: prompt following (the trainer's own measure) for each sampler setting asked for,
so guidance and flow shift are chosen on validation captions::

    python scripts/toy_diagnostics.py sampler --folder assets/toy-wan --guidance 4 8 --flow-shift 1.5 3 5

``shape-words``: does the transformer draw the shape its caption names when it has to decide?
Each validation clip is encoded, noised to ``sigma0`` and denoised twice, once with its own
caption and once with every shape word rotated (disk -> square -> triangle -> disk). A model that
follows shape words scores high against the caption it was given in both; one that ignores them
keeps the clip's own shapes (low sigma0) or draws the same blob either way (high sigma0)::

    python scripts/toy_diagnostics.py shape-words --folder assets/toy-wan --sigma0 0.4 0.6 0.8

``triplets``: at which noise level does the caption, rather than the noisy latent, decide a shape?
Each validation scene is drawn three times, its shapes turned 0, 1 and 2 places
(``toyworld.rotate_shapes``), and the three are noised with one noise to one sigma. What tells
their flow targets apart is their shapes alone; the command reports how much of that the model
predicts with the true captions and with the captions swapped within the triplet::

    python scripts/toy_diagnostics.py triplets --folder assets/toy-wan --sigma 0.5 0.8 0.9 0.95 0.98
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from supergen.eval import toyworld

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_toy_model as toy  # noqa: E402  (a sibling script, not part of the package)


def load(folder: str):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sampler(args) -> None:
    from diffusers import UniPCMultistepScheduler

    pipe = load(args.folder)
    for shift in args.flow_shift:
        pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config, flow_shift=shift)
        for guidance in args.guidance:
            result = toy.prompt_following(pipe, args.prompts, args.steps, guidance, first_seed=toy.VALIDATION_SEED)
            print(json.dumps({"flow_shift": shift, "guidance": guidance, "steps": args.steps,
                              "prompts": args.prompts, "samples": result["samples"]}), flush=True)


@torch.no_grad()
def denoise_from(pipe, x0: torch.Tensor, captions: list[str], sigma0: float, steps: int, guidance: float,
                 seed: int) -> np.ndarray:
    """Noise normalised latents ``x0`` ``(N, 16, F', H', W')`` to ``sigma0``, then integrate the
    flow to 0 with plain Euler steps and classifier-free guidance (empty negative prompt, as the
    pipeline). Returns decoded videos ``(N, F, H, W, 3)`` in [-1, 1]."""
    mean, std = toy.latent_scale(pipe.vae)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    x = (1 - sigma0) * x0 + sigma0 * noise
    cond = toy.encode_prompts(pipe.tokenizer, pipe.text_encoder, captions, "cpu")
    uncond = toy.encode_prompts(pipe.tokenizer, pipe.text_encoder, [""] * len(captions), "cpu")
    sigmas = torch.linspace(sigma0, 0.0, steps + 1)
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        t = torch.full((len(x),), float(s) * 1000)
        v_cond = pipe.transformer(x, timestep=t, encoder_hidden_states=cond, return_dict=False)[0]
        v_uncond = pipe.transformer(x, timestep=t, encoder_hidden_states=uncond, return_dict=False)[0]
        x = x + (s_next - s) * (v_uncond + guidance * (v_cond - v_uncond))
    video = pipe.vae.decode(x * std + mean).sample.clamp(-1, 1)
    return video.permute(0, 2, 3, 4, 1).numpy()


def shape_words(args) -> None:
    pipe = load(args.folder)
    truth, captions, asked = toy.held_out_scenes(args.clips, toy.VALIDATION_SEED)
    mean, std = toy.latent_scale(pipe.vae)
    with torch.no_grad():
        x0 = (toy.encode_latents(pipe.vae, torch.from_numpy(truth)) - mean) / std
    rotated = [toy.rotate_shape_words(c) for c in captions]
    asked_rotated = [[(colour, toyworld.next_shape(shape)) for colour, shape in objects] for objects in asked]
    mid = toy.NATIVE["num_frames"] // 2
    for sigma0 in args.sigma0:
        own = denoise_from(pipe, x0, captions, sigma0, args.steps, args.guidance, args.seed)
        swapped = denoise_from(pipe, x0, rotated, sigma0, args.steps, args.guidance, args.seed)
        print(json.dumps({
            "sigma0": sigma0, "clips": args.clips,
            "own_caption": toy.following_scores(own[:, mid], asked, (-1.0, 1.0))["shape_accuracy"],
            "rotated_caption_vs_rotated": toy.following_scores(swapped[:, mid], asked_rotated, (-1.0, 1.0))["shape_accuracy"],
            "rotated_caption_vs_clip": toy.following_scores(swapped[:, mid], asked, (-1.0, 1.0))["shape_accuracy"],
        }), flush=True)


def spread_within_triplets(v: torch.Tensor) -> float:
    """Mean squared deviation of each row of ``v`` ``(3n, ...)`` from the mean of its triplet
    (rows ``3k, 3k+1, 3k+2``)."""
    by_triplet = v.unflatten(0, (-1, 3))
    return ((by_triplet - by_triplet.mean(dim=1, keepdim=True)) ** 2).mean().item()


@torch.no_grad()
def triplets(args) -> None:
    pipe = load(args.folder)
    scenes = [toyworld.make_scene(toy.VALIDATION_SEED + i, **toy.NATIVE) for i in range(args.clips)]
    turned = [toyworld.rotate_shapes(scene, turns) for scene in scenes for turns in range(3)]
    videos = torch.from_numpy(np.stack([toyworld.render(t) for t in turned]))  # (3n, 3, F, H, W)
    mean, std = toy.latent_scale(pipe.vae)
    x0 = (torch.cat([toy.encode_latents(pipe.vae, v) for v in videos.split(12)]) - mean) / std
    noise = torch.randn((args.clips, *x0.shape[1:]), generator=torch.Generator().manual_seed(args.seed))
    noise = noise.repeat_interleave(3, dim=0)  # one noise per triplet
    captions = [t.caption() for t in turned]
    swapped = [toy.rotate_shape_words(c) for c in captions]  # each row's next twin's caption
    embeddings = [toy.encode_prompts(pipe.tokenizer, pipe.text_encoder, c, "cpu") for c in (captions, swapped)]
    # The targets' own spread is what a model that cannot tell the rows apart leaves unexplained.
    target_spread = spread_within_triplets(noise - x0)

    def residuals(emb: torch.Tensor, sigma: float) -> torch.Tensor:
        sigmas = torch.full((len(x0),), sigma)
        return torch.cat([toy.flow_residuals(pipe.transformer, x0[i : i + 12], emb[i : i + 12], sigmas[i : i + 12],
                                             noise[i : i + 12]) for i in range(0, len(x0), 12)])

    for sigma in args.sigma:
        left, left_swapped = (spread_within_triplets(residuals(emb, sigma)) for emb in embeddings)
        print(json.dumps({
            "sigma": sigma, "scenes": args.clips,
            "predicted": round(1 - left / target_spread, 3),
            "by_the_caption": round((left_swapped - left) / target_spread, 3),
        }), flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sampler", help="prompt following per sampler setting, on validation captions")
    s.add_argument("--folder", default=str(toy.REPO / "assets" / "toy-wan"))
    s.add_argument("--guidance", type=float, nargs="+", default=[4.0])
    s.add_argument("--flow-shift", type=float, nargs="+", default=[toy.FLOW_SHIFT])
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--prompts", type=int, default=32)
    w = sub.add_parser("shape-words", help="denoise validation clips from sigma0 with own vs rotated shape words")
    w.add_argument("--folder", default=str(toy.REPO / "assets" / "toy-wan"))
    w.add_argument("--sigma0", type=float, nargs="+", default=[0.4, 0.6, 0.8])
    w.add_argument("--clips", type=int, default=32)
    w.add_argument("--steps", type=int, default=12)
    w.add_argument("--guidance", type=float, default=4.0)
    w.add_argument("--seed", type=int, default=7)
    t = sub.add_parser("triplets", help="how much of a shape difference the caption decides, per sigma")
    t.add_argument("--folder", default=str(toy.REPO / "assets" / "toy-wan"))
    t.add_argument("--sigma", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95, 0.98])
    t.add_argument("--clips", type=int, default=32, help="validation scenes (each drawn three times)")
    t.add_argument("--seed", type=int, default=7)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(args.threads)
    {"sampler": sampler, "shape-words": shape_words, "triplets": triplets}[args.command](args)


if __name__ == "__main__":
    main()
