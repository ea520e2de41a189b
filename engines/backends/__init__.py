"""Inference backends behind one :class:`~emim_stream.engines.backends.base.Engine` interface.

- :mod:`emim_stream.engines.backends.base`: the contract (``EngineConfig``, ``Engine``, ``Backend``, ``Precision``);
- :mod:`emim_stream.engines.backends.openers`: how each backend opens, and its availability checks;
- :mod:`emim_stream.engines.backends.select`: the selection policy (the fallback chain, ``load_engine``,
  ``start_engine``);
- one module per backend (``torch_engine``, ``aoti_engine``, ``ort_engine``, ``trt_engine``) and
  the plan cache they share (``plan_cache``).

The package imports nothing heavy; backends are imported when chosen.
"""

from __future__ import annotations

from emim_stream.engines.backends.base import Backend, Engine, EngineConfig, EngineInfo, InputSpec, Precision
from emim_stream.engines.backends.candidate import Candidate, cache_dir, check_backend
from emim_stream.engines.backends.openers import BACKENDS, open_backend
from emim_stream.engines.backends.select import fallback_chain, load_engine, start_engine

__all__ = [
    "BACKENDS",
    "Backend",
    "Candidate",
    "Engine",
    "EngineConfig",
    "EngineInfo",
    "InputSpec",
    "Precision",
    "cache_dir",
    "check_backend",
    "fallback_chain",
    "load_engine",
    "open_backend",
    "start_engine",
]
