"""CameraStream on a real ring holding every camera frame with the model's samples marked (the recorder's mode):
frame taps see every frame, the model only its samples (a repeated frame twice), a lost sample restarts the
window, and every window equals the batch VMP layer on its samples' frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emim_stream.engines.layers.vmp import VmpLayer, clip_inputs
from emim_stream.pipeline.capture.ring import RingFrame, SharedRing
from emim_stream.pipeline.inference.postprocess import Postprocessor
from emim_stream.pipeline.inference.stream import CameraStream
from emim_stream.pipeline.inference.vmp_stage import VmpStage
from emim_stream.pipeline.inference.window import ClipWindow

T, H, W = 3, 8, 12
MEAN, STD = (0.5,) * 3, (0.25,) * 3
# frame number -> (its first sample, how many samples it is): samples 0..10 but 6 (lost); frame 4 is two samples
SAMPLES = {0: (0, 1), 1: (1, 0), 2: (1, 1), 3: (2, 0), 4: (2, 2), 5: (4, 0), 6: (4, 1), 7: (5, 1), 8: (7, 1),
           9: (8, 1), 10: (9, 1), 11: (10, 1)}  # fmt: skip


class SeenFrames:
    """A frame tap that notes the frame numbers it is shown."""

    def __init__(self) -> None:
        self.frames: list[int] = []

    def on_frame(self, camera_id: str, frame: RingFrame) -> None:
        self.frames.append(frame.frame_seq)


@pytest.fixture
def ring():
    with SharedRing.create(16, H, W) as r:
        yield r


def test_taps_see_every_frame_and_the_model_its_samples(ring):
    torch.manual_seed(0)
    vmp = VmpLayer(mean=MEAN[0], std=STD[0]).eval()
    images = np.random.default_rng(0).integers(0, 256, (len(SAMPLES), H, W, 3), np.uint8)
    tap = SeenFrames()
    stream = CameraStream("cam1", ring, VmpStage(vmp, "cpu", MEAN, STD), ClipWindow(T, 1, H, W),
                          Postprocessor(("a", "b")), taps=[tap])
    windows = []
    for j, (first, count) in SAMPLES.items():
        ring.write(images[j], j, 1_000 * j, 2_000 * j, frame_seq=j, sample_seq=first, samples=count)
        while stream.drain(4):
            job = stream.pending
            windows.append((job.first_seq, job.last_seq, job.first_capture_mono_ns, job.clip.clone()))
            stream.pending = None
    assert tap.frames == list(SAMPLES)
    # sample -> frame: 0:0 1:2 2:4 3:4 4:6 5:7 (6 lost) 7:8 8:9 9:10 10:11. A window is T samples after VMP's
    # reference sample; (first, last) frame numbers -> the frames of its T + 1 samples:
    expected = {(2, 4): [0, 2, 4, 4], (4, 6): [2, 4, 4, 6], (4, 7): [4, 4, 6, 7], (9, 11): [8, 9, 10, 11]}
    assert [(first, last) for first, last, _, _ in windows] == list(expected)
    assert stream.dropped_windows == 0
    for first, last, first_capture, clip in windows:
        want, _ = clip_inputs(torch.from_numpy(images[expected[first, last]])[None], vmp, MEAN, STD)
        torch.testing.assert_close(clip, want[0], rtol=0, atol=1e-6)
        assert first_capture == 1_000 * first  # the capture time of the window's oldest sample
