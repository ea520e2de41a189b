"""Checkpoint I/O: the project's own checkpoints, and public UniFormer / EMIM weights.

Own checkpoints are a ``torch.save`` dict that ``torch.load(weights_only=True)`` reads back::

    format          "emim-stream.checkpoint/1"
    model           registry name (e.g. "emim_xs") and "overrides" (architecture arguments)
    labels          class names, in logit order
    clip            input spec: frames, height, width, mean, std
    vmp             {"m", "n", "grey_weights", "mean", "std"} or None (no VMP: frames pass through)
    state_dict      backbone weights, with the public key names (docs/model.md#checkpoint-keys)
    weights_sha256  content hash of state_dict and vmp (checked on load: corruption is refused)
    extra           free-form metadata (training command, metrics, ...)

Public checkpoints (UniFormer 2-D ImageNet, UniFormer / EMIM video) load with
:func:`load_pretrained`: unwrapped, inflated 2-D -> 3-D, head dropped on a class-count change,
missing / unexpected keys reported, never hidden.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emim_stream.engines.errors import CheckpointError, ConfigError
from emim_stream.engines.files import atomic_write
from emim_stream.engines.layers.vmp import VmpLayer
from emim_stream.engines.models import RegisteredModel, build_model, get_model_cfg, list_models

FORMAT = "emim-stream.checkpoint/1"
_WRAPPERS = ("model", "model_state", "state_dict")
_SHOW = 5  # how many offending keys an error message names

__all__ = [
    "FORMAT",
    "Checkpoint",
    "ClipSpec",
    "LoadReport",
    "inflate_2d_to_3d",
    "load_checkpoint",
    "load_pretrained",
    "read_file",
    "save_checkpoint",
    "unwrap_state_dict",
    "weights_sha256",
]


@dataclass(frozen=True)
class ClipSpec:
    """Input of one clip: frames T, height, width and the per-channel normalisation."""

    frames: int
    height: int
    width: int
    mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: tuple[float, float, float] = (0.225, 0.225, 0.225)

    def __post_init__(self) -> None:
        if self.frames < 2:
            raise ConfigError(f"clip frames must be >= 2, got {self.frames}")
        if self.height % 32 or self.width % 32 or self.height <= 0 or self.width <= 0:
            raise ConfigError(f"clip height/width must be positive multiples of 32, got {self.height}x{self.width}")


@dataclass(frozen=True)
class LoadReport:
    """What happened to each key when weights were loaded into a model."""

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    inflated: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line per non-empty category, keys listed (shortened past 8)."""
        lines = []
        for name in ("missing", "unexpected", "inflated", "dropped"):
            keys = getattr(self, name)
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... (+{len(keys) - 8})" if len(keys) > 8 else "")
                lines.append(f"{name} ({len(keys)}): {shown}")
        return "\n".join(lines) or "all keys matched"


@dataclass
class Checkpoint:
    """A loaded project checkpoint: the model (eval mode), its VMP layer and metadata."""

    path: Path
    model: RegisteredModel
    vmp: VmpLayer | None
    labels: tuple[str, ...]
    clip: ClipSpec
    model_name: str
    overrides: dict[str, Any]
    weights_sha256: str
    extra: dict[str, Any] = field(default_factory=dict)


def read_file(path: str | os.PathLike[str]) -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file.

    Raises:
        CheckpointError: missing, truncated or otherwise unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint '{path}' cannot be read: the file is empty (0 bytes)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged files
        first_line = next(iter(str(err).splitlines()), "")[:200]
        raise CheckpointError(
            f"checkpoint '{path}' cannot be read ({type(err).__name__}: {first_line}); "
            "is it truncated or not a PyTorch file?"
        ) from err


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The tensor dict inside ``obj``: unwrap ``model`` / ``model_state`` / ``state_dict``, strip ``module.``."""
    while isinstance(obj, dict):
        wrapper = next((k for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if wrapper is None:
            break
        obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError("no state dict of tensors found (looked in 'model', 'model_state', 'state_dict')")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def inflate_2d_to_3d(
    state_dict: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Inflate 2-D conv weights to the 3-D shapes of ``target`` (docs/model.md#loading-weights).

    A source tensor of ndim 4 whose target has ndim 5 and the same other dims becomes
    ``w.unsqueeze(2).repeat(1, 1, t, 1, 1) / t`` with ``t`` the target's temporal kernel size.

    Returns:
        The new dict (other entries unchanged) and the inflated keys.
    """
    out, inflated = dict(state_dict), []
    for key, w in state_dict.items():
        ref = target.get(key)
        if ref is None or ref.shape == w.shape:
            continue
        if w.dim() == 4 and ref.dim() == 5 and ref.shape[:2] == w.shape[:2] and ref.shape[3:] == w.shape[2:]:
            t = ref.shape[2]
            out[key] = w.unsqueeze(2).repeat(1, 1, t, 1, 1) / t
            inflated.append(key)
    return out, inflated


