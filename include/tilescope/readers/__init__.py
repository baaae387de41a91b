"""Image readers: validate an image and serve the pixels of any box of it.

:func:`open_image` picks the reader from the bytes' signature (never from the name).
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

from tilescope.readers.base import DEFAULT_MAX_PIXELS, ImageHeader, ImageReader
from tilescope.readers.pillow import PillowReader
from tilescope.readers.sniff import sniff_format
from tilescope.readers.tiff import TiffReader
from tilescope.results import ImageInfo
from tilescope.storage import read_bytes


def reader_for_bytes(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                     name: str = "image") -> ImageReader:
    """The right reader for an image held in memory."""
    if sniff_format(data[:16]) == "TIFF":
        return TiffReader(io.BytesIO(data), max_pixels=max_pixels, name=name)
    return PillowReader(data, max_pixels=max_pixels, name=name)


def open_image(uri: str, *, client: Any = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[ImageReader, ImageInfo]:
    """Read ``uri`` (path or ``s3://``), validate it, and return its reader and identity."""
    data = read_bytes(uri, client=client)
    reader = reader_for_bytes(data, max_pixels=max_pixels, name=uri)
    info = ImageInfo(uri=uri, width=reader.width, height=reader.height,
                     sha256=hashlib.sha256(data).hexdigest(), format=reader.header.format,
                     bytes=len(data))
    return reader, info


__all__ = ["DEFAULT_MAX_PIXELS", "ImageHeader", "ImageReader", "PillowReader", "TiffReader",
           "open_image", "reader_for_bytes"]
