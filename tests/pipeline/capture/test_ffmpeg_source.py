"""emim_stream.pipeline.capture.ffmpeg: the FFmpeg decoder on real files (written with cv2.VideoWriter and the ffmpeg
command), a real MJPEG-over-HTTP stream on 127.0.0.1, refused and silent endpoints; its picture against the OpenCV
path's; the hwaccel presets' command lines, ``none`` run for real (RTSP: test_rtsp_source.py)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import get_args

import numpy as np
import pytest

from emim_stream.engines.errors import ConfigError
from emim_stream.pipeline.capture.ffmpeg import FfmpegSource
from emim_stream.pipeline.capture.hwaccel import HWACCELS, PRESETS, ffmpeg_command, ffmpeg_hwaccels, preset_support
from emim_stream.pipeline.capture.preprocess import Preprocessor
from emim_stream.pipeline.capture.sources import (
    DECODERS,
    FrameSource,
    OpenCvSource,
    PreparedFrame,
    SourceState,
    open_source,
)
from emim_stream.pipeline.config import CameraConfig, Decoder, FieldError, Hwaccel
from emim_stream.pipeline.errors import EndOfStream, SourceError
from tests.pipeline.capture.test_sources import FPS, FRAMES, HEIGHT, OUT, WIDTH, _write_video


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return _write_video(tmp_path / "clip.avi", "MJPG")


def _levels(frames: list[PreparedFrame]) -> list[int]:
    return [round(float(frame.image.mean()) / 20) for frame in frames]


def _read_all(source: FfmpegSource) -> list[PreparedFrame]:
    frames = []
    with pytest.raises(EndOfStream):
        while True:
            if (frame := source.read()) is not None:
                frames.append(frame)
    return frames


@pytest.mark.parametrize(("name", "fourcc"), [("clip.avi", "MJPG"), ("clip.mp4", "mp4v")])
def test_file_frames_come_scaled_rgb_in_order_with_timestamps(tmp_path, name, fourcc):
    path = _write_video(tmp_path / name, fourcc)
    with FfmpegSource(str(path), *OUT, pace=False) as source:
        assert source.state is SourceState.LIVE and isinstance(source, FrameSource)
        frames = _read_all(source)
        assert source.state is SourceState.ENDED
        with pytest.raises(EndOfStream):
            source.read()
    assert _levels(frames) == list(range(FRAMES))
    for frame in frames:
        assert frame.image.shape == (*OUT, 3) and frame.image.dtype == np.uint8 and frame.image.flags.c_contiguous
        assert frame.source_size == (WIDTH, HEIGHT)
    assert [round(f.source_pts_ns / 1e6) for f in frames] == [40 * i for i in range(FRAMES)]
    stamps = [f.capture_mono_ns for f in frames]
    assert stamps == sorted(stamps)
    assert abs(frames[0].capture_wall_ns - time.time_ns()) < 10**10


def test_frames_are_prepared_on_first_use_in_any_order(video):
    with FfmpegSource(str(video), *OUT, pace=False) as source:
        frames = [source.read() for _ in range(6)]
        assert _levels(frames[::-1]) == [5, 4, 3, 2, 1, 0]  # each kept its own decoded picture
        assert frames[2].image is frames[2].image  # made once


def test_the_picture_matches_the_opencv_path(tmp_path):
    """A textured 1080p H.264 file: the FFmpeg decoder's 112x112 frames against decode + Preprocessor (area)."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs the ffmpeg command to make an H.264 file")
    path = tmp_path / "pattern.mp4"
    cmd = ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30", "-t", "0.4",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=120)
    pre = Preprocessor(112, 112, "area")
    with FfmpegSource(str(path), 112, 112, pace=False) as ours, OpenCvSource(str(path), pace=False) as theirs:
        diffs = [np.abs(ours.read().image.astype(int) - pre(theirs.read().image)) for _ in range(10)]
    d = np.stack(diffs)
    assert d.mean() < 1.5 and np.percentile(d, 99) <= 8, (d.mean(), np.percentile(d, 99))


