"""Streamed VMP prompts in sliding windows equal the batch VMP layer on the same T+1 raw frames."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from emim_stream.engines.layers.vmp import VmpLayer
from emim_stream.engines.transforms import normalise
from emim_stream.pipeline.inference.vmp_stage import VmpStage
from emim_stream.pipeline.inference.window import ClipWindow


def batch_reference(vmp: VmpLayer, raw: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """VmpLayer on T+1 raw uint8 frames [T+1, H, W, 3] -> prompts [3, T, H, W]."""
    x = normalise(torch.from_numpy(raw), (0.45,) * 3, (0.225,) * 3, dtype)  # [T+1, 3, H, W]
    with torch.no_grad():
        prompts, _ = vmp.to(dtype)(x.permute(1, 0, 2, 3)[None])
    return prompts[0]


@pytest.mark.parametrize(
    ("T", "stride", "dtype", "tol"),
    [(4, 1, torch.float32, 1e-6), (8, 3, torch.float32, 1e-6), (5, 5, torch.float64, 1e-12)],
)
def test_streamed_windows_equal_batch_vmp(T, stride, dtype, tol):
    rng = np.random.default_rng(T * 10 + stride)
    torch.manual_seed(T)
    vmp = VmpLayer().to(dtype)
    raw = rng.integers(0, 256, size=(40, 16, 24, 3), dtype=np.uint8)
    stage, window = VmpStage(vmp, dtype=dtype), ClipWindow(T, stride, 16, 24, dtype=dtype)
    served = []
    for seq, frame in enumerate(raw):
        prompt = stage.push(frame, seq)
        if prompt is not None and window.push(prompt, seq):
            first, last = window.first_seq, window.last_seq
            ref = batch_reference(vmp, raw[first - 1 : last + 1], dtype)  # T+1 frames: one before the window
            assert (window.clip() - ref).abs().max() < tol
            served.append(last)
    # first window once T prompts exist (frames 0..T), then every `stride` frames
    assert served[0] == T and all(b - a == stride for a, b in itertools.pairwise(served))
    assert served[-1] > 39 - stride


def test_gap_restarts_the_window():
    vmp = VmpLayer()
    stage, window = VmpStage(vmp), ClipWindow(3, 1, 8, 8)
    frames = np.random.default_rng(0).integers(0, 256, size=(20, 8, 8, 3), dtype=np.uint8)
    ready = []
    for seq in [*range(0, 6), *range(9, 16)]:  # frames 6..8 dropped
        prompt = stage.push(frames[seq], seq)
        if prompt is not None and window.push(prompt, seq):
            ready.append((window.first_seq, window.last_seq))
    # before the gap: windows end at 3, 4, 5; after it, frame 9 is only a reference, so the
    # first new window is prompts 10..12
    assert ready == [(1, 3), (2, 4), (3, 5), (10, 12), (11, 13), (12, 14), (13, 15)]


def test_passthrough_without_vmp_gives_normalised_frames():
    stage = VmpStage(None)
    frames = np.random.default_rng(1).integers(0, 256, size=(2, 4, 4, 3), dtype=np.uint8)
    assert stage.push(frames[0], 0) is None
    out = stage.push(frames[1], 1)
    expected = (torch.from_numpy(frames[1]).permute(2, 0, 1).float() / 255 - 0.45) / 0.225
    assert torch.allclose(out, expected, atol=1e-6)


def test_window_is_a_view_not_a_copy():
    window = ClipWindow(4, 2, 2, 2)
    for seq in range(6):
        window.push(torch.full((3, 2, 2), float(seq)), seq)
    clip = window.clip()
    assert clip.shape == (3, 4, 2, 2) and clip.data_ptr() >= window._buf.data_ptr()
    assert clip[0, :, 0, 0].tolist() == [2.0, 3.0, 4.0, 5.0]
    assert window.will_be_ready_within(1) is False and window.will_be_ready_within(2) is True
