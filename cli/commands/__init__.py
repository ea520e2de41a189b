"""One module per ``emim-stream`` sub-command (see :mod:`emim_stream.cli.main`)."""
