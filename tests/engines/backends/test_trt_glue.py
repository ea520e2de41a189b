"""TensorRT glue without TensorRT: plan keys, sidecars, corrupt / foreign plans, guarded imports.

The real build test at the end runs only where ``tensorrt.Builder`` can be created (a GPU box
with TensorRT 10.12+ installed).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import types

import pytest
import torch

from emim_stream.engines.backends import BACKENDS, EngineConfig, load_engine
from emim_stream.engines.backends.engine_cache import PLAN_FORMAT, CacheStatus, EngineCache, PlanKey, load_or_build
from emim_stream.engines.backends.trt_engine import import_tensorrt, tensorrt_version
from emim_stream.engines.errors import BackendUnavailableError

KEY = PlanKey(
    onnx_sha256="ab" * 32,
    frames=16,
    height=224,
    width=224,
    max_batch=8,
    input_dtype="float16",
    precision="fp16",
    tensorrt_version="10.13.3.9",
    gpu_name="NVIDIA H100 80GB HBM3",
    compute_capability="9.0",
)
PLAN = b"\x00serialized-plan\xff" * 64


class FakeBuilds:
    """Counts builds and hands out plans; deserialises only plans it made (like a runtime)."""

    def __init__(self) -> None:
        self.builds = 0

    def build(self) -> tuple[bytes, dict]:
        self.builds += 1
        return PLAN, {"build_s": 0.1}

    def deserialize(self, data: bytes):
        return ("engine", len(data)) if data == PLAN else None


def test_key_digest_is_stable_and_covers_every_field():
    assert KEY.digest() == dataclasses.replace(KEY).digest()
    changed = {
        "onnx_sha256": "cd" * 32,
        "frames": 8,
        "height": 128,
        "width": 160,
        "max_batch": 4,
        "input_dtype": "float32",
        "precision": "int8",
        "tensorrt_version": "11.1.0.106",
        "gpu_name": "NVIDIA L4",
        "compute_capability": "8.9",
    }
    assert set(changed) == {f.name for f in dataclasses.fields(PlanKey)}
    digests = {dataclasses.replace(KEY, **{name: value}).digest() for name, value in changed.items()}
    assert len(digests) == len(changed) and KEY.digest() not in digests
    assert KEY.stem.startswith("fp16-b8-16x224x224-")


def test_store_then_lookup_round_trips_with_sidecar(tmp_path):
    cache = EngineCache(tmp_path)
    plan_path = cache.store(KEY, PLAN, {"build_s": 1.5})
    sidecar = json.loads(cache.paths(KEY)[1].read_text())
    assert sidecar["format"] == PLAN_FORMAT
    assert sidecar["tensorrt_version"] == "10.13.3.9" and sidecar["compute_capability"] == "9.0"
    assert sidecar["plan_bytes"] == len(PLAN) and sidecar["build_s"] == 1.5
    data, status, reason = cache.lookup(KEY)
    assert (data, status) == (PLAN, CacheStatus.VALID) and str(plan_path) in reason
    assert not list(tmp_path.rglob(".*tmp*")), "temporary files left behind"


def test_missing_plan_is_built_once_then_served_from_cache(tmp_path, caplog):
    cache, fake = EngineCache(tmp_path), FakeBuilds()
    with caplog.at_level(logging.INFO):
        engine, path, built = load_or_build(cache, KEY, fake.build, fake.deserialize)
        assert built and fake.builds == 1 and path.is_file()
        engine2, _, built2 = load_or_build(cache, KEY, fake.build, fake.deserialize)
    assert engine2 == engine and not built2 and fake.builds == 1
    assert "no cached plan" in caplog.text and "using cached plan" in caplog.text


@pytest.mark.parametrize(
    ("field", "value"),
    [("tensorrt_version", "10.12.0.36"), ("gpu_name", "NVIDIA A100-SXM4-80GB"), ("compute_capability", "8.0")],
)
def test_mismatched_sidecar_is_refused_and_rebuilt(tmp_path, caplog, field, value):
    cache, fake = EngineCache(tmp_path), FakeBuilds()
    cache.store(KEY, PLAN)
    sidecar = cache.paths(KEY)[1]
    record = json.loads(sidecar.read_text())
    record[field] = value  # a plan copied from another box / TensorRT
    sidecar.write_text(json.dumps(record))
    data, status, reason = cache.lookup(KEY)
    assert data is None and status == CacheStatus.MISMATCHED and field in reason and value in reason
    with caplog.at_level(logging.INFO):
        _, _, built = load_or_build(cache, KEY, fake.build, fake.deserialize)
    assert built and fake.builds == 1
    assert any(r.levelno == logging.WARNING and "built for another setup" in r.message for r in caplog.records)
    assert json.loads(sidecar.read_text())[field] == getattr(KEY, field)  # the rebuilt plan's sidecar is right


def test_corrupt_plan_bytes_are_detected_and_rebuilt(tmp_path, caplog):
    cache, fake = EngineCache(tmp_path), FakeBuilds()
    plan_path = cache.store(KEY, PLAN)
    plan_path.write_bytes(PLAN[: len(PLAN) // 2])  # truncated copy
    assert cache.lookup(KEY)[1] == CacheStatus.CORRUPT
    with caplog.at_level(logging.WARNING):
        engine, _, built = load_or_build(cache, KEY, fake.build, fake.deserialize)
    assert built and engine == ("engine", len(PLAN)) and "corrupt" in caplog.text
    assert plan_path.read_bytes() == PLAN


def test_plan_without_or_with_broken_sidecar_is_never_loaded(tmp_path):
    cache = EngineCache(tmp_path)
    plan_path, sidecar = cache.paths(KEY)
    plan_path.parent.mkdir(parents=True)
    plan_path.write_bytes(PLAN)  # a foreign plan dropped into the cache
    assert cache.lookup(KEY)[:2] == (None, CacheStatus.NO_SIDECAR)
    sidecar.write_text("{not json")
    assert cache.lookup(KEY)[:2] == (None, CacheStatus.UNREADABLE)
    sidecar.write_text(json.dumps({"format": "someone-else/3"}))
    assert cache.lookup(KEY)[:2] == (None, CacheStatus.UNREADABLE)


def test_plan_the_runtime_refuses_is_rebuilt_and_a_bad_fresh_plan_raises(tmp_path, caplog):
    cache, fake = EngineCache(tmp_path), FakeBuilds()
    cache.store(KEY, b"plan from an older build of the same key")  # valid sidecar, runtime refuses it
    with caplog.at_level(logging.WARNING):
        _, _, built = load_or_build(cache, KEY, fake.build, fake.deserialize)
    assert built and "refused to deserialise" in caplog.text

    def refuse(_data: bytes) -> None:
        return None

    with pytest.raises(BackendUnavailableError, match="cannot be deserialised"):
        load_or_build(EngineCache(tmp_path / "other"), KEY, fake.build, refuse)
    assert not EngineCache(tmp_path / "other").paths(KEY)[0].exists(), "an unusable plan stayed in the cache"


def test_failed_build_stores_nothing(tmp_path):
    cache = EngineCache(tmp_path)

    def fail() -> tuple[bytes, dict]:
        raise BackendUnavailableError("tensorrt", "ONNX parser failed: no importer for op Col2Im")

    with pytest.raises(BackendUnavailableError, match="Col2Im"):
        load_or_build(cache, KEY, fail, FakeBuilds().deserialize)
    assert not cache.paths(KEY)[0].exists() and not cache.paths(KEY)[1].exists()


def test_tensorrt_version_parsing():
    assert tensorrt_version("10.13.3.9") == (10, 13)
    assert tensorrt_version("11.1.0.106") == (11, 1)
    assert tensorrt_version("10.12.0rc1") == (10, 12)


def test_import_is_guarded(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailableError, match="not installed"):
        import_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0.26"))
    with pytest.raises(BackendUnavailableError, match=r"10\.3\.0\.26 is older than 10\.12"):
        import_tensorrt()
    fake = types.SimpleNamespace(__version__="11.1.0.106")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    assert import_tensorrt() is fake


def test_unusable_cached_plan_and_failed_rebuild_fall_back_to_torch(tmp_path, monkeypatch, caplog):
    """Chain level: a tensorrt opener over the real cache whose rebuild fails -> torch on the CPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cache = EngineCache(tmp_path)
    cache.store(KEY, PLAN)
    cache.paths(KEY)[0].write_bytes(b"garbage")  # corrupt cached plan

    def tensorrt_opener(source, cfg, step):
        def build() -> tuple[bytes, dict]:
            raise BackendUnavailableError("tensorrt", "building a plan from 'model.onnx' failed")

        load_or_build(cache, KEY, build, FakeBuilds().deserialize)
        raise AssertionError("unreachable: the build fails")

    openers = {**BACKENDS, "tensorrt": tensorrt_opener}
    cfg = EngineConfig(model="emim_xs", frames=2, height=32, width=32)
    with caplog.at_level(logging.INFO):
        engine = load_engine(cfg, openers=openers)
    assert engine.describe().backend == "torch" and engine.describe().device == "cpu"
    text = caplog.text
    assert "is corrupt" in text
    assert "backend 'tensorrt' on cuda (fp32) unavailable (building a plan from 'model.onnx' failed)" in text
    assert "'torch' on cuda (fp32) unavailable (no CUDA GPU" in text
    assert "using backend 'torch' on cpu (fp32)" in text


