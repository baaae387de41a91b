"""The reader interface: an image's header, and the RGB pixels of any box of it.

Readers exist so a task can read *only its region*: a tiled TIFF reader fetches just the tiles
a box touches, while a JPEG/PNG reader decodes once and serves crops as views.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tilescope.settings import MAX_PIXELS
from tilescope.slicing import Box

if TYPE_CHECKING:
    from tilescope.georef import Georeference
    from tilescope.microscopy import SlideScale

#: default decompression-bomb guard: 500 megapixels (≈1.5 GB as RGB)
DEFAULT_MAX_PIXELS: int = MAX_PIXELS.default


@dataclass(frozen=True)
class ImageHeader:
    """What is known without decoding pixels; sizes are in the *displayed* orientation."""

    format: str
    width: int
    height: int
    mode: str
    orientation: int = 1
    frames: int = 1
    tiled: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class ImageReader(ABC):
    """Pixels of one image, in its displayed orientation, as RGB ``uint8``."""

    header: ImageHeader
    #: where the image sits on the Earth (a GeoTIFF's CRS and geotransform); ``None``: pixels
    georeference: Georeference | None = None
    #: a whole-slide scan's pyramid, µm per pixel, objective power and the level read
    #: (its pixels are that level's); ``None``: not a slide
    microscopy: SlideScale | None = None
    #: how raw pixels became RGB ``uint8`` when that was more than a plain conversion
    #: (bands chosen, per-scene stretch), recorded in the result; ``None`` otherwise
    pixels: dict[str, Any] | None = None

    @property
    def rgb_nodata(self) -> float | None:
        """The value an RGB pixel of :meth:`read` has in all three channels exactly where the
        image has no data (a GeoTIFF's nodata, read in place); ``None``: no pixel is known
        to be nodata (plain images, and scenes whose pixels are converted — stretched
        nodata is black, like real black). Slices entirely of it are not sent to the model
        (:func:`tilescope.banding.nodata_slices`)."""
        return None

    def valid_mask(self, box: Box) -> np.ndarray | None:
        """(h, w) ``bool`` of ``box`` (clipped to the image): True where the *source* has
        data — decided on the raw pixels before any stretch (nodata value in every chosen
        band, an alpha band of 0, a GDAL mask of 0). ``None``: every pixel counts as data
        (no nodata, mask or alpha). Slices with no True pixel are not sent to the model
        (:func:`tilescope.banding.nodata_slices`)."""
        return None

    @property
    def width(self) -> int:
        return self.header.width

    @property
    def height(self) -> int:
        return self.header.height

    @abstractmethod
    def read(self, box: Box) -> np.ndarray:
        """The (h, w, 3) RGB pixels of ``box`` (clipped to the image)."""

    def read_all(self) -> np.ndarray:
        """The whole image."""
        return self.read(Box(0, 0, self.width, self.height))

    def validate(self) -> None:  # noqa: B027 - lazily-decoding readers have nothing to do
        """Decode now whatever must be decoded anyway, so corrupt input fails early."""

    @abstractmethod
    def thumbnail(self, max_side: int) -> np.ndarray:
        """The whole image downscaled so its long side is at most ``max_side``."""

    def close(self) -> None:  # noqa: B027 - readers without handles have nothing to close
        """Release file handles."""

    def __enter__(self) -> ImageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def refuse_over_pixel_limit(name: str, width: int, height: int, max_pixels: int,
                            layout: str = "") -> None:
    """:class:`ImageTooLargeError` naming the declared size when ``width × height`` is over
    ``max_pixels`` (the decompression-bomb guard, checked before any pixel is decoded);
    ``layout`` says what is guarded (e.g. `` in strips``)."""
    if width * height > max_pixels:
        from tilescope.errors import ImageTooLargeError

        raise ImageTooLargeError(f"{name} declares {width}×{height} = {width * height:,} "
                                 f"pixels{layout}, over the limit of {max_pixels:,}")


def clip_box(box: Box, width: int, height: int) -> Box:
    """``box`` limited to the image."""
    return Box(max(0, box.x1), max(0, box.y1), min(width, box.x2), min(height, box.y2))


def downscale(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """Area-downscale ``pixels`` so the long side is at most ``max_side`` (never enlarge)."""
    import cv2

    height, width = pixels.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return pixels
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def to_rgb8(pixels: np.ndarray) -> np.ndarray:
    """Any grey/RGB/RGBA array of 8 or 16 bits (or float) as contiguous RGB ``uint8``."""
    if pixels.dtype != np.uint8:
        if pixels.dtype == np.uint16:
            pixels = (pixels >> 8).astype(np.uint8)
        elif np.issubdtype(pixels.dtype, np.floating):
            lo, hi = float(np.nanmin(pixels)), float(np.nanmax(pixels))
            scale = 255.0 / (hi - lo) if hi > lo else 0.0
            pixels = np.nan_to_num((pixels - lo) * scale).astype(np.uint8)
        else:
            hi = int(pixels.max()) if pixels.size else 0
            shift = max(0, hi.bit_length() - 8)
            pixels = (pixels >> shift).astype(np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    channels = pixels.shape[2]
    if channels == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    elif channels == 2:  # grey + alpha
        pixels = np.repeat(pixels[:, :, :1], 3, axis=2)
    elif channels > 3:
        pixels = pixels[:, :, :3]
    return np.ascontiguousarray(pixels)
