"""The ``emim-stream`` command line: one module per command in :mod:`emim_stream.cli.commands`.

The only package that imports all three of ``engines``, ``calibration`` and ``pipeline``; nothing imports it.
"""
