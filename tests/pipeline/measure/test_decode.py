"""The decode benchmark on real H.264 files made with FFmpeg: what each measurement counts, the copy of a stream
(``record_source``) is a playable file of every frame, and ``emim-stream bench-decode`` prints every row."""

from __future__ import annotations

import re
import subprocess
import sys

import av
import pytest

from emim_stream.pipeline.measure.decode import copy_cost, decode_cost, make_test_video, pixel_difference
from emim_stream.pipeline.outputs.segments import playable_frames

pytestmark = pytest.mark.skipif(not __import__("shutil").which("ffmpeg"), reason="needs the ffmpeg command")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return make_test_video(tmp_path_factory.mktemp("decode") / "v.mp4", 320, 240, 30, 1.0, "500k")


@pytest.mark.parametrize("decoder", ["opencv", "ffmpeg"])
def test_decode_cost_decodes_every_frame_and_prepares_one_in_n(video, decoder):
    cost = decode_cost(video, decoder, "area", 32, frames=45, every=4)  # past the file's end: it loops
    assert (cost.frames, cost.prepared) == (45, 12) and cost.cpu_ms_per_frame > 0 and cost.fps > 0
    assert cost.cameras_per_core(30) == pytest.approx(1000 / (cost.cpu_ms_per_frame * 30))


def test_the_two_decoders_frames_are_about_one_level_apart(video):
    mean, p99, top = pixel_difference(video, "area", 32)
    assert mean < 2 and p99 <= 10 and top < 64, (mean, p99, top)


def test_copy_cost_writes_segments_that_play_every_frame(video, tmp_path):
    assert copy_cost(video, 45, tmp_path) > 0
    copies = sorted(tmp_path.glob("copy*.mp4"))
    assert [p.name for p in copies] == ["copy0.mp4", "copy30.mp4"]  # the 30-frame file, then 15 of it again
    assert [playable_frames(p) for p in copies] == [30, 15]
    with av.open(str(copies[0])) as container:
        assert sum(1 for _ in container.decode(video=0)) == 30


@pytest.mark.slow  # makes 1080p, 720p and 360p videos and decodes them
def test_bench_decode_prints_every_row_and_the_sub_stream_comparison(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "emim_stream.cli", "bench-decode", "--frames", "10", "--seconds", "0",
         "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = re.findall(r"^(1080p|720p|360p)\s+(opencv|ffmpeg)\s+(area|pyramid|linear)\s+[\d.]+", done.stdout, re.M)
    assert len(rows) == 15 and {r[0] for r in rows} == {"1080p", "720p", "360p"}, done.stdout
    assert re.search(r"sub-stream: .* cost [\d.]+ ms/frame, [\d.]+x less than decoding the 1080p stream", done.stdout)
