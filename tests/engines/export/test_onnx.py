"""ONNX export: ONNX Runtime equals torch, only the batch is dynamic, and the op audit guards TensorRT."""

from __future__ import annotations

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from emim_stream.cli import main as cli
from emim_stream.engines.errors import ExportError
from emim_stream.engines.export.onnx import INPUT_NAME, export_onnx, run_onnxruntime
from emim_stream.engines.export.onnx_audit import SUPPORTED_OPS, audit_onnx, check_onnx
from emim_stream.engines.layers.blocks import EmimAttention
from emim_stream.engines.models import build_model

FP32_REL_TOL = 1e-4


def randomised(name: str, **overrides) -> torch.nn.Module:
    """A model whose every branch matters: non-zero motion MLP output layer, non-trivial BN statistics."""
    torch.manual_seed(0)
    model = build_model(name, **overrides).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, EmimAttention):
                torch.nn.init.normal_(module.motion_conv[2].weight, std=0.05)
                torch.nn.init.normal_(module.motion_conv[2].bias, std=0.05)
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model


def rel_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


def input_dims(path) -> list:
    tensor = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type
    return [d.dim_param or d.dim_value for d in tensor.shape.dim]


@pytest.mark.slow  # EMIM-S (21.5 M parameters) exported and run: half a minute
def test_emim_s_onnxruntime_matches_torch(tmp_path):
    """EMIM-S at a reduced clip (4x64x64: stage-3 grid 4x4x4, stage 4 4x2x2, every window clipped)."""
    model = randomised("emim_s")
    report = export_onnx(model, (4, 64, 64), tmp_path / "emim_s.onnx")
    assert report.audit.ok and report.opset == 18
    assert dict(report.audit.ops)["Softmax"] == 6 + 5  # 6 EMIM layers, 5 global-attention layers
    assert input_dims(report.path) == ["batch", 3, 4, 64, 64]
    clips = torch.randn(3, 3, 4, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(clips)
    assert rel_error(run_onnxruntime(report.path, clips), expected) <= FP32_REL_TOL


def test_export_command_emim_xs_dynamic_batch(tmp_path, monkeypatch, capsys):
    """`emim-stream export` on emim_xs; the command verifies batch 2, the file then serves batch 3."""
    from emim_stream.engines.backends import EngineConfig
    from emim_stream.engines.backends.model_source import load_source

    monkeypatch.setitem(cli.COMMANDS, "export", "export")
    out = tmp_path / "emim_xs.onnx"
    argv = ["export", "--model", "emim_xs", "--frames", "4", "--size", "64", "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "op audit passed" in printed and "verify    onnxruntime vs torch on 2 clips" in printed
    assert "(ok)" in printed
    assert input_dims(out) == ["batch", 3, 4, 64, 64]
    # the command exports the seeded untrained model: load it the same way and compare
    model = load_source(EngineConfig(model="emim_xs")).model
    clips = torch.randn(3, 3, 4, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(clips)
    assert rel_error(run_onnxruntime(out, clips), expected) <= FP32_REL_TOL


def test_half_export_keeps_layernorm_in_fp32_and_runs(tmp_path):
    model = randomised("emim_xs", depths=(1, 1, 1, 1))
    report = export_onnx(model, (4, 64, 64), tmp_path / "half.onnx", half=True, batch=2)
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(report.path))).graph
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert input_dims(report.path) == [2, 3, 4, 64, 64]  # fixed batch
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    norms = [n for n in graph.node if n.op_type == "LayerNormalization"]
    assert norms and all(types.get(n.input[0]) == TensorProto.FLOAT for n in norms)
    softmax = [n for n in graph.node if n.op_type == "Softmax"]
    assert softmax and all(types.get(n.input[0]) == TensorProto.FLOAT for n in softmax)
    clips = torch.randn(2, 3, 4, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(clips)  # float32 reference: the half graph is within fp16 error of it
    assert rel_error(run_onnxruntime(report.path, clips.half()), expected) < 2e-2


def tiny_graph(op_type: str, domain: str = "", opset: int = 18) -> onnx.ModelProto:
    node = helper.make_node(op_type, ["x"], ["y"], domain=domain)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=imports)


@pytest.mark.parametrize(
    ("op_type", "domain", "listed"),
    [("Unique", "", "Unique (1x)"), ("Col2Im", "", "Col2Im"), ("EmimLocalAttn", "emim", "emim::EmimLocalAttn")],
)
def test_audit_fails_on_ops_tensorrt_cannot_import(op_type, domain, listed):
    report = audit_onnx(tiny_graph(op_type, domain))
    assert not report.ok and listed in report.problems[0]
    assert ("Relu", 1) in report.ops
    with pytest.raises(ExportError, match="fails the TensorRT op audit"):
        check_onnx(tiny_graph(op_type, domain))
    name = f"{domain}::{op_type}" if domain else op_type
    assert check_onnx(tiny_graph(op_type, domain), allow=(name,)).ok  # e.g. a plugin that will be loaded


def test_audit_checks_the_opset_and_subgraphs():
    assert "opset 25 outside" in audit_onnx(tiny_graph("Relu", opset=25)).problems[0]
    inner = helper.make_graph(
        [helper.make_node("NonZero", ["a"], ["b"]), helper.make_node("Unique", ["b"], ["c"])],
        "body",
        [],
        [helper.make_tensor_value_info("c", TensorProto.INT64, None)],
    )
    node = helper.make_node("If", ["cond"], ["y"], then_branch=inner, else_branch=inner)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, None)],
    )
    report = audit_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    assert report.unsupported == ("Unique",) and dict(report.ops)["NonZero"] == 2
    assert "NonZero" in SUPPORTED_OPS and "Col2Im" not in SUPPORTED_OPS


def test_export_refuses_bad_settings(tmp_path):
    from emim_stream.engines.errors import ConfigError

    model = build_model("emim_xs", depths=(1, 1, 1, 1))
    with pytest.raises(ConfigError, match="exporter"):
        export_onnx(model, (4, 64, 64), tmp_path / "m.onnx", exporter="jit")
    with pytest.raises(ConfigError, match="dynamo exporter writes opset >= 18"):
        export_onnx(model, (4, 64, 64), tmp_path / "m.onnx", exporter="dynamo", opset=17)
    assert not (tmp_path / "m.onnx").exists()
    assert INPUT_NAME == "video"
