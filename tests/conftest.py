"""Shared fixtures: tiny random diffusers pipelines built in code (no download)."""

import pytest
import torch

from supergen.builtin import tiny_wan_pipeline

from ranks import single_thread

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny matmuls: on a shared 2-core machine one thread is ~30x
    faster than two fighting for the cores."""
    with single_thread():
        yield


@pytest.fixture(scope="session")
def wan_t2v():
    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def wan_i2v():
    pipe = tiny_wan_pipeline(image_to_video=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def image():
    """A 64×112 RGB test image with structure (gradients and a block)."""
    from PIL import Image

    y, x = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 112), indexing="ij")
    rgb = torch.stack([x, y, 1 - x], dim=-1)
    rgb[20:40, 30:60] = torch.tensor([1.0, 0.1, 0.1])
    return Image.fromarray((rgb * 255).byte().numpy())
