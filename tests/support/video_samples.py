"""Videos for tests: Debian's real street video, and videos with known objects written here.

``vtest_path()`` is ``vtest.avi`` from Debian's ``opencv-doc`` (fetched with ``apt-get
download`` by :mod:`tilescope.samples`); where the package cannot be had the calling test is
skipped and says why. ``write_video`` encodes frames with OpenCV's bundled FFmpeg (FFV1 is
lossless, so pixel-exact ground truth survives the round trip).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest


def vtest_path() -> Path:
    """``vtest.avi`` (768×576, 795 frames at 10 fps), or skip the test saying why."""
    from tilescope.samples import sample_path

    try:
        return sample_path("vtest")
    except (RuntimeError, OSError, ValueError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"vtest.avi from Debian's opencv-doc is not available: {exc}")


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float = 10.0,
                fourcc: str = "FFV1") -> Path:
    """RGB frames → a video file (container from the suffix: .avi, .mkv, .mp4 …)."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} to {path.suffix}"
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def moving_blobs(count: int, width: int = 640, height: int = 480
                 ) -> tuple[list[np.ndarray], list[list[list[int]]]]:
    """``count`` dark frames with bright rectangles and each frame's true boxes [x1, y1, x2,
    y2]: one standing still (the same box in every frame: merged across frames it would be
    found once), one moving right across the slice borders, one moving down."""
    frames, truth = [], []
    for i in range(count):
        boxes = [[200, 200, 260, 250],                       # still, across a slice border
                 [20 + 37 * i, 60, 20 + 37 * i + 50, 100],   # moving right
                 [500, 10 + 29 * i, 540, 10 + 29 * i + 45]]  # moving down
        frame = np.zeros((height, width, 3), np.uint8)
        for x1, y1, x2, y2 in boxes:
            frame[y1:y2, x1:x2] = 255
        frames.append(frame)
        truth.append(boxes)
    return frames, truth
