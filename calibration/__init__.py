"""Post-training quantisation (INT8/FP8) and the accuracy gate for quantised engines.

``calibration.clips`` collects calibration clips, ``calibration.quantize`` runs ModelOpt and exports
the Q/DQ ONNX, ``calibration.report`` measures agreement with the float model and writes the
verdict beside the graph as the record of :mod:`engines.deployability`, which the backends check
before an engine is built from it. ``calibration`` imports ``engines`` only.
"""

from __future__ import annotations

from calibration.errors import CalibrationError

__all__ = ["CalibrationError"]
