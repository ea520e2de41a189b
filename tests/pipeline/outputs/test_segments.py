"""Crash-safe recordings: sanitised file names, write errors (full disk, read-only, removed directory) reported
at once and recovered from, one camera's failure never stopping another's; real encoding, real file systems."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import av
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from emim_stream.pipeline.capture.ring import RingFrame
from emim_stream.pipeline.config import RecordConfig
from emim_stream.pipeline.outputs.filenames import MAX_NAME_BYTES, safe_name
from emim_stream.pipeline.outputs.metrics import Metrics
from emim_stream.pipeline.outputs.record import Recorder
from emim_stream.pipeline.outputs.segments import VideoFile, cut_to_whole_fragments, playable_frames, probe_codec, prune
from tests.pipeline.outputs.test_record import cameras, event_message, frames
from tests.tmpfs import filling, remount, small_tmpfs

FPS = 30.0
FFPROBE = shutil.which("ffprobe")


def noise(seq: int, size: tuple[int, int] = (64, 64)) -> RingFrame:
    """An incompressible frame (fills a disk fast), captured at ``seq / FPS`` s."""
    image = np.random.default_rng(seq).integers(0, 256, (*size, 3), dtype=np.uint8)
    return RingFrame(seq, image, int(seq * 1e9 / FPS), 0, 0)


def ffprobe_packets(path: Path) -> int:
    """Video packets ffprobe reads from ``path`` (an independent reader: FFmpeg's command-line tool)."""
    done = subprocess.run(
        [FFPROBE, "-v", "quiet", "-select_streams", "v:0", "-count_packets", "-show_entries",
         "stream=nb_read_packets", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, f"ffprobe cannot read {path}"
    return int(done.stdout.strip().rstrip(","))


class ErrorTimes(logging.Handler):
    """CLOCK_MONOTONIC time of every ERROR record, with its text."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((time.monotonic(), record.getMessage()))


@pytest.fixture
def errors():
    handler = ErrorTimes()
    logger = logging.getLogger("emim_stream.pipeline.outputs")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def feed_until(recorder: Recorder, start_seq: int, done, what: str, timeout_s: float = 30, pace: bool = True) -> int:
    """Offer noise frames to camera ``cam1`` (paced at FPS) until ``done()``; returns the next seq."""
    seq, deadline = start_seq, time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s} s"
        recorder.on_frame("cam1", noise(seq))
        seq += 1
        if pace:
            time.sleep(1 / FPS)
    return seq


def check_files_play(recorder: Recorder, camera_id: str = "cam1") -> int:
    """Every file left plays (ffprobe and PyAV agree on its frames); returns the frames they hold."""
    files = sorted(Path(recorder.cfg.dir).glob(f"{camera_id}_*.mp4"))
    assert files == sorted(recorder.files[camera_id]), "files on disk = the files the recorder reports"
    total = 0
    for path in files:
        frames_in = playable_frames(path)
        assert frames_in > 0, f"{path} does not play"
        if FFPROBE:
            assert ffprobe_packets(path) == frames_in
        total += frames_in
    return total


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a/b", "a_b"),
        ("..", "_"),
        ("../../etc/passwd", "_.._etc_passwd"),
        ("nul\0byte", "nul_byte"),
        ("x" * 300, "x" * MAX_NAME_BYTES),
        ("wave hands", "wave_hands"),
        ("café", "café"),
        ("手を振る", "手を振る"),
        ("é" * 40, "é" * 32),  # 2 bytes each: cut at a character boundary
        (".hidden", "hidden"),
        ("", "_"),
    ],
)
def test_safe_name(text, expected):
    name = safe_name(text)
    assert name == expected
    assert "/" not in name and "\0" not in name and not name.startswith(".")
    assert len(name.encode()) <= MAX_NAME_BYTES


def test_an_odd_label_neither_escapes_the_folder_nor_stops_any_recording(tmp_path):
    """Issue 29 (3): a label with '/' or 300 characters went unsanitised into the clip's file name, and the
    error ended the writer thread for every camera ('recording stopped: [Errno 2] ...')."""
    cfg = RecordConfig(dir=str(tmp_path / "rec"), height=64, event_clips=True, clip_pre_s=0.2, clip_post_s=0.2)
    recorder = Recorder(cfg, cameras("cam1", "cam2"))
    for f in frames(120):
        recorder.on_frame("cam1", f)
        recorder.on_frame("cam2", f)
        if f.seq == 60:
            recorder.on_event(event_message(10, 30, label="../../escape/me"))
            recorder.on_event(event_message(20, 40, label="x" * 300))
    recorder.close()
    clips = recorder.clips["cam1"]
    assert [p.parent for p in clips] == [tmp_path / "rec" / "events"] * 2
    assert clips[0].name.startswith("cam1__.._escape_me_") and len(clips[1].name.encode()) < 255
    assert all(playable_frames(p) > 0 for p in clips)
    assert not (tmp_path / "escape").exists()
    assert recorder.written == {"cam1": 120, "cam2": 120}, "both cameras recorded every frame"


def test_one_cameras_write_error_never_stops_another_camera(tmp_path, errors):
    """A camera whose frames its encoder refuses (libx264: a picture wider than 16,384 px) fails alone."""
    recorder = Recorder(RecordConfig(dir=str(tmp_path), height=32, retry_s=0.1), cameras("wide", "cam1"))
    for f in frames(90):
        recorder.on_frame("cam1", f)
        recorder.on_frame("wide", RingFrame(f.seq, np.zeros((2, 1056, 3), np.uint8), f.capture_mono_ns, 0, 0))
    recorder.close()
    assert recorder.written["cam1"] == 90 and check_files_play(recorder) == 90
    wide = recorder.stats("wide")
    assert wide["state"] == "write_error" and wide["written"] == 0 and wide["lost"] == 90
    assert [text for _, text in errors.seen if "recording wide" in text], "an ERROR line names the camera"
    assert not [text for _, text in errors.seen if "cam1" in text]
    metrics = Metrics(cameras=["wide", "cam1"])
    metrics.watch_recorder(recorder, ["wide", "cam1"])
    scraped = {
        (s.name, s.labels["camera"]): s.value
        for family in text_string_to_metric_families(metrics.render())
        for s in family.samples
        if s.name.startswith("emim_record_")
    }
    assert scraped[("emim_record_frames_lost_total", "wide")] == 90
    assert scraped[("emim_record_write_error", "wide")] == 1 and scraped[("emim_record_write_error", "cam1")] == 0
    assert scraped[("emim_record_frames_written_total", "cam1")] == 90


def test_a_full_disk_is_reported_at_once_and_recording_resumes_when_space_returns(tmp_path, errors):
    """Issue 29 (2): on a 2 MB tmpfs the recorder said '1341 frames in 1 file(s), 0 dropped' and left a file
    ffprobe could not read."""
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        ballast = disk / "ballast"
        ballast.write_bytes(b"\1" * 1_500_000)
        cfg = RecordConfig(dir=str(disk / "rec"), height=128, queue_frames=100_000, retry_s=0.3)
        recorder = Recorder(cfg, cameras("cam1"))
        writer = recorder.writers["cam1"]
        with filling(disk) as filled_at:
            seq = feed_until(recorder, 0, lambda: writer.state == "write_error", "a write error")
        lost_while_full = writer.lost
        ballast.unlink()  # space returns
        seq = feed_until(recorder, seq, lambda: writer.state == "recording", "resume")
        seq = feed_until(recorder, seq, lambda: len(writer.files) >= 2 and writer.written > 60, "a new segment")
        recorder.close()
        (error_at, text), *more = errors.seen
        assert "recording cam1" in text and "No space left on device" in text and not more, errors.seen
        assert error_at - filled_at[0] < 1.0, "the ERROR line comes within a second of the disk filling"
        stats = recorder.stats("cam1")
        assert stats["lost"] >= lost_while_full > 0 and stats["write_errors"] >= 1
        assert stats["written"] + stats["lost"] + stats["dropped"] == seq
        assert check_files_play(recorder) == stats["written"], "what is counted written plays; nothing unreadable"


def test_a_read_only_file_system_is_reported_and_recording_resumes_after_remount(tmp_path, errors):
    with small_tmpfs(tmp_path / "disk", "32m") as disk:
        cfg = RecordConfig(dir=str(disk), height=64, segment_s=1.0, queue_frames=100_000, retry_s=0.2)
        recorder = Recorder(cfg, cameras("cam1"))
        writer = recorder.writers["cam1"]
        # the first segment opens at the 8th frame and closes after the 30th: then no file is open for writing,
        # which a remount to read-only needs (it is refused while one is)
        for seq in range(30):
            recorder.on_frame("cam1", noise(seq))
        deadline = time.monotonic() + 30
        while writer.written < 30:
            assert time.monotonic() < deadline, "the first segment was never written"
            time.sleep(0.02)
        while True:
            try:
                remount(disk, "ro")
                break
            except OSError:
                assert time.monotonic() < deadline, "the first segment was never closed"
                time.sleep(0.05)
        assert writer.written == 30
        try:
            seq = feed_until(recorder, 30, lambda: writer.state == "write_error", "a write error")
        finally:
            remount(disk, "rw")
        seq = feed_until(recorder, seq, lambda: writer.state == "recording" and len(writer.files) >= 2, "resume")
        recorder.close()
        assert any("Read-only file system" in text for _, text in errors.seen), errors.seen
        stats = recorder.stats("cam1")
        assert stats["lost"] > 0 and stats["written"] + stats["lost"] == seq
        assert check_files_play(recorder) == stats["written"]


def test_a_removed_directory_is_reported_and_created_again(tmp_path, errors):
    cfg = RecordConfig(dir=str(tmp_path / "rec"), height=64, queue_frames=100_000, retry_s=0.2)
    recorder = Recorder(cfg, cameras("cam1"))
    writer = recorder.writers["cam1"]
    seq = feed_until(recorder, 0, lambda: writer.written > 30, "recording")
    shutil.rmtree(tmp_path / "rec")
    # the open file still has its inode: the error comes when its segment ends and the next one is created
    writer.segment_s = 0.5
    seq = feed_until(recorder, seq, lambda: writer.state == "write_error", "a write error")
    seq = feed_until(recorder, seq, lambda: writer.state == "recording", "resume")
    seq = feed_until(recorder, seq, lambda: any(p.exists() for p in writer.files), "a new file")
    recorder.close()
    assert any("recording cam1" in text for _, text in errors.seen)
    assert (tmp_path / "rec").is_dir() and all(playable_frames(p) > 0 for p in writer.files if p.exists())


def test_retention_deletes_the_oldest_segments_above_the_limit(tmp_path):
    cfg = RecordConfig(dir=str(tmp_path), height=192, segment_s=0.5, retain_gb=0.001, queue_frames=100_000)
    recorder = Recorder(cfg, cameras("cam1", "cam1_x"))
    for seq in range(150):
        recorder.on_frame("cam1", noise(seq, (96, 96)))
        recorder.on_frame("cam1_x", noise(seq, (96, 96)))
    recorder.close()
    left = sorted(tmp_path.glob("cam1_2*.mp4"), key=lambda p: p.stat().st_mtime)
    made = recorder.files["cam1"]  # a name freed by retention may be used again within the same second
    assert len(made) == 150 // 15 and len(left) < len(made), "some segments were deleted"
    assert made[-len(left) :] == left, "the newest are kept"
    assert sum(p.stat().st_size for p in left) <= 1e6, "the segments kept are within the limit"
    assert len(list(tmp_path.glob("cam1_x_*.mp4"))) >= len(left), "another camera's segments are not touched"


def test_prune_by_age(tmp_path):
    old, new = tmp_path / "a.mp4", tmp_path / "b.mp4"
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert prune([old, new], None, 3600) == [old] and not old.exists() and new.exists()


def test_a_partly_written_fragment_is_cut_off_and_every_frame_left_decodes(tmp_path):
    """What a write that failed half-way (or a kill) leaves at a segment's end: cut, the rest plays to its end."""
    path = tmp_path / "cam1_20261208T000000Z.mp4"
    video = VideoFile(path, probe_codec("auto"), 30.0, 64, 64)
    for seq in range(90):  # three seconds: fragments of half a second
        video.write(noise(seq).image)
    video.close()
    whole = path.read_bytes()
    cut_to_whole_fragments(path)
    assert path.read_bytes() == whole, "a whole file is left as it is"

    cut = len(whole) * 4 // 5  # within a fragment's data (noise: the frames are most of the file)
    path.write_bytes(whole[:cut])
    cut_to_whole_fragments(path)
    kept = path.read_bytes()
    assert kept == whole[: len(kept)] and len(kept) < cut, "only cut, at a fragment's end"
    with av.open(str(path)) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert 30 <= decoded < 90 and playable_frames(path) == decoded

    path.write_bytes(whole[:600])  # within the first fragment: only the header stays, nothing plays
    cut_to_whole_fragments(path)
    assert playable_frames(path) == 0 and path.stat().st_size < 600