def test_info_reopen_and_close(video):
    source = FfmpegSource(str(video), *OUT, pace=False)
    assert source.state is SourceState.CONNECTING
    info = source.open()
    assert (info.width, info.height, info.fps, info.is_live, info.backend) == (WIDTH, HEIGHT, FPS, False, "FFmpeg")
    _read_all(source)
    source.open()  # a finite source opens again from the start
    assert _levels([source.read()]) == [0]
    source.close()
    assert source.state is SourceState.ENDED
    with pytest.raises(RuntimeError):
        source.read()


def test_missing_directory_and_junk_files_are_source_errors(tmp_path):
    with pytest.raises(SourceError, match="video file not found: .*nope.mp4"):
        FfmpegSource(str(tmp_path / "nope.mp4"), *OUT).open()
    with pytest.raises(SourceError, match="is a directory"):
        FfmpegSource(str(tmp_path), *OUT).open()
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(200_000))
    with pytest.raises(SourceError, match="junk.mp4: FFmpeg cannot open it") as err:
        FfmpegSource(str(junk), *OUT).open()
    assert type(err.value) is SourceError


def test_open_source_picks_the_decoder_and_keeps_opencv_for_usb_cameras(video):
    source = open_source(str(video), loop=True, pace=False, decoder="ffmpeg", size=OUT, resize="linear")
    assert isinstance(source, FfmpegSource) and (source.loop, source.pace) == (True, False)
    assert isinstance(open_source(str(video), decoder="opencv"), OpenCvSource)
    assert isinstance(open_source(0, decoder="ffmpeg", size=OUT), OpenCvSource)
    with pytest.raises(ConfigError, match="needs the output size"):
        open_source(str(video), decoder="ffmpeg")
    with pytest.raises(ConfigError, match="decoder must be one of opencv, ffmpeg"):
        open_source(str(video), decoder="gstreamer")
    with pytest.raises(ConfigError, match="needs 'opencv'"):
        FfmpegSource("0", *OUT)
    with pytest.raises(ConfigError, match="resize 'cubic'"):
        FfmpegSource(str(video), *OUT, resize="cubic")


def test_config_choices_are_the_code_choices():
    assert get_args(Decoder) == DECODERS and get_args(Hwaccel) == HWACCELS
    assert CameraConfig("a", "x.mp4").decoder == "ffmpeg"
    with pytest.raises(FieldError, match="hwaccel: 'nvidia' needs decoder: ffmpeg"):
        CameraConfig("a", "x.mp4", decoder="opencv", hwaccel="nvidia")


# --- hwaccel presets -----------------------------------------------------------------------------------------------


def _split(cmd: list[str]) -> tuple[list[str], str]:
    """The options up to the input, and the filter chain, of an ``ffmpeg_command`` line (whose frame is fixed)."""
    assert cmd[:5] == ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin"]
    i = cmd.index("-i")
    vf = cmd[i + 4]
    assert cmd[i + 2 :] == ["-an", "-vf", vf, "-pix_fmt", "rgb24", "-f", "rawvideo", "pipe:1"]
    return cmd[5 : i + 2], vf


