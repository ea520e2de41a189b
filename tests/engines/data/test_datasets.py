"""emim_stream.engines.data.datasets and emim_stream.engines.transforms: frames prepared as the camera prepares them,
synthetic clips, videos.

Video data sets are written by the tests with OpenCV (MJPG in .avi) and decoded by OpenCV for real.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from emim_stream.engines.data.datasets import DatasetError, SyntheticClips, open_dataset, split_validation
from emim_stream.engines.data.synthetic import CLASSES, SyntheticScene, clip_seed, label_of, render_clip
from emim_stream.engines.errors import ConfigError
from emim_stream.engines.transforms import RESIZE_METHODS, fit_frame, normalise
from emim_stream.pipeline.capture.preprocess import Preprocessor

FRAMES = 5  # T+1
SIZE = 32


def write_video(path, frames: int, seed: int, size: tuple[int, int] = (48, 40)) -> np.ndarray:
    """Write ``frames`` BGR frames of random blocks (MJPG); return them as RGB ``[frames, h, w, 3]``."""
    rng = np.random.default_rng(seed)
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (width, height))
    assert writer.isOpened()
    pictures = []
    for _ in range(frames):
        blocks = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        bgr = cv2.resize(blocks, (width, height), interpolation=cv2.INTER_NEAREST)
        writer.write(bgr)
        pictures.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    writer.release()
    return np.stack(pictures)


def decode(path) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return np.stack(frames)


@pytest.fixture
def folder(tmp_path):
    """``root/<class>/<video>.avi``: classes b_right, a_left (2 videos each, 8 frames)."""
    root = tmp_path / "clips"
    for c, name in enumerate(("b_right", "a_left")):
        (root / name).mkdir(parents=True)
        for v in range(2):
            write_video(root / name / f"v{v}.avi", 8, seed=10 * c + v)
    return root


# --- frame preparation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", RESIZE_METHODS)
@pytest.mark.parametrize(
    ("in_size", "out_size"),
    [((320, 240), (128, 128)), ((240, 320), (96, 128)), ((64, 64), (64, 64)), ((80, 64), (64, 64))],
)
def test_the_camera_path_and_the_training_path_give_the_same_bytes(method, in_size, out_size):
    """A decoded BGR frame through the camera's Preprocessor == its RGB twin through fit_frame (training)."""
    width, height = in_size
    rgb = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    camera = Preprocessor(*out_size, method)(np.ascontiguousarray(rgb[..., ::-1]), bgr=True)
    got = fit_frame(rgb, *out_size, method)
    np.testing.assert_array_equal(got, camera)
    assert got.flags.c_contiguous and got.shape == (*out_size, 3)


def test_normalise_gives_clips_the_live_values_and_the_formula():
    """Clips normalised at once equal the VMP stage's frame-by-frame values bit for bit, and the float64 formula."""
    clips = torch.randint(0, 256, (2, 3, 4, 5, 3), dtype=torch.uint8)
    mean, std = (0.45, 0.40, 0.50), (0.225, 0.25, 0.2)
    got = normalise(clips, mean, std, channel_dim=1)
    assert got.shape == (2, 3, 3, 4, 5) and got.dtype == torch.float32 and got.is_contiguous()
    frames = torch.stack([torch.stack([normalise(f, mean, std) for f in clip]) for clip in clips])  # [B, T, 3, H, W]
    assert torch.equal(got, frames.permute(0, 2, 1, 3, 4))
    x = clips.permute(0, 4, 1, 2, 3).double() / 255
    reference = (x - torch.tensor(mean).double().view(1, 3, 1, 1, 1)) / torch.tensor(std).double().view(1, 3, 1, 1, 1)
    torch.testing.assert_close(got.double(), reference, rtol=0, atol=1e-6)  # float32 rounding of |x| <= 2.8


# --- synthetic -----------------------------------------------------------------------------------------


def test_synthetic_first_window_is_render_clip_prepared_like_camera_frames():
    data = SyntheticClips("test", 9, FRAMES, SIZE, SIZE, source_size=(80, 60))
    assert len(data) == 9 and data.labels == CLASSES and data.targets == list(range(9))
    clip, label = data[4]
    assert clip.dtype == torch.uint8 and clip.shape == (FRAMES, SIZE, SIZE, 3)
    raw = render_clip(label_of(4), clip_seed("test", 4), FRAMES, 60, 80)
    expected = np.stack([Preprocessor(SIZE, SIZE, "area")(f, bgr=False) for f in raw])
    assert label == 4
    np.testing.assert_array_equal(clip.numpy(), expected)


