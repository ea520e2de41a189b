"""The live view in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright), against a real
`emim-stream run --view PORT` process: the tile shows the forced label, the frame changes, the latency chart has
points, an ended file camera's state changes, and bad HTTP requests neither break the page nor the pipeline."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from emim_stream.pipeline.comms.subscribe import Subscriber
from tests.integration.conftest import free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

playwright_sync = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (make system-deps installs it)"
)


def view_config(publish_port: int, cameras: list[dict]) -> dict:
    return {
        "cameras": cameras,
        "engine": {"backend": "torch", "device": "cpu", "checkpoint": "emim_xs.demo", "threads": 1},
        "publish": {"endpoint": f"tcp://127.0.0.1:{publish_port}"},
        "postprocess": {"print_labels": False},
        "view": {"preview_fps": 5},
    }


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium for the module (started once: it takes seconds)."""
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def browser(chromium):
    """The module's Chromium; the pages a test opened are closed after it."""
    yield chromium
    for context in chromium.contexts:
        context.close()


def wait_for_page(url: str, p, timeout_s: float = 90) -> None:
    """Until the view answers (the engine loads first); fails early if the pipeline exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert p.proc.poll() is None, f"pipeline exited:\n{p.output()[-3000:]}"
        try:
            with urllib.request.urlopen(url + "healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"the view did not answer within {timeout_s} s:\n{p.output()[-3000:]}")


def test_tile_shows_forced_label_frames_and_latency_chart(pipeline_factory, browser, tmp_path):
    port, view_port = free_port(), free_port()
    cameras = [{"id": "cam1", "source": "synthetic://?seed=1&fps=30&size=320x240&label=left"}]
    p = pipeline_factory(view_config(port, cameras), extra=("--view", str(view_port)))
    url = f"http://127.0.0.1:{view_port}/"
    wait_for_page(url, p)
    page = browser.new_page(viewport={"width": 900, "height": 800})
    page.goto(url)
    tile = page.locator('.tile[data-camera="cam1"]')
    playwright_sync.expect(tile.locator(".top1")).to_have_text("left", timeout=60_000)
    playwright_sync.expect(tile.locator(".state")).to_have_attribute("data-state", "live", timeout=10_000)
    page.screenshot(path=str(tmp_path / "view.png"))
    assert (tmp_path / "view.png").stat().st_size > 10_000

    frame = tile.locator("img.frame")
    first_src, first_seq = frame.get_attribute("src"), int(frame.get_attribute("data-seq"))
    assert first_src.startswith("data:image/jpeg;base64,")
    page.wait_for_function(
        "([sel, src]) => document.querySelector(sel).src !== src",
        arg=['.tile[data-camera="cam1"] img.frame', first_src],
        timeout=10_000,
    )
    assert int(frame.get_attribute("data-seq")) > first_seq, "a newer frame replaced the first"

    chart = tile.locator(".chart")
    page.wait_for_function(
        "sel => Number(document.querySelector(sel).dataset.points) >= 3",
        arg='.tile[data-camera="cam1"] .chart',
        timeout=15_000,
    )
    assert chart.locator("canvas").count() == 1, "uPlot drew its canvas"
    assert "total p50" in tile.locator(".minute").inner_text()
    assert p.terminate() == 0


def write_video(path: Path, frames: int, fps: float = 30.0) -> None:
    """A short MPEG-4 file of a moving bar (decodable by the camera's OpenCV source)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (160, 120))
    assert writer.isOpened()
    for i in range(frames):
        image = np.full((120, 160, 3), 40, dtype=np.uint8)
        image[:, (i * 4) % 160 : (i * 4) % 160 + 20] = 220
        writer.write(image)
    writer.release()


def test_tile_state_changes_when_a_file_camera_ends(pipeline_factory, browser, tmp_path):
    video = tmp_path / "short.mp4"
    write_video(video, frames=240)  # 8 s at the file's pace
    port, view_port = free_port(), free_port()
    cameras = [
        {"id": "live", "source": "synthetic://?seed=1&fps=30&size=320x240&label=left"},
        {"id": "file", "source": str(video)},
    ]
    p = pipeline_factory(view_config(port, cameras), extra=("--view", str(view_port)))
    url = f"http://127.0.0.1:{view_port}/"
    wait_for_page(url, p)
    page = browser.new_page()
    page.goto(url)
    state = page.locator('.tile[data-camera="file"] .state')
    playwright_sync.expect(state).to_have_attribute("data-state", "live", timeout=60_000)
    playwright_sync.expect(state).to_have_attribute("data-state", "ended", timeout=30_000)
    playwright_sync.expect(page.locator('.tile[data-camera="live"] .state')).to_have_attribute(
        "data-state", "live"
    )
    assert p.terminate() == 0


def http_status(view_port: int, raw: bytes) -> int | None:
    """Send a raw request; the status code of the answer, or None when the server closed without one."""
    with socket.create_connection(("127.0.0.1", view_port), timeout=10) as s:
        s.sendall(raw)
        answer = s.recv(4096)
    return int(answer.split()[1]) if answer.startswith(b"HTTP/") else None


def test_bad_requests_are_refused_and_the_pipeline_keeps_publishing(pipeline_factory, browser):
    port, view_port = free_port(), free_port()
    cameras = [{"id": "cam1", "source": "synthetic://?seed=1&fps=30&size=320x240&label=left"}]
    p = pipeline_factory(view_config(port, cameras), extra=("--view", str(view_port)))
    url = f"http://127.0.0.1:{view_port}/"
    wait_for_page(url, p)
    get = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n"
    assert http_status(view_port, get % (b"/nope", b"")) == 404
    assert http_status(view_port, b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n") == 405
    assert http_status(view_port, get % (b"/", b"X-Big: " + b"a" * 70_000 + b"\r\n")) == 431
    assert http_status(view_port, get % (b"/", b"".join(b"X-%d: 1\r\n" % i for i in range(200)))) == 431
    assert http_status(view_port, (get % (b"/", b"")).replace(b"127.0.0.1", b"evil.example")) == 403
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url + "static/../../config.py", timeout=5)
    assert err.value.code == 404

    idle = [socket.create_connection(("127.0.0.1", view_port), timeout=5) for _ in range(100)]
    try:
        with Subscriber(f"tcp://127.0.0.1:{port}", topics=(b"labels/",), timeout_s=5) as sub:
            got = list(sub.iter_messages(10, 30))
        assert len(got) == 10 and sub.total_lost == 0, "the pipeline keeps publishing with 100 idle connections"
        page = browser.new_page()
        page.goto(url)
        playwright_sync.expect(page.locator('.tile[data-camera="cam1"] .top1')).to_have_text("left", timeout=30_000)
    finally:
        for s in idle:
            s.close()
    assert p.terminate() == 0
