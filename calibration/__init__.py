"""Post-training quantisation (INT8/FP8) and the accuracy gate for quantised engines.

``calibration.clips`` collects calibration clips, ``calibration.quantize`` runs ModelOpt and exports
the Q/DQ ONNX, ``calibration.report`` measures agreement with the float model and writes the
verdict that :func:`check_deployable` enforces before an engine is built from the graph.
"""

from __future__ import annotations

from calibration.errors import CalibrationError
from calibration.report import check_deployable

__all__ = ["CalibrationError", "check_deployable"]
