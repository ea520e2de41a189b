"""Streaming equals offline: the labels a running pipeline publishes for a video file are an offline evaluation
of the same file, sampled the way the checkpoint says.

Real parts throughout: video files written with OpenCV at 15, 25 and 30 fps, ``emim-stream run`` in a
subprocess with paced file cameras (camera processes, shared memory, the torch engine), labels received over
ZeroMQ. The offline side decodes each file with the cameras' decoder (FFmpeg's, the default; OpenCV's in one
case, with training's resize), picks the frame nearest to each of the checkpoint's
sampling times (exact rational arithmetic on the files' nominal timelines, ties to the earlier frame:
independent of the pipeline's sampler), prepares frames as training and evaluation do and classifies each
window with ``evaluate``'s forward pass. Every published label must name the same first and last frame
numbers and the same probabilities (within 1e-4) as the offline window it covers.
"""

from __future__ import annotations

import contextlib
import itertools
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from emim_stream.engines.checkpoints.io import load_checkpoint, save_checkpoint
from emim_stream.engines.clip import ClipSampling, ClipSpec
from emim_stream.engines.layers.vmp import VmpLayer
from emim_stream.engines.models import build_model
from emim_stream.engines.training.evaluate import forward_clips
from emim_stream.engines.transforms import fit_frame
from emim_stream.pipeline.capture.ffmpeg import FfmpegSource
from emim_stream.pipeline.comms.messages import LabelMessage
from emim_stream.pipeline.comms.subscribe import Subscriber
from emim_stream.pipeline.errors import EndOfStream

pytestmark = pytest.mark.slow

RATES = (15, 25, 30)
SIZE, STRIDE, TOL = 32, 3, 1e-4
LABELS = ("a", "b", "c", "d", "e")


def write_video(path: Path, fps: int, seconds: float) -> Path:
    """An MJPG AVI with texture and motion defined in seconds, so every rate shows the same scene."""
    rng = np.random.default_rng(7)
    background = rng.integers(0, 200, (72, 96, 3), dtype=np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (96, 72))
    for j in range(round(seconds * fps)):
        t = j / fps
        frame = np.roll(background, int(12 * t), axis=1)
        x, y = int(8 + 50 * t) % 80, int(30 + 20 * np.sin(3 * t))
        frame[y : y + 16, x : x + 16] = (255, 255 - int(60 * t) % 255, 40)
        writer.write(frame)
    writer.release()
    return path


def make_checkpoint(path: Path, frames: int, sampling: ClipSampling) -> Path:
    """Seeded weights with a sharpened head (probabilities that move with the input), a VMP layer, and a
    normalisation other than the default: the pipeline must take it from the checkpoint."""
    torch.manual_seed(0)
    model = build_model("emim_xs", num_classes=len(LABELS))
    vmp = VmpLayer(mean=0.5, std=0.25)
    with torch.no_grad():
        model.head.weight.mul_(40.0)
        vmp.m.fill_(0.0)
        vmp.n.fill_(0.1)
    save_checkpoint(path, model, LABELS, ClipSpec(frames, SIZE, SIZE, (0.5,) * 3, (0.25,) * 3, sampling), vmp)
    return path


def nearest_frames(fps: int, count: int, sampled_fps: Fraction) -> list[int]:
    """Frame index nearest to each sampling time k / sampled_fps (ties: the earlier frame), while the file lasts."""
    frame_t = [Fraction(j, fps) for j in range(count)]
    end = frame_t[-1] + Fraction(1, 2 * fps)  # the last frame stands for times up to half a frame after it
    indices = []
    for k in itertools.count():
        t = k / sampled_fps
        if t > end:
            return indices
        indices.append(min(range(count), key=lambda j: (abs(frame_t[j] - t), j)))


