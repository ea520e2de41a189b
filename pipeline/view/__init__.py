"""The live view: a small HTTP server showing each camera's preview, labels, events, state and latency chart.

:mod:`emim_stream.pipeline.view.state` turns the pipeline's ZeroMQ messages into per-camera state;
:mod:`emim_stream.pipeline.view.server` serves the page (``static/``, with the vendored uPlot chart library) and
pushes changes to it with Server-Sent Events.
"""
