"""Image readers: validate an image and serve the pixels of any box of it.

:func:`open_image` picks the reader from the bytes' signature (never from the name).
"""

from __future__ import annotations

import hashlib
import io

from tilescope.readers.base import DEFAULT_MAX_PIXELS, ImageHeader, ImageReader
from tilescope.readers.pillow import PillowReader
from tilescope.readers.sniff import sniff_format
from tilescope.readers.tiff import TiffReader
from tilescope.results import ImageInfo
from tilescope.storage import S3Client, read_bytes


def reader_for_bytes(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                     name: str = "image") -> ImageReader:
    """The right reader for an image held in memory."""
    if sniff_format(data[:16]) == "TIFF":
        return TiffReader(io.BytesIO(data), max_pixels=max_pixels, name=name)
    return PillowReader(data, max_pixels=max_pixels, name=name)


def open_image(uri: str, *, client: S3Client | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[ImageReader, ImageInfo]:
    """Read ``uri`` (path or ``s3://``), validate it, and return its reader and identity."""
    data = read_bytes(uri, client=client)
    reader = reader_for_bytes(data, max_pixels=max_pixels, name=uri)
    info = ImageInfo(uri=uri, width=reader.width, height=reader.height,
                     sha256=hashlib.sha256(data).hexdigest(), format=reader.header.format,
                     bytes=len(data))
    return reader, info


def reopen_planned(uri: str, sha256: str, *, client: S3Client | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS, decode: bool = True) -> ImageReader:
    """The reader of an image read again after it was planned (a work unit opening its
    image): :class:`BadImageError` if its bytes changed since (their SHA-256), and — with
    ``decode`` — decoded now, so bad pixels are found here, on whichever thread opens it."""
    from tilescope.errors import BadImageError

    data = read_bytes(uri, client=client)
    now = hashlib.sha256(data).hexdigest()
    if now != sha256:
        raise BadImageError(f"{uri} changed since it was planned (sha256 {sha256[:12]}… "
                            f"now {now[:12]}…): not analysed")
    reader = reader_for_bytes(data, max_pixels=max_pixels, name=uri)
    if decode:
        try:
            reader.validate()
        except BaseException:
            reader.close()
            raise
    return reader


__all__ = ["DEFAULT_MAX_PIXELS", "ImageHeader", "ImageReader", "PillowReader", "TiffReader",
           "open_image", "reader_for_bytes", "reopen_planned"]
