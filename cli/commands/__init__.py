"""One module per ``emim-stream`` sub-command (see :mod:`cli.main`)."""
