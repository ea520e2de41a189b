"""Calibration clips: the runtime's prompts from real sources and videos, shards + manifest, clear refusals.

Sources are read the calibrate command's way (:func:`emim_stream.cli.commands.calibrate.collect_from_source`:
open_source,
the camera's Preprocessor, then :func:`emim_stream.calibration.clips.collect_from_frames`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging

import cv2
import numpy as np
import pytest
import torch

from emim_stream.calibration import clips as clips_module
from emim_stream.calibration.clips import (
    MANIFEST,
    Split,
    clip_windows,
    collect_from_dataset,
    collect_from_frames,
    load_clips,
)
from emim_stream.calibration.errors import CalibrationError
from emim_stream.cli.commands.calibrate import collect_from_source
from emim_stream.engines.backends.base import EngineConfig
from emim_stream.engines.backends.model_source import ModelSource, load_source
from emim_stream.engines.layers.vmp import VmpLayer
from emim_stream.engines.transforms import ResizeMethod
from emim_stream.pipeline.capture.preprocess import Preprocessor
from emim_stream.pipeline.capture.sources import SyntheticSource
from emim_stream.pipeline.inference.vmp_stage import VmpStage
from emim_stream.pipeline.inference.window import ClipWindow

T, SIZE = 4, 64
URI = "synthetic://?seed=3&size=80x64&segment_s=1"
AREA = ResizeMethod.AREA  # as cameras[i].resize carries it


@pytest.fixture(scope="module")
def untrained() -> ModelSource:
    return load_source(EngineConfig(model="emim_xs", frames=T, height=SIZE, width=SIZE))


@pytest.fixture(scope="module")
def with_vmp(untrained) -> ModelSource:
    """The same backbone with a learned-looking VMP layer (as a trained checkpoint has)."""
    vmp = VmpLayer()
    with torch.no_grad():
        vmp.m.fill_(0.7)
        vmp.n.fill_(-0.2)
    return dataclasses.replace(untrained, vmp=vmp.eval(), weights_sha256="5e" * 32)


def runtime_clips(model: ModelSource, uri: str, count: int, stride: int = T) -> list[torch.Tensor]:
    """Reference: the runtime's streaming path, camera Preprocessor -> VmpStage -> ClipWindow, on the same source."""
    pre = Preprocessor(SIZE, SIZE, "area")
    stage = VmpStage(model.vmp, "cpu", model.clip.mean, model.clip.std)
    window = ClipWindow(T, stride, SIZE, SIZE)
    clips = []
    with SyntheticSource(uri, pace=False) as src:
        for seq in itertools.count():
            prompt = stage.push(pre(src.read().image, bgr=True), seq)
            if prompt is not None and window.push(prompt, seq):
                clips.append(window.clip().clone())
                if len(clips) == count:
                    return clips
    raise AssertionError("unreachable: the synthetic source is endless")


def test_source_clips_are_the_runtime_prompts_split_and_sharded(with_vmp, tmp_path):
    seen = []
    manifest = collect_from_source(
        URI, with_vmp, tmp_path, calibration=3, held_out=1, progress=lambda done, total: seen.append((done, total))
    )
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert manifest.counts == {"calibration": 3, "held_out": 1}
    assert manifest.input_shape == (3, T, SIZE, SIZE) and manifest.vmp and manifest.weights_sha256 == "5e" * 32
    record = json.loads((tmp_path / MANIFEST).read_text())
    assert record["format"] == "emim-stream.calibration-clips/1" and record["source"] == URI
    assert record["created_wall"].endswith("+00:00")

    clips = load_clips(tmp_path, with_vmp)
    calibration = torch.cat(list(clips.batches(Split.CALIBRATION, 2)))
    held_out = torch.cat(list(clips.batches(Split.HELD_OUT, 2)))
    expected = runtime_clips(with_vmp, URI, 4)  # held out: every 4th clip (the last of 4)
    for got, want in zip([*calibration, *held_out], expected, strict=True):
        assert (got - want).abs().max() < 1e-6  # float32 prompts in [-2, 2.5]: a few ulp of elementwise maths


def test_overlapping_clips_without_vmp_are_the_runtime_frames(untrained, tmp_path):
    """Stride 2 < T (clips share frames) and no VMP layer (the pass-through stage): still the runtime's clips."""
    manifest = collect_from_source(URI, untrained, tmp_path, calibration=3, held_out=0, stride=2, resize=AREA)
    assert type(manifest.resize) is str and manifest.resize == "area"  # a config's enum member, written as its name
    got = torch.cat(list(load_clips(tmp_path, untrained).batches(Split.CALIBRATION, 8)))
    for clip, want in zip(got, runtime_clips(untrained, URI, 3, stride=2), strict=True):
        assert torch.equal(clip, want)  # normalisation alone: the same elementwise operations, bit for bit


@pytest.mark.parametrize(("T_", "stride"), [(4, 4), (4, 1), (3, 2), (2, 5)])
def test_clip_windows_are_the_runtime_clip_windows(T_, stride):
    """Frame k carries the number k; a window of T+1 frames ends where the runtime's ClipWindow serves one."""
    frames = [np.full((1, 1, 3), k, np.uint8) for k in range(30)]
    window, served = ClipWindow(T_, stride, 1, 1), []
    for seq in range(1, 30):  # frame 0 only serves as the first prompt's reference
        if window.push(torch.zeros(3, 1, 1), seq):
            served.append(list(range(window.first_seq - 1, window.last_seq + 1)))
    got = [w[:, 0, 0, 0].tolist() for w in clip_windows(frames, T_ + 1, stride)]
    assert got == served and len(got) >= 5


