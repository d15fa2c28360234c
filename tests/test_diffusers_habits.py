"""What a diffusers user types works on SuperGenPipeline too, or fails with one clear error."""

import numpy as np
import pytest
import torch

from supergen import SuperGenError, SuperGenPipeline

SMALL = dict(sketch={"height": 32, "width": 64, "num_inference_steps": 2}, refine={"num_inference_steps": 4, "strength": 0.5})
SIZE = dict(height=32, width=64, num_frames=5)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def sg():
    from supergen.builtin import tiny_wan_pipeline

    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return SuperGenPipeline.from_pipe(pipe, "tiny", **SMALL)


def render(sg, **kwargs):
    return sg(**{"prompt": "a red car", **SIZE, "generator": gen(0), "output_type": "latent", **kwargs}).frames


def test_numpy_sizes_and_a_list_of_one_generator_render_the_same_video(sg):
    reference = render(sg)
    same = render(sg, height=np.int64(32), width=np.int32(64), num_frames=np.int16(5), num_inference_steps=np.int64(4),
                  generator=[gen(0)])
    assert torch.equal(reference, same)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(height="32"), "height='32': must be an integer, got str"),
        (dict(width=64.0), "width=64.0: must be an integer, got float"),
        (dict(num_inference_steps=0), "num_inference_steps=0: must be a positive integer"),
        (dict(num_videos_per_prompt=2), "num_videos_per_prompt=2: supergen renders one video per call"),
        (dict(generator=[gen(0), gen(1)]), "2 generators: one video per call takes one"),
        (dict(attention_kwargs={"scale": 0.5}), "attention_kwargs={'scale': 0.5}"),
    ],
)
def test_what_does_not_apply_is_one_clear_error(sg, kwargs, message):
    with pytest.raises(SuperGenError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("{", r"\{").replace("}", r"\}").replace("+", r"\+").replace(".", r"\.")):
        render(sg, **kwargs)


def test_guidance_scale_sets_both_stages(sg):
    plain = SuperGenPipeline.from_pipe(sg.pipe, "tiny", sketch={**SMALL["sketch"], "guidance_scale": 1.0},
                                       refine={**SMALL["refine"], "guidance_scale": 1.0})
    assert torch.equal(render(sg, guidance_scale=1.0), render(plain))
    assert not torch.equal(render(sg, guidance_scale=1.0), render(sg))


def test_prompt_embeds_render_what_the_prompt_renders(sg):
    with torch.no_grad():  # as the render encodes (autograd's kernels differ in the last bit)
        embeds, negative = sg.pipe.encode_prompt("a red car", "", do_classifier_free_guidance=True, max_sequence_length=512)
    assert torch.equal(render(sg, prompt="", prompt_embeds=embeds, negative_prompt_embeds=negative), render(sg))
    # The tiny model's tokenizer is per character: 8 tokens see only the start of either prompt.
    short = render(sg, prompt="a red car " * 20, max_sequence_length=8)
    assert torch.equal(short, render(sg, prompt="a red car, fast", max_sequence_length=8))
    assert not torch.equal(short, render(sg, prompt="a red car, fast"))


def test_sketch_steps_reach_their_own_callback(sg):
    seen = []
    render(sg, callback_on_sketch_step_end=lambda pipe, step, t, tensors: seen.append(("sketch", step)) or {},
           callback_on_step_end=lambda pipe, step, t, tensors: seen.append(("refine", step)) or {})
    assert seen == [("sketch", 0), ("sketch", 1), ("refine", 0), ("refine", 1)]


def test_the_wrapper_forwards_placement_and_helpers(sg):
    assert sg.to("cpu") is sg and sg.device == sg.pipe.device == torch.device("cpu")
    assert sg.enable_model_cpu_offload.__self__ is sg.pipe
    sg.set_progress_bar_config(disable=True)
    with pytest.raises(AttributeError, match="has no attribute 'vae'"):
        sg.vae  # noqa: B018 - not forwarded: the wrapper does not silently expose the whole pipeline


def test_from_pretrained_takes_diffusers_loading_options_and_builtin_names(tmp_path):
    from supergen.builtin import tiny_wan_pipeline

    tiny_wan_pipeline().save_pretrained(tmp_path / "model")
    sg = SuperGenPipeline.from_pretrained(str(tmp_path / "model"), torch_dtype=torch.bfloat16, local_files_only=True,
                                          tiling={"mode": "overlap"})
    assert sg.pipe.transformer.dtype == torch.bfloat16 and sg.config.tiling.mode == "overlap"
    with pytest.raises(SuperGenError, match="could not load model .*fp16"):
        SuperGenPipeline.from_pretrained(str(tmp_path / "model"), variant="fp16")
    assert type(SuperGenPipeline.from_pretrained("tiny").pipe).__name__ == "WanPipeline"
    with pytest.raises(SuperGenError, match="'tiny' is built in code: loading options \\(revision\\) do not apply"):
        SuperGenPipeline.from_pretrained("tiny", revision="main")
