"""The Gradio demo, used the way a person uses it: a real ``supergen demo`` process and headless Chromium.

The browser tests need Debian's ``chromium`` (``.ci/install-browser.sh`` installs it with Playwright);
they skip, saying so, where it is missing. Playwright drives the system Chromium, never a downloaded one.
"""

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch

from supergen.config import load_config
from supergen.demo import DemoApp, Progress
from supergen.pipeline import SuperGenPipeline
from supergen.cost import KNOWN, estimate

from ranks import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
#: A tiny render: 128x224 canvas from a 64x112 sketch (2x2 tiles), 5 frames, 2 + 2 steps.
DEMO_OVERRIDES = ["job.height=128", "job.width=224", "job.num_frames=5", "sketch.height=64", "sketch.width=112",
                  "sketch.num_inference_steps=2", "refine.num_inference_steps=4"]
#: CPU time is shared on CI machines: generous, so a slow machine fails only when something is wrong.
TIMEOUT_MS = 240_000


def test_stage_callback_order_and_sketch_preview(wan_t2v):
    """The hook the demo relies on: stages in order, the sketch handed over before refinement starts."""
    events = []
    events_at_step = []

    def on_stage(stage, info):
        events.append((stage, info))

    def on_step(pipe, step, t, tensors):
        events_at_step.append(len(events))
        return {}

    sg = SuperGenPipeline.from_pipe(wan_t2v, "tiny")
    out = sg(height=64, width=112, num_frames=5, num_inference_steps=4, generator=torch.Generator().manual_seed(0),
             callback_on_stage=on_stage, callback_on_step_end=on_step)
    assert [stage for stage, _ in events] == ["sketch", "upscale", "refine", "decode"]
    info = dict(events)
    assert info["sketch"]["steps"] == 8 and info["refine"] == {"steps": 2, "tiles": 1}
    # The preview is the sketch the output reports, as (F, h, w, 3) in [0, 1].
    np.testing.assert_allclose(info["upscale"]["sketch"], out.sketch[0], atol=1e-6)
    assert info["upscale"]["sketch"].shape == (5, 64, 112, 3)
    # Every refinement step comes after the sketch preview and before the decode.
    assert events_at_step == [3, 3]


