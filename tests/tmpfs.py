"""A small tmpfs for full-disk and read-only tests (mounting needs root; the tests skip with the reason otherwise)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise OSError(done.stderr.strip() or f"mount {' '.join(args)} failed")


@contextmanager
def small_tmpfs(directory: Path, size: str = "2m") -> Iterator[Path]:
    """``directory`` with a tmpfs of ``size`` mounted on it (skips the test where mounting is not permitted)."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory))
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"a {size} tmpfs cannot be mounted here (needs root): {err}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, timeout=30)


def remount(directory: Path, mode: str) -> None:
    """Remount the tmpfs on ``directory`` ``ro`` or ``rw``."""
    _mount("-o", f"remount,{mode}", str(directory))
