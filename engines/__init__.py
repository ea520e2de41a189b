"""The model and its inference backends.

``layers`` (UniFormer blocks, EMIM attention and its kernels, VMP) and ``models`` (the zoo), ``checkpoints``
(the file format, imported weights), ``export`` (ONNX, the TensorRT op audit, the calibrated graph's record),
``backends`` (torch, aoti, onnxruntime, tensorrt behind one interface, the engine cache), ``data`` (clip data sets,
synthetic scenes), ``training`` (train, evaluate), ``diagnostics`` (bench, doctor, MAC counts). ``engines``
imports neither ``pipeline`` nor ``calibration``; no two of its modules or packages import each other.

The package itself imports nothing heavy (camera processes import ``emim_stream.engines.data.synthetic`` and
``emim_stream.engines.errors`` without paying for torch); the main entry points are re-exported lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_model": "emim_stream.engines.models",
    "list_models": "emim_stream.engines.models",
    "get_model_cfg": "emim_stream.engines.models",
    "load_checkpoint": "emim_stream.engines.checkpoints.io",
    "save_checkpoint": "emim_stream.engines.checkpoints.io",
    "load_pretrained": "emim_stream.engines.checkpoints.io",
    "ClipSpec": "emim_stream.engines.checkpoints.io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'engines' has no attribute {name!r}")
