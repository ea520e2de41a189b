"""cameras[].rtsp_transport without an RTSP server: the transports tried, the error, and the environment left as found
(the behaviour against a real server is in test_rtsp_source.py)."""

from __future__ import annotations

import os

import pytest

from emim_stream.engines.errors import ConfigError
from emim_stream.pipeline.capture.sources import OpenCvSource
from emim_stream.pipeline.errors import SourceConnectionError
from tests.integration.conftest import free_port

VAR = "OPENCV_FFMPEG_CAPTURE_OPTIONS"


@pytest.mark.parametrize(("transport", "tried"), [("auto", "TCP or UDP"), ("tcp", "TCP"), ("udp", "UDP")])
@pytest.mark.parametrize("user_options", [None, "stimeout;2000000|rtsp_transport;tcp"])
def test_refused_stream_names_the_transports_and_restores_the_environment(monkeypatch, transport, tried, user_options):
    if user_options is None:
        monkeypatch.delenv(VAR, raising=False)
    else:
        monkeypatch.setenv(VAR, user_options)
    url = f"rtsp://127.0.0.1:{free_port()}/cam"  # nothing listens: refused at once
    source = OpenCvSource(url, open_timeout_s=2.0, read_timeout_s=1.0, rtsp_transport=transport)
    with pytest.raises(SourceConnectionError, match=f"{url} cannot be reached over {tried} "):
        source.open()
    assert os.environ.get(VAR) == user_options and source.rtsp_transport_used is None


def test_transport_applies_to_rtsp_only_and_is_checked():
    with pytest.raises(ConfigError, match="rtsp_transport must be one of auto, tcp, udp, got 'quic'"):
        OpenCvSource("rtsp://127.0.0.1:1/cam", rtsp_transport="quic")
    url = f"http://127.0.0.1:{free_port()}/video.mjpg"
    with pytest.raises(SourceConnectionError, match=r"cannot be reached \(open_timeout_s"):  # no transport named
        OpenCvSource(url, open_timeout_s=2.0, rtsp_transport="udp").open()
