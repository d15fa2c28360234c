"""The memory check: a render the planner says cannot fit is refused before anything loads."""

import logging
import os

import pytest
import torch

from supergen import runtime
from supergen.config import load_config
from supergen.errors import SuperGenError
from supergen.cost import architecture, estimate, fit

CPU = torch.device("cpu")


def cpu_plan(cfg):
    """The plan the check makes on the CPU: the encoders cannot be parked off a device that is the host."""
    return estimate(load_config(cfg, ["encoders.park=false"]), architecture(cfg.model.name))


def need(cfg):
    return cpu_plan(cfg).peak


def test_a_render_that_does_not_fit_is_refused_with_what_would_fit(monkeypatch):
    cfg = load_config("tiny", ["job.height=512", "job.width=512", "job.num_frames=81"])
    smaller = load_config("tiny", ["job.height=512", "job.width=512", "job.num_frames=41"])
    monkeypatch.setattr(fit, "available_memory", lambda device: need(smaller))
    with pytest.raises(SuperGenError) as err:
        runtime.check_memory(cfg, CPU)
    message = str(err.value)
    assert message.startswith("512x512x81 (height x width x frames) needs about ")
    assert "--no-memory-check" in message
    frames = int(message.split("It fits with --num-frames ")[1].split(";")[0])
    assert 21 <= frames <= 41 and (frames - 1) % 4 == 0  # a count the VAE takes, near the best one
    assert need(load_config(cfg, [f"job.num_frames={frames}"])) <= need(smaller)  # and it does fit
    runtime.check_memory(smaller, CPU)  # exactly fits
    runtime.check_memory(load_config(cfg, ["model.memory_check=false"]), CPU)  # the user goes on anyway


def test_resident_weights_count_as_available_once_loaded(monkeypatch):
    cfg = load_config("tiny", ["job.height=256", "job.width=256", "job.num_frames=9"])
    plan = cpu_plan(cfg)
    monkeypatch.setattr(fit, "available_memory", lambda device: plan.peak - plan.weights)
    with pytest.raises(SuperGenError):
        runtime.check_memory(cfg, CPU)
    runtime.check_memory(cfg, CPU, loaded=True)


def test_offloading_counts_only_the_largest_component():
    plan = estimate(load_config("tiny"), architecture("tiny"))
    weights = [plan.memory[f"weights.{k}"] for k in plan.parameters]
    assert fit.device_need(plan, "none")[0] == sum(weights)
    assert fit.device_need(plan, "model")[0] == max(weights)
    assert fit.device_need(plan, "sequential")[0] == 0
    # Under offload hooks nothing is parked: the largest transient of any stage stays on the device.
    assert fit.device_need(plan, "group")[1] == max(plan.memory[f"stage.{s}"] for s in ("sketch", "upscale", "refine", "decode"))


def test_a_model_the_planner_does_not_know_is_not_checked(caplog, tmp_path):
    cfg = load_config("tiny", [f"model.name={tmp_path}", "job.num_frames=100000"])
    with caplog.at_level(logging.INFO, logger="supergen"):
        runtime.check_memory(cfg, CPU)
    assert "pre-load checks skipped: " in caplog.text


def test_available_memory_on_cpu_is_the_hosts():
    assert 0 < fit.available_memory(CPU) <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_a_block_cache_that_cannot_fit_is_refused_with_its_estimate(monkeypatch):
    from supergen.cache.block import block_cache_bytes

    cfg = load_config("wan2.1-t2v-1.3b-4k", ["cache.enabled=true", "cache.block.enabled=true"])
    plan = estimate(cfg, architecture(cfg.model.name))
    # 30 blocks x 2 branches x (inputs, residuals) of 21 x 135 x 240 tokens of width 1536, in bf16.
    assert plan.memory["block_cache"] == block_cache_bytes((21, 135, 240), 1536, 30, 2, 2) == 251_190_072_000
    assert plan.memory["stage.refine"] > plan.memory["block_cache"]
    monkeypatch.setattr(fit, "available_memory", lambda device: 80 * 2**30)
    with pytest.raises(SuperGenError) as err:
        runtime.check_memory(cfg, torch.device("cuda"))
    assert "for the refine stage" in str(err.value)
    assert "cache.block.enabled=false (its state is 233.94 GiB)" in str(err.value)
    runtime.check_memory(load_config(cfg, ["cache.block.enabled=false"]), torch.device("cuda"))


def test_without_the_memory_check_a_bad_size_is_still_refused_before_the_load():
    """``--no-memory-check`` skips the fit, not the plan: a position-table overflow is one line before any load."""
    cfg = load_config("tiny", ["model.memory_check=false", "job.num_frames=100000"])
    with pytest.raises(SuperGenError, match="rotary position table"):
        runtime.check_memory(cfg, CPU)
