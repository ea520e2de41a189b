"""Measuring a running pipeline from outside: the latency profiler, the ring/VMP/window benchmarks, capacity runs.

The top of the pipeline package: these tools start or subscribe to a pipeline; nothing in it imports them.
"""
