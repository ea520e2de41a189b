"""Turn published UniFormer / EMIM weights into an emim-stream checkpoint, and the label maps that go with them.

The official files (see the README's "Real weights") are SlowFast training checkpoints (``{"model_state": ...}``,
often with DDP's ``module.`` prefix), plain state dicts, or 2-D ImageNet UniFormer weights (``{"model": ...}``).
:func:`import_weights` loads them with :func:`emim_stream.engines.checkpoints.io.load_pretrained` (wrappers,
prefixes, 2-D
inflation) and writes a project checkpoint with the label names and the clip spec, which ``run``, ``evaluate``,
``export`` and ``train --init`` accept.

Label maps shipped in ``engines/checkpoints/labels/`` (one class name per line in logit order, ``#`` comments):

- ``k400``: Kinetics-400, 400 classes, alphabetical (the order of the official annotation CSVs' sorted names);
- ``ssv2``: Something-Something-v2, 174 templates in the order of the official ``something-something-v2-labels.json``.

The clip's sampling comes from the published configurations (:data:`PUBLISHED_SAMPLING`, by label map and T;
sources in :mod:`emim_stream.engines.clip`), or from the caller for other data.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from emim_stream.engines.checkpoints.io import (
    LoadReport,
    load_pretrained,
    read_file,
    save_checkpoint,
    unwrap_state_dict,
)
from emim_stream.engines.clip import ClipSampling, ClipSpec
from emim_stream.engines.errors import CheckpointError, ConfigError
from emim_stream.engines.models import build_model, get_model_cfg

__all__ = ["LABEL_MAPS", "PUBLISHED_SAMPLING", "SSV2_SPAN_S", "ImportResult", "import_weights", "read_label_map"]

_LABELS_DIR = Path(__file__).with_name("labels")
LABEL_MAPS: dict[str, Path] = {"k400": _LABELS_DIR / "k400.txt", "ssv2": _LABELS_DIR / "ssv2.txt"}
"""Shipped label maps by name."""

KINETICS_FPS = 30.0
"""The frame rate Kinetics videos are resampled to before sampling (SlowFast ``DATA.TARGET_FPS``)."""
SSV2_SPAN_S = 4.0
"""The span given to uniformly sampled Something-Something V2 models on a live camera. In training their T
frames spread over each whole video (a few seconds long, every video its own length); 4 s is our choice of a
typical one, not a published figure: override it with ``window.frame_interval`` where actions are shorter."""
PUBLISHED_SAMPLING: dict[tuple[str, int], ClipSampling] = {
    ("k400", 8): ClipSampling(frame_interval=8, fps=KINETICS_FPS),  # UniFormer 8x8 (8x1x4 in its README)
    ("k400", 16): ClipSampling(frame_interval=4, fps=KINETICS_FPS),  # UniFormer 16x4 (mmaction2 16x4x1)
    ("k400", 32): ClipSampling(frame_interval=4, fps=KINETICS_FPS),  # UniFormer-B 32x4
    ("ssv2", 16): ClipSampling(span_s=SSV2_SPAN_S),  # TSN segments over the whole video
    ("ssv2", 32): ClipSampling(span_s=SSV2_SPAN_S),
}
"""Sampling of the published models, by shipped label map and clip length T."""


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_weights` wrote and how the weights fitted."""

    out: Path
    model: str
    labels: tuple[str, ...]
    clip: ClipSpec
    report: LoadReport
    weights_sha256: str


def read_label_map(name_or_path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The class names of a shipped map (``k400``, ``ssv2``) or of a file (one name per line, ``#`` comments).

    Raises:
        ConfigError: neither a shipped name nor a readable file, an empty map or a repeated name (with its line).
    """
    path = LABEL_MAPS.get(str(name_or_path), Path(name_or_path))
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        shipped = ", ".join(LABEL_MAPS)
        raise ConfigError(f"label map '{name_or_path}' is neither a shipped map ({shipped}) nor a readable file "
                          f"({getattr(err, 'strerror', None) or err})") from None
    labels: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if name in seen:
            raise ConfigError(f"label map '{path}' line {number}: {name!r} repeats line {seen[name]}")
        seen[name] = number
        labels.append(name)
    if not labels:
        raise ConfigError(f"label map '{path}' holds no class name")
    return tuple(labels)


def import_weights(
    src: str | os.PathLike[str],
    model_name: str,
    labels: str | os.PathLike[str],
    out: str | os.PathLike[str],
    frames: int | None = None,
    size: int | None = None,
    sampling: ClipSampling | None = None,
) -> ImportResult:
    """Load published weights into ``model_name`` and save them as an emim-stream checkpoint.

    Args:
        src: the published file (SlowFast checkpoint, state dict, or 2-D ImageNet UniFormer weights).
        model_name: registry name of the architecture the file was trained as (``uniformer_s``, ``emim_s``, ...).
        labels: a shipped label map name (``k400``, ``ssv2``) or a label file; its length must equal the
            file's classifier outputs.
        out: the checkpoint to write.
        frames, size: clip T and square H = W (default: the model's, e.g. 16 x 224 x 224).
        sampling: how the file's training clips were sampled; default the published configuration's
            (:data:`PUBLISHED_SAMPLING`) for a shipped label map and T, else none is recorded (the
            checkpoint is then fed consecutive camera frames, with a warning).

    Returns:
        The :class:`ImportResult`; ``report.missing`` lists weights the file did not hold (left at their
        initial values, e.g. EMIM's motion MLP when importing UniFormer weights into ``emim_s``).

    Raises:
        ConfigError: unknown model or label map, bad clip size.
        CheckpointError: unreadable file, another architecture, a classifier whose class count differs from
            the label map's (the published head would be lost), or no classifier at all.
    """
    names = read_label_map(labels)
    cfg = get_model_cfg(model_name)
    _, default_t, default_h, default_w = cfg.input_size
    frames = frames or default_t
    sampling = sampling or PUBLISHED_SAMPLING.get((str(labels), frames))
    clip = ClipSpec(frames, size or default_h, size or default_w, cfg.mean, cfg.std, sampling)
    raw = read_file(src)  # its errors name the file
    try:
        state = unwrap_state_dict(raw)
    except CheckpointError as err:
        raise CheckpointError(f"checkpoint '{src}': {err}") from None
    head = state.get("head.weight")
    if head is None:
        raise CheckpointError(
            f"checkpoint '{src}' has no classifier ('head.weight'); a backbone without a head cannot label clips: "
            f"fine-tune it with 'emim-stream train --model {model_name} --init {src}'"
        )
    if head.shape[0] != len(names):
        raise CheckpointError(
            f"checkpoint '{src}' classifies {head.shape[0]} classes but label map '{labels}' names {len(names)}; "
            f"pick the map of the data set it was trained on (k400: 400, ssv2: 174), or fine-tune with "
            f"'emim-stream train --model {model_name} --init {src}'"
        )
    model = build_model(model_name, num_classes=len(names))
    try:
        report = load_pretrained(model, state)
    except CheckpointError as err:
        raise CheckpointError(f"'{src}': {err}") from None
    extra = {
        "imported": {
            "source": os.path.basename(os.fspath(src)),
            "source_sha256": _file_sha256(Path(src)),
            "label_map": str(labels),
            "missing": list(report.missing),
            "unexpected": list(report.unexpected),
            "inflated": list(report.inflated),
        }
    }
    digest = save_checkpoint(out, model, names, clip, vmp=None, extra=extra)
    return ImportResult(Path(out), model_name, names, clip, report, digest)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
