"""Video input: recognised by its bytes, sampled at N frames per second of presentation time,
decoded in one pass by OpenCV's FFmpeg; truncated, damaged and over-budget videos refused."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
from support.video_samples import moving_blobs, vtest_path, write_video

from tilescope.errors import BadImageError, ConfigError, ImageTooLargeError
from tilescope.limits import RunLimits
from tilescope.params import InferenceParams
from tilescope.readers.sniff import sniff_format, sniff_video
from tilescope.video.decoder import VideoSource
from tilescope.video.pipeline import sample_video
from tilescope.video.sampling import FrameSampler, expected_samples


@pytest.fixture(scope="module")
def vtest():
    return vtest_path()


def test_containers_are_recognised_by_their_bytes(vtest, tmp_path):
    frames, _ = moving_blobs(3)
    written = {"MP4": write_video(tmp_path / "a.mp4", frames, fourcc="mp4v"),
               "MKV": write_video(tmp_path / "a.mkv", frames),
               "MOV": write_video(tmp_path / "a.mov", frames, fourcc="mp4v"),
               "AVI": vtest}
    expected = {"MP4": "MP4", "MKV": "MKV", "MOV": "MP4", "AVI": "AVI"}
    for kind, path in written.items():
        head = path.read_bytes()[:16]
        assert sniff_video(head) == expected[kind], kind
        assert sniff_format(head) is None  # never mistaken for an image
    # a video renamed .jpg is still a video; a JPEG renamed .avi is not
    assert sniff_video(vtest.read_bytes()[:16]) == "AVI"
    assert sniff_video(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00") is None
    # HEIF/AVIF photos share MP4's box structure but are still pictures
    assert sniff_video(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00") is None
    assert sniff_video(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00") is None
    assert sniff_video(b"RIFF\x10\x00\x00\x00WEBPVP8 ") is None  # RIFF, but WebP


def test_sampler_keeps_the_first_frame_at_or_after_each_target_time():
    def taken(fps: float, timestamps: list[float]) -> list[int]:
        sampler = FrameSampler(fps)
        return [i for i, t in enumerate(timestamps) if sampler.take(t)]

    ten_fps = [i * 100.0 for i in range(795)]
    assert taken(1, ten_fps) == list(range(0, 795, 10))
    assert taken(3, ten_fps)[:7] == [0, 4, 7, 10, 14, 17, 20]  # 0, .333, .667, 1 s …
    assert taken(30, ten_fps) == list(range(795))  # more than the video has: every frame once
    for fps in (0.1, 0.5, 1, 2, 3, 7.5, 10, 60):
        assert len(taken(fps, ten_fps)) == expected_samples(795, 10, fps)
    # variable frame rate: a burst of frames, then a 2.5 s gap, sampled evenly in time
    vfr = [0, 40, 80, 120, 1010, 1020, 3500, 3600, 4000]
    assert [vfr[i] for i in taken(1, vfr)] == [0, 1010, 3500, 4000]
    # float noise a hair before the target still counts as on time
    assert taken(2, [0.0, 499.9999999, 1000.0]) == [0, 1, 2]


def test_vtest_sampled_at_one_frame_per_second(vtest):
    with VideoSource(str(vtest), container="AVI", name="vtest.avi") as source:
        header = source.header
        assert (header.width, header.height, header.fps, header.frame_count) == (
            768, 576, 10.0, 795)
        assert header.codec == "MP43" and header.duration_ms == 79_500
        sampled = list(source.frames(1.0))
        assert source.decoded == 795
    assert len(sampled) == 80 == header.expected_samples(1.0)
    assert [f.frame_index for f, _ in sampled] == list(range(0, 800, 10))
    assert [f.timestamp_ms for f, _ in sampled] == [i * 1000.0 for i in range(80)]
    # RGB, the very pixels OpenCV decodes (it gives BGR)
    capture = cv2.VideoCapture(str(vtest), cv2.CAP_FFMPEG)
    capture.set(cv2.CAP_PROP_POS_FRAMES, 10)
    _, bgr = capture.read()
    capture.release()
    frame, pixels = sampled[1]
    assert frame.frame_index == 10 and pixels.shape == (576, 768, 3)
    assert np.array_equal(pixels, bgr[:, :, ::-1])


def test_a_lossless_video_round_trips_exactly(tmp_path):
    frames, _ = moving_blobs(6)
    path = write_video(tmp_path / "blobs.mkv", frames, fps=4)
    with VideoSource(str(path), container="MKV") as source:
        got = list(source.frames(2.0))  # every second frame
    assert [f.frame_index for f, _ in got] == [0, 2, 4]
    assert [f.timestamp_ms for f, _ in got] == [0.0, 500.0, 1000.0]
    for (frame, pixels) in got:
        assert np.array_equal(pixels, frames[frame.frame_index])


@pytest.mark.parametrize("damage", ["first half", "noise in the middle"])
def test_truncated_or_damaged_avi_is_refused_after_decoding(vtest, tmp_path, damage):
    data = bytearray(vtest.read_bytes())
    if damage == "first half":
        data = data[: len(data) // 2]
    else:
        rng = np.random.default_rng(0)
        data[len(data) // 3: len(data) // 3 + 2_000_000] = rng.bytes(2_000_000)
    path = tmp_path / "broken.avi"
    path.write_bytes(bytes(data))
    with VideoSource(str(path), container="AVI", name="s3://b/broken.avi") as source, \
            pytest.raises(BadImageError, match=r"s3://b/broken\.avi is truncated or corrupt "
                                               r"\(AVI, MP43\): its header declares 795 "
                                               r"frames, \d+ could be decoded"):
        for _ in source.frames(1.0):
            pass


def test_unopenable_videos_are_refused_at_open(vtest, tmp_path):
    frames, _ = moving_blobs(10)
    mp4 = write_video(tmp_path / "whole.mp4", frames, fourcc="mp4v").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(mp4[: len(mp4) // 2])  # the moov index is written last: gone
    with pytest.raises(BadImageError, match=r"cut\.mp4 is not a readable MP4 video"):
        VideoSource(str(cut), container="MP4", name="cut.mp4")
    header_only = tmp_path / "header.avi"
    header_only.write_bytes(vtest.read_bytes()[:4096])
    with pytest.raises(BadImageError, match="is not a readable AVI video"):
        VideoSource(str(header_only), container="AVI", name="header.avi")


def test_budgets_refuse_from_the_header_before_decoding(vtest):
    params = InferenceParams(video_fps=2)
    with VideoSource(str(vtest), container="AVI") as source:
        with pytest.raises(ConfigError) as refused:
            sample_video(source, params, 416, RunLimits(max_frames=100))
        assert str(refused.value) == (
            "79.5 s of video (795 frames at 10 fps) sampled at 2 fps makes 159 frames, over "
            "the budget of 100 (TILESCOPE_MAX_FRAMES); lower video_fps")
        with pytest.raises(ConfigError, match=r"159 frames × 6 slices of 768×576 \(416×416 "
                                              r"slices\) make 954 slices, over the budget of "
                                              r"500 \(TILESCOPE_MAX_SLICES\)"):
            sample_video(source, params, 416, RunLimits(max_slices=500))
        with pytest.raises(ImageTooLargeError, match=r"768×576 = 442,368 pixels"):
            sample_video(source, params, 416, RunLimits(max_pixels=400_000))
        assert source.decoded == 0  # nothing was decoded


def test_frame_budget_holds_while_decoding_when_the_header_says_nothing(tmp_path):
    frames, _ = moving_blobs(12)
    path = write_video(tmp_path / "blobs.mkv", frames, fps=4)
    with VideoSource(str(path), container="MKV") as source:
        # as if the container declared no frame count (live recordings, some MKVs)
        source.header = replace(source.header, frame_count=0)
        sampled, stream = sample_video(source, InferenceParams(video_fps=4), 256,
                                       RunLimits(max_frames=5))
        with pytest.raises(ConfigError, match=r"makes 6 frames, over the budget of 5"):
            for _ in stream:
                pass
        assert len(sampled.frames) == 5
