"""Shared parts of the GPU test set: the CUDA skip, engines opened without fallback, error measures.

Every module here is marked ``gpu`` and skips with a reason without a CUDA GPU; ``tools/gpu-check``
runs them as part of the GPU acceptance benchmark (docs/gpu-boxes.md).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from emim_stream.engines.backends import BACKENDS, Candidate, Engine, EngineConfig, open_backend
from emim_stream.engines.backends.model_source import ModelSource, load_source
from tests.integration.conftest import pipeline_factory  # noqa: F401 - the end-to-end tests' fixture

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(
    not CUDA, reason=f"needs a CUDA GPU (torch {torch.__version__}: torch.cuda.is_available() is False)"
)
GPU = [pytest.mark.gpu, needs_cuda]
"""``pytestmark`` of every module in this folder."""


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest absolute difference over the largest magnitude of ``ref`` (float64, on the CPU)."""
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    return ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def random_clips(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Normalised-looking clips: standard normal, seeded, float32 on the CPU."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def open_engine(
    cfg: EngineConfig, backend: str, device: str, precision: str, source: ModelSource | None = None
) -> Engine:
    """Exactly ``backend`` on ``device`` at ``precision`` (no fallback) on a private copy of ``source``'s model.

    Skips when the backend is not in this tree (BACKENDS); any error opening it fails the test.
    """
    if backend not in BACKENDS:
        pytest.skip(f"backend {backend!r} is not in this tree (known: {sorted(BACKENDS)})")
    source = source or load_source(cfg)
    own = dataclasses.replace(source, model=copy.deepcopy(source.model))  # engines move / cast the model
    return open_backend(dataclasses.replace(cfg, precision=precision), Candidate(backend, device, precision), own)


@pytest.fixture(scope="module")
def emim_xs_cfg() -> EngineConfig:
    """emim_xs at its 8x128x128 default (stage-3 map 8x8: EMIM's 7x7 window is local), max batch 4."""
    return EngineConfig(model="emim_xs", max_batch=4)


RUN_ORDER = ("test_triton_kernel", "test_torch_engine", "test_pipeline_cuda", "test_aoti_engine")
"""Cheap checks first, the aoti build (minutes) last: a time box (tools/gpu-check) then cuts the fewest tests."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent

    def rank(item: pytest.Item) -> int:
        path = Path(item.path)
        if path.parent != here:
            return -1
        return RUN_ORDER.index(path.stem) if path.stem in RUN_ORDER else len(RUN_ORDER)

    items.sort(key=rank)
