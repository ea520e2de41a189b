"""emim_stream.engines.sampling: plans per camera rate, and the frame-by-frame sampler against an exact offline
reference (the frame nearest to each sampling time on the nominal timeline, ties to the earlier frame)."""

from __future__ import annotations

import logging
from fractions import Fraction

import pytest

from emim_stream.engines.clip import CONSECUTIVE, ClipSampling, ClipSpec
from emim_stream.engines.errors import ConfigError
from emim_stream.engines.sampling import FrameSampler, SamplingRequest, plan_sampling

K400_16X4 = ClipSampling(frame_interval=4, fps=30.0)  # 7.5 sampled frames per second


def request(sampling: ClipSampling | None = K400_16X4, frames: int = 16, frame_interval: int | None = None):
    return SamplingRequest(sampling, frames, 4, frame_interval)


def pts(fps: float, j: int) -> int:
    """Frame j's presentation time in ns as a file source reports it (rounded to the ns)."""
    return round(j * 1e9 / fps)


def sampled(sampler: FrameSampler, stamps: list[int]) -> list[int]:
    """The frame index of every sample, in sample order (None where a sample had no frame)."""
    frames: dict[int, int] = {}
    for j, t in enumerate(stamps):
        first, count = sampler.offer(t, 0)
        frames.update({first + i: j for i in range(count)})
    return [frames.get(k) for k in range(max(frames) + 1)]


def nearest(stamps: list[int], rate: Fraction) -> list[set[int]]:
    """Offline reference: for each sampling time k / rate within the frames' reach, the frame whose timestamp is
    nearest (with both frames of a tie to within the timestamps' 1 ns rounding)."""
    out, k = [], 0
    step = stamps[1] - stamps[0]
    while (t := k * 10**9 / rate) <= stamps[-1] + step / 2:
        j = min(range(len(stamps)), key=lambda i: abs(stamps[i] - t))
        best = abs(stamps[j] - t)
        out.append({i for i in (j - 1, j, j + 1) if 0 <= i < len(stamps) and abs(stamps[i] - t) - best <= 1})
        k += 1
    return out


@pytest.mark.parametrize("camera_fps", [12.0, 15.0, 24.0, 25.0, 30000 / 1001, 30.0, 50.0, 60.0])
@pytest.mark.parametrize("model_rate", [Fraction(15, 4), Fraction(15, 2), Fraction(15), Fraction(24)])
def test_every_sample_is_the_nearest_frame(camera_fps, model_rate):
    if camera_fps < model_rate / 2:
        pytest.skip("a camera this slow is refused (tested below)")
    plan = plan_sampling(request(ClipSampling(frame_interval=1, fps=float(model_rate))), camera_fps)
    stamps = [pts(camera_fps, j) for j in range(300)]
    got = sampled(FrameSampler(plan), stamps)
    if plan.every is not None:  # an integer ratio, to within 1%: every n-th frame (m times), by frame count
        assert got == [j for j in range(0, 300, plan.every) for _ in range(plan.repeat)]
    else:
        want = nearest(stamps, model_rate)
        assert len(got) >= len(want) - 1 and all(j in allowed for j, allowed in zip(got, want, strict=False))


def test_sampling_never_drifts_over_an_hour_at_25_fps():
    """Sampling times are t0 + k x period: after 90,000 frames sample k is still the frame nearest k / 7.5 s."""
    sampler = FrameSampler(plan_sampling(request(), 25.0))
    last = None
    for j in range(90_000):
        first, count = sampler.offer(pts(25.0, j), 0)
        if count:
            last = (first, j)
    k, j = last
    assert abs(j / 25 - k / 7.5) <= 1 / 50 and k == 26_999  # 3600 s x 7.5, counted from 0


@pytest.mark.parametrize(
    ("camera_fps", "every", "repeat", "rate"),
    [(30.0, 4, 1, 7.5), (15.0, 2, 1, 7.5), (29.97, 4, 1, 7.4925), (60.0, 8, 1, 7.5), (7.5, 1, 1, 7.5)],
)
def test_integer_ratios_take_every_nth_frame(camera_fps, every, repeat, rate):
    plan = plan_sampling(request(), camera_fps)
    assert (plan.every, plan.repeat, plan.period_ns) == (every, repeat, None)
    assert plan.sampled_fps == pytest.approx(rate) and plan.repeated == 0


