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
def _pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """Pillow's decompression-bomb guard at ``max_pixels`` (``None``: off), its warning
    raised as an error.

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
        self._rgb: Image.Image | None = None
        try:
            # Opening reads the header only; the check below refuses a bomb with its declared
            # size in the message (Pillow's own guard would name twice our limit instead).
            with _pixel_limit(None):
                image = Image.open(io.BytesIO(data))
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

    def _decoded(self) -> Image.Image:
        """The decoded, upright RGB image, kept as a Pillow image.

        Kept in Pillow's own buffer rather than as a numpy copy: a region is converted only
        when it is read, so the whole image is in memory once (SAHI holds it twice).
        """
        if self._rgb is None:
            self._rgb = self._decode(self._image)
            if self._rgb is not self._image:
                self._image.close()
            width, height = self._rgb.size
            if (width, height) != (self.width, self.height):
                # EXIF seen only after the pixel data (PNG eXIf after IDAT): trust the pixels.
                self.header = replace(self.header, width=width, height=height)
        return self._rgb

    def _decode(self, image: Image.Image) -> Image.Image:
        try:
            with _pixel_limit(self._max_pixels):
                image.load()
                if _orientation(image) != 1:  # exif_transpose copies even when upright
                    image = ImageOps.exif_transpose(image) or image
                return _as_rgb_image(image)
        except ImageTooLargeError:
            raise
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise BadImageError(f"{self._name} is truncated or corrupt "
                                f"({self.header.format}): {exc}") from exc

    def validate(self) -> None:
        self._decoded()

    def read(self, box: Box) -> np.ndarray:
        box = clip_box(box, self.width, self.height)
        return np.asarray(self._decoded().crop((box.x1, box.y1, box.x2, box.y2)))

    def read_all(self) -> np.ndarray:
        return np.asarray(self._decoded())

    def thumbnail(self, max_side: int) -> np.ndarray:
        if self._rgb is None and self.header.format == "JPEG":
            # JPEG can decode at 1/2, 1/4, 1/8 scale directly: a small preview costs little.
            image = Image.open(io.BytesIO(self._data))
            scale = max_side / max(self.width, self.height)
            target = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
            image.draft("RGB", target)
            return downscale(np.asarray(self._decode(image)), max_side)
        image = self._decoded()
        scale = max_side / max(image.width, image.height)
        if scale >= 1:
            return np.asarray(image)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        return np.asarray(image.resize(size, Image.Resampling.BOX))

    def close(self) -> None:
        self._image.close()
        if self._rgb is not None:
            self._rgb.close()


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


def _as_rgb_image(image: Image.Image) -> Image.Image:
    """An RGB image for any Pillow mode; transparency is composited over white, 16-bit and
    float images are scaled to 8 bits (not clipped)."""
    mode = image.mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(to_rgb8(np.asarray(image)))
    if mode != "RGB":
        return image.convert("RGB")
    return image
