"""The families' specs (supergen.families) against diffusers: the size rules a spec computes from a
model's configs are the ones each diffusers pipeline derives from its modules, for every family and
its image-to-video variant; an Architecture answers from its spec without building an adapter."""

from __future__ import annotations

import pytest

from supergen.adapters import ModelAdapter, adapter_for
from supergen.builtin import tiny_wan_pipeline
from supergen.cost import KNOWN, Architecture
from supergen.families import FAMILIES, family_of

from test_families import tiny_cogvideox, tiny_hunyuan, tiny_ltx

PIPELINES = {
    "wan": lambda: tiny_wan_pipeline(),
    "wan-i2v": lambda: tiny_wan_pipeline(image_to_video=True),
    "cogvideox": lambda: tiny_cogvideox(False),
    "cogvideox-i2v": lambda: tiny_cogvideox(True),
    "hunyuan": lambda: tiny_hunyuan(None),
    "hunyuan-latent_concat": lambda: tiny_hunyuan("latent_concat"),
    "hunyuan-token_replace": lambda: tiny_hunyuan("token_replace"),
    "ltx": lambda: tiny_ltx(False),
    "ltx-i2v": lambda: tiny_ltx(True),
}


def pipeline_rules(pipe) -> tuple:
    """``(vae_scale, patch)`` as the diffusers pipeline itself states them (its own attributes)."""
    if hasattr(pipe, "vae_scale_factor_spatial"):
        s, t = pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal
        cfg = pipe.transformer.config
        patch = tuple(cfg.patch_size) if isinstance(cfg.patch_size, (tuple, list)) else (cfg.patch_size_t, cfg.patch_size, cfg.patch_size)
    else:  # LTX names them differently
        s, t = pipe.vae_spatial_compression_ratio, pipe.vae_temporal_compression_ratio
        patch = (pipe.transformer_temporal_patch_size, pipe.transformer_spatial_patch_size, pipe.transformer_spatial_patch_size)
    return (t, s, s), patch


@pytest.mark.parametrize("name", PIPELINES)
def test_spec_rules_are_the_pipelines_own(name):
    pipe = PIPELINES[name]()
    adapter = adapter_for(pipe)
    assert (adapter.vae_scale, adapter.patch) == pipeline_rules(pipe)
    assert adapter.requires_image == name.endswith(("i2v", "latent_concat", "token_replace"))
    assert adapter.spec is family_of(type(pipe).__name__)
    # The architecture of the loaded pipeline answers the same from its configs alone.
    arch = Architecture.from_pipeline(pipe)
    assert arch.rules == adapter.rules and arch.vae_tile == adapter.vae_tile
    assert [arch.latent_shape(n, 64, 96) for n in (1, 9, 17)] == [adapter.latent_shape(n, 64, 96) for n in (1, 9, 17)]


def test_known_architectures_build_no_adapter(monkeypatch):
    built = []
    original = ModelAdapter.__init__
    monkeypatch.setattr(ModelAdapter, "__init__", lambda self, pipe: (built.append(type(self).__name__), original(self, pipe)))
    for arch in KNOWN.values():
        arch = Architecture(**{f: getattr(arch, f) for f in arch.__dataclass_fields__})  # no cached rules
        assert arch.pixel_multiple > 0 and arch.vae_tile and arch.vae_channels > 0
    assert built == []
    assert {arch.spec.name for arch in KNOWN.values()} == {family.name for family in FAMILIES}


def test_an_unsupported_pipeline_is_named_with_the_supported_ones():
    with pytest.raises(Exception, match="FluxPipeline is not supported; supported diffusers pipelines: WanPipeline"):
        family_of("FluxPipeline")
