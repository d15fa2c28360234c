"""The shipped toy model (assets/toy-wan) loads offline and draws images, not noise."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a user without network must be able to load it

ASSET = Path(__file__).resolve().parents[1] / "assets" / "toy-wan"

pytestmark = pytest.mark.skipif(
    not (ASSET / "model_index.json").exists(),
    reason="assets/toy-wan is not exported; run scripts/train_toy_model.py --stage export",
)

PROMPT = "a red disk staying still on a vertical gray to white background"


def roughness(frames: np.ndarray) -> float:
    """1 - lag-1 spatial autocorrelation of the frames' deviations from their mean colour.

    frames: (..., H, W, C). Scale-free, so a low-contrast field cannot look "smooth" just by
    being faint: smooth images with structure score ~0.01 (toy-world clips: 0.01-0.03),
    white noise scores 1. The random `tiny` model scores ~0.4 at 128 px.
    """
    f = frames - frames.mean(axis=(-3, -2), keepdims=True)
    energy = (f * f).mean()
    corr_x = (f[..., :, 1:, :] * f[..., :, :-1, :]).mean() / energy
    corr_y = (f[..., 1:, :, :] * f[..., :-1, :, :]).mean() / energy
    return float(1 - (corr_x + corr_y) / 2)


def render(pipe, size, steps=10):
    return pipe(prompt=PROMPT, negative_prompt="", **size, num_inference_steps=steps, guidance_scale=4.0,
                generator=torch.Generator().manual_seed(0), output_type="np").frames  # (1, F, H, W, 3)


@pytest.fixture(scope="module")
def toy_pipe():
    from diffusers import WanPipeline

    return WanPipeline.from_pretrained(ASSET)


@pytest.fixture(scope="module")
def native_size():
    return json.loads((ASSET / "training.json").read_text())["native_size"]


def test_tokenizer_round_trips_offline(toy_pipe):
    tok = toy_pipe.tokenizer
    ids = tok(PROMPT).input_ids
    assert tok.unk_token_id not in ids and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == PROMPT
    assert tok(PROMPT.upper()).input_ids == ids  # the tokenizer lower-cases like the grammar


def test_renders_smooth_frames_at_native_size(toy_pipe, native_size):
    from supergen.builtin import tiny_wan_pipeline

    frames = render(toy_pipe, native_size)
    assert frames.shape == (1, native_size["num_frames"], native_size["height"], native_size["width"], 3)
    assert frames.std() > 0.05  # not a flat grey field: the toy world's clips have std 0.1-0.2
    # The random `tiny` model the rest of the suite uses draws noise-like frames.
    random_frames = render(tiny_wan_pipeline(), native_size, steps=4)
    assert roughness(frames) < 0.25 * roughness(random_frames)


def _script(name: str):
    """``scripts/<name>.py`` as a module (the scripts are not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ASSET.parents[1] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trainer():
    return _script("train_toy_model")


def test_training_continues_from_the_shipped_folder(tmp_path):
    """A fresh clone has no run-folder checkpoints; --init-from continues from the shipped
    weights (same step count, same latent scale, encoder frozen) instead of from scratch.

    A decoder-only run (no DiT checkpoint yet) exports with the shipped transformer, text encoder
    and latent statistics, which were trained on the encoder it kept, and the folder loads offline.
    """
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel

    trainer = _trainer()
    card = json.loads((ASSET / "training.json").read_text())
    common = ["--init-from", str(ASSET), "--run-dir", str(tmp_path), "--eval-every", "1"]
    trainer.main(["--stage", "vae", "--freeze-encoder", "--vae-steps", str(card["vae_steps"] + 1), "--vae-batch", "1",
                  "--vae-crop", "32", "--vae-eval-clips", "1", "--vae-lr", "1e-5", "--vae-texture-weight", "1.0", *common])
    out = tmp_path / "out"
    trainer.main(["--stage", "export", "--out", str(out), "--samples-png", str(tmp_path / "samples.png"),
                  "--sample-steps", "1", "--eval-prompts", "1", "--dit-eval-clips", "2", "--vae-eval-clips", "1", *common])
    exported, shipped = WanPipeline.from_pretrained(out), WanPipeline.from_pretrained(ASSET)
    for a, b in zip(exported.transformer.state_dict().values(), shipped.transformer.state_dict().values()):
        assert torch.equal(a, b)
    assert exported.vae.config.latents_mean == shipped.vae.config.latents_mean
    decoder = torch.load(tmp_path / "vae.pt", weights_only=False)["ema"]["module"]
    assert all(torch.equal(v, decoder[k]) for k, v in exported.vae.state_dict().items())
    written = json.loads((out / "training.json").read_text())
    assert written["vae_steps"] == card["vae_steps"] + 1 and written["dit_steps"] == card["dit_steps"]
    assert {"lattice_texture", "lattice_texture_true_clips", "reconstructions"} <= set(written["vae_checks"])
    assert "frame0_consistency" in written["prompt_following"]["samples"]
    shape_gap, shape_gap_se = written["dit_shape_gap"]
    assert shape_gap_se > 0

    # A lease-bound run: out of time after its first step, it stops there, evaluated and saved,
    # with the small weights-only file beside the checkpoint.
    trainer.main(["--stage", "dit", "--dit-steps", str(card["dit_steps"] + 50), "--dit-batch", "2",
                  "--bank", "4", "--dit-eval-clips", "4", "--dit-object-weight", "4", "--dit-time-limit-s", "0",
                  "--dit-export-weights", str(tmp_path / "dit-weights.pt"), *common])

    vae_state = torch.load(tmp_path / "vae.pt", weights_only=False)
    dit_state = torch.load(tmp_path / "dit.pt", weights_only=False)
    assert vae_state["step"] == card["vae_steps"] + 1 and vae_state["encoder_frozen"]
    assert dit_state["step"] == card["dit_steps"] + 1
    weights = torch.load(tmp_path / "dit-weights.pt", weights_only=False)
    assert {"model", "opt"}.isdisjoint(weights) and weights["step"] == dit_state["step"]
    assert all(torch.equal(v, dit_state["ema"]["module"][k]) for k, v in weights["ema"]["module"].items())

    shipped_vae = AutoencoderKLWan.from_pretrained(ASSET / "vae").state_dict()
    ema_vae = vae_state["ema"]["module"]
    for key, value in shipped_vae.items():
        if key.startswith(("encoder.", "quant_conv.")):
            assert torch.equal(ema_vae[key], value), key  # frozen: the DiT's latent space is kept
    decoder_change = max((ema_vae[k] - v).abs().max().item() for k, v in shipped_vae.items() if k.startswith("decoder."))
    assert 0 < decoder_change < 1e-3  # one small step away from the shipped decoder, not re-initialised

    assert dit_state["latents_mean"] == pytest.approx(list(json.loads((ASSET / "vae" / "config.json").read_text())["latents_mean"]))
    shipped_dit = WanTransformer3DModel.from_pretrained(ASSET / "transformer").state_dict()
    ema_dit = dit_state["ema"]["module"]
    dit_change = max((ema_dit[f"transformer.{k}"] - v).abs().max().item() for k, v in shipped_dit.items())
    assert 0 < dit_change < 1e-3


def test_a_retrained_encoder_gives_the_dit_its_own_latent_statistics(tmp_path):
    """When the encoder trained too, its latents have another scale: continuing the shipped DiT
    with the shipped statistics would feed it mis-scaled inputs, so the DiT stage measures the new
    encoder's statistics on its bank (and still starts from the shipped transformer)."""
    trainer = _trainer()
    card = json.loads((ASSET / "training.json").read_text())
    common = ["--init-from", str(ASSET), "--run-dir", str(tmp_path), "--eval-every", "1"]
    trainer.main(["--stage", "vae", "--vae-steps", str(card["vae_steps"] + 1), "--vae-batch", "1",
                  "--vae-crop", "32", "--vae-eval-clips", "1", "--vae-lr", "1e-3", *common])
    trainer.main(["--stage", "dit", "--dit-steps", str(card["dit_steps"] + 1), "--dit-batch", "2",
                  "--bank", "4", "--dit-eval-clips", "4", *common])

    dit_state = torch.load(tmp_path / "dit.pt", weights_only=False)
    (bank_path,) = tmp_path.glob("latents_*_4.pt")
    assert bank_path.name == f"latents_{dit_state['encoder_digest']}_4.pt"
    bank = torch.load(bank_path, weights_only=False)["latents"]
    assert dit_state["latents_mean"] == pytest.approx(bank.mean(dim=(0, 2, 3, 4)).tolist(), abs=1e-6)
    assert dit_state["latents_std"] == pytest.approx(bank.std(dim=(0, 2, 3, 4)).tolist(), rel=1e-5)
    shipped_mean = json.loads((ASSET / "vae" / "config.json").read_text())["latents_mean"]
    assert dit_state["latents_mean"] != pytest.approx(shipped_mean, abs=1e-6)
    assert dit_state["step"] == card["dit_steps"] + 1  # continued from the shipped transformer


def test_texture_loss_counts_texture_on_smooth_ground_and_not_edges():
    """The decoder's texture loss: a 2-px blockiness on a clip (gradient backgrounds included)
    costs its amplitude; getting an object's edge wrong costs nothing."""
    from supergen.eval import toyworld

    trainer = _trainer()
    video, _ = toyworld.make_clip(7, **trainer.NATIVE)
    x = torch.from_numpy(video)[None]  # (1, C, F, H, W) in [-1, 1]
    assert trainer.texture_loss(x, x).item() < 1e-6

    ys, xs = torch.meshgrid(torch.arange(x.shape[-2]), torch.arange(x.shape[-1]), indexing="ij")
    blocks = 0.01 * ((ys // 2 + xs // 2) % 2 * 2 - 1).float()  # +-0.01 on 2x2 pixel blocks
    textured = trainer.texture_loss(x + blocks, x).item()
    assert textured == pytest.approx(0.01, rel=0.05)  # a 0.02 step on every other line

    square = torch.zeros(1, 3, 2, 32, 32)
    square[..., 8:24, 8:24] = 1.0
    assert trainer.texture_loss(1.5 * square, square).item() == 0.0  # every edge wrong, nothing else


def test_object_weights_sit_on_the_latent_cells_of_the_objects():
    """The DiT's object-weighted loss: masks on the latent grid mark the cells whose pixels an
    object changes (frame 0 alone, then groups of four frames, 8x8 pixels per cell), and the
    weighted loss is the mean over the weighted cells."""
    from supergen.eval import toyworld

    trainer = _trainer()
    seeds = [3, 11, 29]
    masks = trainer.latent_object_masks(seeds)
    assert masks.shape == (3, 1, 3, 16, 16)
    for seed, mask in zip(seeds, masks[:, 0]):
        video, scene = toyworld.make_clip(seed, **trainer.NATIVE)
        plain = toyworld.Scene(scene.height, scene.width, scene.num_frames, scene.background, scene.orientation, ())
        changed = torch.from_numpy(np.abs(video - toyworld.render(plain)).max(axis=0) > 1e-6).float()  # (F, H, W)
        per_latent_frame = torch.stack([changed[0], changed[1:5].amax(0), changed[5:9].amax(0)])
        cells = torch.nn.functional.max_pool2d(per_latent_frame[None], 8)[0]
        assert torch.equal(mask * cells, cells)  # every changed cell is weighted
        assert 0.02 < mask.mean() < 0.6  # and the background mostly is not

    torch.manual_seed(0)
    transformer = trainer.new_transformer().eval()
    x0, noise = torch.randn(2, 16, 3, 16, 16), torch.randn(2, 16, 3, 16, 16)
    emb, sigma = torch.randn(2, 512, trainer.TEXT_CONFIG["d_model"]), torch.tensor([0.3, 0.7])
    with torch.no_grad():
        plain = trainer.flow_loss(transformer, x0, emb, sigma, noise)
        ones = trainer.flow_loss(transformer, x0, emb, sigma, noise, torch.ones(2, 1, 3, 16, 16))
        only = torch.zeros(2, 1, 3, 16, 16)
        only[:, :, :, :8] = 1.0
        top = trainer.flow_loss(transformer, x0, emb, sigma, noise, only)
        pred = transformer(((1 - sigma.view(-1, 1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1, 1) * noise),
                           timestep=sigma * 1000, encoder_hidden_states=emb, return_dict=False)[0]
    assert ones.item() == pytest.approx(plain.item(), rel=1e-5)
    expected = ((pred - noise + x0)[:, :, :, :8] ** 2).mean()
    assert top.item() == pytest.approx(expected.item(), rel=1e-5)


def test_shape_words_rotate_and_nothing_else_changes():
    trainer = _trainer()
    caption = "a red disk moving right and a blue triangle staying still on a vertical sky to sand background"
    assert trainer.rotate_shape_words(caption) == (
        "a red square moving right and a blue disk staying still on a vertical sky to sand background")
    from supergen.eval import toyworld

    for seed in range(5):  # the caption-level rotation is the scene-level one's caption
        scene = toyworld.make_scene(seed, **trainer.NATIVE)
        assert toyworld.rotate_shapes(scene).caption() == trainer.rotate_shape_words(scene.caption())


def test_shape_word_diagnostic_keeps_the_clips_shapes_when_barely_noised(capsys):
    """``toy_diagnostics.py shape-words``: from sigma0 near 0 there is nothing left to decide, so
    both captions give back the validation clips' own shapes (the VAE's reconstructions)."""
    _script("toy_diagnostics").main(["shape-words", "--folder", str(ASSET), "--sigma0", "0.02", "--clips", "8", "--steps", "1"])
    (result,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert result["sigma0"] == 0.02 and result["clips"] == 8
    assert result["own_caption"] == result["rotated_caption_vs_clip"] > 0.3
    assert result["rotated_caption_vs_rotated"] < result["own_caption"]


def test_sampler_diagnostic_reports_each_setting(capsys):
    _script("toy_diagnostics").main(["sampler", "--folder", str(ASSET), "--guidance", "1", "4", "--flow-shift", "3",
                         "--prompts", "2", "--steps", "2"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["flow_shift"], r["guidance"]) for r in rows] == [(3.0, 1.0), (3.0, 4.0)]
    assert all(0.0 <= r["samples"]["colour_recall"] <= 1.0 for r in rows)


def test_triplet_diagnostic_finds_the_shapes_in_a_barely_noised_latent(capsys):
    """``toy_diagnostics.py triplets``: at sigma 0.3 the noisy latent shows each row's shapes, so
    the model predicts most of what tells a triplet apart, and the caption adds nothing; at sigma
    near 1 the latent shows nothing, so whatever it predicts comes from the caption."""
    _script("toy_diagnostics").main(["triplets", "--folder", str(ASSET), "--sigma", "0.3", "0.98", "--clips", "4"])
    low, high = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (low["sigma"], high["sigma"], low["scenes"]) == (0.3, 0.98, 4)
    assert low["predicted"] > 0.7 and abs(low["by_the_caption"]) < 0.02
    assert high["predicted"] < low["predicted"] and high["by_the_caption"] > 0


def test_prompt_words_outside_the_vocabulary_are_reported(toy_pipe, caplog):
    """The toy model knows only its world's words: others become <unk> and the user is told."""
    from supergen import SuperGenPipeline

    sg = SuperGenPipeline.from_pipe(toy_pipe, "toy")
    assert sg.adapter.unknown_prompt_words(PROMPT) == []
    assert sg.adapter.unknown_prompt_words("a Purple disk on a vertical gray to teal background.") == ["Purple", "teal"]
    with caplog.at_level("WARNING", logger="supergen"):
        sg(prompt="a purple disk staying still on a vertical gray to white background", height=128, width=128,
           num_frames=5, strength=1.0, num_inference_steps=1, generator=torch.Generator().manual_seed(0))
    assert "unknown to this model's tokenizer" in caplog.text and "purple" in caplog.text

