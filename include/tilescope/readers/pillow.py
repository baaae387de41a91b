"""JPEG, PNG, GIF, BMP, WebP (and strip TIFF) through Pillow: decode once, serve crops as views.

Validation happens here, before any pixels are decoded: empty input, unknown signature, and
declared pixel counts over the limit are refused from the header alone; truncation and
corruption surface when the pixels are decoded and become :class:`BadImageError` too.

A plain RGB JPEG (the common photo, and the big mosaic) is decoded by libjpeg-turbo through
imagecodecs straight into a 3-byte-per-pixel array instead of Pillow's 4-byte RGBX buffer,
and its encoded bytes are dropped once decoded: a 16384² image then holds 805 MB, not 1 GB
plus the JPEG. The pixels are the very ones Pillow decodes (the same libjpeg-turbo, the same
default IDCT and upsampling); anything else — other modes, EXIF rotation, a stream that does
not end in an EOI marker (Pillow calls it truncated, libjpeg would pad it silently), any
decoder error — goes through Pillow as before, so what is refused and why does not change.
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
    refuse_over_pixel_limit,
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
        #: the pixels when libjpeg-turbo decoded them directly (read-only; crops are views)
        self._pixels: np.ndarray | None = None
        self._array_tried = False
        try:
            # Opening reads the header only; the check below refuses a bomb with its declared
            # size in the message (Pillow's own guard would name twice our limit instead).
            with _pixel_limit(None):
                image = Image.open(io.BytesIO(data))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise BadImageError(f"{name} is not a readable {fmt}: {exc}") from exc
        width, height = image.size
        refuse_over_pixel_limit(name, width, height, max_pixels)  # Pillow guards not all
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

    def _array(self) -> np.ndarray | None:
        """The pixels as one RGB array if this image can be decoded that way (a plain JPEG;
        decoded on first use), else ``None`` (then :meth:`_decoded` serves them)."""
        if not self._array_tried and self._rgb is None:
            self._array_tried = True
            self._pixels = self._decode_jpeg()
            if self._pixels is not None:  # the encoded bytes are not needed any more
                self._image.close()
                self._data = b""
        return self._pixels

    def _decode_jpeg(self) -> np.ndarray | None:
        """A plain 8-bit RGB JPEG decoded by libjpeg-turbo into a read-only (h, w, 3) array;
        ``None`` for anything Pillow must decode (see the module docstring)."""
        header = self.header
        if (header.format != "JPEG" or header.mode != "RGB" or header.orientation != 1
                or not self._data.endswith(b"\xff\xd9")):
            return None
        try:
            import imagecodecs

            pixels = imagecodecs.jpeg8_decode(self._data)
        except MemoryError:
            raise
        except Exception:  # Pillow decodes it, or says what is wrong with it
            return None
        if pixels.dtype != np.uint8 or pixels.shape != (header.height, header.width, 3):
            return None
        pixels.flags.writeable = False  # crops are views: nobody may draw on the image
        return pixels

    def validate(self) -> None:
        if self._array() is None:
            self._decoded()

    def read(self, box: Box) -> np.ndarray:
        box = clip_box(box, self.width, self.height)
        pixels = self._array()
        if pixels is not None:
            return pixels[box.y1:box.y2, box.x1:box.x2]
        return np.asarray(self._decoded().crop((box.x1, box.y1, box.x2, box.y2)))

    def read_all(self) -> np.ndarray:
        pixels = self._array()
        return pixels if pixels is not None else np.asarray(self._decoded())

    def thumbnail(self, max_side: int) -> np.ndarray:
        if self._pixels is not None:
            return downscale(self._pixels, max_side)
        if self._rgb is None and self.header.format == "JPEG":
            # JPEG can decode at 1/2, 1/4, 1/8 scale directly: a small preview costs little.
            image = Image.open(io.BytesIO(self._data))
            scale = max_side / max(self.width, self.height)
            target = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
            image.draft("RGB", target)
            return downscale(np.asarray(self._decode(image)), max_side)
        decoded = self._decoded()
        scale = max_side / max(decoded.width, decoded.height)
        if scale >= 1:
            return np.asarray(decoded)
        size = (max(1, round(decoded.width * scale)), max(1, round(decoded.height * scale)))
        return np.asarray(decoded.resize(size, Image.Resampling.BOX))

    def close(self) -> None:
        self._image.close()
        if self._rgb is not None:
            self._rgb.close()
        self._pixels = None


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
