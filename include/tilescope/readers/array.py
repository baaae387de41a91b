"""An image already decoded into memory (a video frame), served through the reader interface.

Video frames come out of the decoder as arrays; wrapping one in an :class:`ImageReader` lets
it go through exactly the code an image goes through — staging as a tiled TIFF, banded
region reads, thumbnails — with no second path to keep in step.
"""

from __future__ import annotations

import numpy as np

from tilescope.readers.base import ImageHeader, ImageReader, clip_box, downscale, to_rgb8
from tilescope.slicing import Box


class ArrayReader(ImageReader):
    """RGB pixels held in memory; crops are views, nothing is copied."""

    def __init__(self, pixels: np.ndarray, *, format: str = "RAW") -> None:
        self._pixels = to_rgb8(pixels)
        height, width = self._pixels.shape[:2]
        self.header = ImageHeader(format=format, width=width, height=height, mode="RGB")

    def read(self, box: Box) -> np.ndarray:
        box = clip_box(box, self.width, self.height)
        return self._pixels[box.y1:box.y2, box.x1:box.x2]

    def read_all(self) -> np.ndarray:
        return self._pixels

    def thumbnail(self, max_side: int) -> np.ndarray:
        return downscale(self._pixels, max_side)
