"""Engines behind one interface: config validation, the fallback chain and its log, torch vs onnxruntime."""

from __future__ import annotations

import copy
import dataclasses
import logging
import sys
import types

import pytest
import torch

from emim_stream.engines.backends import BACKENDS, Candidate, EngineConfig, fallback_chain, load_engine
from emim_stream.engines.backends.base import Engine, read_engine_section
from emim_stream.engines.backends.model_source import ModelSource, load_source
from emim_stream.engines.checkpoints.io import save_checkpoint
from emim_stream.engines.clip import ClipSpec
from emim_stream.engines.errors import BackendUnavailableError, CheckpointError, ConfigError
from emim_stream.engines.layers.blocks import EmimAttention
from emim_stream.engines.layers.vmp import VmpLayer
from emim_stream.engines.models import build_model

SMALL = dict(frames=4, height=64, width=64)  # emim_xs at a quick clip


@pytest.fixture
def no_gpu(monkeypatch):
    """Force 'no GPU' whatever the host has, so the chain's CPU end is what is tested."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)


def tiny_source(name: str = "tiny") -> ModelSource:
    """A two-EMIM-layer model with every branch live, as an engine source."""
    torch.manual_seed(0)
    model = build_model("emim_xs", depths=(1, 1, 1, 1)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, EmimAttention):
                torch.nn.init.normal_(module.motion_conv[2].weight, std=0.05)
    labels = tuple(f"c{i}" for i in range(model.num_classes))
    return ModelSource(model, labels, ClipSpec(4, 64, 64), "emim_xs", "0" * 64, name, None)


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"backend": "tensorrtx"}, "engine.backend"),
        ({"precision": "fp64"}, "engine.precision"),
        ({"device": "gpu"}, "engine.device"),
        ({"max_batch": 0}, "engine.max_batch"),
        ({"max_batch": True}, "engine.max_batch"),
        ({"frames": 1}, "engine.frames"),
        ({"height": 100}, "engine.height"),
        ({"threads": -1}, "engine.threads"),
        ({"compile": "yes"}, "engine.compile"),
        ({"backend": "tensorrt", "device": "cpu"}, "engine.backend"),
        ({"precision": "int8"}, "engine.onnx"),
        ({"model": "emim_xs", "checkpoint": "a.pt"}, "engine.checkpoint"),
    ],
)
def test_config_errors_name_the_field(settings, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        EngineConfig(**settings)


def test_config_from_file_section_rejects_unknown_keys(tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text("engine:\n  backend: tensorrt\n  precision: fp16\n  max_batch: 4\ncameras: []\n")
    cfg = EngineConfig.from_dict(read_engine_section(str(path)))
    assert (cfg.backend, cfg.precision, cfg.max_batch) == ("tensorrt", "fp16", 4)
    with pytest.raises(ConfigError, match=r"unknown key engine\.max_bach; did you mean engine\.max_batch\?"):
        EngineConfig.from_dict({"max_bach": 4})
    assert dataclasses.is_dataclass(cfg) and hash(cfg)  # frozen: embeddable in the pipeline config


def test_fallback_chain_order_and_precision_per_step():
    steps = [(s.backend, s.device, s.precision) for s in fallback_chain(EngineConfig(precision="fp16"))]
    assert steps == [
        ("tensorrt", "cuda", "fp16"),
        ("aoti", "cuda", "fp16"),
        ("torch", "cuda", "fp16"),
        ("torch", "cpu", "fp32"),
    ]
    int8 = fallback_chain(EngineConfig(backend="tensorrt", device="cuda:1", precision="int8", onnx="q.onnx"))
    assert [(s.backend, s.device, s.precision) for s in int8] == [
        ("tensorrt", "cuda:1", "int8"),
        ("aoti", "cuda:1", "fp16"),
        ("torch", "cuda:1", "fp16"),
        ("torch", "cpu", "fp32"),
    ]
    assert "aoti has no int8 path" in int8[1].note and "torch has no int8 path" in int8[2].note
    aoti = [(s.backend, s.device) for s in fallback_chain(EngineConfig(backend="aoti"))]
    assert aoti == [("aoti", "cuda"), ("torch", "cuda"), ("aoti", "cpu"), ("torch", "cpu")]
    assert [s.backend for s in fallback_chain(EngineConfig(backend="aoti", device="cpu"))] == ["aoti", "torch"]
    aoti_cuda = fallback_chain(EngineConfig(backend="aoti", device="cuda"))
    assert [s.backend for s in aoti_cuda] == ["aoti", "torch", "torch"]
    assert [s.backend for s in fallback_chain(EngineConfig(backend="onnxruntime", device="cpu"))] == [
        "onnxruntime",
        "torch",
    ]
    assert fallback_chain(EngineConfig(device="cpu", precision="bf16")) == [Candidate("torch", "cpu", "bf16")]
    assert fallback_chain(EngineConfig(backend="torch", device="cpu", precision="fp16"))[0].precision == "fp16"
    assert len(fallback_chain(EngineConfig(fallback=False))) == 1


def test_missing_tensorrt_and_no_gpu_fall_back_to_torch_cpu(no_gpu, no_tensorrt, caplog):
    with caplog.at_level(logging.INFO, logger="emim_stream.engines.backends"):
        engine = load_engine(EngineConfig(model="emim_xs", **SMALL))
    with engine:
        assert isinstance(engine, Engine)
        info = engine.describe()
        assert (info.backend, info.device, info.precision) == ("torch", "cpu", "fp32")
    lines = [r.getMessage() for r in caplog.records if r.name == "emim_stream.engines.backends.select"]
    assert lines[0].startswith("backend 'tensorrt' on cuda (fp32) unavailable (not installed")
    assert lines[0].endswith("trying 'aoti' on cuda (fp32)")
    assert lines[1].startswith("backend 'aoti' on cuda (fp32) unavailable (no CUDA GPU")
    assert lines[2].startswith("backend 'torch' on cuda (fp32) unavailable (no CUDA GPU")
    assert lines[3].startswith("using backend 'torch' on cpu (fp32)")
    assert len(lines) == 4  # one line per decision


def test_tensorrt_present_but_no_gpu_says_so(no_gpu, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.13.3.9"))
    with caplog.at_level(logging.WARNING, logger="emim_stream.engines.backends"):
        engine = load_engine(EngineConfig(model="emim_xs", precision="fp16", **SMALL))
    assert engine.describe().backend == "torch" and engine.describe().precision == "fp32"
    assert "backend 'tensorrt' on cuda (fp16) unavailable (no CUDA GPU" in caplog.text


def test_without_fallback_the_reason_is_raised(no_gpu, no_tensorrt):
    with pytest.raises(BackendUnavailableError, match="not installed"):
        load_engine(EngineConfig(model="emim_xs", backend="tensorrt", fallback=False, **SMALL))


def test_only_backend_unavailable_moves_the_chain(no_gpu, no_tensorrt):
    def broken(source, cfg, step):
        raise RuntimeError("a real bug")

    with pytest.raises(RuntimeError, match="a real bug"):
        load_engine(EngineConfig(model="emim_xs", **SMALL), openers={**BACKENDS, "tensorrt": broken})


def test_torch_engine_contract(no_gpu):
    cfg = EngineConfig(model="emim_xs", backend="torch", max_batch=2, **SMALL)
    with load_engine(cfg) as engine:
        spec = engine.input_spec
        assert (spec.frames, spec.height, spec.width, spec.dtype, spec.max_batch) == (4, 64, 64, torch.float32, 2)
        assert engine.labels[0] == "static" and len(engine.labels) == 9
        assert engine.device == torch.device("cpu") and engine.vmp is None
        clips = torch.randn(spec.shape(2))
        logits = engine.infer(clips)
        assert logits.shape == (2, 9) and logits.dtype == torch.float32
        assert torch.equal(engine.infer(clips.double()), logits)  # other float dtypes are cast
        info = engine.describe()
        assert info.weights == "untrained emim_xs (seed 0)" and info.kernel == "reference"
        assert info.checkpoint_sha256 == load_source(cfg).weights_sha256  # seeded: same weights every time
        for bad in (torch.randn(3, 3, 4, 64, 64), torch.randn(1, 3, 4, 64, 32), torch.randn(3, 4, 64, 64)):
            with pytest.raises(ValueError, match=r"clips must be \[B, 3, 4, 64, 64\]"):
                engine.infer(bad)


def test_half_precision_on_cpu_stays_close_to_fp32(no_gpu):
    """bf16 weights and activations; the EMIM softmax runs in fp32 and the logits come out fp32."""
    source = tiny_source()
    clips = torch.randn(2, 3, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = copy.deepcopy(source.model)(clips)
    with load_engine(EngineConfig(backend="torch", device="cpu", precision="bf16"), source=source) as engine:
        assert engine.input_spec.dtype == torch.bfloat16
        got = engine.infer(clips)
    assert got.dtype == torch.float32
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 5e-2


def test_checkpoint_engine_carries_labels_vmp_and_hash(tmp_path, no_gpu):
    model = build_model("emim_xs", num_classes=3)
    vmp = VmpLayer()
    digest = save_checkpoint(tmp_path / "ck.pt", model, ("a", "b", "c"), ClipSpec(4, 64, 64), vmp=vmp)
    with load_engine(EngineConfig(checkpoint=str(tmp_path / "ck.pt"), device="cpu")) as engine:
        assert engine.labels == ("a", "b", "c") and engine.vmp is not None
        assert engine.describe().checkpoint_sha256 == digest
        assert engine.input_spec.frames == 4 and engine.infer(torch.randn(1, 3, 4, 64, 64)).shape == (1, 3)
    with pytest.raises(CheckpointError):
        load_engine(EngineConfig(checkpoint=str(tmp_path / "missing.pt")))


def test_onnxruntime_engine_matches_torch_engine(tmp_path, no_gpu):
    cfg = EngineConfig(backend="onnxruntime", device="cpu", max_batch=3, threads=1, plan_cache_dir=str(tmp_path))
    clips = torch.randn(3, 3, 4, 64, 64, generator=torch.Generator().manual_seed(4))
    with load_engine(cfg, source=tiny_source()) as ort_engine:
        info = ort_engine.describe()
        assert (info.backend, info.device, info.precision) == ("onnxruntime", "cpu", "fp32")
        got = ort_engine.infer(clips)
    onnx_files = list((tmp_path / "onnx").glob("*.onnx"))
    assert len(onnx_files) == 1  # exported once into the cache
    with load_engine(dataclasses.replace(cfg, backend="torch"), source=tiny_source()) as torch_engine:
        expected = torch_engine.infer(clips)
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= 1e-4
    # a graph for another clip is a config error, not a silent fallback
    other = tiny_source()
    other = dataclasses.replace(other, clip=ClipSpec(8, 64, 64))
    with pytest.raises(ConfigError, match=r"takes input \['batch', 3, 4, 64, 64\]"):
        load_engine(dataclasses.replace(cfg, onnx=str(onnx_files[0])), source=other)


def test_bench_rows_for_available_and_unavailable_backends(no_gpu, no_tensorrt):
    from emim_stream.engines.diagnostics.bench import bench_backends

    cfg = EngineConfig(model="emim_xs", device="cpu", max_batch=2, **SMALL)
    source, macs, rows = bench_backends(cfg, ["torch", "tensorrt"], batch=2, warmup=0, min_iters=2, min_time_s=0)
    torch_row, trt_row = rows
    assert source.model_name == "emim_xs" and macs > 0
    assert torch_row.iters == 2 and not torch_row.unavailable
    assert torch_row.clip_ms_p50 == pytest.approx(torch_row.batch_ms_p50 / 2)
    assert torch_row.clip_ms_p90 >= torch_row.clip_ms_p50
    assert torch_row.clips_per_s == pytest.approx(2000 / torch_row.batch_ms_p50)
    assert torch_row.macs_per_s == pytest.approx(macs * torch_row.clips_per_s)
    assert trt_row.backend == "tensorrt" and "not installed" in trt_row.unavailable


def test_bench_op_times_every_kernel():
    from emim_stream.engines.diagnostics.bench import OpLayer, bench_op
    from emim_stream.engines.layers.neighborhood import KERNELS

    layer = OpLayer("tiny", heads=2, frames=3, height=5, width=4, head_dim=8)
    rows = bench_op(layers=(layer,), natten=False, warmup=0, min_iters=2, min_time_s=0)
    assert [r.kernel for r in rows] == sorted(set(KERNELS) - {"triton"})  # triton: CUDA or its interpreter
    assert all(r.ms_p50 > 0 and r.macs_per_s == pytest.approx(layer.macs * 1000 / r.ms_p50) for r in rows)
    assert layer.macs == 2 * 49 * 2 * 8 * 2 * 5 * 4


def test_doctor_reports_environment_and_choice(no_gpu, no_tensorrt, monkeypatch, capsys):
    from emim_stream.cli import main as cli

    monkeypatch.setitem(cli.COMMANDS, "doctor", "doctor")
    args = ["doctor", "--model", "emim_xs", "--backend", "auto", "--device", "auto", "--precision", "fp16"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "[selection for backend=auto device=auto precision=fp16]" in out
    assert "'tensorrt' on cuda (fp16)  unavailable: not installed" in out
    assert "'aoti' on cuda (fp16)      unavailable: no CUDA GPU" in out
    assert "'torch' on cpu (fp32)      CHOSEN; fp32 because fp16 on the CPU is slow" in out
    assert "onnxruntime" in out and "emim kernels" in out and "aoti compiler" in out


@pytest.mark.parametrize(
    "step",
    [
        Candidate("tensorrt", "cuda", "fp16"),
        Candidate("tensorrt", "cuda", "bf16"),
        Candidate("aoti", "cuda", "fp32"),
        Candidate("torch", "cuda:1", "fp32"),
        Candidate("onnxruntime", "cuda", "fp32"),
        Candidate("onnxruntime", "auto", "fp32"),
        Candidate("torch", "cpu", "fp32"),
    ],
    ids=str,
)
def test_doctor_says_what_opening_would(no_gpu, tmp_path, step):
    """doctor's verdict on a step is the opener's own: the same reason, or none when it opens."""
    from emim_stream.engines.backends import open_backend
    from emim_stream.engines.diagnostics.doctor import probe

    cfg = EngineConfig(model="emim_xs", plan_cache_dir=str(tmp_path), **SMALL)
    try:
        with open_backend(cfg, step, tiny_source()):
            reason = None
    except BackendUnavailableError as err:
        reason = err.reason
    assert probe(cfg, step) == reason
