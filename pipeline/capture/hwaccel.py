"""Hardware decode presets of the FFmpeg decoder (``cameras[].hwaccel``), in the style of Frigate's.

A preset names the FFmpeg hardware device a camera decodes on and how the picture reaches the model's size:

- ``none``: decode on the CPU, crop the centre window, then scale it (only the kept pixels are scaled).
- ``nvidia``: NVDEC (``-hwaccel cuda``), scaled on the GPU by ``scale_cuda``, then downloaded.
- ``vaapi``: VA-API (Intel and AMD GPUs, ``/dev/dri/renderD128``), scaled by ``scale_vaapi``.
- ``qsv``: Intel Quick Sync (``-hwaccel qsv``), scaled by ``scale_qsv``.
- ``jetson``: NVIDIA Jetson's decoder through jetson-ffmpeg's ``h264_nvmpi``, scaled on the CPU.

A device scaler cannot crop, so a device preset scales the whole frame to cover the model's size and crops the
small picture after the download: the same picture as ``none`` up to sub-pixel rounding of the window.
:func:`ffmpeg_command` writes a preset as an ``ffmpeg`` command line (raw RGB frames on stdout): the form the
tests check and ``tools/gpu-check`` runs. The camera process decodes in-process with PyAV: there a preset selects
the device (:attr:`HwaccelPreset.device_type`), frames are downloaded as they are decoded and the crop and scale
run on the CPU at the decoded size.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from emim_stream.engines.errors import ConfigError
from emim_stream.engines.transforms import ResizeMethod

__all__ = [
    "HWACCELS",
    "PRESETS",
    "HwaccelPreset",
    "cover_crop",
    "ffmpeg_command",
    "ffmpeg_hwaccels",
    "preset_support",
    "scale_flags",
]


@dataclass(frozen=True, slots=True)
class HwaccelPreset:
    """One way to decode and scale with FFmpeg."""

    name: str
    device_type: str | None
    """FFmpeg's hardware device type (``ffmpeg -hwaccels`` lists the built-in ones); None: the CPU."""
    input_args: tuple[str, ...]
    """``ffmpeg`` options before ``-i``."""
    scaler: str | None
    """The device's scale filter (``w``/``h`` options) whose output is downloaded; None: scale on the CPU."""
    decoder: str | None
    """A decoder to use by name instead of FFmpeg's default for the codec (``h264_nvmpi``); None: the default."""
    needs: str
    """What the box needs for this preset."""


PRESETS: dict[str, HwaccelPreset] = {
    "none": HwaccelPreset("none", None, (), None, None, "nothing: software decoding"),
    "nvidia": HwaccelPreset(
        "nvidia",
        "cuda",
        ("-hwaccel", "cuda", "-hwaccel_output_format", "cuda"),
        "scale_cuda",
        None,
        "an NVIDIA GPU and driver; FFmpeg built with NVDEC (cuda) and scale_cuda (--enable-cuda-llvm or -nvcc)",
    ),
    "vaapi": HwaccelPreset(
        "vaapi",
        "vaapi",
        ("-hwaccel", "vaapi", "-hwaccel_device", "/dev/dri/renderD128", "-hwaccel_output_format", "vaapi"),
        "scale_vaapi",
        None,
        "an Intel or AMD GPU at /dev/dri/renderD128 with its VA-API driver (intel-media-va-driver, mesa-va-drivers)",
    ),
    "qsv": HwaccelPreset(
        "qsv",
        "qsv",
        ("-hwaccel", "qsv", "-qsv_device", "/dev/dri/renderD128", "-hwaccel_output_format", "qsv"),
        "scale_qsv",
        None,
        "an Intel GPU with the oneVPL or Media SDK runtime (libmfx) and FFmpeg built with --enable-libmfx/libvpl",
    ),
    "jetson": HwaccelPreset(
        "jetson",
        None,
        ("-c:v", "h264_nvmpi"),
        None,
        "h264_nvmpi",
        "an NVIDIA Jetson with FFmpeg built with jetson-ffmpeg (the h264_nvmpi decoder); H.264 streams",
    ),
}
"""Preset name -> preset."""

HWACCELS: tuple[str, ...] = tuple(PRESETS)
"""The preset names, for config checks and messages."""

_FLAGS = {ResizeMethod.AREA: "area", ResizeMethod.LINEAR: "neighbor", ResizeMethod.PYRAMID: "area"}


def scale_flags(method: str) -> str:
    """FFmpeg's scaler flags for a :class:`~emim_stream.engines.transforms.ResizeMethod`, chosen for the picture
    closest to OpenCV's: ``area`` for area and pyramid (area's shortcut in OpenCV), ``neighbor`` for linear (OpenCV's
    INTER_LINEAR samples rather than averages when it shrinks); chroma is interpolated at full resolution, as OpenCV
    converts to BGR before it resizes."""
    return f"{_FLAGS[ResizeMethod(method)]}+full_chroma_int"


