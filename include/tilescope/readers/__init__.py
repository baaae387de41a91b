"""Image readers: validate an image and serve the pixels of any box of it.

:func:`open_image` picks the reader from the bytes' signature (never from the name); a tiled
TIFF is read where it lies, tile by tile (:func:`open_input`), anything else whole.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence

from tilescope.readers.base import DEFAULT_MAX_PIXELS, ImageHeader, ImageReader
from tilescope.readers.masks import MaskOpener, sidecar_opener
from tilescope.readers.pillow import PillowReader
from tilescope.readers.sniff import SNIFF_BYTES, sniff_format
from tilescope.readers.tiff import TiffReader
from tilescope.results import ImageInfo
from tilescope.storage import (
    S3Client,
    default_s3_client,
    is_s3_uri,
    open_in_place,
    read_bytes,
    read_start,
    sha256_hex,
)

#: what opening an image reads first (one ranged GET over S3): a small image comes back whole
FIRST_READ_BYTES = 1 << 20


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


def open_input(uri: str, head: bytes, *, size: int, client: S3Client | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS, bands: Sequence[int] | None = None,
               magnification: float | None = None) -> tuple[ImageReader, Callable[[], str]]:
    """A reader for the image at ``uri`` (``head``: its first bytes, ``size``: all of them)
    and a function giving its SHA-256, to call once the plan has passed its budget checks,
    so an over-budget image is refused before it is read.

    A *tiled* TIFF — a whole-slide scan, a COG, any tiled TIFF — is read where it lies (a
    local file through its handle, an object by ranged GETs): tifffile parses only its
    header here, each read fetches and decodes only the tiles it touches and the hash is a
    stream, so memory grows with the tiles in flight, not with the file. Anything else is
    read whole and decoded once — from ``head`` when that is already all of it — its pixel
    limit checked on the header before the decode. A GeoTIFF's ``<uri>.msk`` mask sidecar
    is read beside it when it has one (:mod:`tilescope.readers.masks`)."""
    mask_sidecar = sidecar_opener(uri, client)
    if sniff_format(head[:SNIFF_BYTES]) == "TIFF":
        handle = open_in_place(uri, client, size=size)
        try:
            reader = TiffReader(handle, max_pixels=max_pixels, name=uri, bands=bands,
                                magnification=magnification, mask_sidecar=mask_sidecar)
        except BaseException:
            handle.close()
            raise
        if reader.header.tiled:
            return reader, lambda: sha256_hex(uri, client)
        reader.close()  # strips: decoded whole anyway, from one read
    data = head if len(head) >= size else read_bytes(uri, client=client)
    digest = hashlib.sha256(data).hexdigest()
    return (reader_for_bytes(data, max_pixels=max_pixels, name=uri, bands=bands,
                             magnification=magnification, mask_sidecar=mask_sidecar),
            lambda: digest)


def _client_for(uri: str, client: S3Client | None) -> S3Client | None:
    """One client for every request an ``s3://`` image's opening makes."""
    return client or (default_s3_client() if is_s3_uri(uri) else None)


def open_image(uri: str, *, client: S3Client | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
               bands: Sequence[int] | None = None,
               magnification: float | None = None) -> tuple[ImageReader, ImageInfo]:
    """Open ``uri`` (path or ``s3://``; a tiled TIFF in place, see :func:`open_input`),
    validate its header, and return its reader and identity (a GeoTIFF's ``<uri>.msk``
    mask sidecar read beside it when it has one)."""
    client = _client_for(uri, client)
    # One read (one ranged GET over S3): a small image comes back whole, a TIFF's signature
    # says to read it in place.
    head, size = read_start(uri, FIRST_READ_BYTES, client)
    reader, sha256 = open_input(uri, head, size=size, client=client, max_pixels=max_pixels,
                                bands=bands, magnification=magnification)
    try:
        return reader, image_info(reader, uri, sha256(), size)
    except BaseException:
        reader.close()
        raise


def reopen_planned(uri: str, sha256: str, *, client: S3Client | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS, decode: bool = True,
                   bands: Sequence[int] | None = None,
                   magnification: float | None = None) -> ImageReader:
    """The reader of an image read again after it was planned (a work unit opening its
    image): :class:`BadImageError` if its bytes changed since (their SHA-256), and — with
    ``decode`` — decoded now, so bad pixels are found here, on whichever thread opens it."""
    from tilescope.errors import BadImageError

    client = _client_for(uri, client)

    def changed(now: str) -> BadImageError:
        return BadImageError(f"{uri} changed since it was planned (sha256 {sha256[:12]}… "
                             f"now {now[:12]}…): not analysed")

    head, size = read_start(uri, FIRST_READ_BYTES, client)
    try:
        # the same bytes and bands give the same stretch as when it was planned
        reader, digest = open_input(uri, head, size=size, client=client,
                                    max_pixels=max_pixels, bands=bands,
                                    magnification=magnification)
    except BadImageError as exc:  # what no longer parses was replaced, most likely: say so
        now = sha256_hex(uri, client)
        if now != sha256:
            raise changed(now) from exc
        raise
    try:
        now = digest()
        if now != sha256:
            raise changed(now)
        if decode:
            reader.validate()
    except BaseException:
        reader.close()
        raise
    return reader


__all__ = ["DEFAULT_MAX_PIXELS", "ImageHeader", "ImageReader", "PillowReader", "TiffReader",
           "image_info", "open_image", "open_input", "reader_for_bytes", "reopen_planned"]
