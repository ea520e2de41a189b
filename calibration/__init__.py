"""Post-training quantisation (INT8/FP8) and the accuracy gate for quantised engines.

``emim_stream.calibration.clips`` collects calibration clips, ``emim_stream.calibration.quantize`` runs ModelOpt
and exports the Q/DQ ONNX, ``emim_stream.calibration.report`` measures agreement with the float model and writes
the verdict beside the graph as the record of :mod:`emim_stream.engines.export.deployability`, which the backends
check before an engine is built from it. ``emim_stream.calibration.workflow`` runs them in order for the calibrate
command. ``calibration`` imports ``engines`` only.
"""

from __future__ import annotations

from emim_stream.calibration.errors import CalibrationError

__all__ = ["CalibrationError"]
