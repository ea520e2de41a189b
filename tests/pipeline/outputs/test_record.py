"""Recorder: real MP4 encoding and decoding, rotation, overlay text, drops on a full queue."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from emim_stream.engines.errors import ConfigError
from emim_stream.pipeline.capture.ring import RingFrame
from emim_stream.pipeline.comms.messages import EventMessage, LabelMessage, ModelInfo, WindowInfo
from emim_stream.pipeline.config import CameraConfig, RecordConfig
from emim_stream.pipeline.outputs.record import Overlay, Recorder, draw_overlay, overlay_layout
from emim_stream.pipeline.outputs.segments import ENCODERS, probe_codec

FPS = 30.0


def cameras(*ids: str) -> list[CameraConfig]:
    """Cameras ``ids`` (recorded from their frames: no record_source)."""
    return [CameraConfig(id=i, source="synthetic://") for i in ids]


def frames(n: int, size: tuple[int, int] = (64, 64), start_seq: int = 0):
    """Frames of a moving bar, captured every 1/FPS s."""
    h, w = size
    for i in range(start_seq, start_seq + n):
        image = np.full((h, w, 3), 30, dtype=np.uint8)
        image[:, (i * 2) % w : (i * 2) % w + 6] = (220, 180, 40)
        yield RingFrame(i, image, capture_mono_ns=int(i * 1e9 / FPS), capture_wall_ns=0, source_pts_ns=0)


def label_message(top: str, score: float, total_ms: float) -> LabelMessage:
    return LabelMessage(
        camera_id="cam1",
        window=WindowInfo(0, 7, 8, 4, 233.3),
        topk=((top, score), ("static", 1 - score)),
        model=ModelInfo("emim_xs", "torch", "fp32", "cpu"),
        capture_mono_ns=0,
        capture_wall_ns=0,
        vmp_done_mono_ns=0,
        infer_start_mono_ns=0,
        infer_end_mono_ns=0,
        publish_mono_ns=0,
        publish_wall_ns=0,
        latency_ms={"infer": 10.0, "total": total_ms},
    )


def decode(path) -> tuple[list[np.ndarray], float, str]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    fps = cap.get(cv2.CAP_PROP_FPS)
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode(errors="replace")
    out = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        out.append(image)
    cap.release()
    return out, fps, fourcc


def region(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return image[y0:y1, x0:x1].astype(np.float64)


def test_codec_probe_picks_what_ffmpeg_can_encode():
    codec = probe_codec("auto")
    assert codec in ENCODERS
    assert probe_codec("mpeg4") == "mpeg4"
    if codec == "mpeg4":  # this build has no H.264 encoder: asking for it is a clear config error
        with pytest.raises(ConfigError, match="record.codec: 'h264' cannot be encoded"):
            probe_codec("h264")


def test_recordings_rotate_by_duration_and_decode_with_the_overlay(tmp_path):
    cfg = RecordConfig(dir=str(tmp_path), height=128, segment_s=1.0, queue_frames=1000)
    recorder = Recorder(cfg, cameras("cam1"))
    all_frames = list(frames(75))
    recorder.on_label(label_message("left", 0.97, 23.0))
    overlay = Overlay("left", 0.97, 23.0)
    for f in all_frames:
        recorder.on_frame("cam1", f)
    recorder.close()
    files = recorder.files["cam1"]
    assert len(files) == 3, "75 frames at 30 fps in files of at most 1 s"
    assert recorder.written["cam1"] == 75 and recorder.dropped["cam1"] == 0
    layout = overlay_layout(64, 64, 128)
    decoded = []
    for path in files:
        images, fps, fourcc = decode(path)
        assert fps == pytest.approx(FPS, rel=0.01)
        assert fourcc.lower() in ("avc1", "h264", "mp4v", "fmp4")
        assert images[0].shape == (layout.height, layout.width, 3)
        decoded += images
    assert len(decoded) == 75
    reference = draw_overlay(all_frames[0].image, overlay, layout)  # BGR, like the decoder's output
    other = draw_overlay(all_frames[0].image, Overlay("right", 0.97, 23.0), layout)
    for image in decoded:
        own = np.abs(region(image, layout.label_box) - region(reference, layout.label_box)).mean()
        wrong = np.abs(region(image, layout.label_box) - region(other, layout.label_box)).mean()
        assert own < 4 and wrong > 3 * own, (own, wrong)
    picture = decoded[10][layout.band :]
    expected = draw_overlay(all_frames[10].image, overlay, layout)[layout.band :]
    assert np.abs(picture.astype(np.float64) - expected).mean() < 6, "the picture is the frame, scaled up"


def test_a_full_queue_drops_frames_instead_of_waiting(tmp_path):
    recorder = Recorder(RecordConfig(dir=str(tmp_path), height=720, queue_frames=1), cameras("cam1"))
    offered = list(frames(300, size=(224, 224)))
    for f in offered:
        recorder.on_frame("cam1", f)
    recorder.close()
    assert recorder.dropped["cam1"] > 0
    assert recorder.written["cam1"] + recorder.dropped["cam1"] == len(offered)
    images, _, _ = decode(recorder.files["cam1"][0])
    assert len(images) == recorder.written["cam1"]


def test_record_config_is_checked(tmp_path):
    from emim_stream.pipeline.config import load_config

    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="record.dir: cannot create"):
        Recorder(RecordConfig(dir=str(tmp_path / "file" / "sub")), cameras("cam1"))

    with pytest.raises(ConfigError, match="record.height: must be in 32..2160"):
        load_config(None, ["cameras=[{id: c, source: 'synthetic://'}]", "record.height=8"])
    with pytest.raises(ConfigError, match="record.codec: must be one of"):
        load_config(None, ["cameras=[{id: c, source: 'synthetic://'}]", "record.codec=vp9"])
    with pytest.raises(ConfigError, match="view.preview_fps: must be in"):
        load_config(None, ["cameras=[{id: c, source: 'synthetic://'}]", "view.preview_fps=-1"])


def event_message(first_seq: int, last_seq: int, label: str = "left", phase: str = "end") -> EventMessage:
    return EventMessage(
        camera_id="cam1",
        id=f"{label}{first_seq:04d}".ljust(32, "0"),
        phase=phase,
        label=label,
        first_seq=first_seq,
        last_seq=last_seq,
        start_mono_ns=int(first_seq * 1e9 / FPS),
        start_wall_ns=1_700_000_000_000_000_000,
        end_mono_ns=int(last_seq * 1e9 / FPS),
        end_wall_ns=1_700_000_001_000_000_000,
        peak_score=0.9,
        mean_score=0.8,
        peak_seq=last_seq,
        windows=5,
        end_reason="exit" if phase == "end" else None,
    )


def test_event_clips_span_the_event_with_pre_and_post_roll(tmp_path):
    cfg = RecordConfig(dir=str(tmp_path), height=64, event_clips=True, clip_pre_s=1.0, clip_post_s=0.5, clip_max_s=4.0)
    recorder = Recorder(cfg, cameras("cam1"))
    stream = frames(300)
    for f in stream:
        recorder.on_frame("cam1", f)
        if f.seq == 70:
            recorder.on_event(event_message(60, 70, phase="start"))  # no clip for an event still open
        if f.seq == 120:  # events end a few windows after their last frame
            recorder.on_event(event_message(60, 110))
            recorder.on_event(event_message(0, 119, label="right"))  # 4 s long: the clip keeps its last 4 s
    recorder.close()
    left, right = recorder.clips["cam1"]
    assert left == recorder.event_paths(event_message(60, 110))[0]  # the path the event message names
    assert left.parent == tmp_path / "events" and left.name.startswith("cam1_left_20231114T")
    assert left.name.endswith("_left0060.mp4")  # the event id's first 8 characters
    images, fps, _ = decode(left)
    assert fps == pytest.approx(FPS, rel=0.01)
    assert len(images) == (110 + 15) - (60 - 30) + 1, "frames 30..125: 1 s before, 0.5 s after"
    assert len(decode(right)[0]) == 120 + 1, "frames 14..134: the clip's last 4 s, to 0.5 s after the event"
    assert recorder.files["cam1"], "the continuous recording goes on beside the clips"


def test_events_make_no_clip_unless_asked(tmp_path):
    recorder = Recorder(RecordConfig(dir=str(tmp_path), height=64), cameras("cam1"))
    for f in frames(60):
        recorder.on_frame("cam1", f)
    recorder.on_event(event_message(10, 30))
    recorder.close()
    assert recorder.clips["cam1"] == [] and not (tmp_path / "events").exists()