@contextlib.contextmanager
def _serve(launcher: list[str], log, **env_extra: str):
    """Run ``supergen demo`` on a free loopback port with the tiny model, as a user starts it; yield its URL.

    Leaving the block sends SIGTERM, as ``kill`` and job schedulers do, and waits for the exit."""
    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", **env_extra)
    with open(log, "wb") as out:
        server = subprocess.Popen([*launcher, "supergen", "demo", "--port", str(port), *DEMO_OVERRIDES],
                                  stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the demo did not start (exit {server.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        server.terminate()  # torchrun passes it on to its ranks
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    with _serve([sys.executable, "-m"], tmp_path_factory.mktemp("demo") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium chromium-driver; CI runs .ci/install-browser.sh)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _text(selector: str) -> str:
    """JavaScript for the element's text, '' while it is not on the page yet (Gradio renders progressively)."""
    return f"(document.querySelector('{selector}')?.innerText ?? '')"


def _wait_playable(page, selector: str) -> None:
    """Wait until ``selector``'s <video> can play (readyState >= 2 or a duration) or the page reports an error."""
    playable = f"(() => {{ const v = document.querySelector('{selector} video'); return !!v && (v.readyState >= 2 || v.duration > 0); }})()"
    page.wait_for_function(f"() => {playable} || {_text('#status')}.includes('Error')", timeout=TIMEOUT_MS)
    assert page.evaluate(f"() => {playable}"), page.locator("#status").inner_text()


def _generate(page, url: str, prompt: str) -> None:
    page.goto(url)
    page.wait_for_selector("#generate")
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#generate").click()


def test_generate_in_browser_shows_sketch_then_video(browser, demo_url, tmp_path):
    page = browser.new_page()
    page.goto(demo_url)
    page.wait_for_selector("#generate")
    # The plan is on the page before anything runs: 2x2 tiles of the 64x112 sketch on 128x224.
    page.wait_for_function(f"() => {_text('#plan')}.includes('tile grid')", timeout=TIMEOUT_MS)
    assert "2x2 tiles of 64x112 px" in page.locator("#plan").inner_text()
    assert "estimated peak" in page.locator("#plan").inner_text()

    page.locator("#prompt textarea").fill("a lighthouse on a cliff at dawn")
    page.locator("#generate").click()
    _wait_playable(page, "#sketch")
    _wait_playable(page, "#final")
    size = page.evaluate("() => { const v = document.querySelector('#final video'); return [v.videoWidth, v.videoHeight, v.duration]; }")
    assert size[:2] == [224, 128] and size[2] > 0
    sketch = page.evaluate("() => { const v = document.querySelector('#sketch video'); return [v.videoWidth, v.videoHeight]; }")
    assert sketch == [112, 64]
    assert page.locator("#status").inner_text().startswith("Done: 128x224x5 (height x width x frames)")

    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000  # a rendered page, not an empty image
    page.close()


def test_bad_size_shows_message_not_traceback(browser, demo_url):
    page = browser.new_page()
    page.goto(demo_url)
    page.wait_for_selector("#generate")
    page.locator("#height input").fill("8")
    page.locator("#generate").click()
    page.wait_for_function(f"() => {_text('#status')}.includes('Error')", timeout=TIMEOUT_MS)
    status = page.locator("#status").inner_text()
    assert "job.height" in status and "16" in status
    assert "Traceback" not in page.content()
    page.close()


def test_cache_threshold_shows_cache_map(browser, demo_url):
    page = browser.new_page()
    page.goto(demo_url)
    page.wait_for_selector("#generate")
    if page.locator("#cache-threshold").count() == 0:
        pytest.skip("this config's cache policy has no threshold, so the page has no cache control")
    threshold = page.locator("#cache-threshold input[type=number]")
    threshold.fill("0.5")
    threshold.press("Enter")
    page.locator("#steps input").fill("12")  # 6 refinement steps: room for reuse after the warm-up steps
    page.locator("#generate").click()
    _wait_playable(page, "#final")
    size = page.evaluate("() => { const i = document.querySelector('#cache-map img'); return i ? [i.naturalWidth, i.naturalHeight] : null; }")
    assert size is not None and size[0] > size[1] > 0  # one panel per step, side by side
    page.close()


def test_two_ranks_render_together(browser, tmp_path):
    """``torchrun --nproc_per_node=2``: rank 0 serves, both ranks render (the status says so)."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", "-m"]
    with _serve(torchrun, tmp_path / "server.log") as url:
        page = browser.new_page()
        _generate(page, url, "two ranks, one video")
        _wait_playable(page, "#final")
        assert "on 2 ranks" in page.locator("#status").inner_text()
        page.close()


def test_the_cache_control_sets_the_threshold_of_the_configs_policy():
    """Each cache policy has its own threshold key (config.THRESHOLDS): the page's one control sets the
    chosen policy's; a value of 0 turns the cache off."""
    import operator

    from supergen.config import THRESHOLDS
    from supergen.demo import Job

    def job(threshold):
        return Job("a cat", "", None, "custom", 64, 112, 5, 0, 4, 0.5, "shift, clamp at edges", threshold)

    for policy, key in THRESHOLDS.items():
        cfg = job(0.4).config(load_config("tiny", [f"cache.policy={policy}"]))
        assert cfg.cache.enabled and cfg.cache.policy == policy and operator.attrgetter(key)(cfg) == 0.4
    assert not job(0.0).config(load_config("tiny")).cache.enabled
    assert "steps" not in THRESHOLDS and "none" not in THRESHOLDS  # no control for them


def test_missing_image_for_image_to_video_is_a_message(wan_i2v, tmp_path):
    """The page's handler turns the pipeline's user error into a status message (no exception escapes)."""
    app = DemoApp(wan_i2v, load_config("tiny"), output_dir=tmp_path)
    updates = list(app.run("a cat", "", None, "custom", 64, 112, 5, 0, 4, 0.5, "shift, clamp at edges"))
    status, plan, sketch, final, _ = updates[-1]
    assert status.startswith("**Error:**") and "image-to-video" in status
    assert "tile grid" in plan and sketch is None and final is None


def test_image_to_video_job_renders(wan_i2v, image, tmp_path):
    """An uploaded image (RGBA, as a PNG with alpha arrives) goes through the page's handler to a video."""
    app = DemoApp(wan_i2v, load_config("tiny", ["sketch.num_inference_steps=2"]), output_dir=tmp_path)
    updates = list(app.run("a cat", "", image.convert("RGBA"), "custom", 64, 112, 5, 0, 4, 0.5, "shift, clamp at edges"))
    status, _, sketch, final, _ = updates[-1]
    assert status.startswith("Done: 64x112x5"), status
    assert os.path.getsize(sketch) > 0 and os.path.getsize(final) > 0
    # The sketch path was shown before the final video existed (the preview).
    assert any(update[2] == sketch and update[3] is None for update in updates)


def test_eta_from_planned_flops_and_measured_rate():
    plan = estimate(load_config("tiny"), KNOWN["tiny"])
    track = Progress(plan, previous_rate=None)
    assert track.eta() == "estimating time left" and track.fraction == 0.0
    sketch = plan.sketch_steps * plan.sketch_flops_per_step
    track.finished(sketch, seconds=2.0)  # the sketch took 2 s: rate = sketch FLOPs / 2 s
    remaining = plan.refine_steps * plan.flops_per_step
    assert track.eta() == f"about {remaining / (sketch / 2.0):.0f} s left"
    assert track.fraction == pytest.approx(sketch / (sketch + remaining))


def test_memory_check_refuses_a_size_that_cannot_fit(wan_t2v, tmp_path):
    """The check ``supergen render`` makes before the load: its message, not an internal error from an allocation."""
    app = DemoApp(wan_t2v, load_config("tiny"), output_dir=tmp_path)
    updates = list(app.run("a cat", "", None, "custom", 30000, 30000, 81, 0, 4, 0.5, "shift, clamp at edges"))
    status, plan, sketch, final, _ = updates[-1]
    # About 238 GiB (the planner's estimate): more than any machine running the tests has.
    assert status.startswith("**Error:** 30000x30000x81 (height x width x frames) needs about"), status
    assert "--no-memory-check" in status and "tile grid" in plan and sketch is None and final is None
    assert not list(tmp_path.iterdir())


def test_image_for_text_to_video_model_is_a_message(wan_t2v, image, tmp_path):
    app = DemoApp(wan_t2v, load_config("tiny"), output_dir=tmp_path)
    assert not app.takes_image  # the page shows no upload box
    status = list(app.run("a cat", "", image, "custom", 64, 112, 5, 0, 4, 0.5, "shift, clamp at edges"))[-1][0]
    assert status.startswith("**Error:** WanPipeline is a text-to-video model") and "tiny-i2v" in status


def test_first_screen_has_generate_and_explains_its_controls(browser, demo_url):
    """At a laptop's 1000 px height: Generate visible without scrolling, no image box for a text-to-video
    model, Strength and Cache threshold explained, and the cache map's colours named."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(demo_url)
    page.wait_for_selector("#generate")
    box = page.locator("#generate").bounding_box()
    assert box is not None and box["y"] + box["height"] <= 1000, box
    assert not page.locator("#image").is_visible()
    assert "refinement schedule" in page.locator("#strength").inner_text()
    if page.locator("#cache-threshold").count():
        assert "reused from the previous step" in page.locator("#cache-threshold").inner_text()
        legend = page.locator("#cache-legend").inner_text()
        assert "computed" in legend and "reused" in legend
    page.close()


def test_sigterm_removes_the_demo_folder_and_a_taken_port_names_the_flag(tmp_path):
    """SIGTERM (what ``kill`` sends) ends the demo as Ctrl-C does: its temporary folder is removed. A second
    demo on the same port stops before loading the model with one line naming --port."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    with _serve([sys.executable, "-m"], tmp_path / "server.log", TMPDIR=str(temp)) as url:
        assert len(list(temp.glob("supergen-demo-*"))) == 1
        port = url.rstrip("/").rsplit(":", 1)[1]
        second = subprocess.run([sys.executable, "-m", "supergen", "demo", "--port", port], capture_output=True, text=True,
                                timeout=120, env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1"))
        assert second.returncode == 2, second.stderr[-2000:]
        assert second.stderr.strip().splitlines()[-1].startswith(f"error: cannot serve on 127.0.0.1:{port}")
        assert "--port" in second.stderr and "Traceback" not in second.stderr
    assert not list(temp.glob("supergen-demo-*")), (tmp_path / "server.log").read_text()[-2000:]


def test_sixteen_bit_upload_reaches_the_pipeline_by_its_bit_depth(wan_i2v, tmp_path):
    """The page's image box hands a 16-bit grey PNG over as it is (Gradio's default RGB mode would clip
    it to white), and the pipeline's loader scales it: the 8-bit ramp it stands for."""
    from PIL import Image

    from supergen.demo import build_app
    from supergen.videoio import load_image

    gr_image = pytest.importorskip("gradio.components.image")
    ramp = np.tile(np.linspace(0, 65535, 112).round().astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    page = build_app(DemoApp(wan_i2v, load_config("tiny"), output_dir=tmp_path))
    box = next(block for block in page.blocks.values() if getattr(block, "elem_id", None) == "image")
    upload = box.preprocess(gr_image.ImageData(path=str(tmp_path / "deep.png"), orig_name="deep.png"))
    expected = np.linspace(0, 255, 112).round().astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(load_image(upload))[0, :, 0], expected)