def prepared_frames(video: Path, decoder: str) -> list[np.ndarray]:
    """Every frame of ``video`` as the model sees it: decoded and prepared as training does (OpenCV), or by the
    camera's FFmpeg decoder (its own decode and scale, run offline on the whole file)."""
    if decoder == "ffmpeg":
        frames = []
        with FfmpegSource(str(video), SIZE, SIZE, pace=False) as source, contextlib.suppress(EndOfStream):
            while True:
                frames.append(source.read().image)
        return frames
    cap = cv2.VideoCapture(str(video))
    prepared = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        prepared.append(cv2.cvtColor(fit_frame(bgr, SIZE, SIZE, "area"), cv2.COLOR_BGR2RGB))
    cap.release()
    return prepared


def offline_windows(
    video: Path, fps: int, checkpoint: Path, decoder: str = "ffmpeg"
) -> dict[tuple[int, int], list[np.ndarray]]:
    """(first frame, last frame) of every window of the sampled file -> its probabilities (each window in the
    stream: a window ends at every sample once T + 1 are in)."""
    ck = load_checkpoint(checkpoint)
    prepared = prepared_frames(video, decoder)
    rate = Fraction(ck.clip.sampling.sampled_fps(ck.clip.frames)).limit_denominator(1000)
    index = nearest_frames(fps, len(prepared), rate)
    T = ck.clip.frames
    ends = range(T, len(index))
    clips = torch.from_numpy(np.stack([np.stack([prepared[j] for j in index[e - T : e + 1]]) for e in ends]))
    with torch.no_grad():
        probs = torch.softmax(forward_clips(ck.model, ck.vmp, clips, ck.clip)[0], dim=-1).numpy()
    windows: dict[tuple[int, int], list[np.ndarray]] = {}
    for e, p in zip(ends, probs, strict=True):
        windows.setdefault((index[e - T + 1], index[e]), []).append(p)
    return windows


def files_config(tmp_path: Path, checkpoint: Path, videos: dict[str, Path], decoder: str = "ffmpeg") -> dict:
    """Paced file cameras, the checkpoint on the torch engine, every probability in the labels."""
    return {
        "cameras": [{"id": cam, "source": str(path), "decoder": decoder} for cam, path in videos.items()],
        "engine": {"backend": "torch", "device": "cpu", "checkpoint": str(checkpoint), "threads": 1,
                   "max_batch": len(videos)},
        "window": {"stride": STRIDE},
        "postprocess": {"topk": len(LABELS), "print_labels": False},
        "events": {"enabled": False},
        "view": {"preview_fps": 0},
        "publish": {"endpoint": f"ipc://{tmp_path}/labels.sock"},
    }


def run_files(pipeline_factory, config: dict) -> list[LabelMessage]:
    """``emim-stream run`` on ``config`` until its files end; every label it published, in order."""
    endpoint = config["publish"]["endpoint"]
    labels = []
    with Subscriber(endpoint, topics=(b"labels/",), timeout_s=1.0) as sub:  # connected before the first label
        p = pipeline_factory(config, extra=("--quiet",))
        while True:
            p.watch_children()
            got = sub.recv(0.5)
            if got is not None:
                labels.append(LabelMessage.from_payload(got.payload))
            elif p.proc.poll() is not None:  # the files have ended and every label has arrived
                break
        assert p.wait(10) == 0, p.output()[-3000:]
    return labels


def check_camera(labels: list[LabelMessage], windows: dict, cam: str, T: int) -> None:
    mine = [m for m in labels if m.camera_id == cam]
    assert len(mine) >= 2, f"{cam}: {len(mine)} labels"
    assert [m.msg_seq for m in mine] == list(range(len(mine))), f"{cam}: labels were lost on the way"
    for m in mine:
        key = (m.window.first_seq, m.window.last_seq)
        assert key in windows, f"{cam}: label over frames {key} is no window of the sampled file {sorted(windows)}"
        got = np.array([dict(m.topk)[name] for name in LABELS])
        assert min(np.abs(got - want).max() for want in windows[key]) <= TOL, (cam, key, got, windows[key])
        assert (m.window.frames, m.window.stride) == (T, STRIDE)


