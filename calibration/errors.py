"""The error of the calibration package: :class:`emim_stream.engines.errors.CalibrationError`.

It is defined in ``engines`` because the backends raise it too, when they refuse a calibrated
ONNX (:func:`emim_stream.engines.export.deployability.check_deployable`).
"""

from __future__ import annotations

from emim_stream.engines.errors import CalibrationError

__all__ = ["CalibrationError"]
