"""Session-wide fixtures: a private cache home and one aoti package of the demo model per test session.

Every test, and every pipeline process a test starts, caches compiled engines under one session folder
(``XDG_CACHE_HOME``), never in the user's ``~/.cache``. The package is built the way a first ``emim-stream run``
with ``engine.backend: aoti`` builds it (docs/architecture.md#warm-up): a real pipeline process starts serving with the
eager engine at once while a background process exports and compiles the package, then swaps engines at a
window boundary. The run's labels and log are kept for the end-to-end test (tests/integration/test_aoti_e2e.py).
It builds into the session's default cache, so every later run of the embedded default (``backend: aoti``)
loads the package at once instead of starting a build of its own: the minutes of compilation are spent once.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

WARMUP_TIMEOUT_S = 1800
"""Upper bound for the background build plus the swap (about 3 minutes on 2 idle cores; far more on a busy box)."""
AOTI_LABELS = 5
"""Labels from the compiled engine to collect after the swap."""
SLOW_TIMEOUT_S = 1200
"""Per-test timeout of the slow set (pyproject's ``timeout`` bounds the others); the build's tests add its bound."""


@dataclass(frozen=True)
class WarmupRun:
    """What the warm-up pipeline run did."""

    cache_dir: Path
    config: dict
    labels: list
    """Every label message received, in order (emim_stream.pipeline.comms.messages.LabelMessage)."""
    output: str
    exit_code: int
    build_pid: int | None
    """The background build process (from the log), None if none was started."""


def _run_until_swapped(root: Path) -> WarmupRun:
    from emim_stream.pipeline.comms.messages import LabelMessage
    from emim_stream.pipeline.comms.subscribe import Subscriber
    from tests.integration.conftest import PipelineProcess, free_port

    cache = Path(os.environ["XDG_CACHE_HOME"]) / "emim-stream"  # the default plan cache of every run
    port = free_port()
    config = {
        # 10 fps: the eager engine serving meanwhile leaves more of the 2 cores to the build
        "cameras": [{"id": "cam1", "source": "synthetic://?seed=1&fps=10&size=160x120"}],
        "engine": {
            "backend": "aoti",
            "device": "cpu",
            "checkpoint": "emim_xs.demo",
            "threads": 1,
        },
        "window": {"stride": 4},
        "publish": {"endpoint": f"tcp://127.0.0.1:{port}"},
    }
    proc = PipelineProcess(root, config)
    labels = []
    try:
        with Subscriber(config["publish"]["endpoint"], topics=(b"labels/",), timeout_s=1.0) as sub:
            deadline = time.monotonic() + WARMUP_TIMEOUT_S
            while time.monotonic() < deadline and proc.proc.poll() is None:
                got = sub.recv(0.5)
                if got is not None:
                    labels.append(LabelMessage.from_payload(got.payload))
                if sum(m.model.backend == "aoti" for m in labels) >= AOTI_LABELS:
                    break
        code = proc.terminate(60)
        output = proc.output()
    finally:
        proc.stop()
    found = re.search(r"in the background \(process (\d+),", output)
    return WarmupRun(cache, config, labels, output, code, int(found.group(1)) if found else None)


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow set (``make test`` runs ``-m "not slow"``): tests marked ``slow``, every end-to-end test
    (tests/integration/, each starts real pipeline processes) and every test that needs the session's
    AOTInductor build; slow tests get :data:`SLOW_TIMEOUT_S` unless they set their own ``timeout``.

    The real-time set (``realtime``, also slow): the end-to-end tests and every test of a real RTSP camera, whose
    checks depend on pacing, timeouts and frame rates; ``make test-all`` runs it at normal CPU priority beside the
    others at the lowest (tools/test-all)."""
    integration = Path(__file__).parent / "integration"
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        builds = "aoti_warmup" in fixtures
        if item.path.is_relative_to(integration) or "rtsp_camera" in fixtures:
            item.add_marker(pytest.mark.realtime)
        if builds or item.get_closest_marker("realtime"):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("slow") and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S + (WARMUP_TIMEOUT_S if builds else 0)))


@pytest.fixture(scope="session", autouse=True)
def cache_home(tmp_path_factory):
    """``XDG_CACHE_HOME`` of the whole session (inherited by the processes tests start)."""
    home = tmp_path_factory.mktemp("cache-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def aoti_warmup(tmp_path_factory, cache_home) -> WarmupRun:
    """A pipeline run with ``engine.backend: aoti`` on an empty cache, until the compiled engine serves."""
    return _run_until_swapped(tmp_path_factory.mktemp("aoti-warmup"))


@pytest.fixture(scope="session")
def demo_package_cache(aoti_warmup) -> Path:
    """The plan cache holding the demo model's aoti package (fp32, CPU, 8x64x64, batch 1..8)."""
    packages = list((aoti_warmup.cache_dir / "plans").glob("*.pt2"))
    assert len(packages) == 1, f"the warm-up run built no package:\n{aoti_warmup.output[-4000:]}"
    return aoti_warmup.cache_dir