@pytest.mark.parametrize(("interval", "decoder"), [(1, "ffmpeg"), (2, "ffmpeg"), (4, "ffmpeg"), (4, "opencv")])
def test_streamed_labels_equal_the_offline_evaluation_of_the_sampled_files(
    pipeline_factory, tmp_path, interval, decoder
):
    """16x4-style sampling (one frame in ``interval`` at 30 fps) on cameras of 15, 25 and 30 fps; the offline side
    prepares the frames with the cameras' decoder."""
    checkpoint = make_checkpoint(tmp_path / "ck.pt", 4, ClipSampling(frame_interval=interval, fps=30.0))
    videos = {f"cam{fps}": write_video(tmp_path / f"scene{fps}.avi", fps, 2.4) for fps in RATES}
    labels = run_files(pipeline_factory, files_config(tmp_path, checkpoint, videos, decoder))
    for fps in RATES:
        check_camera(labels, offline_windows(videos[f"cam{fps}"], fps, checkpoint, decoder), f"cam{fps}", 4)
    spans = {(m.camera_id, m.window.last_seq - m.window.first_seq) for m in labels if m.camera_id != "cam25"}
    # T - 1 = 3 steps of `interval` frames at 30 fps, of half as many at 15 fps (at 30 samples/s each frame twice)
    expected = {1: {("cam30", 3), ("cam15", 1), ("cam15", 2)}, 2: {("cam30", 6), ("cam15", 3)},
                4: {("cam30", 12), ("cam15", 6)}}
    assert ("cam30", 3 * interval) in spans and spans <= expected[interval]


def test_a_16x4_checkpoint_spans_60_frames_at_30_fps_and_30_at_15(pipeline_factory, tmp_path):
    """The acceptance figures: T = 16, one frame in 4 at 30 fps; windows cover 2 s whatever the camera's rate."""
    checkpoint = make_checkpoint(tmp_path / "k400_16x4.pt", 16, ClipSampling(frame_interval=4, fps=30.0))
    videos = {f"cam{fps}": write_video(tmp_path / f"scene{fps}.avi", fps, 2.8) for fps in (15, 30)}
    labels = run_files(pipeline_factory, files_config(tmp_path, checkpoint, videos))
    for fps, frames in ((30, 60), (15, 30)):
        mine = [m for m in labels if m.camera_id == f"cam{fps}"]
        assert mine and {m.window.last_seq - m.window.first_seq for m in mine} == {frames}
        assert all(abs(m.window.span_ms - 2000) < 150 for m in mine), [m.window.span_ms for m in mine]
        check_camera(labels, offline_windows(videos[f"cam{fps}"], fps, checkpoint), f"cam{fps}", 16)


def test_with_the_recorder_on_every_frame_is_recorded_and_the_model_still_sees_its_samples(pipeline_factory, tmp_path):
    """The recorder's mode: cameras write every frame (the samples marked); labels are those of the samples."""
    checkpoint = make_checkpoint(tmp_path / "ck.pt", 4, ClipSampling(frame_interval=4, fps=30.0))
    videos = {"cam25": write_video(tmp_path / "scene25.avi", 25, 2.4)}
    config = files_config(tmp_path, checkpoint, videos)
    config["record"] = {"dir": str(tmp_path / "rec")}
    labels = run_files(pipeline_factory, config)
    check_camera(labels, offline_windows(videos["cam25"], 25, checkpoint), "cam25", 4)
    (recording,) = (tmp_path / "rec").glob("cam25_*.mp4")
    cap = cv2.VideoCapture(str(recording))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 60  # all 2.4 s x 25 fps, not the 18 samples at 7.5/s
    cap.release()


def test_a_camera_too_slow_for_the_sampling_ends_the_run_with_exit_2_naming_it(pipeline_factory, tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ck.pt", 4, ClipSampling(frame_interval=1, fps=30.0))
    config = files_config(tmp_path, checkpoint, {"cam5": write_video(tmp_path / "slow.avi", 5, 2.0)})
    p = pipeline_factory(config)
    assert p.wait(60) == 2
    out = p.output()
    assert (
        "emim-stream run: error: camera cam5: the camera delivers 5 fps but the model samples 30 frames/s "
        "(checkpoint: consecutive frames at 30 fps"
    ) in out, out[-2000:]
    assert "Traceback" not in out
