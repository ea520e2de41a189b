"""emim_stream.pipeline.capture.sources: real files written with cv2.VideoWriter, a real MJPEG-over-HTTP stream on
127.0.0.1,
unreachable and silent endpoints, the synthetic camera (credential redaction: tests/engines/test_uris.py)."""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from emim_stream.engines.data.synthetic import SyntheticScene
from emim_stream.engines.errors import ConfigError
from emim_stream.pipeline.capture.sources import (
    DECODERS,
    SOURCES,
    FrameSource,
    OpenCvSource,
    SourceState,
    SyntheticSource,
    open_source,
)
from emim_stream.pipeline.errors import EndOfStream, SourceConnectionError, SourceError
from tests.loopback import free_port

FRAMES, WIDTH, HEIGHT, FPS = 12, 64, 48, 25.0
OUT = (32, 40)  # (height, width) the FFmpeg decoder scales to: another aspect than the 64x48 files, so it crops


def _write_video(path: Path, fourcc: str) -> Path:
    """FRAMES frames of WIDTHxHEIGHT at FPS; frame i is uniformly grey at level 20 * i."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, (WIDTH, HEIGHT))
    if not writer.isOpened():
        pytest.skip(f"this OpenCV build cannot write {fourcc} to {path.suffix}")
    for i in range(FRAMES):
        writer.write(np.full((HEIGHT, WIDTH, 3), 20 * i, np.uint8))
    writer.release()
    return path


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return _write_video(tmp_path / "clip.avi", "MJPG")


def _levels(frames) -> list[int]:
    return [round(float(frame.image.mean()) / 20) for frame in frames]


def _read_all(source: OpenCvSource) -> list:
    frames = []
    with pytest.raises(EndOfStream):
        while True:
            frames.append(source.read())
    return frames


@pytest.mark.parametrize(("name", "fourcc"), [("clip.avi", "MJPG"), ("clip.mp4", "mp4v")])
def test_file_reads_every_frame_in_order(tmp_path, name, fourcc):
    path = _write_video(tmp_path / name, fourcc)
    with OpenCvSource(str(path), pace=False) as source:
        assert source.state is SourceState.LIVE
        start = time.monotonic()
        frames = _read_all(source)
        assert time.monotonic() - start < 0.3  # unpaced: a paced read would take 11 / 25 s
        assert source.state is SourceState.ENDED
        with pytest.raises(EndOfStream):  # and stays ended
            source.read()
    assert _levels(frames) == list(range(FRAMES))
    assert all(f.image.shape == (HEIGHT, WIDTH, 3) and f.image.dtype == np.uint8 for f in frames)
    assert [round(f.source_pts_ns / 1e6) for f in frames] == [40 * i for i in range(FRAMES)]
    stamps = [f.capture_mono_ns for f in frames]
    assert stamps == sorted(stamps)
    assert abs(frames[0].capture_wall_ns - time.time_ns()) < 10**10


def test_file_info_and_reopen(video):
    source = OpenCvSource(str(video), pace=False)
    assert source.state is SourceState.CONNECTING
    info = source.open()
    assert (info.width, info.height, info.fps, info.is_live) == (WIDTH, HEIGHT, FPS, False)
    assert info.uri_redacted == str(video) and info.backend
    _read_all(source)
    source.open()  # a finite source opens again from the start
    assert source.state is SourceState.LIVE
    assert _levels([source.read()]) == [0]
    source.close()
    assert source.state is SourceState.ENDED
    with pytest.raises(RuntimeError):
        source.read()


def _decoding(uri: str, decoder: str, **options) -> FrameSource:
    """A file or stream source of ``decoder`` (``ffmpeg`` scales to OUT; OpenCV gives the source's size)."""
    return open_source(uri, decoder=decoder, size=OUT, **options)


@pytest.mark.parametrize("decoder", DECODERS)
def test_loop_wraps_and_keeps_timestamps_increasing(video, decoder):
    with _decoding(video.as_posix(), decoder, loop=True, pace=False) as source:
        frames = [source.read() for _ in range(2 * FRAMES + 5)]
    assert _levels(frames) == [i % FRAMES for i in range(2 * FRAMES + 5)]
    np.testing.assert_array_equal(frames[FRAMES + 3].image, frames[3].image)
    pts = [f.source_pts_ns for f in frames]
    assert all(b - a == pytest.approx(40e6, abs=1e6) for a, b in itertools.pairwise(pts))


@pytest.mark.parametrize("decoder", DECODERS)
def test_pace_follows_the_files_fps_without_drift(video, decoder):
    with _decoding(str(video), decoder, pace=True) as source:
        frames = [source.read() for _ in range(10)]
    period_ns = 1e9 / FPS
    offsets = [f.capture_mono_ns - frames[0].capture_mono_ns for f in frames]
    for n, offset in enumerate(offsets):
        assert offset >= n * period_ns - 1e6  # never early
    assert offsets[-1] < 9 * period_ns + 0.5e9  # and no drift worth the name


def test_missing_file_is_a_source_error_naming_the_path(tmp_path):
    missing = tmp_path / "nope.mp4"
    start = time.monotonic()
    with pytest.raises(SourceError, match="nope.mp4") as err:
        OpenCvSource(str(missing)).open()
    assert type(err.value) is SourceError
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("name", ["junk.mp4", "junk.avi"])
def test_random_bytes_are_a_source_error_quickly(tmp_path, name):
    junk = tmp_path / name
    junk.write_bytes(np.random.default_rng(0).bytes(200_000))
    start = time.monotonic()
    with pytest.raises(SourceError) as err:
        OpenCvSource(str(junk)).open()
    assert type(err.value) is SourceError and name in str(err.value)
    assert time.monotonic() - start < 2.0


@pytest.mark.parametrize("index", [99, "99"])
def test_camera_index_that_does_not_open(index):
    with pytest.raises(SourceError, match="camera 99") as err:
        OpenCvSource(index).open()
    assert type(err.value) is SourceError


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("decoder", DECODERS)
def test_unreachable_stream_is_a_connection_error_without_credentials(decoder):
    uri = f"rtsp://admin:hunter2@127.0.0.1:{_closed_port()}/cam"
    source = _decoding(uri, decoder, open_timeout_s=2.0)
    with pytest.raises(SourceConnectionError, match="cannot be reached over TCP or UDP") as err:
        source.open()
    assert "hunter2" not in str(err.value) and "rtsp://***@127.0.0.1" in str(err.value)
    assert source.state is SourceState.CONNECTING
    with pytest.raises(SourceConnectionError):
        source.open()
    assert source.state is SourceState.RECONNECTING


@pytest.mark.parametrize("decoder", DECODERS)
def test_silent_server_hits_the_open_timeout(decoder):
    with socket.socket() as server:  # the kernel accepts the connection; nobody ever answers
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        uri = f"http://127.0.0.1:{server.getsockname()[1]}/video?token=s3cret"
        start = time.monotonic()
        with pytest.raises(SourceConnectionError) as err:
            _decoding(uri, decoder, open_timeout_s=0.5, read_timeout_s=0.5).open()
        assert 0.3 < time.monotonic() - start < 3.0
    assert "s3cret" not in str(err.value) and "token=***" in str(err.value)


@contextlib.contextmanager
def _mjpeg_server(frames_per_connection: int) -> Iterator[int]:
    """An HTTP multipart-JPEG camera on 127.0.0.1 that sends some frames per connection, then goes silent."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(5.0)
    stop = threading.Event()

    def serve() -> None:
        connections = []
        with contextlib.suppress(OSError):
            while not stop.is_set():
                conn, _ = server.accept()
                connections.append(conn)
                conn.recv(4096)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n")
                for i in range(frames_per_connection):
                    jpeg = cv2.imencode(".jpg", np.full((HEIGHT, WIDTH, 3), 20 * i, np.uint8))[1].tobytes()
                    head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                    conn.sendall(head + jpeg + b"\r\n")
                    time.sleep(0.01)
        for conn in connections:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        server.close()
        thread.join(timeout=10)


@pytest.mark.parametrize("decoder", DECODERS)
def test_live_stream_is_lost_after_read_timeout_and_reconnects(decoder):
    with _mjpeg_server(frames_per_connection=6) as port:
        source = _decoding(f"http://user:pw@127.0.0.1:{port}/video", decoder, read_timeout_s=0.5, open_timeout_s=3.0)
        info = source.open()
        assert info.is_live and (info.width, info.height) == (WIDTH, HEIGHT)
        frames = []
        with pytest.raises(SourceConnectionError, match="lost") as err:
            while True:
                frame = source.read()
                if frame is not None:
                    frames.append(frame)
        assert "pw@" not in str(err.value)
        assert source.state is SourceState.RECONNECTING
        assert 1 <= len(frames) <= 5  # the probe frame in open() is not repeated
        assert _levels(frames) == sorted(_levels(frames))
        source.open()  # the camera is back: reconnect
        assert source.state is SourceState.LIVE
        assert source.read() is not None
        source.close()
        assert source.state is SourceState.ENDED


# --- synthetic ----------------------------------------------------------------------------------------


def test_synthetic_defaults_and_protocol():
    source = open_source("synthetic://", pace=False)
    assert isinstance(source, SyntheticSource) and isinstance(source, FrameSource)
    assert source.state is SourceState.CONNECTING
    with source:
        info = source.open()
        assert (info.width, info.height, info.fps, info.is_live, info.backend) == (320, 240, 30.0, True, "synthetic")
        frame = source.read()
        assert frame.image.shape == (240, 320, 3) and frame.image.dtype == np.uint8
        assert frame.source_pts_ns == 0
        assert source.read().source_pts_ns == round(1e9 / 30)
    assert source.state is SourceState.ENDED


def test_synthetic_is_deterministic_bgr_scene_frames():
    uri = "synthetic://?seed=3&fps=20&size=64x48&label=rotate_cw&segment_s=2"
    with open_source(uri, pace=False) as first, open_source(uri, pace=False) as second:
        frames = [first.read().image for _ in range(5)]
        for image in frames:
            np.testing.assert_array_equal(second.read().image, image)
    scene = SyntheticScene(3, 48, 64, fps=20, label="rotate_cw", segment_s=2)
    for n, image in enumerate(frames):
        np.testing.assert_array_equal(image, scene.frame(n)[..., ::-1])  # BGR, like OpenCV
    assert first.label_at(0) == "rotate_cw"


def test_synthetic_is_paced_on_a_monotonic_schedule():
    with SyntheticSource("synthetic://?fps=50&size=32x32") as source:
        frames = [source.read() for _ in range(8)]
    offsets = [f.capture_mono_ns - frames[0].capture_mono_ns for f in frames]
    for n, offset in enumerate(offsets):
        assert offset >= n * 20e6 - 1e6
    assert offsets[-1] < 7 * 20e6 + 0.5e9
    assert [f.source_pts_ns for f in frames] == [n * 20_000_000 for n in range(8)]


@pytest.mark.parametrize(
    ("uri", "named"),
    [
        ("synthetic://?seed=-1", "seed"),
        ("synthetic://?seed=abc", "seed"),
        ("synthetic://?fps=0", "fps"),
        ("synthetic://?fps=fast", "fps"),
        ("synthetic://?size=320", "size"),
        ("synthetic://?size=4x4", "size"),
        ("synthetic://?label=jump", "label"),
        ("synthetic://?segment_s=0", "segment_s"),
        ("synthetic://?colour=red", "colour"),
        ("synthetic://?seed", "seed"),
        ("synthetic://?seed=1&seed=2", "seed"),
        ("synthetic://demo?seed=1", "synthetic://demo"),
    ],
)
def test_synthetic_bad_parameters_name_the_parameter(uri, named):
    with pytest.raises(ConfigError, match=named):
        open_source(uri)


def test_open_source_picks_by_scheme_and_passes_options(video):
    assert SOURCES["opencv"] is OpenCvSource and SOURCES["synthetic"] is SyntheticSource
    source = open_source(str(video), loop=True, pace=False, read_timeout_s=1.5)
    assert isinstance(source, OpenCvSource) and isinstance(source, FrameSource)
    assert (source.loop, source.pace, source.read_timeout_s) == (True, False, 1.5)
    with source:
        assert source.read().image.shape == (HEIGHT, WIDTH, 3)  # the file's frames, at the file's size
    url = f"rtsp://127.0.0.1:{free_port()}/x"  # nothing listens: a network stream, refused over both transports
    with pytest.raises(SourceConnectionError, match=f"^stream {url} cannot be reached over TCP or UDP "):
        open_source(url, open_timeout_s=2.0).open()
    with pytest.raises(ConfigError, match="timeouts"):
        open_source("rtsp://127.0.0.1/x", open_timeout_s=0)


@pytest.mark.skipif(Path("/dev/video0").exists(), reason="a camera is attached to this machine")
def test_open_source_takes_an_index_for_a_usb_camera():
    with pytest.raises(SourceError, match="^camera 0 does not open; check the index"):
        open_source(0).open()
