"""Camera capacity on a real in-process pipeline: a synthetic camera process, a small untrained engine."""

from __future__ import annotations

import math
import os
import socket

import pytest
import yaml

from emim_stream.pipeline.config import load_config
from emim_stream.pipeline.measure.capacity import camera_capacity
from tests.integration.conftest import engine_section, rings_of
from tests.loopback import free_port


@pytest.mark.slow  # a pipeline run of a few seconds
def test_a_step_runs_the_pipeline_and_counts_its_labels(tmp_path):
    """Also beside a pipeline already serving on the configured endpoint (here a listener holding its port)."""
    path = tmp_path / "capacity.yaml"
    port = free_port()
    path.write_text(yaml.safe_dump({
        "cameras": [{"id": "cam1", "source": "synthetic://?fps=30&size=96x96"}],
        "engine": engine_section(),
        "window": {"stride": 4},
        "publish": {"endpoint": f"tcp://127.0.0.1:{port}"},
    }))  # fmt: skip
    with socket.create_server(("127.0.0.1", port)):
        (step,) = camera_capacity(load_config(path), [1], seconds=4.0, min_served=0.0, max_drift=math.inf)
    assert step.cameras == 1 and step.labels > 0 and step.windows_per_s > 0
    assert 0 < step.served <= 1 and step.p99_ms >= step.p50_middle_ms > 0
    assert not rings_of(os.getpid())  # the runtime in this process unlinked its rings
