"""A small tmpfs for full-disk and read-only tests (mounting needs root; the tests skip with the reason otherwise)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
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


@contextmanager
def filling(directory: Path) -> Iterator[list[float]]:
    """Watch the free space of ``directory``'s file system every 5 ms; the list yielded holds, once the block
    ends, the time (monotonic) the free space was last seen going down: the disk filling.

    The write that does not fit takes the last free blocks and fails; the recorder then cuts off the part of a
    fragment it wrote, so a full disk may last only moments: a poll for zero free blocks can miss it.
    """
    filled_at: list[float] = []
    least: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            blocks = os.statvfs(directory).f_bavail
            if not least or blocks < least[0]:
                least[:] = [blocks]
                filled_at[:] = [time.monotonic()]
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield filled_at
    finally:
        stop.set()
        watcher.join()
