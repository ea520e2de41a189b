"""Memory fences for the frame ring's seqlock, from GCC's atomic library (``libatomic.so.1``) through ctypes.

Python has no memory fences of its own, and numpy's loads and stores are plain ones. The ring's seqlock
(:mod:`emim_stream.pipeline.capture.ring`) needs two orderings that a weakly ordered CPU (aarch64, as on NVIDIA
Jetson) does not give by itself: the writer's stores to a slot must become visible in the order odd version ->
data -> even version -> newest seq, and the reader's loads must happen in the order newest seq -> version ->
data -> version. ``atomic_thread_fence(memory_order_release)`` between the writer's steps and
``atomic_thread_fence(memory_order_acquire)`` between the reader's give exactly that (C11 fences; on aarch64 a
``dmb ish`` and a ``dmb ishld``). libatomic exports the fence as an out-of-line function, so no compiler is
needed: the library comes with the GCC runtime (Debian and Ubuntu, JetPack included: package ``libatomic1``).

On x86-64 (and 32-bit x86) the hardware already keeps stores and loads in program order (TSO), so acquire and
release fences are instructions only to the compiler, and an opaque function call is one. There the fences work
without libatomic too; :attr:`MemoryOrdering.PLAIN` (no call at all, the ring of earlier releases) exists only
to measure what the fences cost and is refused elsewhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import functools
import platform
from collections.abc import Callable

from emim_stream.pipeline.errors import PipelineError

__all__ = ["Fences", "MemoryOrdering", "fences", "strongly_ordered"]

# The C11 memory orders as GCC numbers them (__ATOMIC_ACQUIRE, __ATOMIC_RELEASE).
_ACQUIRE, _RELEASE = 2, 3
_TSO_MACHINES = frozenset({"x86_64", "amd64", "i386", "i486", "i586", "i686", "x86"})

Fences = tuple[Callable[[], None], Callable[[], None]]
"""``(acquire, release)``: call ``acquire()`` between two groups of loads, ``release()`` between two of stores."""


class MemoryOrdering(str, enum.Enum):
    """How the ring orders its shared-memory accesses."""

    FENCED = "fenced"
    """Acquire and release fences around the seqlock's steps: correct on every CPU (the default)."""
    PLAIN = "plain"
    """No fences: correct only on x86-64's TSO; for measuring the fences' cost."""


def strongly_ordered(machine: str | None = None) -> bool:
    """True on CPUs whose hardware keeps stores and loads in program order (x86's TSO)."""
    return (machine or platform.machine()).lower() in _TSO_MACHINES


def _nothing() -> None:
    """A fence that needs no instruction (x86-64's TSO; the call itself stops the compiler's reordering)."""


@functools.cache
def _libatomic_fence() -> Callable[[int], None] | None:
    """``atomic_thread_fence`` from libatomic.so.1, or None when the library is not installed."""
    for name in dict.fromkeys((ctypes.util.find_library("atomic"), "libatomic.so.1")):
        if name is None:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        fence = lib.atomic_thread_fence
        fence.argtypes = [ctypes.c_int]
        fence.restype = None
        return fence
    return None


def fences(ordering: MemoryOrdering = MemoryOrdering.FENCED) -> Fences:
    """The ``(acquire, release)`` fence functions for ``ordering`` on this CPU.

    Raises:
        PipelineError: FENCED on a weakly ordered CPU without libatomic, or PLAIN on one (unsound there).
    """
    strong = strongly_ordered()
    if ordering is MemoryOrdering.PLAIN:
        if not strong:
            raise PipelineError(
                f"the ring's plain memory ordering is only correct on x86-64, not on {platform.machine()}"
            )
        return _nothing, _nothing
    fence = _libatomic_fence()
    if fence is None:
        if strong:
            return _nothing, _nothing
        raise PipelineError(
            f"the frame ring needs memory fences on {platform.machine()} and takes them from GCC's atomic "
            "library (libatomic.so.1), which is not installed; install it (Debian, Ubuntu, JetPack: "
            "apt-get install libatomic1)"
        )
    return functools.partial(fence, _ACQUIRE), functools.partial(fence, _RELEASE)
