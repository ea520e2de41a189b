"""`run --record DIR` end to end: two synthetic cameras forced to different labels; the decoded recordings carry
each camera's label in the label region of the text band."""

from __future__ import annotations

import numpy as np

from emim_stream.pipeline.outputs.record import Overlay, draw_overlay, overlay_layout
from tests.integration.conftest import free_port
from tests.pipeline.outputs.test_record import decode, region


def test_recordings_show_each_cameras_forced_label(pipeline_factory, tmp_path):
    out = tmp_path / "rec"
    config = {
        "cameras": [
            {"id": "camL", "source": "synthetic://?seed=1&fps=30&size=320x240&label=left"},
            {"id": "camR", "source": "synthetic://?seed=2&fps=30&size=320x240&label=right"},
        ],
        "engine": {"backend": "torch", "device": "cpu", "checkpoint": "emim_xs.demo", "threads": 1},
        "publish": {"endpoint": f"tcp://127.0.0.1:{free_port()}"},
        "postprocess": {"print_labels": False},
    }
    p = pipeline_factory(config, duration=12, extra=("--record", str(out)))
    assert p.wait(120) == 0, p.output()[-3000:]
    layout = overlay_layout(64, 64, 360)  # the demo model's 64 x 64 frames, record.height 360
    blank = np.zeros((64, 64, 3), dtype=np.uint8)
    refs = {
        name: region(draw_overlay(blank, Overlay(name, 1.0, 0.0), layout), layout.label_box)
        for name in ("left", "right")
    }
    for camera, label, other in (("camL", "left", "right"), ("camR", "right", "left")):
        files = sorted(out.glob(f"{camera}_*.mp4"))
        assert files, f"no recording of {camera} in {list(out.iterdir())}"
        images = [image for path in files for image in decode(path)[0]]
        assert len(images) >= 150, f"{camera}: only {len(images)} frames recorded in 12 s at 30 fps"
        labelled = [image for image in images if region(image, layout.label_box).max() > 100]
        assert len(labelled) >= 60, f"{camera}: {len(labelled)} frames with a label drawn"
        closer = [
            np.abs(region(image, layout.label_box) - refs[label]).mean()
            < np.abs(region(image, layout.label_box) - refs[other]).mean()
            for image in labelled
        ]
        assert np.mean(closer) >= 0.9, f"{camera}: the label region shows {label!r} in {np.mean(closer):.0%} of frames"
