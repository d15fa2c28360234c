"""Typed config: presets, overrides, and errors that name the key and what is valid."""

from pathlib import Path

import pytest

from supergen import ConfigError, SuperGenConfig, load_config

PRESETS = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_loads(preset):
    cfg = load_config(str(preset))
    assert isinstance(cfg, SuperGenConfig)


def test_overrides_apply_with_types():
    cfg = load_config("tiny", ["tiling.mode=overlap", "refine.strength=0.7", "job.prompt='yes'", "tiling.tile_height=64", "tiling.tile_width=96"])
    assert cfg.tiling.mode == "overlap" and cfg.refine.strength == 0.7 and cfg.job.prompt == "yes"
    assert load_config(None, {"tiling.batch_tiles": 4}).tiling.batch_tiles == 4


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["tiling.mod=overlap"], "unknown config key 'tiling.mod'; valid keys in section 'tiling': mode, tile_height"),
        (["tilling.mode=overlap"], "unknown config key 'tilling"),
        (["refine.strength=strong"], "config key 'refine.strength'"),
        (["refine.strength=1.5"], r"'refine.strength' is 1.5; it must lie in \(0.0, 1.0\]"),
        (["refine.strength=0"], r"'refine.strength' is 0.0; it must lie in \(0.0, 1.0\]"),
        (["tiling.positions=absolute"], "valid choices: local, global, ntk"),
        (["tiling.tile_height=64"], "tile_height and tiling.tile_width must be given together"),
        (["no_equals_sign"], "is not of the form key=value"),
    ],
)
def test_bad_config_names_key_and_valid_choices(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", overrides)


def test_python_overrides_keep_their_types():
    """{"vae.tiling": "off"} stays the string "off" (YAML would read it as a boolean); so does the
    CLI's ``vae.tiling=off``, and the key's old name ``output.vae_tiling`` still works."""
    cfg = load_config("tiny", {"vae.tiling": "off", "job.prompt": "yes", "tiling.overlap": 32})
    assert cfg.vae.tiling == "off" and cfg.job.prompt == "yes" and cfg.tiling.overlap == 32
    assert load_config("tiny", ["vae.tiling=off"]).vae.tiling == "off"
    assert load_config("tiny", ["output.vae_tiling=on"]).vae.tiling == "on"
    assert load_config({"output": {"vae_tiling": "off"}}).vae.tiling == "off"
    with pytest.raises(ConfigError, match="unknown config key 'tiling.nope'"):
        load_config("tiny", {"tiling.nope": 1})


@pytest.mark.parametrize(
    "overrides,message",
    [
        # NaN passes every range comparison: these were accepted and turned the cache or guidance off.
        (["cache.region.change_threshold=nan"], r"'cache.region.change_threshold' is nan; it must be a finite number in \[0.0, inf\)"),
        (["sketch.guidance_scale=nan"], "'sketch.guidance_scale' is nan; it must be a finite number"),
        (["refine.strength=nan"], r"'refine.strength' is nan; it must be a finite number in \(0.0, 1.0\]"),
        (["output.fps=1000"], r"'output.fps' is 1000; it must lie in \[1, 240\]"),
        (["tiling.tile_height=-16", "tiling.tile_width=64"], r"'tiling.tile_height' is -16; it must lie in \(0, inf\)"),
        (["tiling=[1,2]"], r"config key 'tiling' is \[1, 2\]; it is a section: give it keys \(mode, tile_height"),
    ],
)
def test_values_outside_their_range_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", overrides)


def test_yaml_sections_and_yaml_booleans(tmp_path):
    """``tiling: [1, 2]`` is one line naming the key (it was an AttributeError inside config.py);
    ``vae: {tiling: off}`` means "off" (YAML 1.1 reads it as false, which was refused as 'False')."""
    listed = tmp_path / "listed.yaml"
    listed.write_text("tiling: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"config key 'tiling' is \[1, 2\]; it is a section: give it keys"):
        load_config(str(listed))
    switched = tmp_path / "switched.yaml"
    switched.write_text("vae: {tiling: off}\ncache:\n  region:\n")
    assert load_config(str(switched)).vae.tiling == "off"
    switched.write_text("vae:\n  tiling: on\n")
    assert load_config(str(switched)).vae.tiling == "on"
    assert load_config({"vae": {"tiling": False}}).vae.tiling == "off"


def test_a_row_rebuilds_only_the_sections_it_changes(monkeypatch):
    """A batch row sets a few ``job`` keys: only that section goes through omegaconf's (slow) typed
    nodes, so validating a 1,000-row file no longer takes most of a minute."""
    from omegaconf import OmegaConf

    base = load_config("tiny")
    built = []
    structured = OmegaConf.structured
    monkeypatch.setattr(OmegaConf, "structured", lambda obj, *a, **k: built.append(type(obj).__name__) or structured(obj, *a, **k))
    cfg = load_config(base, {"job.prompt": "a blue car", "job.seed": "7"})
    assert built == ["JobConfig"]
    assert (cfg.job.prompt, cfg.job.seed) == ("a blue car", 7) and cfg.tiling == base.tiling and cfg.tiling is not base.tiling