def _classifier_keys(model: nn.Module) -> tuple[str, ...]:
    name = getattr(getattr(model, "default_cfg", None), "classifier", "head")
    return (f"{name}.weight", f"{name}.bias")


def load_pretrained(
    model: nn.Module, source: str | os.PathLike[str] | dict[str, Any], skip_mismatched: bool = False
) -> LoadReport:
    """Load public (or own) weights into ``model`` non-strictly and report every key.

    Args:
        model: a model from :func:`emim_stream.engines.models.build_model`.
        source: a checkpoint file or an already-loaded dict.
        skip_mismatched: skip non-classifier tensors whose shape still differs after inflation
            (the reference code's behaviour) instead of refusing the file.

    Returns:
        The :class:`LoadReport`; the caller prints it.

    Raises:
        CheckpointError: unreadable file, no key in common (another architecture), or shape
            mismatches (naming the first keys) without ``skip_mismatched``.
    """
    label = f"'{source}'" if not isinstance(source, dict) else "state dict"
    raw = read_file(source) if not isinstance(source, dict) else source
    try:
        state = unwrap_state_dict(raw)
    except CheckpointError as err:
        raise CheckpointError(f"checkpoint {label}: {err}") from None
    target = model.state_dict()
    state, inflated = inflate_2d_to_3d(state, target)
    dropped = []
    for key in _classifier_keys(model):
        if key in state and key in target and state[key].shape != target[key].shape:
            del state[key]
            dropped.append(key)
    mismatched = [k for k in state if k in target and state[k].shape != target[k].shape]
    if mismatched and not skip_mismatched:
        detail = "; ".join(
            f"{k}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}" for k in mismatched[:_SHOW]
        )
        raise CheckpointError(
            f"checkpoint {label} does not fit {getattr(model, 'model_name', type(model).__name__)}: "
            f"{len(mismatched)} shape mismatch(es), first: {detail}"
        )
    for key in mismatched:
        del state[key]
    dropped += mismatched
    common = set(state) & set(target)
    if not common:
        raise CheckpointError(
            f"checkpoint {label} shares no key with {getattr(model, 'model_name', 'the model')} "
            f"(first keys in file: {', '.join(list(state)[:_SHOW])}); wrong architecture?"
        )
    result = model.load_state_dict(state, strict=False)
    return LoadReport(tuple(result.missing_keys), tuple(result.unexpected_keys), tuple(inflated), tuple(dropped))


