"""The EMIM neighbourhood op: next-frame local attention logits and context.

EMIM ("A Renaissance of Explicit Motion Information Mining from Transformers for Action
Recognition") pairs each query frame t with the key/value frame t+1 and attends over a 7x7
window centred on the query position, on key/value maps padded with the constant 1e-6 (the
padded positions are not masked). The op returns both the raw logits ``A`` (the motion branch
consumes them) and the context ``F = softmax(A) @ V``. docs/model.md#emim is the contract.

Deviation from the released code (docs/model.md#decision-full-width): the released CUDA kernel
computes the context for only 32 channels per head; we compute the full head width.

Kernels (one function, interchangeable implementations, each tested against a float64
loop-over-positions reference):

- ``reference``: portable PyTorch (:mod:`emim_stream.engines.layers.neighborhood_reference`). The window is
  walked as 49 shifted slices of the padded key/value maps, each a vectorised product over all positions at
  once (no Python loop over positions; 49 static slices export to ONNX as plain Slice/Mul/ReduceSum, which
  TensorRT compiles with native layers). This shape of kernel took ~34 ms per stage-3 layer
  on 2 CPU cores against ~570 ms for an ``unfold`` version, which materialises 49 copies of K and V.
- ``triton``: one fused Triton kernel (logits + rpb + online softmax + context) registered as the
  op ``emim::neighborhood`` (:mod:`emim_stream.engines.layers.neighborhood_triton`), present when Triton is
  installed. It runs on CUDA GPUs, and on the CPU only under Triton's interpreter (tests).

``auto`` resolves per device (:func:`choose_kernel`): ``triton`` on a CUDA device when Triton is
installed, ``reference`` otherwise. The ONNX export always uses ``reference``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from emim_stream.engines.errors import KernelUnavailableError
from emim_stream.engines.layers.neighborhood_reference import PAD, PAD_VALUE, WINDOW, reference_kernel

__all__ = [
    "KERNELS",
    "PAD",
    "PAD_VALUE",
    "WINDOW",
    "choose_kernel",
    "emim_neighborhood",
    "pair_frames",
    "resolve_kernel",
]


def pair_frames(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EMIM's frame pairing for the T-1 distinct output slots.

    Slot t < T-1 uses query frame t with key/value frame t+1. (Slot T-1 repeats slot T-2, which
    :func:`emim_neighborhood` adds by copying, so only T-1 slots are computed.)

    Args:
        q, k, v: ``[B, heads, T, H, W, d]`` with T >= 2.

    Returns:
        ``(q[:, :, :-1], k[:, :, 1:], v[:, :, 1:])``.
    """
    if q.shape[2] < 2:
        raise ValueError(f"EMIM needs at least 2 frames, got T={q.shape[2]}")
    return q[:, :, :-1], k[:, :, 1:], v[:, :, 1:]


KernelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]

# Kernel name -> implementation; ``triton`` is added at the end of this module when Triton is installed.
KERNELS: dict[str, KernelFn] = {"reference": reference_kernel}


def _runs_on(name: str, device: torch.device) -> str | None:
    """Why kernel ``name`` cannot run on ``device`` (None: it can)."""
    if name != "triton" or device.type == "cuda":
        return None
    from emim_stream.engines.layers.neighborhood_triton import interpreted

    if device.type == "cpu" and interpreted():
        return None
    return f"kernel 'triton' runs on CUDA GPUs, not on {device.type} (the CPU only under TRITON_INTERPRET=1, for tests)"


def choose_kernel(name: str, device: torch.device | str | None = None) -> tuple[str, str]:
    """The kernel ``name`` means on ``device``, and why.

    Args:
        name: a key of :data:`KERNELS` or ``'auto'``.
        device: where the op will run (None: not known yet; ``auto`` then means ``reference``).

    Returns:
        ``(kernel, reason)``, e.g. ``('triton', 'auto: CUDA device and Triton installed')``.

    Raises:
        KernelUnavailableError: the named kernel is not installed or cannot run on ``device``.
    """
    device = torch.device(device) if device is not None else None
    if name == "auto":
        if device is not None and device.type == "cuda" and "triton" in KERNELS:
            return "triton", "auto: CUDA device and Triton installed"
        if device is None or device.type != "cuda":
            return "reference", f"auto: {'no device yet' if device is None else device.type} (triton needs CUDA)"
        return "reference", "auto: Triton is not installed"
    if name not in KERNELS:
        raise KernelUnavailableError(
            f"EMIM kernel {name!r} is not available here; available: {sorted(KERNELS)} or 'auto'"
        )
    why = _runs_on(name, device) if device is not None else None
    if why is not None:
        raise KernelUnavailableError(f"{why}; set engine.kernel to reference or auto")
    return name, "asked for"


def resolve_kernel(name: str, device: torch.device | str | None = None) -> str:
    """The kernel :func:`choose_kernel` picks for ``name`` on ``device``.

    Raises:
        KernelUnavailableError: the named kernel is not available here.
    """
    return choose_kernel(name, device)[0]


def emim_neighborhood(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rpb: torch.Tensor,
    scale: float | None = None,
    kernel: str = "reference",
) -> tuple[torch.Tensor, torch.Tensor]:
    """EMIM's next-frame 7x7 neighbourhood attention, all T output slots.

    Args:
        q, k, v: ``[B, heads, T, H, W, d]`` (T >= 2), token grid of one clip.
        rpb: ``[heads, 7, 7]`` relative positional bias, indexed by window offset (dy+3, dx+3).
        scale: logit scale; default ``d ** -0.5``.
        kernel: a key of :data:`KERNELS` (resolve ``'auto'`` with :func:`resolve_kernel` first).

    Returns:
        ``(A, F)``: raw logits ``[B, heads, T, H, W, 49]`` (scaled q.k plus rpb, row-major window
        index ``p = (dy+3)*7 + (dx+3)``) and context ``[B, heads, T, H, W, d]``. Slot T-1 is a copy
        of slot T-2 (EMIM's last-slot rule).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    attn, context = KERNELS[kernel](*pair_frames(q, k, v), rpb, scale)
    attn = torch.cat([attn, attn[:, :, -1:]], dim=2)
    context = torch.cat([context, context[:, :, -1:]], dim=2)
    return attn, context


try:  # the fused kernel registers when Triton is installed
    from emim_stream.engines.layers.neighborhood_triton import triton_kernel
except ImportError:
    pass
else:
    KERNELS["triton"] = triton_kernel
