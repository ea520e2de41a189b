"""The streaming runtime: camera processes and the shared-memory ring (``capture``), the inference loop
(``inference``), the wire format and sockets (``comms``), sinks (``outputs``), the live view (``view``) and the
measuring tools (``measure``); ``runtime`` composes them. ``config`` is below all of them.

Layers, each importing only those below it (checked by import-linter, pyproject.toml): measure, runtime,
inference | view, outputs, comms | capture, config, endpoints | errors.
"""
