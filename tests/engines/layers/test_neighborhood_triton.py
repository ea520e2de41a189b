"""The fused Triton EMIM kernel against the float64 loop reference, on the CPU through Triton's interpreter.

The kernel runs in one child process with ``TRITON_INTERPRET=1`` (tests/engines/
triton_interpreter_cases.py); these tests compare what it saved. fp32 kernel vs float64
reference: rel 1e-5 of the largest magnitude (the kernel accumulates in float32). fp16/bf16 and
speed need a GPU (the GPU check).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emim_stream.engines.errors import KernelUnavailableError
from emim_stream.engines.layers.neighborhood import KERNELS, choose_kernel
from tests.engines.layers import triton_interpreter_cases as cases
from tests.engines.layers.test_neighborhood import attention_loop_reference, loop_reference

pytestmark = pytest.mark.skipif("triton" not in KERNELS, reason="triton is not installed")

REL = 1e-5
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("triton") / "cases.pt"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.engines.layers.triton_interpreter_cases", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("index", range(len(cases.CASES)), ids=[str(s) for s in cases.CASES])
def test_kernel_matches_float64_loop_reference(interpreted, index):
    shape = cases.CASES[index]
    q, k, v, rpb = cases.inputs(shape)
    attn, ctx = interpreted["ops"][index]
    ref_attn, ref_ctx = loop_reference(q, k, v, rpb, shape[-1] ** -0.5)
    assert attn.dtype == ctx.dtype == torch.float32 and attn.shape == ref_attn.shape and ctx.shape == ref_ctx.shape
    assert _rel(attn, ref_attn) < REL
    assert _rel(ctx, ref_ctx) < REL
    assert torch.equal(ctx[:, :, -1], ctx[:, :, -2])  # last-slot rule


def test_attention_layer_matches_loop_reference(interpreted):
    module, x = cases.attention_layer()
    with torch.no_grad():
        want = attention_loop_reference(module.double(), x.double(), cases.ATTENTION[3])
    assert _rel(interpreted["attention"], want) < REL


def test_compile_keeps_one_op():
    """torch.compile sees the fused kernel as one op (here it runs the op's CPU kernel)."""
    module, x = cases.attention_layer()
    graphs: list[list[str]] = []

    def capture(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):
        graphs.append([str(n.target) for n in gm.graph.nodes if n.op == "call_function"])
        return gm.forward

    size = cases.ATTENTION[3]
    with torch.no_grad():
        compiled = torch.compile(module, backend=capture, fullgraph=True)(x, size)
        module.kernel = "reference"
        want = module(x, size)
    assert len(graphs) == 1 and graphs[0].count("emim.neighborhood.default") == 1
    torch.testing.assert_close(compiled, want, rtol=0, atol=0)


def test_export_keeps_one_op_per_emim_layer():
    from emim_stream.engines.models import build_model

    model = build_model("emim_xs", kernel="triton").eval()
    layers = sum(1 for m in model.modules() if getattr(m, "kernel", None) == "triton")
    x = torch.randn(2, 3, 4, 64, 64)
    ep = torch.export.export(model, (x,))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert layers > 0 and targets.count("emim.neighborhood.default") == layers


def test_auto_picks_triton_on_cuda_only():
    assert choose_kernel("auto", "cuda")[0] == "triton"
    assert choose_kernel("auto", "cpu")[0] == "reference"
    assert choose_kernel("triton", "cuda:0") == ("triton", "asked for")
    with pytest.raises(KernelUnavailableError, match="runs on CUDA GPUs.*engine.kernel"):
        choose_kernel("triton", "cpu")
