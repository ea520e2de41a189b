"""Errors of the streaming runtime, under :class:`emim_stream.engines.errors.EmimError`."""

from __future__ import annotations

from emim_stream.engines.errors import EmimError


class PipelineError(EmimError):
    """Root of the runtime's errors."""


class SourceError(PipelineError):
    """A source cannot be opened or read (missing file, unknown camera index, corrupt video)."""

    exit_code = 6


class SourceConnectionError(SourceError):
    """A network source (RTSP/HTTP) cannot be reached."""


class EndOfStream(SourceError):
    """A finite source (a file that does not loop) has no more frames."""


class PublishError(PipelineError):
    """A publisher or subscriber socket cannot be bound, connected or configured."""

    exit_code = 7
