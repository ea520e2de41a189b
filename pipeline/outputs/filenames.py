"""File names built from outside text (camera ids, action labels): one sanitiser for every output file."""

from __future__ import annotations

import unicodedata
from pathlib import Path

__all__ = ["MAX_NAME_BYTES", "safe_name", "unique_path"]

MAX_NAME_BYTES = 64
"""Longest part of a file name made by :func:`safe_name`, in UTF-8 bytes (a file system allows 255 per name)."""


def safe_name(text: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """``text`` as one harmless file-name part: letters and digits of any script, ``-``, ``_`` and ``.`` kept,
    everything else (``/``, NUL, spaces, control characters) replaced by ``_``, no leading dot (so neither
    ``..`` nor a hidden file), at most ``max_bytes`` UTF-8 bytes, never empty."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in unicodedata.normalize("NFC", text))
    cleaned = cleaned.lstrip(".")
    return cleaned.encode()[:max_bytes].decode(errors="ignore") or "_"


def unique_path(stem: Path, suffix: str) -> Path:
    """``stem + suffix``, or ``stem_1 + suffix``, ``stem_2 + suffix``, ... if that exists already."""
    path, n = stem.with_name(stem.name + suffix), 1
    while path.exists():
        path, n = stem.with_name(f"{stem.name}_{n}{suffix}"), n + 1
    return path
