"""Recording a camera's main stream as it comes (``cameras[].record_source``), against the test rig's real RTSP
camera: segments at the main stream's full size that start at key frames and play to the end, an outage of the
camera survived with a new segment after it, a full disk reported at once and survived."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import av

from emim_stream.pipeline.config import CameraConfig, RecordConfig
from emim_stream.pipeline.outputs.record import Recorder, frames_wanted
from emim_stream.pipeline.outputs.segments import playable_frames
from tests.pipeline.outputs.test_record import cameras, frames
from tests.polling import wait_for
from tests.rtsp_rig import rtsp_camera  # noqa: F401 - a fixture
from tests.tmpfs import small_tmpfs

MAIN = (640, 360)  # the main stream's size; the model's frames come from another source
FPS, GOP = 30, 15  # a key frame every half second
SEGMENT_S = 1.0


def recorder_of(url: str, directory: Path, **record) -> Recorder:
    """A recorder of camera ``cam1``, its main stream ``url``: short segments, quick retries and reconnects."""
    cam = CameraConfig(id="cam1", source="synthetic://", record_source=url, open_timeout_s=2.0, read_timeout_s=2.0)
    cfg = RecordConfig(dir=str(directory), **{"segment_s": SEGMENT_S, "retry_s": 0.3, **record})
    return Recorder(cfg, [cam], backoff=(0.2, 1.0))


def decoded(path: Path) -> list[av.VideoFrame]:
    """Every frame of ``path``, decoded from its start (a decoding error fails the test)."""
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


def check_segments(recorder: Recorder) -> int:
    """Every segment is the main stream at full size, starts at a key frame and decodes to its end; the frames."""
    files = sorted(Path(recorder.cfg.dir).glob("cam1_*.mp4"))
    assert files and files == sorted(recorder.files["cam1"]), "files on disk = the files the recorder reports"
    total = 0
    for path in files:
        pictures = decoded(path)
        assert pictures, f"{path} does not play"
        assert pictures[0].key_frame, f"{path} does not start at a key frame"
        assert {(p.width, p.height) for p in pictures} == {MAIN}
        assert pictures[-1].to_ndarray(format="gray").std() > 20  # the test pattern, not a grey smear
        total += len(pictures)
    return total


def test_the_main_stream_is_recorded_as_it_comes_in_segments_that_start_at_key_frames(rtsp_camera, tmp_path):  # noqa: F811
    camera = rtsp_camera(size=MAIN, fps=FPS, gop=GOP)
    recorder = recorder_of(camera.url, tmp_path / "rec")
    copy = recorder.copies["cam1"]
    try:
        started = time.monotonic()
        assert wait_for(lambda: len(copy.files) >= 4, 30), copy.stats()
        for frame in frames(10):
            recorder.on_frame("cam1", frame)  # the model's frames of this camera are not recorded
        elapsed = time.monotonic() - started
    finally:
        recorder.close()
    assert not recorder.writers and recorder.dropped["cam1"] == 0
    stats = recorder.stats("cam1")
    assert stats["state"] == "recording" and stats["lost"] == stats["write_errors"] == stats["reconnects"] == 0
    assert check_segments(recorder) == stats["written"]
    assert stats["written"] >= 0.5 * FPS * elapsed, "the copy keeps up with the camera"
    for path in recorder.files["cam1"][:-1]:  # each ends at the first key frame after SEGMENT_S
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            seconds = float(stream.duration * stream.time_base)
        assert SEGMENT_S - 0.1 <= seconds <= SEGMENT_S + GOP / FPS + 0.1, (path.name, seconds)


def test_a_camera_outage_closes_the_segment_and_recording_resumes_when_it_returns(rtsp_camera, tmp_path, caplog):  # noqa: F811
    camera = rtsp_camera(size=MAIN, fps=FPS, gop=GOP)
    recorder = recorder_of(camera.url, tmp_path / "rec", segment_s=600.0)
    copy = recorder.copies["cam1"]
    try:
        with caplog.at_level(logging.INFO, logger="emim_stream.pipeline.outputs"):
            assert wait_for(lambda: copy.written >= FPS, 20), copy.stats()
            camera.stop()
            assert wait_for(lambda: copy.state == "reconnecting", 10), copy.stats()
            assert len(copy.files) == 1
            written = copy.written
            camera.start()
            assert wait_for(lambda: copy.state == "recording" and copy.written >= written + FPS, 30), copy.stats()
    finally:
        recorder.close()
    assert copy.reconnects == 1 and len(copy.files) == 2, copy.stats()
    assert check_segments(recorder) == copy.written
    assert re.search(f"recording cam1: record_source {re.escape(camera.url)} (ended|dropped)", caplog.text)


def test_a_full_disk_is_reported_at_once_and_the_copy_resumes_when_space_returns(rtsp_camera, tmp_path, caplog):  # noqa: F811
    camera = rtsp_camera(size=(1280, 720), fps=FPS, gop=GOP)
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        ballast = disk / "ballast"
        ballast.write_bytes(b"\1" * 1_700_000)
        recorder = recorder_of(camera.url, disk / "rec")
        copy = recorder.copies["cam1"]
        try:
            with caplog.at_level(logging.ERROR, logger="emim_stream.pipeline.outputs"):
                assert wait_for(lambda: copy.state == "write_error", 30), copy.stats()
                assert copy.lost > 0
                ballast.unlink()
                assert wait_for(lambda: copy.state == "recording", 10), copy.stats()
                written = copy.written
                assert wait_for(lambda: copy.written > written + FPS, 10), copy.stats()
        finally:
            recorder.close()
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "No space left on device" in errors[0], errors
        assert copy.write_errors >= 1 and copy.files  # the segment that failed stays when one fragment of it plays
        for path in copy.files:  # a failed segment is cut after its last whole fragment: every frame left decodes
            pictures = decoded(path)
            assert pictures and pictures[0].key_frame and (pictures[0].width, pictures[0].height) == (1280, 720)
        assert sum(playable_frames(p) for p in copy.files) == copy.written, "what is counted written plays"


def test_cameras_recorded_from_a_main_stream_write_only_the_models_samples_unless_event_clips_want_all():
    cams = [*cameras("drawn"), CameraConfig(id="main", source="synthetic://", record_source="rtsp://cam/main")]
    assert frames_wanted(RecordConfig(), cams) == set()  # not recording
    assert frames_wanted(RecordConfig(dir="rec"), cams) == {"drawn"}
    assert frames_wanted(RecordConfig(dir="rec", event_clips=True), cams) == {"drawn", "main"}


def test_a_main_stream_that_cannot_be_reached_is_retried_and_said_once(tmp_path, caplog):
    recorder = recorder_of("rtsp://127.0.0.1:9/none", tmp_path / "rec")
    copy = recorder.copies["cam1"]
    try:
        with caplog.at_level(logging.WARNING, logger="emim_stream.pipeline.outputs"):
            assert wait_for(lambda: copy.state == "connecting" and copy.detail, 10)
            time.sleep(1.5)  # several attempts (backoff 0.2 s doubling to 1 s)
    finally:
        recorder.close()
    said = [r.getMessage() for r in caplog.records if "cannot be reached" in r.getMessage()]
    assert len(said) == 1 and "rtsp://127.0.0.1:9/none" in said[0] and "TCP" in said[0] and "UDP" in said[0], said
    assert copy.written == 0 and not copy.files and not list((tmp_path / "rec").glob("*.mp4"))