def weights_sha256(state_dict: dict[str, torch.Tensor], vmp: dict[str, Any] | None = None) -> str:
    """Content hash of the weights (sorted keys, dtypes, shapes, bytes) and VMP parameters."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    if vmp is not None:
        digest.update(repr(sorted(vmp.items())).encode())
    return digest.hexdigest()


def _vmp_record(vmp: VmpLayer | None) -> dict[str, Any] | None:
    if vmp is None:
        return None
    return {"m": float(vmp.m.detach()), "n": float(vmp.n.detach()), **vmp.settings()}


def save_checkpoint(
    path: str | os.PathLike[str],
    model: RegisteredModel,
    labels: tuple[str, ...] | list[str],
    clip: ClipSpec,
    vmp: VmpLayer | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write a project checkpoint atomically (temporary file, then rename); returns its weights hash.

    Raises:
        ConfigError: the label count differs from the model's classes, or the model was not
            built by :func:`emim_stream.engines.models.build_model`.
    """
    if not hasattr(model, "model_name"):
        raise ConfigError("save_checkpoint needs a model built by emim_stream.engines.models.build_model")
    if len(labels) != model.num_classes:
        raise ConfigError(f"{len(labels)} labels for a model with {model.num_classes} classes")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    vmp_rec = _vmp_record(vmp)
    digest = weights_sha256(state, vmp_rec)
    record = {
        "format": FORMAT,
        "model": model.model_name,
        "overrides": dict(model.model_overrides),
        "labels": list(labels),
        "clip": {**asdict(clip), "mean": list(clip.mean), "std": list(clip.std)},
        "vmp": vmp_rec,
        "state_dict": state,
        "weights_sha256": digest,
        "extra": dict(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        torch.save(record, tmp)
    return digest


def resolve_checkpoint(name: str | os.PathLike[str]) -> Path:
    """A checkpoint file path, or the shipped weights of a tagged model name (e.g. ``emim_xs.demo``).

    Raises:
        CheckpointError: neither an existing file nor a model name with shipped weights.
    """
    path = Path(name)
    if path.is_file():
        return path
    shipped = {n: get_model_cfg(n).weights_path for n in list_models(tagged=True) if "." in n}
    if str(name) in shipped:
        weights = shipped[str(name)]
        if weights is None or not weights.is_file():
            raise CheckpointError(f"the shipped weights of {name} are missing ({weights}); reinstall the package")
        return weights
    names = ", ".join(sorted(shipped)) or "none"
    raise CheckpointError(f"checkpoint '{name}' does not exist (shipped model names: {names})")


def load_checkpoint(path: str | os.PathLike[str], kernel: str = "auto", verify: bool = True) -> Checkpoint:
    """Load a project checkpoint: rebuild the model from its record and load it strictly.

    Args:
        path: the file written by :func:`save_checkpoint`, or a shipped model name (``emim_xs.demo``).
        kernel: EMIM neighbourhood kernel for the rebuilt model.
        verify: check the content hash.

    Raises:
        CheckpointError: unreadable, not this project's format, a record entry missing or malformed,
            corrupted (hash mismatch), non-finite weights, or weights that do not fit the recorded
            architecture (naming the first keys).
    """
    path = resolve_checkpoint(path)
    record = read_file(path)
    found = record.get("format") if isinstance(record, dict) else None
    if found != FORMAT:
        raise CheckpointError(
            f"'{path}' is not an emim-stream checkpoint (format {found!r}); "
            "public UniFormer/EMIM weights load with --init / emim_stream.engines.checkpoints.io.load_pretrained"
        )
    missing = [key for key in ("model", "labels", "clip", "state_dict") if key not in record]
    if missing:
        raise CheckpointError(f"checkpoint '{path}' lacks {missing}; it was not written by save_checkpoint")
    state, vmp_rec = record["state_dict"], record.get("vmp")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint '{path}': state_dict is not a dict of tensors")
    if vmp_rec is not None and not isinstance(vmp_rec, dict):
        raise CheckpointError(f"checkpoint '{path}': vmp is not a dict of VMP parameters")
    digest = weights_sha256(state, vmp_rec)
    if verify and digest != record.get("weights_sha256"):
        raise CheckpointError(f"checkpoint '{path}' is corrupted: content hash does not match its record")
    try:
        _check_finite(path, state, vmp_rec)
        labels, clip = _labels(record["labels"]), _clip(record["clip"])
        overrides = dict(record.get("overrides") or {})
        overrides.pop("kernel", None)
        model = build_model(record["model"], num_classes=len(labels), kernel=kernel, **overrides)
        vmp = None
        if vmp_rec is not None:
            vmp = VmpLayer(vmp_rec["grey_weights"], vmp_rec["mean"], vmp_rec["std"])
            with torch.no_grad():
                vmp.m.fill_(vmp_rec["m"])
                vmp.n.fill_(vmp_rec["n"])
            vmp.eval()
    except (ConfigError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint '{path}' has an invalid record: {err}") from None
    model.model_overrides = overrides
    _check_fit(path, record["model"], model, state)
    model.load_state_dict(state)
    return Checkpoint(
        path=path,
        model=model.eval(),
        vmp=vmp,
        labels=labels,
        clip=clip,
        model_name=record["model"],
        overrides=overrides,
        weights_sha256=digest,
        extra=dict(record.get("extra") or {}),
    )


def _labels(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"labels must be a non-empty list of strings, got {str(value)[:80]}")
    return tuple(value)


def _clip(value: Any) -> ClipSpec:
    if not isinstance(value, dict):
        raise ValueError(f"clip must be a dict of frames, height, width, mean, std, got {str(value)[:80]}")
    return ClipSpec(value["frames"], value["height"], value["width"], tuple(value["mean"]), tuple(value["std"]))


def _check_finite(path: Path, state: dict[str, torch.Tensor], vmp_rec: dict[str, Any] | None) -> None:
    """Refuse NaN / Inf weights: they would only surface later as NaN scores."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if vmp_rec is not None:
        bad += [f"vmp.{k}" for k in ("m", "n") if not math.isfinite(float(vmp_rec[k]))]
    if bad:
        raise CheckpointError(f"checkpoint '{path}' has non-finite (NaN/Inf) weights in {bad[:_SHOW]}")


def _check_fit(path: Path, name: str, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """The weights must match the rebuilt architecture key for key and shape for shape."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"checkpoint '{path}' does not fit {name}: missing {missing[:_SHOW]}, unexpected {unexpected[:_SHOW]}, "
            f"shape mismatch {shapes[:_SHOW]}"
        )
