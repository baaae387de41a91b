"""Image readers: validate an image and serve the pixels of any box of it.

:func:`open_image` picks the reader from the bytes' signature (never from the name).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence

from tilescope.readers.base import DEFAULT_MAX_PIXELS, ImageHeader, ImageReader
from tilescope.readers.masks import MaskOpener, sidecar_opener
from tilescope.readers.pillow import PillowReader
from tilescope.readers.sniff import sniff_format
from tilescope.readers.tiff import TiffReader
from tilescope.results import ImageInfo
from tilescope.storage import S3Client, read_bytes


def reader_for_bytes(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                     name: str = "image", bands: Sequence[int] | None = None,
                     magnification: float | None = None,
                     mask_sidecar: MaskOpener | None = None) -> ImageReader:
    """The right reader for an image held in memory (``bands``: a TIFF's bands to show;
    ``magnification``: a whole-slide scan's pyramid level to read; ``mask_sidecar``: opens
    a GeoTIFF's ``.msk`` mask, :mod:`tilescope.readers.masks`)."""
    if sniff_format(data[:16]) == "TIFF":
        return TiffReader(io.BytesIO(data), max_pixels=max_pixels, name=name, bands=bands,
                          magnification=magnification, mask_sidecar=mask_sidecar)
    if magnification:
        from tilescope.microscopy import not_a_slide

        raise not_a_slide(name, magnification)
    return PillowReader(data, max_pixels=max_pixels, name=name)


def image_info(reader: ImageReader, uri: str, sha256: str, size: int) -> ImageInfo:
    """The identity of the image ``reader`` reads: size, hash, and its georeference and
    pixel conversion, or its slide scale, when it has them. A slide read at a reduced level
    is still ``width × height`` of its level 0: the result's boxes are in level-0 pixels."""
    width, height = (reader.microscopy.levels[0] if reader.microscopy
                     else (reader.width, reader.height))
    return ImageInfo(uri=uri, width=width, height=height, sha256=sha256,
                     format=reader.header.format, bytes=size,
                     georeference=reader.georeference, pixels=reader.pixels,
                     microscopy=reader.microscopy)


def open_image(uri: str, *, client: S3Client | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
               bands: Sequence[int] | None = None,
               magnification: float | None = None) -> tuple[ImageReader, ImageInfo]:
    """Read ``uri`` (path or ``s3://``), validate it, and return its reader and identity
    (a GeoTIFF's ``<uri>.msk`` mask sidecar read beside it when it has one)."""
    data = read_bytes(uri, client=client)
    reader = reader_for_bytes(data, max_pixels=max_pixels, name=uri, bands=bands,
                              magnification=magnification,
                              mask_sidecar=sidecar_opener(uri, client))
    return reader, image_info(reader, uri, hashlib.sha256(data).hexdigest(), len(data))


def reopen_planned(uri: str, sha256: str, *, client: S3Client | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS, decode: bool = True,
                   bands: Sequence[int] | None = None,
                   magnification: float | None = None) -> ImageReader:
    """The reader of an image read again after it was planned (a work unit opening its
    image): :class:`BadImageError` if its bytes changed since (their SHA-256), and — with
    ``decode`` — decoded now, so bad pixels are found here, on whichever thread opens it."""
    from tilescope.errors import BadImageError

    data = read_bytes(uri, client=client)
    now = hashlib.sha256(data).hexdigest()
    if now != sha256:
        raise BadImageError(f"{uri} changed since it was planned (sha256 {sha256[:12]}… "
                            f"now {now[:12]}…): not analysed")
    # the same bytes and bands give the same stretch as when it was planned
    reader = reader_for_bytes(data, max_pixels=max_pixels, name=uri, bands=bands,
                              magnification=magnification,
                              mask_sidecar=sidecar_opener(uri, client))
    if decode:
        try:
            reader.validate()
        except BaseException:
            reader.close()
            raise
    return reader


__all__ = ["DEFAULT_MAX_PIXELS", "ImageHeader", "ImageReader", "PillowReader", "TiffReader",
           "image_info", "open_image", "reader_for_bytes", "reopen_planned"]
