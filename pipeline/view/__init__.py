"""The live view: a small HTTP server showing each camera's preview, labels, events, state and latency chart.

:mod:`pipeline.view.state` turns the pipeline's ZeroMQ messages into per-camera state; :mod:`pipeline.view.server`
serves the page (``static/``, with the vendored uPlot chart library) and pushes changes to it with Server-Sent
Events.
"""
