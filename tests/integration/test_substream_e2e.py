"""A camera whose sub-stream feeds the model while its main stream is recorded (``cameras[].record_source``), end
to end with two real RTSP cameras: labels come from the sub-stream, the recording is the main stream at its own
size, and after SIGTERM every segment plays from a key frame to its end."""

from __future__ import annotations

import re
import time
from pathlib import Path

import av

from emim_stream.pipeline.comms.subscribe import Subscriber
from tests.integration.conftest import free_port
from tests.integration.test_failures import base_config
from tests.rtsp_rig import rtsp_camera  # noqa: F401 - a fixture

MAIN, SUB = (640, 360), (320, 240)


def test_the_model_reads_the_sub_stream_while_the_main_stream_is_recorded(pipeline_factory, rtsp_camera, tmp_path):  # noqa: F811
    camera = rtsp_camera(size=MAIN, sub_size=SUB)  # an IP camera: main stream and sub-stream
    port, directory = free_port(), tmp_path / "rec"
    cfg = base_config(port, camera.sub_url, record_source=camera.url, open_timeout_s=2.0, read_timeout_s=2.0)
    cfg["record"] = {"dir": str(directory), "segment_s": 2.0}
    p = pipeline_factory(cfg)
    labels, sizes = 0, set()
    with Subscriber(f"tcp://127.0.0.1:{port}", topics=(b"labels/", b"status/"), timeout_s=1.0) as subscriber:
        deadline = time.monotonic() + 90
        while (labels < 5 or len(list(directory.glob("cam1_*.mp4"))) < 3) and time.monotonic() < deadline:
            p.watch_children()
            got = subscriber.recv(0.5)
            if got is not None and got.payload["kind"] == "label":
                labels += 1
            elif got is not None and got.payload["kind"] == "status" and got.payload["source_width"]:
                sizes.add((got.payload["source_width"], got.payload["source_height"]))
    assert labels >= 5, p.output()[-3000:]
    assert sizes == {SUB}, "the model's camera is the sub-stream"
    assert p.terminate() == 0
    out = p.output()
    summary = re.search(r"recording cam1: (\d+) frames of its record_source in (\d+) file\(s\), 0 reconnects", out)
    assert summary, out[-3000:]
    files = sorted(directory.glob("cam1_*.mp4"))
    assert len(files) == int(summary[2]) >= 3
    total = 0
    for path in files:
        total += _check_plays(path)
    assert total == int(summary[1])


def _check_plays(path: Path) -> int:
    """``path`` is the main stream at its size, starts at a key frame and decodes to its end; its frames."""
    with av.open(str(path)) as container:
        pictures = list(container.decode(video=0))
    assert pictures and pictures[0].key_frame, path
    assert {(p.width, p.height) for p in pictures} == {MAIN}
    return len(pictures)