def test_a_camera_slower_than_the_model_repeats_frames_and_a_much_slower_one_is_refused():
    thirty = ClipSampling(frame_interval=1, fps=30.0)
    twice = plan_sampling(request(thirty), 15.0)
    assert (twice.every, twice.repeat, twice.repeated) == (1, 2, 0.5)
    some = plan_sampling(request(thirty), 25.0)
    assert some.period_ns == Fraction(10**9, 30) and some.repeated == pytest.approx(1 / 6)
    with pytest.raises(ConfigError) as err:
        plan_sampling(request(thirty), 5.0)
    message = str(err.value)
    assert "the camera delivers 5 fps but the model samples 30 frames/s" in message
    assert "at least 15 fps" in message and "window.frame_interval" in message and "cameras[].frame_interval" in message


def test_overrides_and_rate_free_checkpoints_count_camera_frames():
    assert plan_sampling(request(frame_interval=3), 25.0).every == 3  # the config's interval, whatever the rate
    assert plan_sampling(request(None), 25.0).every == 1  # a checkpoint that states none: consecutive frames
    assert plan_sampling(request(CONSECUTIVE), 12.0).every == 1
    assert plan_sampling(request(ClipSampling(frame_interval=2)), 12.0).every == 2
    uniform = plan_sampling(request(ClipSampling(span_s=4.0), frames=16), 30.0)  # 16 frames over 4 s: 4 frames/s
    assert uniform.sampled_fps == pytest.approx(4.0) and uniform.period_ns == Fraction(10**9, 4)


def test_a_camera_of_unknown_rate_is_sampled_by_time_with_its_measured_frame_period():
    plan = plan_sampling(request(), 0.0)
    assert plan.frame_period_ns is None and plan.period_ns is not None
    stamps = [pts(25.0, j) for j in range(200)]
    got = sampled(FrameSampler(plan), stamps)
    assert all(j in allowed for j, allowed in zip(got, nearest(stamps, Fraction(15, 2)), strict=False))


@pytest.mark.parametrize("camera_fps", [25.0, 0.0])  # stated, or measured from the timestamps
def test_lost_frames_skip_sample_numbers_and_the_schedule_stays_anchored(camera_fps):
    """A 25 fps camera, a model at 10 frames/s; frames 40..49 (1.60-1.96 s) are lost."""
    sampler = FrameSampler(plan_sampling(request(ClipSampling(frame_interval=3, fps=30.0)), camera_fps))
    stamps = [pts(25.0, j) for j in range(100) if not 40 <= j < 50]
    numbers = [first for first, count in (sampler.offer(t, 0) for t in stamps) if count]
    assert numbers == list(range(16)) + list(range(20, 40))  # samples 16..19 (1.6-1.9 s) had no frame near them


def test_presentation_times_that_stop_increasing_switch_to_capture_time_after_a_gap(caplog):
    sampler = FrameSampler(plan_sampling(request(ClipSampling(frame_interval=1, fps=10.0)), 0.0))
    with caplog.at_level(logging.WARNING, logger="emim_stream.engines.sampling"):
        firsts = [sampler.offer(pts_ns, capture)[0] for pts_ns, capture in
                  [(0, 5_000), (100_000_000, 6_000), (100_000_000, 7_000), (0, 8_000)]]
    assert firsts[:2] == [0, 1] and firsts[2] > 2  # the restart leaves a gap in the sample numbers
    assert caplog.text.count("sampling by capture time") == 1


def test_requests_come_from_the_clip_spec_and_describe_themselves():
    clip = ClipSpec(16, 224, 224, sampling=K400_16X4)
    req = SamplingRequest.for_clip(clip, stride=4)
    assert req.sampled_fps() == Fraction(15, 2)
    assert req.describe() == "checkpoint: one frame in 4 at 30 fps (7.5 frames/s; 16 frames cover 2.13 s)"
    line = plan_sampling(req, 30.0).describe()
    assert line.startswith("30 fps camera: every 4th frame (7.5 frames/s; a window's 16 frames span 2.00 s")
    assert "one label every 0.53 s" in line
    assert SamplingRequest.for_clip(clip, 4, frame_interval=2).sampled_fps() is None
