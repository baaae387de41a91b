"""Decode a video with OpenCV's bundled FFmpeg: the header first, then sampled frames in one pass.

``opencv-python-headless`` ships FFmpeg, so AVI, MP4/MOV and Matroska/WebM with the usual
codecs (H.264, MPEG-4, MJPEG, VP8/9, …) decode with no system libraries. Frames are read
sequentially — ``grab()`` every frame, ``retrieve()`` (colour conversion, a copy) only the
sampled ones — which is exact for any stream (seeking lands on key frames and can miss or
repeat frames) and costs about 0.4 ms per 768×576 frame on one core.

A file the demuxer cannot open (cut before the MP4 ``moov`` index, a header alone, not a
video) and a stream that ends well before the frames its header declares (truncated, or
damaged enough that frames are lost) are :class:`BadImageError`: the whole video is refused
instead of silently analysing part of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tilescope.errors import BadImageError
from tilescope.results import VideoFrame
from tilescope.video.sampling import FrameSampler, expected_samples


@dataclass(frozen=True)
class VideoHeader:
    """What the container says before any frame is decoded (``0`` where it says nothing)."""

    container: str
    codec: str
    width: int
    height: int
    fps: float
    frame_count: int

    @property
    def duration_ms(self) -> float | None:
        if self.frame_count > 0 and self.fps > 0:
            return self.frame_count * 1000.0 / self.fps
        return None

    def expected_samples(self, fps: float) -> int:
        """Frames that sampling at ``fps`` will keep, from the header (0: unknown)."""
        return expected_samples(self.frame_count, self.fps, fps)

    def describe(self, fps: float) -> str:
        """E.g. ``"79.5 s of video (795 frames at 10 fps) sampled at 2 fps"``."""
        if self.duration_ms is None:
            return f"video sampled at {fps:g} fps"
        return (f"{self.duration_ms / 1000:.1f} s of video ({self.frame_count:,} frames at "
                f"{self.fps:g} fps) sampled at {fps:g} fps")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "duration_ms": self.duration_ms}


def _fourcc(value: float) -> str:
    code = int(value)
    text = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))
    return text.strip("\x00 ") if text.isprintable() else f"0x{code:08x}"


#: a stream may end this many frames (or this share) short of its header: some containers
#: declare an estimate; more than that is a truncated or damaged file
_SHORTFALL_FRAMES = 2
_SHORTFALL_SHARE = 0.01


class VideoSource:
    """A local video file opened for one sequential pass over its sampled frames."""

    def __init__(self, path: str, *, container: str, name: str = "video") -> None:
        import cv2

        self._name = name
        self._cv2 = cv2
        self._capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        if not self._capture.isOpened():
            raise BadImageError(f"{name} is not a readable {container} video (FFmpeg cannot "
                                f"open it: truncated, damaged or an unsupported codec)")
        get = self._capture.get
        self.header = VideoHeader(
            container=container, codec=_fourcc(get(cv2.CAP_PROP_FOURCC)),
            width=int(get(cv2.CAP_PROP_FRAME_WIDTH)), height=int(get(cv2.CAP_PROP_FRAME_HEIGHT)),
            fps=max(0.0, float(get(cv2.CAP_PROP_FPS))),
            frame_count=max(0, int(get(cv2.CAP_PROP_FRAME_COUNT))))
        if self.header.width <= 0 or self.header.height <= 0:
            self.close()
            raise BadImageError(f"{name} has no video stream (0×0 frames)")
        #: frames decoded so far (sampled or not)
        self.decoded = 0

    def frames(self, fps: float) -> Iterator[tuple[VideoFrame, np.ndarray]]:
        """The sampled frames, in order, as (frame, RGB pixels); raises
        :class:`BadImageError` at the end if the stream stopped short of its header."""
        cv2, capture = self._cv2, self._capture
        sampler = FrameSampler(fps)
        previous = -1.0
        while capture.grab():
            index = self.decoded
            self.decoded += 1
            timestamp = float(capture.get(cv2.CAP_PROP_POS_MSEC))
            if not timestamp > previous and self.header.fps > 0:
                timestamp = index * 1000.0 / self.header.fps  # no usable timestamps
            previous = timestamp
            if not sampler.take(timestamp):
                continue
            ok, bgr = capture.retrieve()
            if not ok or bgr is None:
                raise BadImageError(f"{self._name}: frame {index} cannot be decoded")
            yield (VideoFrame(index, round(timestamp, 3)),
                   cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB if bgr.ndim == 3 else cv2.COLOR_GRAY2RGB))
        self._check_complete()

    def _check_complete(self) -> None:
        declared = self.header.frame_count
        if self.decoded == 0:
            raise BadImageError(f"{self._name} has no decodable frames ({self.header.codec} "
                                f"in {self.header.container})")
        if declared and self.decoded < declared - max(_SHORTFALL_FRAMES,
                                                      _SHORTFALL_SHARE * declared):
            raise BadImageError(
                f"{self._name} is truncated or corrupt ({self.header.container}, "
                f"{self.header.codec}): its header declares {declared:,} frames, "
                f"{self.decoded:,} could be decoded")

    def close(self) -> None:
        self._capture.release()

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
