"""GDAL's per-dataset mask of a GeoTIFF — inside the file, or beside it as ``<image>.msk``.

GDAL keeps a scene's validity mask (0: no data, anything else: data) either as extra IFDs
of the TIFF itself (NewSubfileType "mask": ``GDAL_TIFF_INTERNAL_MASK=YES``, the COG driver)
or, when told not to (``GDAL_TIFF_INTERNAL_MASK=NO``, or a read-only file), as a separate
TIFF named ``<image>.msk`` whose IFDs mirror the image's levels (full resolution first,
then one per overview). :class:`~tilescope.readers.tiff.TiffReader` reads either the same
way, tile by tile: for skipping slices that hold no data and for leaving hidden pixels out
of the 8-bit stretch.

The sidecar is another file or S3 object, so looking for it costs an exists check (a HEAD
over S3). The reader looks only when the image itself says nothing about its validity (no
nodata value, no alpha band, no internal mask) and only once per opened image; a sidecar of
another size than the image is a bad input (GDAL fails reading it too).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tilescope.errors import BadImageError
from tilescope.storage import (
    S3Client,
    StorageError,
    default_s3_client,
    is_s3_uri,
    open_in_place,
    parse_s3_uri,
)

log = logging.getLogger(__name__)

#: GDAL's name for an image's external mask: the image's own name plus this
SIDECAR_SUFFIX = ".msk"
#: a sidecar's HEAD answers that mean "there is none" (403: a bucket policy without
#: s3:ListBucket answers a missing key with AccessDenied, not NoSuchKey)
_ABSENT_CODES = ("404", "NoSuchKey", "NotFound", "NoSuchBucket", "403", "AccessDenied",
                 "Forbidden")

#: opens an image's mask sidecar when called (``None``: it has none)
MaskOpener = Callable[[], "IO[bytes] | None"]


@dataclass
class GdalMask:
    """A scene's GDAL mask: its pages by level, full resolution first (``source``:
    ``"internal"`` or ``"sidecar"``; ``uri`` names the sidecar); closes a sidecar's file."""

    levels: list[Any]
    source: str
    uri: str | None = None
    _files: tuple[Any, ...] = field(default=(), repr=False)

    @property
    def full(self) -> Any:
        """The full-resolution mask page."""
        return self.levels[0]

    def level(self, page: Any) -> Any | None:
        """The mask page of the image level ``page`` (the same width and height), or
        ``None`` when the mask has no such level (no overview masks)."""
        size = (int(page.imagewidth), int(page.imagelength))
        return next((m for m in self.levels
                     if (int(m.imagewidth), int(m.imagelength)) == size), None)

    def close(self) -> None:
        """Close a sidecar's TIFF and its file (tifffile leaves a handed-in file open)."""
        for file in self._files:
            file.close()


def internal_mask(tiff: Any, width: int, height: int) -> GdalMask | None:
    """GDAL's internal per-dataset mask of a ``width`` × ``height`` image open as
    ``tiff`` (tifffile): its pages with NewSubfileType "mask", the full-resolution one
    first; ``None`` when it has none of the image's size."""
    try:
        pages = [p for p in list(tiff.pages)[1:] if int(getattr(p, "subfiletype", 0)) & 4]
    except Exception:  # an odd layout: then no mask is known
        return None
    full = [p for p in pages if (int(p.imagewidth), int(p.imagelength)) == (width, height)]
    if not full:
        return None
    return GdalMask([full[0], *[p for p in pages if p is not full[0]]], "internal")


def sidecar_opener(uri: str, client: S3Client | None = None) -> MaskOpener:
    """What a reader of ``uri`` calls to open its ``.msk`` sidecar, only when it needs one
    (:func:`open_sidecar`)."""
    return lambda: open_sidecar(uri, client)


def open_sidecar(uri: str, client: S3Client | None = None) -> IO[bytes] | None:
    """``<uri>.msk`` opened for ranged reads (a local file, or an S3 object read by ranged
    GETs), or ``None`` when there is none: one exists check (a HEAD over S3)."""
    mask_uri = uri + SIDECAR_SUFFIX
    if not is_s3_uri(uri):
        path = Path(mask_uri)
        return path.open("rb") if path.is_file() else None
    loc = parse_s3_uri(mask_uri)
    client = client or default_s3_client()
    try:
        size = int(client.head_object(Bucket=loc.bucket, Key=loc.key)["ContentLength"])
    except Exception as exc:  # botocore raises ClientError subclasses per code
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        if code in _ABSENT_CODES:
            return None
        raise StorageError(f"looking for the mask sidecar {mask_uri} failed: {exc}") from exc
    return open_in_place(mask_uri, client, size=size)


def read_sidecar(handle: IO[bytes], name: str, width: int, height: int) -> GdalMask:
    """The sidecar open as ``handle`` (of the image ``name``, ``width`` × ``height``) as a
    :class:`GdalMask`: its IFDs are the levels. A sidecar that is no TIFF, or whose first
    level is another size than the image, is :class:`BadImageError` — it is a mask of some
    other image, and analysing with it (or silently without it) would stretch and skip by
    the wrong pixels."""
    import tifffile

    mask_name = name + SIDECAR_SUFFIX
    try:
        tiff = tifffile.TiffFile(handle)
        levels: list[Any] = list(tiff.pages)
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error...
        handle.close()
        raise BadImageError(f"{name}: its mask sidecar {mask_name} is not a readable TIFF: "
                            f"{exc}; not analysed") from exc
    first = (int(levels[0].imagewidth), int(levels[0].imagelength))
    if first != (width, height):
        tiff.close()
        handle.close()
        raise BadImageError(f"{name}: its mask sidecar {mask_name} is {first[0]}×{first[1]}, "
                            f"the image {width}×{height} (a mask of another image: GDAL "
                            "cannot read it either); remove or replace it; not analysed")
    log.info("%s: using its external mask %s (%d level(s))", name, mask_name, len(levels))
    return GdalMask(levels, "sidecar", mask_name, (tiff, handle))