def test_frames_of_another_size_are_refused(untrained, tmp_path):
    frames = (np.zeros((SIZE, SIZE + 1, 3), np.uint8) for _ in range(2 * T))
    with pytest.raises(
        CalibrationError, match=r"frames from cam are uint8 \[64, 65, 3\]; the model takes .*\[64, 64, 3\]"
    ):
        collect_from_frames(frames, untrained, tmp_path, calibration=1, held_out=0, source="cam")


def test_a_short_file_gives_the_clips_it_has(untrained, tmp_path, caplog):
    video = tmp_path / "short.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (80, 64))
    rng = np.random.default_rng(0)
    for _ in range(2 * T + 2):  # frames for 2 clips (stride T), not for the 6 asked
        writer.write(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8))
    writer.release()
    with caplog.at_level(logging.WARNING):
        manifest = collect_from_source(str(video), untrained, tmp_path / "clips", calibration=4, held_out=2)
    assert sum(manifest.counts.values()) == 2 and manifest.counts["calibration"] >= 1
    assert "gave 2 of 6 clips" in caplog.text


def test_a_source_that_ends_before_the_first_clip_is_refused(untrained, tmp_path):
    video = tmp_path / "tiny.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (80, 64))
    for _ in range(T):  # a clip needs T+1 frames
        writer.write(np.full((64, 80, 3), 128, np.uint8))
    writer.release()
    with pytest.raises(CalibrationError, match="no calibration clips could be collected"):
        collect_from_source(str(video), untrained, tmp_path / "clips", calibration=2, held_out=1)


def test_dataset_folder_clips_from_real_videos(with_vmp, tmp_path, caplog):
    rng = np.random.default_rng(1)
    for label in ("wave", "walk"):
        (tmp_path / "data" / label).mkdir(parents=True)
        writer = cv2.VideoWriter(
            str(tmp_path / "data" / label / "a.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (96, 72)
        )
        for _ in range(10):
            writer.write(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8))
        writer.release()
    with caplog.at_level(logging.WARNING):
        manifest = collect_from_dataset(str(tmp_path / "data"), with_vmp, tmp_path / "clips", calibration=3, held_out=1)
    assert "2 items for 4 clips" in caplog.text
    assert manifest.counts == {"calibration": 3, "held_out": 1} and manifest.source == str(tmp_path / "data")
    clips = load_clips(tmp_path / "clips", with_vmp)
    batch = next(clips.batches(Split.CALIBRATION, 8))
    assert batch.shape == (3, 3, T, SIZE, SIZE) and batch.dtype == torch.float32
    assert torch.isfinite(batch).all() and batch.abs().max() > 0.5


def test_clips_spread_over_shards_read_back_in_order(untrained, tmp_path, monkeypatch):
    monkeypatch.setattr(clips_module, "SHARD_BYTES", 2 * 4 * 3 * T * SIZE * SIZE)  # two clips per shard
    manifest = collect_from_source(URI, untrained, tmp_path, calibration=5, held_out=2)
    files = [(s.file, s.split, s.count) for s in manifest.shards]
    assert sorted(files) == [
        ("calibration-000.npy", "calibration", 2),
        ("calibration-001.npy", "calibration", 2),
        ("calibration-002.npy", "calibration", 1),
        ("held_out-000.npy", "held_out", 2),
    ]
    clips = load_clips(tmp_path, untrained)
    calibration = torch.cat(list(clips.batches(Split.CALIBRATION, 8)))
    held_out = torch.cat(list(clips.batches(Split.HELD_OUT, 8)))
    assert calibration.shape[0] == 5 and held_out.shape[0] == 2
    # clips 0..6 in source order; held out: clips 3 and 6 (every 7/2-th)
    in_source_order = torch.stack([*calibration[:3], held_out[0], *calibration[3:], held_out[1]])
    again = collect_from_source(URI, untrained, tmp_path / "again", calibration=7, held_out=0)
    assert again.counts == {"calibration": 7, "held_out": 0}
    reference = torch.cat(list(load_clips(tmp_path / "again", untrained).batches(Split.CALIBRATION, 8)))
    assert torch.equal(in_source_order, reference)


def test_counts_are_checked(untrained, tmp_path):
    with pytest.raises(CalibrationError, match="at least 1 clip"):
        collect_from_source(URI, untrained, tmp_path, calibration=0, held_out=2)


def test_no_clips_wrong_shape_and_foreign_model_are_refused(untrained, tmp_path):
    with pytest.raises(CalibrationError, match=r"no calibration clips in .*manifest\.json"):
        load_clips(tmp_path / "empty", untrained)
    collect_from_source(URI, untrained, tmp_path / "clips", calibration=2, held_out=1)

    other_size = dataclasses.replace(untrained, clip=dataclasses.replace(untrained.clip, height=96, width=96))
    with pytest.raises(CalibrationError, match=r"are \[3, 4, 64, 64\] .* model takes \[3, 4, 96, 96\]"):
        load_clips(tmp_path / "clips", other_size)

    foreign = dataclasses.replace(untrained, weights_sha256="0f" * 32)
    with pytest.raises(
        CalibrationError, match="collected for emim_xs weights .* but the model is emim_xs weights 0f0f"
    ):
        load_clips(tmp_path / "clips", foreign)

    shard = tmp_path / "clips" / "calibration-000.npy"
    np.save(shard, np.zeros((2, 3, T, 32, 32), np.float32))  # a shard that lies about its manifest
    with pytest.raises(CalibrationError, match="calibration-000.npy' is float32 \\[2, 3, 4, 32, 32\\]"):
        load_clips(tmp_path / "clips", untrained)