def test_preset_command_lines():
    def line(name: str, method: str = "area") -> tuple[list[str], str]:
        return _split(ffmpeg_command(name, "rtsp://cam/main", (1920, 1080), 224, 224, method))

    cpu_vf = "crop=1080:1080:420:0,scale=224:224:flags=area+full_chroma_int,format=rgb24"
    device_vf = "{}=w=398:h=224,hwdownload,format=nv12,crop=224:224:87:0,format=rgb24"  # cover 398x224, then crop
    assert line("none") == (["-i", "rtsp://cam/main"], cpu_vf)
    assert line("nvidia") == (
        ["-hwaccel", "cuda", "-hwaccel_output_format", "cuda", "-i", "rtsp://cam/main"],
        device_vf.format("scale_cuda"),
    )
    assert line("vaapi") == (
        ["-hwaccel", "vaapi", "-hwaccel_device", "/dev/dri/renderD128", "-hwaccel_output_format", "vaapi",
         "-i", "rtsp://cam/main"],
        device_vf.format("scale_vaapi"),
    )  # fmt: skip
    assert line("qsv") == (
        ["-hwaccel", "qsv", "-qsv_device", "/dev/dri/renderD128", "-hwaccel_output_format", "qsv",
         "-i", "rtsp://cam/main"],
        device_vf.format("scale_qsv"),
    )  # fmt: skip
    assert line("jetson", "linear") == (["-c:v", "h264_nvmpi", "-i", "rtsp://cam/main"],
                                        cpu_vf.replace("area", "neighbor"))  # fmt: skip
    realtime = ffmpeg_command("none", "x.mp4", (640, 480), 224, 224, realtime=True)
    assert realtime[realtime.index("-i") - 1] == "-re"
    assert all(PRESETS[name].needs for name in HWACCELS)
    with pytest.raises(ConfigError, match="hwaccel 'cuda' is not a preset"):
        ffmpeg_command("cuda", "x", (640, 480), 224, 224)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg command")
def test_the_none_preset_runs_and_gives_the_decoders_frames(video):
    """The command line of ``none`` run for real: raw RGB frames equal to the in-process decoder's."""
    cmd = ffmpeg_command("none", str(video), (WIDTH, HEIGHT), *OUT)
    done = subprocess.run(cmd, capture_output=True, timeout=60, check=True)
    frames = np.frombuffer(done.stdout, np.uint8).reshape(-1, *OUT, 3)
    with FfmpegSource(str(video), *OUT, pace=False) as source:
        ours = np.stack([f.image for f in _read_all(source)])
    assert frames.shape == ours.shape == (FRAMES, *OUT, 3)
    assert np.abs(frames.astype(int) - ours).max() <= 1


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg command")
def test_ffmpeg_hwaccels_lists_the_methods_without_the_heading():
    methods = ffmpeg_hwaccels()
    assert all(name.isidentifier() for name in methods), methods
    assert ffmpeg_hwaccels("/nonexistent/ffmpeg") == []


def test_a_preset_this_ffmpeg_cannot_use_is_a_config_error_naming_it(video):
    from av.codec.hwaccel import hwdevices_available

    missing = [n for n in HWACCELS if PRESETS[n].device_type not in (None, *hwdevices_available())]
    for name in missing:
        with pytest.raises(ConfigError, match=f"hwaccel '{name}': this FFmpeg"):
            FfmpegSource(str(video), *OUT, hwaccel=name)
    with pytest.raises(ConfigError, match="hwaccel 'jetson': this FFmpeg has no h264_nvmpi decoder"):
        FfmpegSource(str(video), *OUT, hwaccel="jetson")
    with pytest.raises(ConfigError, match="hwaccel 'gpu' is not a preset"):
        FfmpegSource(str(video), *OUT, hwaccel="gpu")


def test_preset_support_reads_the_lists_doctor_gives_it():
    assert preset_support("none", [], [], set()) == "yes"
    nvidia = preset_support("nvidia", ["vaapi", "cuda"], ["qsv"], set())
    assert nvidia.startswith("camera process no, ffmpeg command yes (cuda); needs an NVIDIA GPU")
    assert preset_support("jetson", [], [], {"h264_nvmpi"}) == "yes"
    assert preset_support("jetson", ["cuda"], ["cuda"], {"h264"}) == "no: this FFmpeg has no h264_nvmpi decoder"


@pytest.mark.skipif(Path("/dev/nvidia0").exists(), reason="an NVIDIA GPU is attached: the nvidia preset would open")
def test_a_device_preset_without_its_device_says_what_it_needs(video):
    from av.codec.hwaccel import hwdevices_available

    if "cuda" not in hwdevices_available():
        pytest.skip("this PyAV has no cuda devices at all (a ConfigError, tested above)")
    with pytest.raises(SourceError, match="cannot open it on hwaccel 'nvidia' .*needs an NVIDIA GPU and driver"):
        FfmpegSource(str(video), *OUT, hwaccel="nvidia").open()
