"""The model and its inference backends.

UniFormer backbone, EMIM attention, VMP layer, model zoo, checkpoint I/O, ONNX export and the
backends (torch, onnxruntime, tensorrt) behind one interface. ``engines`` imports neither
``pipeline`` nor ``calibration``.

The package itself imports nothing heavy (camera processes import ``engines.synthetic`` and
``engines.errors`` without paying for torch); the main entry points are re-exported lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_model": "engines.models",
    "list_models": "engines.models",
    "get_model_cfg": "engines.models",
    "load_checkpoint": "engines.checkpoint",
    "save_checkpoint": "engines.checkpoint",
    "load_pretrained": "engines.checkpoint",
    "ClipSpec": "engines.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'engines' has no attribute {name!r}")