def test_synthetic_any_window_comes_from_a_live_scene_and_is_deterministic():
    data = SyntheticClips("train", 3, FRAMES, SIZE, SIZE, source_size=(80, 60), window="any")
    clip, label = data[2]
    np.testing.assert_array_equal(clip.numpy(), data[2][0].numpy())
    scene = SyntheticScene(clip_seed("train", 2), 60, 80, label=label)
    frames = [fit_frame(scene.frame(k), SIZE, SIZE) for k in range(scene.segment_frames)]
    starts = [k for k in range(len(frames) - FRAMES + 1) if np.array_equal(frames[k], clip[0].numpy())]
    assert starts, "the clip's first frame is a frame of the scene"
    np.testing.assert_array_equal(clip.numpy(), np.stack(frames[starts[0] : starts[0] + FRAMES]))


def test_synthetic_splits_and_fresh_epochs_differ():
    train = SyntheticClips("train", 2, 2, SIZE, SIZE, source_size=(40, 40), fresh=True)
    test = SyntheticClips("test", 2, 2, SIZE, SIZE, source_size=(40, 40))
    first = train[0][0]
    assert not torch.equal(first, test[0][0])
    train.set_epoch(1)
    assert train[0][1] == label_of(2)  # epoch 1 continues with clip index n + i
    assert not torch.equal(first, train[0][0])
    train.set_epoch(0)
    assert torch.equal(first, train[0][0])


def test_synthetic_spec_parameters():
    data = open_dataset(
        "synthetic://?split=val&n=12&start=5&size=64x48&method=linear&window=any&fresh=1", FRAMES, SIZE, SIZE,
        train=False,
    )
    assert (data.split, data.n, data.start, data.source_size) == ("val", 12, 5, (64, 48))
    assert (data.method, data.window, data.fresh) == ("linear", "any", True)
    default = open_dataset("synthetic://", FRAMES, SIZE, SIZE, train=False, default_split="test", default_n=900)
    assert (default.split, default.n, default.source_size, default.window) == ("test", 900, (320, 240), "first")


@pytest.mark.parametrize(
    "spec",
    [
        "synthetic://?split=holdout",
        "synthetic://?n=0",
        "synthetic://?n=many",
        "synthetic://?size=64",
        "synthetic://?method=cubic",
        "synthetic://?window=last",
        "synthetic://?fresh=yes",
        "synthetic://?colour=red",
        "synthetic://?n=1&n=2",
        "synthetic://host?n=1",
    ],
)
def test_bad_synthetic_specs_raise_config_error(spec):
    with pytest.raises(ConfigError):
        open_dataset(spec, FRAMES, SIZE, SIZE, train=True)


def test_synthetic_data_refuses_other_labels():
    with pytest.raises(DatasetError, match="synthetic classes"):
        open_dataset("synthetic://?n=9", FRAMES, SIZE, SIZE, train=False, labels=("a", "b"))


# --- videos --------------------------------------------------------------------------------------------


def test_folder_dataset_reads_clips_from_real_videos(folder):
    data = open_dataset(str(folder), FRAMES, SIZE, SIZE, train=False)
    assert data.describe() == f"folder '{folder}': 4 videos, 2 classes, {FRAMES}-frame clips"
    assert data.labels == ("a_left", "b_right") and data.targets == [0, 0, 1, 1]
    assert [item.frame_count for item in data.items] == [8, 8, 8, 8]
    clip, label = data[2]
    assert label == 1 and clip.shape == (FRAMES, SIZE, SIZE, 3) and clip.dtype == torch.uint8
    decoded = decode(folder / "b_right" / "v0.avi")
    start = (8 - FRAMES) // 2  # evaluation takes the middle clip
    expected = np.stack([fit_frame(f, SIZE, SIZE) for f in decoded[start : start + FRAMES]])
    np.testing.assert_array_equal(clip.numpy(), expected)


def test_training_clips_start_at_seeded_random_frames(folder):
    data = open_dataset(str(folder), FRAMES, SIZE, SIZE, train=True, seed=3)
    decoded = [fit_frame(f, SIZE, SIZE) for f in decode(folder / "a_left" / "v1.avi")]
    starts = set()
    for epoch in range(6):
        data.set_epoch(epoch)
        clip = data[1][0].numpy()
        start = next(k for k in range(8 - FRAMES + 1) if np.array_equal(decoded[k], clip[0]))
        np.testing.assert_array_equal(clip, np.stack(decoded[start : start + FRAMES]))
        starts.add(start)
    assert len(starts) > 1
    data.set_epoch(0)
    again = data[1][0]
    data.set_epoch(0)
    assert torch.equal(again, data[1][0])


