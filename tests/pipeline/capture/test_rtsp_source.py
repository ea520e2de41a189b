"""Both decoders (OpenCvSource, FfmpegSource) against a real RTSP camera on loopback (tests/rtsp_rig.py): read at
the camera's rate, notice the camera going away within ``read_timeout_s``, and open again once it is back (the
reconnect time is recorded); the RTP transport is a setting (the rig's server serves RTP over UDP only)."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest

from emim_stream.pipeline.capture.ffmpeg import FfmpegSource
from emim_stream.pipeline.capture.sources import OpenCvSource, PreparedFrame, SourceFrame, SourceState
from emim_stream.pipeline.errors import SourceConnectionError
from tests.rtsp_rig import MISSING, rtsp_camera  # noqa: F401 - rtsp_camera is a fixture

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

FPS = 30
READ_TIMEOUT_S = 1.0
OPEN_TIMEOUT_S = 5.0
SIZE = (240, 320)  # (height, width): the FFmpeg decoder scales to the camera's own size here
BACKENDS = {"opencv": "FFMPEG", "ffmpeg": "FFmpeg"}

Source = OpenCvSource | FfmpegSource
Frame = SourceFrame | PreparedFrame


def _source(decoder: str, url: str, transport: str = "auto") -> Source:
    options = {"open_timeout_s": OPEN_TIMEOUT_S, "read_timeout_s": READ_TIMEOUT_S, "rtsp_transport": transport}
    return OpenCvSource(url, **options) if decoder == "opencv" else FfmpegSource(url, *SIZE, **options)


def _read(source: Source, count: int, timeout_s: float = 10.0) -> list[Frame]:
    """``count`` frames (stalls, which return None, are waited out)."""
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout_s
    while len(frames) < count:
        assert time.monotonic() < deadline, f"only {len(frames)} of {count} frames in {timeout_s} s"
        if (frame := source.read()) is not None:
            frames.append(frame)
    return frames


def _steady_fps(source: Source, count: int = 30) -> tuple[float, Frame]:
    """The frame rate over ``count`` frames once the burst buffered while opening is drained, and the last frame.

    Frames of the burst arrive back to back; the first gap of 10 ms or more ends it.
    """
    previous = _read(source, 1)[0]
    deadline = time.monotonic() + 5
    while (frame := _read(source, 1)[0]).capture_mono_ns - previous.capture_mono_ns < 10_000_000:
        assert time.monotonic() < deadline, "frames never arrived at the camera's pace"
        previous = frame
    frames = [frame, *_read(source, count)]
    return (len(frames) - 1) * 1e9 / (frames[-1].capture_mono_ns - frames[0].capture_mono_ns), frames[-1]


def _open_with_retries(source: Source, timeout_s: float) -> int:
    """Call ``open()`` until it succeeds (as a reconnect loop would, without backoff); returns the attempts."""
    deadline = time.monotonic() + timeout_s
    for attempt in range(1, 1000):
        try:
            source.open()
            return attempt
        except SourceConnectionError:
            assert source.state is SourceState.RECONNECTING
            assert time.monotonic() < deadline, f"open() kept failing for {timeout_s} s"
            time.sleep(0.1)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("decoder", ["opencv", "ffmpeg"])
def test_rtsp_transport_setting_tcp_fails_udp_works_auto_falls_back(rtsp_camera, caplog, monkeypatch, decoder):  # noqa: F811
    camera = rtsp_camera(size=(320, 240), fps=FPS)
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "stimeout;1000000")  # a user's own option is kept
    caplog.set_level(logging.INFO, logger="emim_stream.pipeline.capture")
    with pytest.raises(SourceConnectionError, match="over TCP"):
        _source(decoder, camera.url, "tcp").open()
    for transport in ("udp", "auto"):
        with _source(decoder, camera.url, transport) as source:
            assert source.rtsp_transport_used == "udp" and len(_read(source, 3)) == 3
    assert f"{camera.url}: RTP over UDP (TCP failed)" in caplog.text  # auto says which one worked
    assert os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] == "stimeout;1000000"  # restored after each open


@pytest.mark.parametrize("decoder", ["opencv", "ffmpeg"])
def test_rtsp_source_reads_detects_loss_and_reconnects(rtsp_camera, record_property, decoder):  # noqa: F811
    camera = rtsp_camera(size=(320, 240), fps=FPS)
    source = _source(decoder, camera.url)  # auto
    try:
        info = source.open()
        assert (info.width, info.height, info.is_live, info.backend) == (320, 240, True, BACKENDS[decoder])
        assert source.state is SourceState.LIVE and info.uri_redacted == camera.url
        assert source.rtsp_transport_used == "udp"

        fps, last = _steady_fps(source)
        assert FPS * 0.8 <= fps <= FPS * 1.2, f"{fps:.1f} fps"
        image = last.image
        assert image.shape == (240, 320, 3) and image.dtype == np.uint8 and image.std() > 20  # the test pattern

        # the camera goes away: the next reads stall, then raise within read_timeout_s
        stopped = time.monotonic()
        camera.stop()
        with pytest.raises(SourceConnectionError, match="lost: no frame for"):
            while time.monotonic() - stopped < READ_TIMEOUT_S + 3:
                source.read()
        detect_s = time.monotonic() - stopped
        assert detect_s <= READ_TIMEOUT_S + 1.0 and source.state is SourceState.RECONNECTING
        with pytest.raises(SourceConnectionError, match="cannot be reached|sent no frame"):
            source.open()  # while it is away, open() fails (quickly: the port refuses)
        assert time.monotonic() - stopped < READ_TIMEOUT_S + OPEN_TIMEOUT_S

        # the camera comes back at the same URL: open() works again and frames flow at the camera's rate
        restarted = time.monotonic()
        serve_s = camera.start()
        served = time.monotonic()
        attempts = _open_with_retries(source, timeout_s=15)
        first = _read(source, 1)[0]
        reconnect_s = (first.capture_mono_ns / 1e9) - served
        outage_s = (first.capture_mono_ns - last.capture_mono_ns) / 1e9
        assert source.state is SourceState.LIVE
        fps_again, _ = _steady_fps(source)
        assert FPS * 0.8 <= fps_again <= FPS * 1.2, f"{fps_again:.1f} fps after reconnecting"
    finally:
        source.close()
    for name, value in {
        "rtsp_fps": fps,
        "rtsp_loss_detect_s": detect_s,
        "rtsp_camera_restart_s": serve_s,
        "rtsp_reconnect_s": reconnect_s,
        "rtsp_restart_to_frame_s": first.capture_mono_ns / 1e9 - restarted,
        "rtsp_outage_s": outage_s,
        "rtsp_open_attempts": attempts,
    }.items():
        record_property(f"{decoder}_{name}", round(value, 3))
    assert reconnect_s < OPEN_TIMEOUT_S
    print(
        f"\nRTSP ({decoder}): {fps:.1f} fps; loss noticed {detect_s:.2f} s after the camera stopped "
        f"(read_timeout_s={READ_TIMEOUT_S}); camera back in {serve_s:.2f} s; first frame {reconnect_s:.2f} s after "
        f"it was served again ({attempts} open() attempt(s)); frames missing for {outage_s:.2f} s in all"
    )
