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


# ---- the cache's sections (issue 29 item 6): one threshold per technique, old keys moved ----------

NEW_CACHE_KEYS = {
    "region": "cache.region.change_threshold",
    "teacache": "cache.teacache.rel_l1_threshold",
    "fbc": "cache.fbc.threshold",
    "magcache": "cache.magcache.threshold",
}


def _deprecations(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]


@pytest.mark.parametrize("policy,new", NEW_CACHE_KEYS.items())
def test_cache_threshold_moves_to_the_policys_own_key(caplog, policy, new):
    """``cache.threshold`` was four quantities; it now lands on the one the chosen technique reads,
    from every way a config is written, with one line naming the new key."""
    import operator

    value = operator.attrgetter(new)
    forms = [
        lambda: load_config("tiny", [f"cache.policy={policy}", "cache.threshold=0.4"]),
        lambda: load_config("tiny", {"cache.policy": policy, "cache.threshold": 0.4}),
        lambda: load_config({"cache": {"policy": policy, "threshold": 0.4}}),
        lambda: load_config(load_config("tiny", [f"cache.policy={policy}"]), ["cache.threshold=0.4"]),
    ]
    for build in forms:
        caplog.clear()
        with caplog.at_level("WARNING", logger="supergen"):
            cfg = build()
        assert value(cfg) == 0.4 and cfg == load_config(cfg, [f"{new}=0.4"])
        assert _deprecations(caplog) == [f"config key 'cache.threshold' is deprecated: with cache.policy={policy} it is now {new!r}"]
    # Every other technique's threshold keeps its default.
    cfg = load_config("tiny", [f"cache.policy={policy}", "cache.threshold=0.4"])
    assert [value(cfg) for value in map(operator.attrgetter, set(NEW_CACHE_KEYS.values()) - {new})] == [0.03] * 3


def test_other_old_cache_keys_and_the_policy_of_a_later_layer(tmp_path, caplog):
    """An old key in a preset moves to the technique the config ends with, whichever layer chose it."""
    preset = tmp_path / "old.yaml"
    preset.write_text("cache:\n  enabled: true\n  threshold: 0.2\n  fraction: 0.5\n")
    with pytest.raises(ConfigError, match="'cache.fraction' means nothing with cache.policy=region"):
        load_config(str(preset))
    preset.write_text("cache:\n  enabled: true\n  threshold: 0.2\n  mag_ratios: [1.0, 0.9]\n  block: {threshold: 0.1}\n")
    caplog.clear()
    with caplog.at_level("WARNING", logger="supergen"):
        cfg = load_config(str(preset), ["cache.policy=magcache"])
    assert (cfg.cache.magcache.threshold, cfg.cache.magcache.mag_ratios, cfg.cache.block.input_threshold) == (0.2, [1.0, 0.9], 0.1)
    assert cfg.cache.region.change_threshold == 0.03
    assert len(_deprecations(caplog)) == 3 and "'cache.block.input_threshold'" in _deprecations(caplog)[-1]
    # A later layer's new key wins over an earlier layer's old one, as any later layer does.
    preset.write_text("cache:\n  threshold: 0.2\n")
    assert load_config(str(preset), ["cache.region.change_threshold=0.5"]).cache.region.change_threshold == 0.5
    assert load_config(str(preset), ["cache.policy=fbc"]).cache.fbc.threshold == 0.2
    preset.write_text("cache:\n  policy: steps\n  fraction: 0.4\n")
    assert load_config(str(preset)).cache.steps.fraction == 0.4


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["cache.policy=steps", "cache.threshold=0.1"],
         r"^config key 'cache.threshold' means nothing with cache.policy=steps; it was the setting now named "
         r"cache.region.change_threshold \(cache.policy=region\), cache.teacache.rel_l1_threshold \(cache.policy=teacache\), "
         r"cache.fbc.threshold \(cache.policy=fbc\), cache.magcache.threshold \(cache.policy=magcache\)$"),
        (["cache.policy=none", "cache.threshold=0.1"], "'cache.threshold' means nothing with cache.policy=none"),
        (["cache.fraction=0.5"], r"'cache.fraction' means nothing with cache.policy=region; .* cache.steps.fraction \(cache.policy=steps\)$"),
        (["cache.policy=fbc", "cache.mag_ratios=[1.0,0.9]"], "'cache.mag_ratios' means nothing with cache.policy=fbc"),
        (["cache.policy=pab", "cache.threshold=0.1"], "config key 'cache.policy' is 'pab'; valid choices: region, none, steps"),
        (["cache.threshold=0.1", "cache.region.change_threshold=0.2"],
         "config keys 'cache.threshold' and 'cache.region.change_threshold' are one setting .*; give only 'cache.region.change_threshold'"),
        (["cache.teacache.rel_l1_threshold=-1"], r"'cache.teacache.rel_l1_threshold' is -1.0; it must lie in \[0.0, inf\)"),
        (["cache.steps.fraction=1.5"], r"'cache.steps.fraction' is 1.5; it must lie in \[0.0, 1.0\]"),
        (["cache.fbc.threshold=nan"], "'cache.fbc.threshold' is nan; it must be a finite number"),
        (["cache.magcache.mag_ratios=[1.0]"], r"'cache.magcache.mag_ratios' is \[1.0\]; it needs one ratio per refinement step"),
        (["cache.teacache.coefficients=[1.0,nan]"], "'cache.teacache.coefficients' is .*; it must be a finite number"),
        (["cache.threshold=-1"], r"'cache.region.change_threshold' is -1.0; it must lie in \[0.0, inf\)"),
        (["cache.region.threshold=0.1"],
         "unknown config key 'cache.region.threshold'; valid keys in section 'cache.region': change_threshold, strength"),
        (["cache.fbc.rel_l1_threshold=0.1"], "unknown config key 'cache.fbc.rel_l1_threshold'; valid keys in section 'cache.fbc': threshold$"),
    ],
)
def test_bad_cache_settings_are_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config("tiny", overrides)
    assert "\n" not in str(error.value)


