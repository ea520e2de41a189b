"""The cache of compiled engines: TensorRT plans and AOTInductor packages, each with a JSON sidecar.

A compiled artefact runs only on the toolkit version and hardware it was built for, and only
means the model and input it was built from. Its key holds all of that: for a TensorRT plan
(:class:`PlanKey`) the ONNX file's hash (weights, export settings, Q/DQ nodes), the input spec,
the precision, the TensorRT version, the GPU name and its compute capability; for an AOTInductor
package (``AotiKey`` in :mod:`emim_stream.engines.backends.aoti_engine`) the weights hash, the model code,
the input spec, precision, EMIM kernel, torch version and the device (GPU name and capability,
or the CPU's vector ISA). Each artefact ``<stem><suffix>`` has a sidecar ``<stem>.json`` holding
the key fields and the artefact's own hash. One whose sidecar is missing, unreadable, written for
another key, or whose bytes do not match the recorded hash is never loaded: it is rebuilt, with
one log line saying why. Files are written atomically (temporary file, then rename).

A package is native code, and the sidecar's hash is only worth what its folder is: the cache folder and its
``plans`` folder are created 0700 and files 0600, and before anything is read the folders, the artefact and its
sidecar must belong to this user and be writable by no one else; otherwise :class:`UnsafeCacheError` (a
:class:`BackendUnavailableError`, so the engine falls back) names the path and the fix.

This module imports neither TensorRT nor torch (only :meth:`CacheKey.for_input` asks torch for a GPU's
name); the backends supply the build and load functions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import platformdirs

from emim_stream.engines.errors import BackendUnavailableError
from emim_stream.engines.files import atomic_write

if TYPE_CHECKING:
    import torch

    from emim_stream.engines.backends.base import InputSpec

__all__ = [
    "PLAN_FORMAT",
    "CacheKey",
    "CacheStatus",
    "EngineCache",
    "PlanKey",
    "UnsafeCacheError",
    "check_private",
    "default_cache_dir",
    "load_or_build",
]

log = logging.getLogger(__name__)

PLAN_FORMAT = "emim-stream.plan/1"
T = TypeVar("T")
K = TypeVar("K", bound="CacheKey")


class CacheStatus(str, Enum):
    """What :meth:`EngineCache.lookup` found."""

    VALID = "valid"
    MISSING = "missing"
    NO_SIDECAR = "no-sidecar"
    UNREADABLE = "unreadable"
    MISMATCHED = "mismatched"
    CORRUPT = "corrupt"


class UnsafeCacheError(BackendUnavailableError):
    """A cache folder or file that another user could have written: nothing in it is loaded."""


def check_private(path: Path, toolkit: str) -> None:
    """Refuse ``path`` unless it belongs to this user and no one else can write it.

    Raises:
        UnsafeCacheError: naming ``path`` and the fix (for ``toolkit``'s fallback log line).
    """
    st = path.stat()
    folder = stat.S_ISDIR(st.st_mode)
    what = "cache folder" if folder else "cached file"
    if st.st_uid != os.geteuid():
        raise UnsafeCacheError(
            toolkit,
            f"{what} {path} is owned by uid {st.st_uid}, not by you (uid {os.geteuid()}): its native code is not "
            f"loaded; set engine.plan_cache_dir to a folder of your own",
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = " and ".join(w for w, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if st.st_mode & bit)
        raise UnsafeCacheError(
            toolkit,
            f"{what} {path} is writable by {who} (mode {stat.S_IMODE(st.st_mode):o}): its native code is not "
            f"loaded; run 'chmod {700 if folder else 600} {path}'",
        )


def default_cache_dir() -> Path:
    """The user cache folder of emim-stream (Linux: ``$XDG_CACHE_HOME/emim-stream``, ``~/.cache/emim-stream``)."""
    return Path(platformdirs.user_cache_dir("emim-stream", appauthor=False))


@dataclass(frozen=True, slots=True)
class CacheKey:
    """The fields every cache key has: the input, the precision and the GPU; each toolkit's key adds its own."""

    toolkit: ClassVar[str]
    """Who builds and loads the artefact, for log lines ('tensorrt', 'aoti')."""
    kind: ClassVar[str]
    """What the artefact is called in messages ('plan', 'package')."""
    suffix: ClassVar[str]
    """File suffix of the artefact ('.plan', '.pt2')."""
    prefix: ClassVar[str] = ""
    """Start of the file name stem."""

    frames: int
    height: int
    width: int
    max_batch: int
    input_dtype: str
    precision: str
    gpu_name: str
    """'' for an artefact built for the CPU."""
    compute_capability: str
    """``major.minor``, e.g. '9.0' for an H100 ('' on the CPU)."""

    @classmethod
    def for_input(cls: type[K], spec: InputSpec, precision: str, device: torch.device, **fields: Any) -> K:
        """The key of an artefact taking ``spec`` at ``precision`` on ``device``; ``fields``: the toolkit's own."""
        gpu_name = capability = ""
        if device.type == "cuda":
            import torch

            gpu_name = torch.cuda.get_device_name(device)
            capability = "{}.{}".format(*torch.cuda.get_device_capability(device))
        return cls(
            frames=spec.frames,
            height=spec.height,
            width=spec.width,
            max_batch=spec.max_batch,
            input_dtype=str(spec.dtype).removeprefix("torch."),
            precision=precision,
            gpu_name=gpu_name,
            compute_capability=capability,
            **fields,
        )

    def digest(self) -> str:
        """SHA-256 of the key fields (sorted JSON)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    @property
    def stem(self) -> str:
        """File name stem: readable prefix plus the digest."""
        shape = f"b{self.max_batch}-{self.frames}x{self.height}x{self.width}"
        return f"{self.prefix}{self.precision}-{shape}-{self.digest()[:20]}"

    def mismatches(self, record: dict[str, Any]) -> list[str]:
        """``field: expected X, sidecar has Y`` for each key field a sidecar record disagrees on."""
        return [
            f"{f.name}: expected {getattr(self, f.name)!r}, sidecar has {record.get(f.name)!r}"
            for f in fields(self)
            if record.get(f.name) != getattr(self, f.name)
        ]


@dataclass(frozen=True, slots=True)
class PlanKey(CacheKey):
    """Everything a TensorRT plan depends on. Two equal keys may share one plan file."""

    toolkit: ClassVar[str] = "tensorrt"
    kind: ClassVar[str] = "plan"
    suffix: ClassVar[str] = ".plan"

    onnx_sha256: str
    tensorrt_version: str


class EngineCache:
    """Compiled artefacts and sidecars under ``root / 'plans'``; TensorRT's timing cache beside them.

    Args:
        root: the cache directory (created on first store).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.base = Path(root)
        self.root = self.base / "plans"

    def _check_folders(self, toolkit: str) -> None:
        """The cache folder and its ``plans`` folder, where they exist, are this user's alone."""
        for folder in (self.base, self.root):
            if folder.exists():
                check_private(folder, toolkit)

    def paths(self, key: CacheKey) -> tuple[Path, Path]:
        """(artefact file, sidecar file) of ``key``."""
        return self.root / f"{key.stem}{key.suffix}", self.root / f"{key.stem}.json"

    def timing_cache_path(self, key: PlanKey) -> Path:
        """TensorRT's timing cache for this TensorRT version and GPU (shared by all models)."""
        gpu = "".join(c if c.isalnum() else "_" for c in key.gpu_name)
        return self.root / f"timing-trt{key.tensorrt_version}-{gpu}-sm{key.compute_capability}.cache"

    def lookup(self, key: CacheKey) -> tuple[bytes | None, CacheStatus, str]:
        """The cached artefact of ``key`` if it is valid, else None and why.

        Returns:
            ``(artefact bytes or None, status, a sentence for the log)``.

        Raises:
            UnsafeCacheError: a folder, the artefact or its sidecar could have been written by another user.
        """
        plan_path, sidecar_path = self.paths(key)
        kind = key.kind
        self._check_folders(key.toolkit)
        if not plan_path.is_file():
            return None, CacheStatus.MISSING, f"no cached {kind} {plan_path.name}"
        for path in (plan_path, sidecar_path):
            if path.exists():
                check_private(path, key.toolkit)
        try:
            record = json.loads(sidecar_path.read_text())
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            why = f"{kind} {plan_path.name} has no sidecar (foreign or interrupted write)"
            return None, CacheStatus.NO_SIDECAR, why
        except (OSError, ValueError) as err:
            return None, CacheStatus.UNREADABLE, f"sidecar {sidecar_path.name} is unreadable ({err})"
        if record.get("format") != PLAN_FORMAT:
            return (
                None,
                CacheStatus.UNREADABLE,
                f"sidecar {sidecar_path.name} has format {record.get('format')!r}, expected {PLAN_FORMAT!r}",
            )
        wrong = key.mismatches(record)
        if wrong:
            why = f"{kind} {plan_path.name} was built for another setup ({'; '.join(wrong)})"
            return None, CacheStatus.MISMATCHED, why
        data = plan_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != record.get("plan_sha256"):
            why = f"{kind} {plan_path.name} is corrupt (bytes differ from the sidecar's hash)"
            return None, CacheStatus.CORRUPT, why
        return data, CacheStatus.VALID, f"cached {kind} {plan_path}"

    def cached(self, pattern: str = "*") -> list[Path]:
        """Artefact files (not sidecars) whose names match ``pattern``, e.g. ``'*.pt2'``."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob(pattern) if p.suffix in (".plan", ".pt2"))

    def store(self, key: CacheKey, plan: bytes, info: dict[str, Any] | None = None) -> Path:
        """Write the artefact ``plan`` and its sidecar atomically; returns the artefact path.

        Args:
            info: extra sidecar entries (build settings, timings, the ONNX path).

        Raises:
            UnsafeCacheError: the cache folders are not this user's alone.
        """
        plan_path, sidecar_path = self.paths(key)
        self.base.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.mkdir(mode=0o700, exist_ok=True)
        self._check_folders(key.toolkit)
        record = {
            "format": PLAN_FORMAT,
            **asdict(key),
            "key_sha256": key.digest(),
            "plan_sha256": hashlib.sha256(plan).hexdigest(),
            "plan_bytes": len(plan),
            "created_wall_ns": time.time_ns(),
            **(info or {}),
        }
        _write_atomic(plan_path, bytes(plan))
        _write_atomic(sidecar_path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
        return plan_path

    def invalidate(self, key: CacheKey) -> None:
        """Remove the artefact and sidecar of ``key`` (e.g. a plan TensorRT refused to deserialise)."""
        for path in self.paths(key):
            path.unlink(missing_ok=True)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, readable and writable by this user only (0600)."""
    with atomic_write(path) as tmp, os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(data)


def load_or_build(
    cache: EngineCache,
    key: CacheKey,
    build: Callable[[], tuple[bytes, dict[str, Any]]],
    deserialize: Callable[[bytes], T | None],
) -> tuple[T, Path, bool]:
    """A deserialised engine for ``key``: from the cache when valid, else built, stored and loaded.

    Args:
        build: returns the serialized artefact and sidecar extras; raises BackendUnavailableError on failure.
        deserialize: artefact bytes -> engine, or None when the runtime refuses them.

    Returns:
        (engine, artefact path, whether it was built now).

    Raises:
        BackendUnavailableError: the build failed, or a fresh artefact cannot be deserialised.
    """
    data, status, reason = cache.lookup(key)
    plan_path = cache.paths(key)[0]
    kind = key.kind
    if data is not None:
        engine = deserialize(data)
        if engine is not None:
            log.info("%s: using %s", key.toolkit, reason)
            return engine, plan_path, False
        status, reason = CacheStatus.CORRUPT, f"{key.toolkit} refused to deserialise cached {kind} {plan_path.name}"
        cache.invalidate(key)
    level = logging.INFO if status == CacheStatus.MISSING else logging.WARNING
    log.log(level, "%s: %s; building a new %s", key.toolkit, reason, kind)
    plan, info = build()
    plan_path = cache.store(key, plan, info)
    engine = deserialize(plan)
    if engine is None:
        cache.invalidate(key)
        raise BackendUnavailableError(key.toolkit, f"the {kind} just built cannot be deserialised (see the log)")
    return engine, plan_path, True
