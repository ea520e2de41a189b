"""The streaming benchmarks: the two-process ring throughput delivers every frame intact; the camera benchmark
counts what a real camera process decodes and writes."""

from __future__ import annotations

import pytest

from emim_stream.engines.sampling import SamplingRequest
from emim_stream.pipeline.capture.ordering import MemoryOrdering, strongly_ordered
from emim_stream.pipeline.measure.benchmarks import camera_cost, ring_throughput


@pytest.mark.parametrize("ordering", list(MemoryOrdering))
def test_ring_throughput_between_processes(ordering):
    if ordering is MemoryOrdering.PLAIN and not strongly_ordered():
        pytest.skip("the plain ordering is refused on weakly ordered CPUs")
    result = ring_throughput(frames=600, height=64, width=64, slots=8, ordering=ordering)
    assert result["delivered"] == 600 and result["dropped"] == 0 and result["corrupt"] == 0
    assert result["fps"] > 0 and result["mb_per_s"] > 0 and result["ordering"] == ordering.value
    assert 0 < result["write_p50_us"] <= result["write_p99_us"]
    assert 0 < result["read_p50_us"] <= result["read_p99_us"]


@pytest.mark.parametrize(("interval", "all_frames", "share"), [(1, False, 1.0), (4, False, 0.25), (4, True, 1.0)])
def test_camera_cost_counts_the_frames_a_real_camera_writes(interval, all_frames, share):
    """A camera process on the synthetic source: it decodes every frame and writes one in ``interval`` (all of
    them in the recorder's mode), whatever rate the loaded machine lets it reach."""
    sampling = SamplingRequest(None, frames=8, stride=4, frame_interval=interval)
    result = camera_cost("synthetic://?fps=30&size=64x48", 32, sampling, seconds=2.0, all_frames=all_frames)
    frames = result["frames_per_s"] * 2.0
    assert frames > 8 and abs(result["writes_per_s"] * 2.0 - share * frames) <= 2
    assert result["camera_cpu"] > 0 and result["drain_cpu"] >= 0
