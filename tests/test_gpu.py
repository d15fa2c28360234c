"""Checks that need a CUDA GPU (``pytest -m gpu``; run by ``scripts/gpu_check.sh``).

Skipped, with the reason "needs a CUDA GPU", everywhere else. What CPU tests cannot see: the
Triton kernel compiled for the GPU at the real Wan head dim in bf16/fp16 (CPU tests run it in
Triton's interpreter on tiny shapes), FlexAttention compiled by inductor for the GPU, offsets
past 2**31 elements on real tensors, and the whole pipeline on CUDA.

The GPU kit runs the kernel tests first (scripts/gpu_check.sh, ``KERNEL_TESTS``), the rest later.
"""

from __future__ import annotations

import pytest
import torch

from supergen_kernels import LayoutCycle, TileLayout, tile_attention

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# A 2K Wan canvas (1440x2560 px: 16 px per token side, 90x160 tokens; native 720x1280 tiles of
# 45x80), one latent frame: N = 14,400 tokens, as many as the dense reference takes (its mask,
# 207 M elements, is under the 2**28 limit).
CANVAS, TILE, HALO = (1, 90, 160), (45, 80), 8
CYCLES = {b: LayoutCycle(CANVAS, TILE, HALO, boundary=b) for b in ("clamp", "wrap")}
LAYOUTS = {
    "fixed": TileLayout(CANVAS, TILE, HALO),
    # shifted grids (stride 3x5 tokens per step): the first move, and one well into the cycle
    "clamp-step1": CYCLES["clamp"][1],
    "clamp-step7": CYCLES["clamp"][7],
    "wrap-step1": CYCLES["wrap"][1],  # windows wrap around both canvas edges
    "wrap-step7": CYCLES["wrap"][7],
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_triton_matches_reference_at_wan_head_dim(name, dtype):
    """Against an fp32 reference, the kernel's error is at most about what SDPA in the same
    low precision makes: the rounding of bf16/fp16 inputs, nothing more."""
    layout = LAYOUTS[name]
    gen = torch.Generator("cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 4, layout.seq_len, 128, device="cuda", generator=gen) for _ in range(3))
    truth = tile_attention(q, k, v, layout, backend="reference")
    low = [t.to(dtype) for t in (q, k, v)]
    out = tile_attention(*low, layout, backend="triton")
    yardstick = (tile_attention(*low, layout, backend="reference").float() - truth).abs().max()
    err = (out.float() - truth).abs().max()
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert err <= 2 * yardstick + 1e-3, f"{name} {dtype}: triton error {err:.2e}, SDPA's {yardstick:.2e}"


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_flex_matches_reference_at_wan_head_dim(name):
    """Compiled FlexAttention (inductor's GPU kernel, which trusts the BlockMask's full-block lists)
    in bf16 against an fp32 reference: within twice what SDPA in bf16 makes. Every layout here has
    one shape, so all of them run on one compiled kernel."""
    layout = LAYOUTS[name]
    gen = torch.Generator("cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 4, layout.seq_len, 128, device="cuda", generator=gen) for _ in range(3))
    truth = tile_attention(q, k, v, layout, backend="reference")
    low = [t.to(torch.bfloat16) for t in (q, k, v)]
    out = tile_attention(*low, layout, backend="flex")
    yardstick = (tile_attention(*low, layout, backend="reference").float() - truth).abs().max()
    err = (out.float() - truth).abs().max()
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert err <= 2 * yardstick + 1e-3, f"{name}: flex error {err:.2e}, SDPA's {yardstick:.2e}"


def test_flex_compiles_once_per_shape_on_cuda():
    """A whole shift cycle of a 2K-wide canvas (one latent frame, 240 grid offsets) on compiled
    FlexAttention adds one graph. A recompile per offset would add graphs up to dynamo's limit (8)
    and run the rest eagerly, densely; the outputs checked are their own offsets' layouts'."""
    from supergen.compat import dynamo_counters

    cycle = LayoutCycle((1, 90, 150), TILE, HALO)  # a shape no other test compiles
    gen = torch.Generator("cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 4, cycle[0].seq_len, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
               for _ in range(3))
    before = dynamo_counters["stats"]["unique_graphs"]
    outs = [tile_attention(q, k, v, cycle[step], backend="flex") for step in range(cycle.num_offsets)]
    assert cycle.num_offsets > 8 and dynamo_counters["stats"]["unique_graphs"] - before == 1
    for step in (1, cycle.num_offsets - 1):
        ref = tile_attention(q.float(), k.float(), v.float(), cycle[step], backend="reference")
        assert (outs[step].float() - ref).abs().max() < 2e-2, f"offset {cycle.offset(step)}"


def test_triton_addresses_past_2_31_elements():
    """Wan-14B heads at 4K x 81 frames (21 x 135 x 240 tokens, 40 heads x 128) in diffusers'
    (batch, seq, heads, head_dim) order, seen as (batch, heads, seq, head_dim): each tensor
    spans 3.5e9 elements, so int32 offsets would wrap. Tile-local (halo 0) in tile-major order
    is one SDPA per tile's contiguous run, the reference at this size."""
    layout = TileLayout((21, 135, 240), (45, 80), halo=0)
    n, heads, dim = layout.seq_len, 40, 128
    assert n * heads * dim > 2**31
    if torch.cuda.mem_get_info()[0] < 5 * n * heads * dim * 2:
        pytest.skip("needs about 35 GB of free GPU memory")
    gen = torch.Generator("cuda").manual_seed(0)
    q, k, v = (
        torch.randn(1, n, heads, dim, device="cuda", dtype=torch.bfloat16, generator=gen).transpose(1, 2)
        for _ in range(3)
    )
    out = tile_attention(q, k, v, layout, backend="triton")
    offsets = layout.tile_offsets()
    for a, b in zip(offsets, offsets[1:]):
        expected = torch.nn.functional.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b])
        err = (out[:, :, a:b].float() - expected.float()).abs().max()
        assert err < 2e-2, f"tile at tokens {a}..{b}: max abs error {err:.2e}"


@pytest.mark.parametrize(
    "cpu_overrides,gpu_overrides",
    [
        ({}, {}),
        # The attention mode: the sparse reference on CPU, the Triton kernel on CUDA.
        ({"tiling": {"mode": "attention", "halo": 16}, "attention": {"backend": "sdpa"}},
         {"tiling": {"mode": "attention", "halo": 16}, "attention": {"backend": "triton"}}),
    ],
    ids=["shift-tiles", "attention-mode-triton"],
)
def test_tiny_render_on_cuda_equals_cpu(cpu_overrides, gpu_overrides):
    """Same seed, same tiny random pipeline: the canvas latent rendered on CUDA equals the CPU
    one up to float32 kernel differences (TF32 off, so no reduced-precision matmuls)."""
    from supergen.builtin import tiny_wan_pipeline
    from supergen.pipeline import SuperGenPipeline

    small = dict(sketch={"height": 32, "width": 64, "num_inference_steps": 2},
                 refine={"num_inference_steps": 4, "strength": 0.5})
    call = dict(prompt="a red car", height=64, width=128, num_frames=5, output_type="latent")
    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    cpu = SuperGenPipeline.from_pipe(pipe, "tiny", **small, **cpu_overrides)(
        **call, generator=torch.Generator().manual_seed(0)).frames
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        pipe.to("cuda")
        gpu = SuperGenPipeline.from_pipe(pipe, "tiny", **small, **gpu_overrides)(
            **call, generator=torch.Generator().manual_seed(0)).frames
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    assert gpu.is_cuda and gpu.shape == cpu.shape
    err = float((gpu.cpu() - cpu).abs().max())
    assert err <= 1e-3 * max(1.0, float(cpu.abs().max())), f"CUDA vs CPU max abs difference {err:.2e}"


def test_traced_transformer_peak_matches_cuda_within_10_percent():
    """A random-weight Wan2.1-1.3B forward on one 480x832x81 tile (a refinement tile of the 2K
    preset): the live-memory peak the fake-tensor trace reports vs ``torch.cuda.max_memory_allocated``."""
    from diffusers import WanTransformer3DModel

    from supergen.compat import FakeTensorMode
    from supergen.cost import KNOWN
    from supergen.architectures import default_dtype
    from supergen.trace import MemoryTrace

    config = KNOWN["Wan2.1-1.3B"].transformer
    shape, text = (1, 16, 21, 60, 104), (1, 512, 4096)

    def forward(model, device):
        x = torch.zeros(shape, dtype=torch.bfloat16, device=device)
        return model(hidden_states=x, timestep=torch.tensor([500.0], device=device),
                     encoder_hidden_states=torch.zeros(text, dtype=torch.bfloat16, device=device), return_dict=False)[0]

    with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
        with default_dtype(torch.bfloat16):
            fake = WanTransformer3DModel.from_config(config).eval()
        with MemoryTrace(resident=0) as memory:
            forward(fake, "cpu")
    traced = memory.stages["setup"].peak
    model = WanTransformer3DModel.from_config(config).to("cuda", torch.bfloat16).eval()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        forward(model, "cuda")
    torch.cuda.synchronize()
    real = torch.cuda.max_memory_allocated() - base
    assert abs(traced - real) <= 0.10 * real, f"traced {traced / 2**30:.2f} GiB, CUDA {real / 2**30:.2f} GiB"


def _tiny_i2v_on_cuda(offload: str, park: bool = True):
    """The tiny Wan I2V of tests/test_offload.py placed on CUDA under ``offload``, and its render (frames)."""
    from supergen.builtin import tiny_wan_pipeline
    from supergen.config import load_config
    from supergen.pipeline import SuperGenPipeline
    from supergen.runtime import place
    from test_image_condition import METHOD, VAE_TILES, make_image

    pipe = tiny_wan_pipeline(image_to_video=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.vae.enable_tiling(**VAE_TILES)
    sg = SuperGenPipeline(place(pipe, offload, torch.device("cuda")), load_config("tiny", METHOD + ["vae.tiling=on", f"encoders.park={str(park).lower()}"]))
    seen = {}

    def during_refinement(p, step, t, tensors):
        seen.setdefault("text_encoder", next(pipe.text_encoder.parameters()).device.type)
        return {}

    frames = sg(prompt="a red block", image=make_image(), height=64, width=128, num_frames=5, generator=torch.Generator().manual_seed(3),
                output_type="pt", callback_on_step_end=during_refinement).frames
    return pipe, frames.cpu(), seen


@pytest.mark.parametrize("offload", ["model", "sequential", "group"])
def test_offloaded_renders_on_cuda_equal_the_plain_one(offload):
    """The VAE's inputs go to the execution device (CUDA), not to ``vae.device`` (the CPU under model
    offload, ``meta`` under sequential offload)."""
    _, plain, _ = _tiny_i2v_on_cuda("none")
    _, offloaded, _ = _tiny_i2v_on_cuda(offload)
    torch.testing.assert_close(offloaded, plain, atol=1e-5, rtol=0)


def test_encoders_are_parked_on_the_host_during_the_canvas_stages_and_come_back():
    pipe, parked, seen = _tiny_i2v_on_cuda("none")
    assert seen == {"text_encoder": "cpu"}
    assert all(next(m.parameters()).is_cuda for m in (pipe.text_encoder, pipe.image_encoder))
    _, kept, seen = _tiny_i2v_on_cuda("none", park=False)
    assert seen == {"text_encoder": "cuda"} and torch.equal(parked, kept)
