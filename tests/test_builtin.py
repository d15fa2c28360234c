"""The preset a model brings: built-in models their own, a local diffusers folder the one its configs match."""

import json

import pytest

from supergen import SuperGenError, SuperGenPipeline
from supergen.builtin import model_preset, tiny_wan_pipeline
from supergen.cli import build_parser, config_from_args
from supergen.config import load_config


@pytest.mark.parametrize("model,preset", [("toy", "toy"), ("tiny", "tiny"), ("tiny-i2v", "tiny")])
def test_a_built_in_model_brings_its_preset(model, preset):
    sg = SuperGenPipeline.from_pretrained(model)
    assert sg.config == load_config(preset)
    # Explicit settings still win.
    assert SuperGenPipeline.from_pretrained(model, config="tiny", sketch={"height": 64}).config.sketch.height == 64


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "my-wan-folder"
    tiny_wan_pipeline().save_pretrained(folder)
    return folder


def test_a_local_folder_gets_the_preset_its_configs_match(tiny_folder, capsys):
    preset, how = model_preset(str(tiny_folder))
    assert preset == "tiny"
    assert how == f"{tiny_folder} is tiny (WanPipeline, its transformer's config): preset tiny"
    args = build_parser().parse_args(["render", "--model", str(tiny_folder), "--prompt", "a car"])
    cfg = config_from_args(args)  # was "no preset is made for --model ..."
    assert cfg.sketch == load_config("tiny").sketch and cfg.model.name == str(tiny_folder)
    assert f"supergen: {how}" in capsys.readouterr().err
    assert SuperGenPipeline.from_pretrained(str(tiny_folder)).config == load_config("tiny")


def test_a_folder_of_a_size_no_preset_is_made_for_gets_its_familys(tiny_folder, tmp_path):
    (tmp_path / "transformer").mkdir()
    (tmp_path / "model_index.json").write_text((tiny_folder / "model_index.json").read_text())
    config = json.loads((tiny_folder / "transformer" / "config.json").read_text())
    (tmp_path / "transformer" / "config.json").write_text(json.dumps(config | {"num_layers": 3}))
    preset, how = model_preset(str(tmp_path))
    assert preset == "wan2.1-t2v-1.3b-2k"
    assert how == f"{tmp_path}: WanPipeline of a size no preset is made for: the family's preset wan2.1-t2v-1.3b-2k"
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "LTXPipeline"}))
    assert model_preset(str(tmp_path)) == (None, f"{tmp_path}: LTXPipeline, for which no preset is made: supergen's default settings")


def test_a_folder_that_is_not_a_diffusers_model_is_refused(tmp_path):
    with pytest.raises(SuperGenError, match="without model_index.json and transformer/config.json"):
        model_preset(str(tmp_path))


def test_an_unknown_hub_id_is_refused_by_the_cli():
    args = build_parser().parse_args(["render", "--model", "someone/some-model", "--prompt", "a car"])
    with pytest.raises(SuperGenError, match="no preset is made for --model 'someone/some-model'"):
        config_from_args(args)
