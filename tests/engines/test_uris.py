"""emim_stream.engines.uris: credential redaction and the one synthetic:// query parser (camera and data set)."""

from __future__ import annotations

import pytest

from emim_stream.engines.data.datasets import open_dataset
from emim_stream.engines.errors import ConfigError
from emim_stream.engines.uris import SyntheticQuery, is_synthetic, redact_uri
from emim_stream.pipeline.capture.sources import SyntheticSource

KNOWN = ("seed", "size", "rate", "name")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("rtsp://user:pass@10.0.0.5:554/stream1", "rtsp://***@10.0.0.5:554/stream1"),
        ("rtsp://admin:p@ss:w0rd@cam.local/live", "rtsp://***@cam.local/live"),
        ("rtsp://onlyuser@cam.local/live", "rtsp://***@cam.local/live"),
        ("http://cam/video.cgi?user=admin&pwd=1234&res=hd", "http://cam/video.cgi?user=admin&pwd=***&res=hd"),
        ("https://x/s.m3u8?Token=abc#t", "https://x/s.m3u8?Token=***#t"),
        ("rtsp://10.0.0.5:554/stream1", "rtsp://10.0.0.5:554/stream1"),
        ("/data/cam@2x/video.mp4", "/data/cam@2x/video.mp4"),
        ("http://host/path/a@b.mp4", "http://host/path/a@b.mp4"),
        (0, "0"),
        ("cannot open rtsp://u:secret@h/x, retrying", "cannot open rtsp://***@h/x, retrying"),
    ],
)
def test_redact_uri(uri, expected):
    assert redact_uri(uri) == expected


def test_query_values_are_decoded_typed_and_defaulted():
    query = SyntheticQuery("synthetic://?seed=7&size=64X48&rate=2.5&name=a%2Cb+c", KNOWN, "synthetic thing", "x")
    assert query.number("seed", int, 0) == 7 and isinstance(query.number("seed", int, 0), int)
    assert query.number("rate", float, 1.0, lambda v: v > 0, "> 0") == 2.5
    assert query.size("size", (320, 240)) == (64, 48)
    assert query.text("name", "") == "a,b c"
    empty = SyntheticQuery("synthetic://", KNOWN, "synthetic thing", "x")
    assert empty.number("seed", int, 3) == 3 and empty.size("size", (320, 240)) == (320, 240)
    assert empty.text("name", "d") == "d"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("synthetic://host?seed=1", r"a synthetic thing URI looks like 'synthetic://\?seed=1', got 'synthetic://host"),
        ("synthetic:path", "a synthetic thing URI looks like"),
        ("synthetic://?colour=red", r"parameter 'colour' in .* is unknown or has no '=value'; known: seed, size, rate"),
        ("synthetic://?seed", r"parameter 'seed' in .* is unknown or has no '=value'"),
        ("synthetic://?seed=1&seed=2", r"synthetic thing parameter 'seed' is given twice"),
    ],
)
def test_malformed_queries_name_the_parameter(uri, message):
    with pytest.raises(ConfigError, match=message):
        SyntheticQuery(uri, KNOWN, "synthetic thing", "synthetic://?seed=1")


@pytest.mark.parametrize(
    ("read", "message"),
    [
        (lambda q: q.number("seed", int, 0), r"synthetic thing parameter 'seed'='1.5' is not an integer"),
        (lambda q: q.number("rate", float, 0), r"synthetic thing parameter 'rate'='fast' is not a number"),
        (lambda q: q.number("rate", float, 0, lambda v: v > 5, "> 5"), r"'rate'='fast' is not a number"),
        (lambda q: q.size("size", (1, 1)), r"'size'='4096x4097' must be WIDTHxHEIGHT, each in 8..4096"),
    ],
)
def test_bad_values_name_the_parameter_and_the_rule(read, message):
    query = SyntheticQuery("synthetic://?seed=1.5&rate=fast&size=4096x4097", KNOWN, "synthetic thing", "x")
    with pytest.raises(ConfigError, match=message):
        read(query)


def test_camera_and_data_set_share_the_parser_with_their_own_names():
    """The same size rule and wording for both readers, each listing only its own parameters."""
    with pytest.raises(ConfigError, match=r"synthetic source parameter 'size'='7x7' must be WIDTHxHEIGHT"):
        SyntheticSource("synthetic://?size=7x7")
    with pytest.raises(ConfigError, match=r"synthetic data set parameter 'size'='7x7' must be WIDTHxHEIGHT"):
        open_dataset("synthetic://?size=7x7", 5, 32, 32, train=False)
    with pytest.raises(ConfigError, match=r"synthetic source parameter 'split' .* known: seed, fps, size"):
        SyntheticSource("synthetic://?split=val")
    with pytest.raises(ConfigError, match=r"synthetic data set parameter 'fps' .* known: split, n, start"):
        open_dataset("synthetic://?fps=5", 5, 32, 32, train=False)


@pytest.mark.parametrize(
    ("uri", "synthetic"),
    [
        ("synthetic://?seed=1", True),
        ("synthetic://", True),
        ("rtsp://h/x", False),
        ("/data/synthetic.mp4", False),
        (0, False),
    ],
)
def test_is_synthetic_goes_by_the_scheme(uri, synthetic):
    assert is_synthetic(uri) is synthetic
