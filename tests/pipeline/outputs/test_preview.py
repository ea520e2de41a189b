"""PreviewTap: rate-limited JPEG previews of the frames the loop reads, encoded off the loop."""

from __future__ import annotations

import base64
import json
import time

import cv2
import numpy as np
import pytest

from emim_stream.cli.commands.subscribe import describe
from emim_stream.pipeline.capture.ring import RingFrame
from emim_stream.pipeline.comms.messages import MessageError, PreviewMessage, parse_payload
from emim_stream.pipeline.comms.subscribe import Received
from emim_stream.pipeline.outputs.preview import PreviewTap, preview_topic


def frame(seq: int) -> RingFrame:
    y, x = np.mgrid[0:64, 0:96]
    image = np.stack([(x * 2 + seq) % 256, y * 4 % 256, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    return RingFrame(
        seq, image, capture_mono_ns=1000 + seq, capture_wall_ns=2000 + seq, source_pts_ns=0, frame_seq=seq
    )


def take_within(tap: PreviewTap, timeout_s: float = 5.0) -> list:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready := tap.take():
            return ready
        time.sleep(0.005)
    return []


def test_preview_is_the_frame_as_jpeg_with_its_stamps():
    tap = PreviewTap(["cam1"], fps=5, quality=95)
    try:
        tap.on_frame("cam1", frame(7))
        ((topic, payload),) = take_within(tap)
    finally:
        tap.close()
    assert topic == preview_topic("cam1") == b"preview/cam1/"
    assert payload["kind"] == "preview" and payload["schema"] == 1 and payload["camera_id"] == "cam1"
    assert (payload["seq"], payload["capture_mono_ns"], payload["capture_wall_ns"]) == (7, 1007, 2007)
    assert (payload["width"], payload["height"], payload["format"]) == (96, 64, "jpeg")
    jpeg = np.frombuffer(base64.b64decode(payload["data"]), dtype=np.uint8)
    decoded = cv2.cvtColor(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.abs(decoded.astype(np.float64) - frame(7).image).mean() < 3, "JPEG at quality 95 of the RGB frame"


def test_previews_are_rate_limited_per_camera():
    tap = PreviewTap(["a", "b"], fps=0.1)
    try:
        for seq in range(60):  # 60 frames offered at once: one preview per camera is due
            tap.on_frame("a", frame(seq))
            tap.on_frame("b", frame(seq))
        first = take_within(tap)
        deadline = time.monotonic() + 0.5
        while len(first) < 2 and time.monotonic() < deadline:
            first += tap.take()
        tap.on_frame("a", frame(99))  # within 10 s of the last: not due
        time.sleep(0.1)
        assert tap.take() == []
    finally:
        tap.close()
    assert sorted((t, p["seq"]) for t, p in first) == [(b"preview/a/", 0), (b"preview/b/", 0)]


def test_preview_payload_parses_as_a_message_kind_and_subscribe_describes_it():
    """A preview is a message kind of its own: ``parse_payload`` returns the JPEG, ``subscribe`` prints a line."""
    frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    ok, jpeg = cv2.imencode(".jpg", frame)
    assert ok
    sent = PreviewMessage("cam1", 7, 10, 20, 64, 48, jpeg.tobytes(), msg_seq=3)
    parsed = parse_payload(json.loads(json.dumps(sent.to_payload())))
    assert parsed == sent
    line = describe(Received("preview/cam1/", sent.to_payload(), 0, 0, 0, parsed))
    assert line == f"cam1 #3 preview frame 7 64x48 JPEG {len(jpeg.tobytes())} B"
    with pytest.raises(MessageError, match="'data' is not base64"):
        parse_payload({**sent.to_payload(), "data": "not base64!"})
