"""End to end on photographic H.264 footage: the shipped demo model through the real pipeline.

The test films two held-out photo scenes (test-split seeds, so pictures the model never saw in
training), encodes each as an H.264 MP4 with the ffmpeg command, runs ``emim-stream run`` on both
files as two cameras (OpenCV decoding, shared-memory rings, the demo checkpoint, ZeroMQ) and reads
the label messages: the majority label of each camera must be its motion.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter

import numpy as np
import pytest

from emim_stream.engines.data.synthetic import SyntheticScene, clip_seed
from emim_stream.pipeline.comms.messages import LabelMessage
from tests.integration.conftest import free_port
from tests.integration.test_pipeline_e2e import collect

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="the ffmpeg command is not installed")

FPS = 25
SECONDS = 3
# motion -> test-split clip index of the scene: a translation and a zoom (the demo model's photographic figures:
# README, Demo model). The model shipped before the photographic fine-tunes (47%) fails here: it calls "up" recede.
MOTIONS = {"up": 12, "approach": 14}


def write_h264(path: str, label: str, index: int) -> None:
    """A 320x240 photo scene of ``label`` as an H.264 MP4 (libx264, yuv420p, crf 26)."""
    scene = SyntheticScene(clip_seed("test", index), 240, 320, fps=FPS, label=label, segment_s=10, style="photo")
    frames = np.stack([scene.frame(i) for i in range(FPS * SECONDS)])
    command = [
        "ffmpeg", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "320x240", "-r", str(FPS), "-i", "-",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "26", "-pix_fmt", "yuv420p", "-threads", "1", path,
    ]
    subprocess.run(command, input=frames.tobytes(), check=True, capture_output=True)


def test_demo_model_labels_photographic_h264_clips(pipeline_factory, tmp_path):
    cameras = []
    for label, index in MOTIONS.items():
        path = str(tmp_path / f"{label}.mp4")
        write_h264(path, label, index)
        cameras.append({"id": label, "source": path, "pace": True})
    port = free_port()
    config = {
        "cameras": cameras,
        "engine": {"backend": "torch", "device": "cpu", "checkpoint": "emim_xs.demo", "threads": 1},
        "window": {"stride": 4},
        "publish": {"endpoint": f"tcp://127.0.0.1:{port}", "heartbeat_s": 0.5},
    }
    p = pipeline_factory(config, duration=60)
    payloads = collect(f"tcp://127.0.0.1:{port}", 1000, 40, proc=p)
    assert p.wait(30) == 0
    assert "all cameras ended" in p.output()
    messages = [LabelMessage.from_payload(x) for x in payloads]
    for label in MOTIONS:
        said = Counter(m.topk[0][0] for m in messages if m.camera_id == label)
        assert sum(said.values()) >= 8, f"{label}: only {sum(said.values())} labels"
        top, count = said.most_common(1)[0]
        assert top == label, f"{label} camera: majority {top!r} ({count} of {sum(said.values())}; {dict(said)})"
