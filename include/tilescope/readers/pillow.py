"""JPEG, PNG, GIF, BMP, WebP (and strip TIFF) through Pillow: decode once, serve crops as views.

Validation happens here, before any pixels are decoded: empty input, unknown signature, and
declared pixel counts over the limit are refused from the header alone; truncation and
corruption surface when the pixels are decoded and become :class:`BadImageError` too.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tilescope.errors import BadImageError, ImageTooLargeError
from tilescope.readers.base import (
    DEFAULT_MAX_PIXELS,
    ImageHeader,
    ImageReader,
    clip_box,
    downscale,
    to_rgb8,
)
from tilescope.readers.sniff import describe_head, sniff_format
from tilescope.slicing import Box

_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}


@contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    """Pillow's decompression-bomb guard at ``max_pixels``, its warning raised as an error.

    Pillow keeps the limit in a module global; it is set only around our own open/load calls.
    """
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image exceeds the pixel limit of {max_pixels:,}: {exc}") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = previous


class PillowReader(ImageReader):
    """An image held in memory as bytes, decoded to RGB on first use."""

    def __init__(self, data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 name: str = "image") -> None:
        if not data:
            raise BadImageError(f"{name} is empty (0 bytes)")
        fmt = sniff_format(data[:16])
        if fmt is None:
            raise BadImageError(f"{name} is not an image (starts with {describe_head(data[:16])})")
        self._data = data
        self._name = name
        self._max_pixels = max_pixels
        self._pixels: np.ndarray | None = None
        try:
            with _pixel_limit(max_pixels):
                image = Image.open(io.BytesIO(data))
        except ImageTooLargeError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise BadImageError(f"{name} is not a readable {fmt}: {exc}") from exc
        width, height = image.size
        if width * height > max_pixels:  # formats Pillow does not guard itself
            raise ImageTooLargeError(
                f"{name} declares {width}×{height} = {width * height:,} pixels, "
                f"over the limit of {max_pixels:,}")
        orientation = _orientation(image)
        if orientation in _SWAPS_AXES:
            width, height = height, width
        self._image = image
        self.header = ImageHeader(format=image.format or fmt, width=width, height=height,
                                  mode=image.mode, orientation=orientation,
                                  frames=int(getattr(image, "n_frames", 1)), tiled=False)

    def _decoded(self) -> np.ndarray:
        if self._pixels is None:
            self._pixels = self._decode(self._image)
            self._image.close()
            height, width = self._pixels.shape[:2]
            if (width, height) != (self.width, self.height):
                # EXIF seen only after the pixel data (PNG eXIf after IDAT): trust the pixels.
                self.header = replace(self.header, width=width, height=height)
        return self._pixels

    def _decode(self, image: Image.Image) -> np.ndarray:
        try:
            with _pixel_limit(self._max_pixels):
                image.load()
                image = ImageOps.exif_transpose(image) or image
                pixels = _as_rgb_array(image)
        except ImageTooLargeError:
            raise
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise BadImageError(f"{self._name} is truncated or corrupt "
                                f"({self.header.format}): {exc}") from exc
        return pixels

    def validate(self) -> None:
        self._decoded()

    def read(self, box: Box) -> np.ndarray:
        box = clip_box(box, self.width, self.height)
        return self._decoded()[box.y1:box.y2, box.x1:box.x2]

    def read_all(self) -> np.ndarray:
        return self._decoded()

    def thumbnail(self, max_side: int) -> np.ndarray:
        if self._pixels is None and self.header.format == "JPEG":
            # JPEG can decode at 1/2, 1/4, 1/8 scale directly: a small preview costs little.
            image = Image.open(io.BytesIO(self._data))
            scale = max_side / max(self.width, self.height)
            target = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
            image.draft("RGB", target)
            return downscale(self._decode(image), max_side)
        return downscale(self._decoded(), max_side)

    def close(self) -> None:
        self._image.close()


def _orientation(image: Image.Image) -> int:
    """EXIF orientation (1–8) from the header alone.

    Pillow's PNG ``getexif()`` decodes the whole image when the eXIf chunk is not before
    the pixel data, so PNGs only use an early chunk; a late one is caught after decoding.
    """
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a malformed EXIF block must not make the image unreadable
        return 1


def _as_rgb_array(image: Image.Image) -> np.ndarray:
    """RGB ``uint8`` pixels for any Pillow mode; transparency is composited over white."""
    mode = image.mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode.startswith("I;16") or mode in ("I", "F"):
        return to_rgb8(np.asarray(image))
    if mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)