def _builder_available() -> bool:
    try:
        import tensorrt as trt

        return torch.cuda.is_available() and trt.Builder(trt.Logger(trt.Logger.ERROR)) is not None
    except Exception:  # not installed, no GPU, CUDA init failure ("factory function returned nullptr")
        return False


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(not _builder_available(), reason="needs TensorRT 10.12+ with a usable GPU (tensorrt.Builder)")
def test_real_build_runs_matches_torch_and_caches(tmp_path):
    cfg = EngineConfig(
        model="emim_xs", backend="tensorrt", fallback=False, frames=4, height=64, width=64, max_batch=2,
        plan_cache_dir=str(tmp_path),
    )  # fmt: skip
    clips = torch.randn(2, 3, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    with load_engine(cfg) as engine:
        assert engine.describe().backend == "tensorrt" and "built now" in engine.describe().detail
        got = engine.infer(clips.cuda()).cpu()
    with load_engine(dataclasses.replace(cfg, backend="torch", device="cpu")) as ref:
        expected = ref.infer(clips)
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 1e-2  # TF32 convolutions
    with load_engine(cfg) as engine:
        assert "cached" in engine.describe().detail
    (plan,) = (tmp_path / "plans").glob("*.plan")
    plan.write_bytes(plan.read_bytes()[:1000])
    with load_engine(cfg) as engine:
        assert "built now" in engine.describe().detail
