"""LatencyRecorder percentiles against numpy, bounded memory, and the printed table."""

from __future__ import annotations

import numpy as np
import pytest

from emim_stream.pipeline.inference.latency import ALL_CAMERAS, LatencyRecorder, format_table


def _expected(values: np.ndarray) -> dict[str, float]:
    p50, p90, p99 = np.percentile(values, [50, 90, 99], method="linear")
    return {"p50": p50, "p90": p90, "p99": p99, "max": values.max()}


def test_percentiles_match_numpy_per_camera_stage_and_all():
    rng = np.random.default_rng(0)
    data = {
        cam: {"infer": rng.gamma(2.0, 5.0, n), "total": rng.lognormal(3.0, 0.5, n)}
        for cam, n in (("cam1", 500), ("cam2", 321))
    }
    rec = LatencyRecorder(capacity=10_000)
    for cam, stages in data.items():
        for i in range(len(stages["infer"])):
            rec.add(cam, {stage: values[i] for stage, values in stages.items()})
    summary = rec.summary()
    assert list(summary) == ["cam1", "cam2", ALL_CAMERAS]
    for cam, stages in data.items():
        for stage, values in stages.items():
            row = summary[cam][stage]
            assert row["count"] == row["total"] == len(values)
            for key, value in _expected(values).items():
                assert row[key] == pytest.approx(value, rel=1e-12)
    for stage in ("infer", "total"):
        everything = np.concatenate([data[cam][stage] for cam in data])
        assert summary[ALL_CAMERAS][stage]["count"] == everything.size
        for key, value in _expected(everything).items():
            assert summary[ALL_CAMERAS][stage][key] == pytest.approx(value, rel=1e-12)


def test_memory_is_bounded_to_the_most_recent_samples():
    rec = LatencyRecorder(capacity=100)
    values = np.arange(1050, dtype=np.float64)
    for v in values:
        rec.add("cam1", {"total": v})
    row = rec.summary()["cam1"]["total"]
    assert row["count"] == 100 and row["total"] == 1050
    recent = values[-100:]
    assert row["max"] == 1049.0
    assert row["p50"] == pytest.approx(np.percentile(recent, 50))
    assert row["p99"] == pytest.approx(np.percentile(recent, 99))


def test_stages_may_differ_between_adds_and_all_is_reserved():
    rec = LatencyRecorder(capacity=10)
    rec.add("cam1", {"total": 5.0})
    rec.add("cam1", {"total": 7.0, "infer": 2.0})
    summary = rec.summary()
    assert summary["cam1"]["total"]["count"] == 2 and summary["cam1"]["infer"]["count"] == 1
    with pytest.raises(ValueError, match="reserved"):
        rec.add(ALL_CAMERAS, {"total": 1.0})
    rec.reset()
    assert rec.summary() == {}


def test_format_table_lists_every_camera_and_stage():
    rec = LatencyRecorder()
    for v in (10.0, 20.0, 30.0):
        rec.add("cam1", {"infer": v, "total": 2 * v})
    table = format_table(rec.summary())
    lines = table.splitlines()
    assert lines[0].split() == ["camera", "stage", "count", "p50", "ms", "p90", "ms", "p99", "ms", "max", "ms"]
    assert len(lines) == 1 + 2 + 2  # header, cam1 x 2 stages, all x 2 stages
    assert lines[2].split() == ["cam1", "total", "3", "40.00", "56.00", "59.60", "60.00"]
    assert len({len(line) for line in lines}) == 1  # aligned columns
