"""Ground truth for sources that know their true class: the synthetic camera, and video files with a sidecar.

A window's truth is the class of the segment its frames lie in (by the frames' own presentation times,
``source_pts_ns``); a window that spans a cut between segments, or lies outside every labelled segment, has
no truth (None) and is not scored.

Sidecar of a video file ``VIDEO`` (e.g. ``door.mp4``): a text file ``VIDEO.truth`` (``door.mp4.truth``) beside
it, one segment per line::

    # start_s  end_s  label          seconds on the video's own timeline; end exclusive; '#' comments
    0.0        4.0    left
    4.0        9.5    air drumming   (the label is the rest of the line: spaces allowed)

Segments must not overlap; gaps are unlabelled. With ``loop: true`` the timeline wraps at the file's duration
(frame count / fps as OpenCV reads them).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from emim_stream.engines.errors import ConfigError
from emim_stream.engines.uris import is_synthetic
from emim_stream.pipeline.capture.sources import SyntheticSource
from emim_stream.pipeline.config import CameraConfig

__all__ = ["SIDECAR_SUFFIX", "FileTruth", "SyntheticTruth", "Truth", "read_sidecar", "truth_for"]

SIDECAR_SUFFIX = ".truth"


class Truth:
    """Maps a frame's presentation time to ``(segment id, label)``; :meth:`window` gives a window's truth."""

    def segment_at(self, pts_ns: int) -> tuple[int, str] | None:
        """The segment holding the frame at ``pts_ns`` (None: unlabelled or unknown time)."""
        raise NotImplementedError

    def window(self, first_pts_ns: int, last_pts_ns: int) -> str | None:
        """The label of a window from its first to its last frame, None when they are not in one segment."""
        if first_pts_ns < 0 or last_pts_ns < 0:
            return None
        first, last = self.segment_at(first_pts_ns), self.segment_at(last_pts_ns)
        return first[1] if first is not None and first == last else None


class SyntheticTruth(Truth):
    """The synthetic camera's schedule: frame ``n`` has pts ``n / fps`` and the scene's class at ``n``."""

    def __init__(self, source: SyntheticSource) -> None:
        self.scene = source.scene
        self.fps = source.fps

    def segment_at(self, pts_ns: int) -> tuple[int, str] | None:
        n = round(pts_ns * self.fps / 1e9)
        return n // self.scene.segment_frames, self.scene.label_at(n)


@dataclass(frozen=True)
class Segment:
    """One labelled span of a video: ``[start_s, end_s)``."""

    start_s: float
    end_s: float
    label: str


class FileTruth(Truth):
    """Labelled segments of a video file (a sidecar); ``period_s`` wraps a looping file's timeline."""

    def __init__(self, segments: Sequence[Segment], period_s: float | None = None) -> None:
        self.segments = sorted(segments, key=lambda s: s.start_s)
        self._starts = [s.start_s for s in self.segments]
        self.period_s = period_s

    def segment_at(self, pts_ns: int) -> tuple[int, str] | None:
        t = pts_ns / 1e9
        if self.period_s:
            t %= self.period_s
        i = bisect.bisect_right(self._starts, t) - 1
        if i < 0 or t >= self.segments[i].end_s:
            return None
        return i, self.segments[i].label


def read_sidecar(path: str | Path) -> list[Segment]:
    """Parse a ``.truth`` sidecar (module docstring).

    Raises:
        ConfigError: unreadable file, a malformed line, ``end <= start`` or overlapping segments (file:line named).
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"truth sidecar '{path}' cannot be read: {getattr(err, 'strerror', None) or err}") from None
    segments: list[tuple[Segment, int]] = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split(None, 2)
        try:
            start, end = float(parts[0]), float(parts[1])
            label = parts[2].strip()
        except (IndexError, ValueError):
            raise ConfigError(
                f"truth sidecar '{path}' line {number}: expected 'START_S END_S LABEL', got {line.strip()!r}"
            ) from None
        if not 0 <= start < end:
            raise ConfigError(f"truth sidecar '{path}' line {number}: need 0 <= start < end, got {start} {end}")
        segments.append((Segment(start, end, label), number))
    segments.sort(key=lambda item: item[0].start_s)
    for (before, _), (after, number) in itertools.pairwise(segments):
        if after.start_s < before.end_s:
            raise ConfigError(f"truth sidecar '{path}' line {number}: segment starts before the previous one ends")
    return [segment for segment, _ in segments]


def truth_for(camera: CameraConfig, labels: Sequence[str] = ()) -> Truth | None:
    """The truth of a camera's source, or None when it has none (streams, USB cameras, files without a sidecar).

    Args:
        camera: the camera's config.
        labels: the model's class names; a sidecar label outside them is refused (it could never be ``ok``).

    Raises:
        ConfigError: a malformed sidecar, or one naming a class the model does not know.
    """
    source = camera.source
    if is_synthetic(source):
        return SyntheticTruth(SyntheticSource(source, pace=False))
    if not isinstance(source, str) or source.strip().isdigit():
        return None
    video = Path(source.removeprefix("file://"))
    sidecar = video.with_name(video.name + SIDECAR_SUFFIX)
    if not sidecar.is_file():
        return None
    segments = read_sidecar(sidecar)
    unknown = sorted({s.label for s in segments} - set(labels)) if labels else []
    if unknown:
        raise ConfigError(f"truth sidecar '{sidecar}': label(s) {', '.join(map(repr, unknown))} are not the model's")
    return FileTruth(segments, _duration_s(video) if camera.loop else None)


def _duration_s(video: Path) -> float | None:
    import cv2

    cap = cv2.VideoCapture(str(video))
    try:
        frames, fps = cap.get(cv2.CAP_PROP_FRAME_COUNT), cap.get(cv2.CAP_PROP_FPS)
    finally:
        cap.release()
    return frames / fps if frames > 0 and fps > 0 else None