def test_list_dataset_with_relative_paths_spaces_and_comments(tmp_path):
    (tmp_path / "my videos").mkdir()
    write_video(tmp_path / "my videos" / "one clip.avi", 6, seed=1)
    write_video(tmp_path / "two.avi", 6, seed=2)
    listing = tmp_path / "train.txt"
    listing.write_text("# path label\nmy videos/one clip.avi   10\n\n" + f"{tmp_path / 'two.avi'} 2\n")
    data = open_dataset(str(listing), FRAMES, SIZE, SIZE, train=False)
    assert data.labels == ("2", "10")  # integer labels sort numerically
    assert data.targets == [1, 0]
    assert data[0][0].shape == (FRAMES, SIZE, SIZE, 3)


def test_split_validation_holds_out_part_of_each_class(folder):
    data = open_dataset(str(folder), FRAMES, SIZE, SIZE, train=True)
    train, val = split_validation(data, 0.5, seed=0)
    assert sorted(val.targets) == [0, 1] and sorted(train.targets) == [0, 1]
    assert not val.train and train.train
    assert {i.path for i in train.items}.isdisjoint(i.path for i in val.items)
    assert split_validation(data, 0.1, seed=0)[1] is None  # 10% of 2 videos rounds to none


def test_empty_class_folder_is_named(folder):
    (folder / "c_up").mkdir()
    (folder / "c_up" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"class folder '.*c_up' has no video files \(found only notes.txt\)"):
        open_dataset(str(folder), FRAMES, SIZE, SIZE, train=True)


def test_unreadable_video_is_named(folder):
    (folder / "a_left" / "broken.mp4").write_bytes(b"this is not a video" * 50)
    with pytest.raises(DatasetError, match=r"cannot open video '.*a_left/broken.mp4'"):
        open_dataset(str(folder), FRAMES, SIZE, SIZE, train=True)


def test_too_short_video_is_named(folder):
    write_video(folder / "a_left" / "short.avi", 3, seed=9)
    with pytest.raises(DatasetError, match=r"video '.*short.avi' has 3 frames; a clip needs 5"):
        open_dataset(str(folder), FRAMES, SIZE, SIZE, train=True)


def test_videos_outside_class_folders_and_missing_folders(tmp_path, folder):
    write_video(folder / "loose.avi", 6, seed=4)
    with pytest.raises(DatasetError, match="video files directly inside it"):
        open_dataset(str(folder), FRAMES, SIZE, SIZE, train=True)
    (tmp_path / "flat").mkdir()
    with pytest.raises(DatasetError, match="no class sub-folders"):
        open_dataset(str(tmp_path / "flat"), FRAMES, SIZE, SIZE, train=True)
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(str(tmp_path / "nowhere"), FRAMES, SIZE, SIZE, train=True)


def test_class_folder_outside_the_given_labels_is_named(folder):
    with pytest.raises(DatasetError, match=r"class folder '.*b_right' is not a known label; known labels: a_left, c"):
        open_dataset(str(folder), FRAMES, SIZE, SIZE, train=False, labels=("a_left", "c"))


def test_list_file_errors_name_file_and_line(tmp_path):
    write_video(tmp_path / "a.avi", 6, seed=1)
    listing = tmp_path / "val.txt"
    listing.write_text("a.avi left\na.avi jump\n")
    with pytest.raises(DatasetError, match=r"val.txt:2: label 'jump' is not a known label; known labels: left, right"):
        open_dataset(str(listing), FRAMES, SIZE, SIZE, train=False, labels=("left", "right"))
    listing.write_text("a.avi left\nmissing.avi right\n")
    with pytest.raises(DatasetError, match=r"val.txt:2: video '.*missing.avi' does not exist"):
        open_dataset(str(listing), FRAMES, SIZE, SIZE, train=False)
    listing.write_text("a.avi\n")
    with pytest.raises(DatasetError, match=r"val.txt:1: expected '<video path> <label>'"):
        open_dataset(str(listing), FRAMES, SIZE, SIZE, train=False)
    (tmp_path / "bad.avi").write_bytes(b"\x00" * 100)
    listing.write_text("bad.avi left\n")
    with pytest.raises(DatasetError, match=r"val.txt:1: cannot open video '.*bad.avi'"):
        open_dataset(str(listing), FRAMES, SIZE, SIZE, train=False)
    listing.write_text("# nothing\n")
    with pytest.raises(DatasetError, match="lists no videos"):
        open_dataset(str(listing), FRAMES, SIZE, SIZE, train=False)