def cover_crop(in_w: int, in_h: int, height: int, width: int) -> tuple[int, int, int, int]:
    """``(crop_w, crop_h, left, top)``: the centre window of an ``in_w x in_h`` frame that scales to ``width x
    height``, as :func:`emim_stream.engines.transforms.fit_frame` takes it."""
    scale = max(height / in_h, width / in_w)
    crop_h = min(in_h, max(1, round(height / scale)))
    crop_w = min(in_w, max(1, round(width / scale)))
    return crop_w, crop_h, (in_w - crop_w) // 2, (in_h - crop_h) // 2


def _cover_size(in_w: int, in_h: int, height: int, width: int) -> tuple[int, int]:
    """The size the whole frame scales to so that it covers ``width x height``."""
    scale = max(height / in_h, width / in_w)
    return max(width, round(in_w * scale)), max(height, round(in_h * scale))


def ffmpeg_filters(preset: HwaccelPreset, in_w: int, in_h: int, height: int, width: int, method: str) -> str:
    """The ``-vf`` chain that turns an ``in_w x in_h`` frame into ``width x height`` RGB with ``preset``."""
    flags = scale_flags(method)
    if preset.scaler is None:
        crop_w, crop_h, left, top = cover_crop(in_w, in_h, height, width)
        return f"crop={crop_w}:{crop_h}:{left}:{top},scale={width}:{height}:flags={flags},format=rgb24"
    cover_w, cover_h = _cover_size(in_w, in_h, height, width)
    left, top = (cover_w - width) // 2, (cover_h - height) // 2
    return (
        f"{preset.scaler}=w={cover_w}:h={cover_h},hwdownload,format=nv12,"
        f"crop={width}:{height}:{left}:{top},format=rgb24"
    )


def ffmpeg_command(
    name: str,
    source: str,
    source_size: tuple[int, int],
    height: int,
    width: int,
    method: str = ResizeMethod.AREA,
    realtime: bool = False,
    ffmpeg: str = "ffmpeg",
) -> list[str]:
    """An ``ffmpeg`` command line that decodes ``source`` with preset ``name`` and writes ``width x height`` RGB
    frames (``rgb24``, raw) to stdout.

    Args:
        name: a preset of :data:`PRESETS`.
        source: a file or stream URL.
        source_size: ``(width, height)`` of the source's frames.
        height, width: output size.
        method: resize method (:func:`scale_flags`).
        realtime: read the input at its own frame rate (``-re``), as a camera delivers it.
        ffmpeg: the executable.

    Raises:
        ConfigError: an unknown preset name.
    """
    preset = _preset(name, "hwaccel")
    in_w, in_h = source_size
    vf = ffmpeg_filters(preset, in_w, in_h, height, width, method)
    head = [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", *preset.input_args]
    tail = ["-an", "-vf", vf, "-pix_fmt", "rgb24", "-f", "rawvideo", "pipe:1"]
    return [*head, *(["-re"] if realtime else []), "-i", source, *tail]


def ffmpeg_hwaccels(ffmpeg: str | None = None) -> list[str]:
    """The hardware acceleration methods this box's ``ffmpeg`` lists (``ffmpeg -hwaccels``); empty without one."""
    exe = ffmpeg or shutil.which("ffmpeg")
    if exe is None:
        return []
    try:
        done = subprocess.run([exe, "-hide_banner", "-hwaccels"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    lines = [line.strip() for line in done.stdout.splitlines()]
    return [line for line in lines if line and not line.endswith(":")]


def preset_support(name: str, hwaccels: list[str], devices: list[str], decoders: set[str]) -> str:
    """Whether preset ``name`` can run here, in words: ``hwaccels`` as :func:`ffmpeg_hwaccels` lists them (the
    ``ffmpeg`` command), ``devices`` and ``decoders`` those of the FFmpeg the camera process decodes with (PyAV)."""
    preset = _preset(name, "hwaccel")
    if preset.device_type is None and preset.decoder is None:
        return "yes"
    if preset.decoder is not None:
        return "yes" if preset.decoder in decoders else f"no: this FFmpeg has no {preset.decoder} decoder"
    camera = "yes" if preset.device_type in devices else "no"
    command = "yes" if preset.device_type in hwaccels else "no"
    return f"camera process {camera}, ffmpeg command {command} ({preset.device_type}); needs {preset.needs}"


def _preset(name: str, field: str) -> HwaccelPreset:
    if name not in PRESETS:
        raise ConfigError(f"{field} {name!r} is not a preset; expected one of {', '.join(HWACCELS)}")
    return PRESETS[name]
