"""The error of the calibration package, under :class:`engines.errors.EmimError`."""

from __future__ import annotations

from engines.errors import EmimError

__all__ = ["CalibrationError"]


class CalibrationError(EmimError):
    """Calibration cannot run, or its artifact cannot be used.

    No or too few clips, clips of another shape or for another model, ModelOpt missing, a Q/DQ
    graph without the expected quantise/dequantise pairs, or an artifact whose accuracy gate
    failed. The message names the file, the figures and the fix.
    """

    exit_code = 8
