"""The one exception tree of emim-stream (bottom of the import graph).

Everything the user can cause (a bad config value, a missing file, an absent backend) raises a
subclass of :class:`EmimError`; the CLI prints its message on one line and exits with its
``exit_code``. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class EmimError(Exception):
    """Root of every error a user can cause. ``exit_code`` is what the CLI exits with."""

    exit_code: int = 2


class ConfigError(EmimError):
    """A config value is invalid; the message names the field, the value and the rule."""


class UnknownModelError(ConfigError):
    """A model name is not in the registry."""


class CheckpointError(EmimError):
    """A checkpoint cannot be read or does not fit the model."""

    exit_code = 3


class BackendUnavailableError(EmimError):
    """An inference backend cannot run here (not installed, no GPU, build failed)."""

    exit_code = 4

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"backend {backend!r} unavailable: {reason}")
        self.backend = backend
        self.reason = reason


class KernelUnavailableError(EmimError):
    """A neighbourhood-attention kernel was asked for but cannot run here."""

    exit_code = 4


class ExportError(EmimError):
    """ONNX export or the op audit failed."""

    exit_code = 5


class CalibrationError(EmimError):
    """Calibration cannot run, or its artifact cannot be used.

    No or too few clips, clips of another shape or for another model, ModelOpt missing, a Q/DQ
    graph without the expected quantise/dequantise pairs, or an artifact that an engine refuses
    (:mod:`emim_stream.engines.export.deployability`: made for other weights, changed, or below its accuracy gate).
    The message names the file, the figures and the fix.
    """

    exit_code = 8
