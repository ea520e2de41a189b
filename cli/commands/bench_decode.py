"""``emim-stream bench-decode``: CPU per frame, frames/s and cameras per core of each decoder and resize method, on
1080p, 720p and 360p H.264 files it makes with FFmpeg; a 360p sub-stream with the 1080p stream recorded as it comes
(``record_source``); then the camera process itself with each decoder."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

HELP = (
    "compare the decoders and resize methods: CPU per frame, frames/s and cameras per core at 1080p, 720p and 360p, "
    "and a sub-stream with the main stream recorded as it comes"
)

_VIDEOS = (("1080p", 1920, 1080, "6M"), ("720p", 1280, 720, "3M"), ("360p", 640, 360, "1M"))  # name, size, bitrate
_ROWS = (("opencv", "area"), ("opencv", "pyramid"), ("opencv", "linear"), ("ffmpeg", "area"), ("ffmpeg", "linear"))
_FPS = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=224, help="model input size (square), default %(default)s")
    parser.add_argument("--frames", type=int, default=300, help="frames decoded per row, default %(default)s")
    parser.add_argument(
        "--every", type=int, default=4, metavar="N",
        help="the model's frames: one in N is prepared (4: a 16x4 model on a 30 fps camera), default %(default)s",
    )  # fmt: skip
    parser.add_argument(
        "--seconds", type=float, default=10.0,
        help="measuring time of each real camera process on the 1080p file (0: skip that part), default %(default)s",
    )  # fmt: skip
    parser.add_argument("--dir", type=Path, default=None, help="keep the test videos here (default: a temporary one)")


def main(args: argparse.Namespace) -> int:
    from emim_stream.engines.errors import ConfigError

    if args.size < 16 or args.frames < 10 or args.every < 1 or args.seconds < 0:
        raise ConfigError("--size must be >= 16, --frames >= 10, --every >= 1 and --seconds >= 0")
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        return _run(args, args.dir)
    with tempfile.TemporaryDirectory(prefix="emim-bench-decode-") as tmp:
        return _run(args, Path(tmp))


def _run(args: argparse.Namespace, folder: Path) -> int:
    from emim_stream.pipeline.measure.decode import copy_cost, decode_cost, make_test_video, pixel_difference

    seconds = max(args.frames / _FPS, 2.0)
    videos = {}
    for name, width, height, bitrate in _VIDEOS:
        path = folder / f"{name}{_FPS}.mp4"
        if not path.exists():
            make_test_video(path, width, height, _FPS, seconds, bitrate)
        videos[name] = path
    print(
        f"decode and prepare to {args.size}x{args.size} RGB, {args.frames} frames per row, unpaced, CPU of all "
        f"threads; 'all': every frame prepared (recorder on), '1/{args.every}': the model's frames only; "
        f"cameras per core at {_FPS} fps, 1/{args.every} prepared"
    )
    print(f"{'video':<6} {'decoder':<7} {'resize':<8} {'ms/frame all':>12} {'ms/frame 1/' + str(args.every):>13} "
          f"{'frames/s all':>12} {'cameras/core':>12}")  # fmt: skip
    sampled_ms: dict[tuple[str, str, str], float] = {}
    for name, path in videos.items():
        for decoder, resize in _ROWS:
            every = decode_cost(path, decoder, resize, args.size, args.frames)
            sampled = decode_cost(path, decoder, resize, args.size, args.frames, args.every)
            sampled_ms[name, decoder, resize] = sampled.cpu_ms_per_frame
            print(
                f"{name:<6} {decoder:<7} {resize:<8} {every.cpu_ms_per_frame:>12.2f} {sampled.cpu_ms_per_frame:>13.2f} "
                f"{every.fps:>12.1f} {sampled.cameras_per_core(_FPS):>12.2f}",
                flush=True,
            )
    copy_ms = copy_cost(videos["1080p"], args.frames, folder)
    main_ms, sub_ms = sampled_ms["1080p", "ffmpeg", "area"], sampled_ms["360p", "ffmpeg", "area"]
    print(
        f"sub-stream: the model's frames from the 360p stream ({sub_ms:.2f} ms/frame) and the 1080p stream recorded "
        f"as it comes (record_source, packets copied: {copy_ms:.2f} ms/frame) cost {sub_ms + copy_ms:.2f} ms/frame, "
        f"{main_ms / (sub_ms + copy_ms):.2f}x less than decoding the 1080p stream ({main_ms:.2f}; ffmpeg, area, "
        f"1/{args.every})"
    )
    for resize in ("area", "linear"):
        mean, p99, top = pixel_difference(videos["1080p"], resize, args.size)
        print(f"ffmpeg vs opencv, {resize}, 1080p, same frames: |difference| mean {mean:.2f}, p99 {p99:.0f}, "
              f"max {top} levels of 255")  # fmt: skip
    if args.seconds > 0:
        _camera_processes(args, videos["1080p"])
    return 0


def _camera_processes(args: argparse.Namespace, video: Path) -> None:
    """A real camera process per decoder on the 1080p file (paced at 30 fps, resize area), side by side."""
    from emim_stream.engines.sampling import SamplingRequest
    from emim_stream.pipeline.measure.decode import camera_process_costs

    print(f"\ncamera processes on the 1080p{_FPS} file, one per decoder at the same time, paced, resize area, "
          f"CPU of each over the same {args.seconds:g} s:")  # fmt: skip
    print(f"{'frames written':<26} {'decoder':<7} {'decoded/s':>9} {'camera CPU':>10} {'ms/frame':>8} {'vs opencv':>9}")
    request = SamplingRequest(None, frames=16, stride=4, frame_interval=args.every)
    for all_frames in (False, True):
        what = "all (recorder on)" if all_frames else f"one in {args.every} (model's)"
        costs = camera_process_costs(str(video), args.size, request, args.seconds, all_frames=all_frames)
        base = costs["opencv"]["cpu_ms_per_frame"]
        for decoder, r in costs.items():
            print(
                f"{what:<26} {decoder:<7} {r['frames_per_s']:>9.1f} {100 * r['cpu']:>9.1f}% "
                f"{r['cpu_ms_per_frame']:>8.2f} {base / r['cpu_ms_per_frame']:>8.2f}x",
                flush=True,
            )
