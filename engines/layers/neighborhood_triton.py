"""The fused EMIM neighbourhood kernel in Triton (``kernel: triton``), forward only.

One program computes, for one (batch, head, query frame) and a tile of ``BLOCK_P`` query
positions, the 7x7 logits of query frame t against key frame t+1 on the 1e-6-padded maps
(docs/model.md#padding: the padded positions are read as the constant, not masked), adds the
relative positional bias, stores the logits (the motion branch needs them) and accumulates the
softmax-weighted context over the full head width with an online softmax: no intermediate
tensor per window offset. The logits, the softmax and the context accumulate in float32 whatever
the input dtype; the outputs are stored in the input dtype, as the ``reference`` kernel does.

The launch is registered with ``torch.library.triton_op`` and ``wrap_triton``, so
``torch.compile`` and ``torch.export`` / AOTInductor see one op, ``emim::neighborhood``, whose
kernel they compile into the graph (or the AOTInductor package) instead of tracing through it.

It runs where Triton has a backend: CUDA GPUs. On the CPU the Triton kernel runs only under
Triton's interpreter (``TRITON_INTERPRET=1`` set before this module is imported), which is how
the tests check it against the float64 loop reference without a GPU (the interpreter is slow:
its timings are not speed figures). Otherwise CPU tensors reaching the op (tracing, a model
moved to the CPU) get the ``reference`` maths registered as the op's CPU kernel; the engines
still refuse ``kernel: triton`` on the CPU, so a CPU engine never claims to run it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton
from triton import knobs

from emim_stream.engines.layers.neighborhood_reference import PAD, PAD_VALUE, WINDOW, reference_kernel

__all__ = ["BLOCK_P", "OP_NAME", "interpreted", "triton_kernel"]

BLOCK_P = 32
"""Query positions per program."""
OP_NAME = "emim::neighborhood"


def interpreted() -> bool:
    """Whether this module's kernel was built for Triton's CPU interpreter (TRITON_INTERPRET=1)."""
    return bool(knobs.runtime.interpret)


@triton.jit
def _emim_fwd(
    q_ptr,
    k_ptr,
    v_ptr,
    rpb_ptr,
    attn_ptr,
    ctx_ptr,
    sq_b,
    sq_h,
    sq_t,
    sq_y,
    sq_x,
    sk_b,
    sk_h,
    sk_t,
    sk_y,
    sk_x,
    sv_b,
    sv_h,
    sv_t,
    sv_y,
    sv_x,
    heads,
    frames,
    height,
    width,
    head_dim,
    scale,
    pad_value,
    WIN: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Logits and context of BLOCK query positions of one (batch, head, paired frame)."""
    pid_bht = tl.program_id(1)
    t = pid_bht % frames
    h = (pid_bht // frames) % heads
    b = pid_bht // (frames * heads)
    pos = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    in_map = pos < height * width
    y = pos // width
    x = pos % width
    c = tl.arange(0, BLOCK_D)
    in_head = c < head_dim
    q_base = q_ptr + b * sq_b + h * sq_h + t * sq_t
    k_base = k_ptr + b * sk_b + h * sk_h + t * sk_t
    v_base = v_ptr + b * sv_b + h * sv_h + t * sv_t
    q_offs = y[:, None] * sq_y + x[:, None] * sq_x + c[None, :]
    q = tl.load(q_base + q_offs, mask=in_map[:, None] & in_head[None, :], other=0.0).to(tl.float32) * scale
    row = (pid_bht * height * width + pos).to(tl.int64)
    m_i = tl.full([BLOCK], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    for p in tl.static_range(WIN * WIN):
        ky = y + (p // WIN - HALF)
        kx = x + (p % WIN - HALF)
        inside = (ky >= 0) & (ky < height) & (kx >= 0) & (kx < width) & in_map
        mask = inside[:, None] & in_head[None, :]  # outside the map: the pad constant, unmasked
        key = tl.load(k_base + ky[:, None] * sk_y + kx[:, None] * sk_x + c[None, :], mask=mask, other=pad_value)
        logit = tl.sum(q * key.to(tl.float32), axis=1) + tl.load(rpb_ptr + h * WIN * WIN + p).to(tl.float32)
        tl.store(attn_ptr + row * WIN * WIN + p, logit.to(attn_ptr.dtype.element_ty), mask=in_map)
        m_new = tl.maximum(m_i, logit)
        alpha = tl.exp(m_i - m_new)
        weight = tl.exp(logit - m_new)
        val = tl.load(v_base + ky[:, None] * sv_y + kx[:, None] * sv_x + c[None, :], mask=mask, other=pad_value)
        acc = acc * alpha[:, None] + weight[:, None] * val.to(tl.float32)
        l_i = l_i * alpha + weight
        m_i = m_new
    ctx = acc / l_i[:, None]
    ctx_offs = row[:, None] * head_dim + c[None, :]
    tl.store(ctx_ptr + ctx_offs, ctx.to(ctx_ptr.dtype.element_ty), mask=in_map[:, None] & in_head[None, :])


@triton_op(OP_NAME, mutates_args=())
def emim_neighborhood_fused(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused logits + rpb + softmax + context on paired frames.

    Args:
        q, k, v: ``[B, heads, T', H, W, d]`` (query frames and their next key/value frames).
        rpb: ``[heads, 7, 7]``.
        scale: logit scale.

    Returns:
        ``(A [B, heads, T', H, W, 49] in q's dtype, F [B, heads, T', H, W, d] in v's dtype)``.
    """
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    rpb = rpb.contiguous()
    B, heads, frames, height, width, head_dim = q.shape
    attn = torch.empty((B, heads, frames, height, width, WINDOW * WINDOW), dtype=q.dtype, device=q.device)
    ctx = torch.empty((B, heads, frames, height, width, head_dim), dtype=v.dtype, device=v.device)
    grid = (triton.cdiv(height * width, BLOCK_P), B * heads * frames)
    wrap_triton(_emim_fwd)[grid](
        q,
        k,
        v,
        rpb,
        attn,
        ctx,
        *q.stride()[:5],
        *k.stride()[:5],
        *v.stride()[:5],
        heads,
        frames,
        height,
        width,
        head_dim,
        scale,
        PAD_VALUE,
        WIN=WINDOW,
        HALF=PAD,
        BLOCK=BLOCK_P,
        BLOCK_D=triton.next_power_of_2(head_dim),
    )
    return attn, ctx


if not interpreted():

    @emim_neighborhood_fused.register_kernel("cpu")
    def _cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: torch.Tensor, scale: float):
        """CPU tensors without the interpreter: the reference kernel's maths (same contract)."""
        return reference_kernel(q, k, v, rpb, scale)


def triton_kernel(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``triton`` entry of the kernel table: paired q, k, v ``[B, h, T', H, W, d]`` -> (A, F)."""
    return emim_neighborhood_fused(q, k, v, rpb, float(scale))
