"""The streaming benchmarks: the two-process ring throughput delivers every frame intact."""

from __future__ import annotations

from emim_stream.pipeline.measure.benchmarks import ring_throughput


def test_ring_throughput_between_processes():
    result = ring_throughput(frames=600, height=64, width=64, slots=8)
    assert result["delivered"] == 600 and result["dropped"] == 0 and result["corrupt"] == 0
    assert result["fps"] > 0 and result["mb_per_s"] > 0