def test_each_default_is_written_once():
    """The runtime settings of each technique take their defaults from the config and build from its
    section: a config at its defaults and a runtime config at its defaults are the same settings."""
    from supergen.cache import BlockCacheConfig, RegionCacheConfig, StepSkipConfig, TeaCacheConfig
    from supergen.config import CacheConfig

    cache = CacheConfig()
    assert RegionCacheConfig.from_config(cache) == RegionCacheConfig()
    assert StepSkipConfig.from_config(cache) == StepSkipConfig()
    assert TeaCacheConfig.from_config(cache) == TeaCacheConfig()
    assert BlockCacheConfig.from_config(cache, (3, 8, 16), (1, 2, 2)) == BlockCacheConfig((3, 8, 16), (1, 2, 2))
    changed = load_config("tiny", ["cache.region.change_threshold=0.4", "cache.region.cost=0", "cache.max_consecutive=5",
                                   "cache.steps.fraction=0.3", "cache.teacache.coefficients=[2.0,0.5]", "cache.block.input_threshold=0.2"]).cache
    assert RegionCacheConfig.from_config(changed) == RegionCacheConfig(threshold=0.4, max_consecutive=5, cost=0.0)
    assert StepSkipConfig.from_config(changed) == StepSkipConfig(fraction=0.3)
    assert TeaCacheConfig.from_config(changed) == TeaCacheConfig(max_consecutive=5, coefficients=(2.0, 0.5))
    assert BlockCacheConfig.from_config(changed, (3, 8, 16), (1, 2, 2)).threshold == 0.2


def test_moved_cache_keys_keep_batch_fingerprints():
    """A batch folder rendered before the cache's sections resumes: a job whose effective settings did
    not change keeps its fingerprint (the values are the fingerprints computed before the move), under
    old keys and new ones alike."""
    from supergen.jobs import Job

    row = {"prompt": "a red car", "seed": 1}
    before = {
        "0d0ad3f25ef0cf6a": (["cache.enabled=true", "cache.threshold=0.5", "cache.block.enabled=true", "cache.block.threshold=0.1", "cache.region.cost=0"],
                             ["cache.enabled=true", "cache.region.change_threshold=0.5", "cache.block.enabled=true", "cache.block.input_threshold=0.1",
                              "cache.region.cost=0"]),
        "d7fd7a96dcd95770": (["cache.enabled=true", "cache.policy=teacache", "cache.threshold=0.2"],
                             ["cache.enabled=true", "cache.policy=teacache", "cache.teacache.rel_l1_threshold=0.2"]),
        "619368998e57eade": (["cache.enabled=true", "cache.policy=fbc", "cache.threshold=0.3"],
                             ["cache.enabled=true", "cache.policy=fbc", "cache.fbc.threshold=0.3"]),
        "d79af76eaa47d634": (["cache.enabled=true", "cache.policy=magcache", "cache.threshold=0.1", "cache.mag_ratios=[1.0,0.9,0.8]"],
                             ["cache.enabled=true", "cache.policy=magcache", "cache.magcache.threshold=0.1", "cache.magcache.mag_ratios=[1.0,0.9,0.8]"]),
        "9cf65bd974186e9a": (["cache.enabled=true", "cache.policy=steps", "cache.fraction=0.5"],
                             ["cache.enabled=true", "cache.policy=steps", "cache.steps.fraction=0.5"]),
        "af7795b449cea771": (["cache.enabled=true"], ["cache.enabled=true"]),
    }
    for fingerprint, (old, new) in before.items():
        assert Job(1, row, load_config("tiny", old), "a").fingerprint == fingerprint, old
        assert Job(1, row, load_config("tiny", new), "a").fingerprint == fingerprint, new
    # A setting that changes the video still changes the fingerprint.
    assert Job(1, row, load_config("tiny", ["cache.enabled=true", "cache.region.change_threshold=0.6"]), "a").fingerprint != "af7795b449cea771"
