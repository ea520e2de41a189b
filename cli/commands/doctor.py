"""``emim-stream doctor``: what this box has, and which backend and kernel a config would get, and why."""

from __future__ import annotations

import argparse

from emim_stream.cli.commands.engine_options import add_engine_arguments, engine_config_from_args

HELP = "report CPU/GPU, CUDA, TensorRT, NATTEN, ONNX Runtime, and the backend/kernel a config would get"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_engine_arguments(parser)
    parser.add_argument(
        "--clean-stale-rings",
        action="store_true",
        help="remove the shared-memory rings of killed runs (also done at every pipeline start)",
    )


def main(args: argparse.Namespace) -> int:
    from emim_stream.engines.backends.candidate import cache_dir
    from emim_stream.engines.diagnostics.doctor import environment, selection
    from emim_stream.pipeline.config import DEFAULT_CONFIG

    if args.config is None:  # what `emim-stream run` and `make run` use
        args.config = str(DEFAULT_CONFIG)
        print(f"config: the embedded default ({DEFAULT_CONFIG}); --config FILE for another")
    cfg = engine_config_from_args(args)
    for section in [*environment(cache_dir(cfg)), selection(cfg)]:
        print(f"[{section.title}]")
        width = max((len(k) for k, _ in section.rows), default=0)
        for key, value in section.rows:
            print(f"  {key:<{width}}  {value}")
    _report_decoders()
    _report_stale_rings(args.clean_stale_rings)
    return 0


def _report_decoders() -> None:
    """The ``[decoders]`` section: which ``cameras[].hwaccel`` presets this box's FFmpeg supports."""
    import av
    from av.codec.hwaccel import hwdevices_available

    from emim_stream.pipeline.capture.hwaccel import HWACCELS, ffmpeg_hwaccels, preset_support

    hwaccels, devices = ffmpeg_hwaccels(), list(hwdevices_available())
    rows = [
        ("ffmpeg -hwaccels", ", ".join(hwaccels) or "no ffmpeg command, or none"),
        (f"PyAV {av.__version__} devices", ", ".join(devices) or "none"),
        *((f"hwaccel {name}", preset_support(name, hwaccels, devices, set(av.codecs_available))) for name in HWACCELS),
    ]
    width = max(len(k) for k, _ in rows)
    print("[decoders]")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def _report_stale_rings(clean: bool, shm_dir: str | None = None) -> None:
    """The ``[shared memory]`` section: rings left in ``shm_dir`` (default /dev/shm) by runs whose owner is gone."""
    from emim_stream.pipeline.capture.ring import SHM_DIR, reclaim_stale_rings, stale_rings

    shm_dir = shm_dir or SHM_DIR
    stale = reclaim_stale_rings(shm_dir) if clean else stale_rings(shm_dir)
    listed = ", ".join(f"{shm_dir}/{n}" for n in stale) or "none"
    hint = " (their owner is gone; --clean-stale-rings removes them)" if stale and not clean else ""
    print("[shared memory]")
    print(f"  {'removed stale rings' if clean else 'stale rings'}  {listed}{hint}")
