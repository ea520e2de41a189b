"""The error of the calibration package: :class:`engines.errors.CalibrationError`.

It is defined in ``engines`` because the backends raise it too, when they refuse a calibrated
ONNX (:func:`engines.deployability.check_deployable`).
"""

from __future__ import annotations

from engines.errors import CalibrationError

__all__ = ["CalibrationError"]
