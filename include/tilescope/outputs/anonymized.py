"""Writing an anonymized copy (:mod:`tilescope.anonymize`) to a path or an S3 key.

A big image (or any TIFF) is written as a zstd tiled TIFF, tile by tile from the anonymized
reader, so memory stays flat; a small one in its own format (JPEG stays JPEG at high quality,
PNG and WebP lossless) or in the format a path's extension names.
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import Any

from tilescope.anonymize import anonymized_reader, boxes_to_anonymize
from tilescope.errors import ConfigError
from tilescope.layout import write_tiled_tiff
from tilescope.params import InferenceParams
from tilescope.readers.base import ImageReader
from tilescope.results import Result
from tilescope.settings import TMP
from tilescope.storage import S3Client, is_s3_uri, parse_s3_uri, write_bytes

#: above this many pixels the copy is a tiled TIFF whatever the source format (16 MP)
TILED_ABOVE = 4096 * 4096
#: extension → (Pillow format, content type, save options); "tif" is the tiled writer's
FORMATS: dict[str, tuple[str, str, dict]] = {
    "tif": ("TIFF", "image/tiff", {}),
    "png": ("PNG", "image/png", {"compress_level": 1}),
    "jpg": ("JPEG", "image/jpeg", {"quality": 95, "subsampling": 0}),
    "webp": ("WEBP", "image/webp", {"lossless": True}),
}
_EXTENSIONS = {"tiff": "tif", "jpeg": "jpg"}
#: a source format (the reader's header) → the copy's extension when the image is small
_SOURCE_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "MPO": "jpg"}


def copy_extension(source_format: str, width: int, height: int) -> str:
    """The copy's extension: ``tif`` for big images and TIFFs, else the source's format
    (``png`` for formats not written here, e.g. GIF or BMP)."""
    if width * height > TILED_ABOVE or source_format.upper() == "TIFF":
        return "tif"
    return _SOURCE_EXTENSIONS.get(source_format.upper(), "png")


def extension_of(path: str) -> str:
    """The copy format a path asks for by its extension, or :class:`ConfigError`."""
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    ext = _EXTENSIONS.get(ext, ext)
    if ext not in FORMATS:
        raise ConfigError(f"{path}: an anonymized copy is written as "
                          f"{', '.join('.' + e for e in FORMATS)} (from the extension)")
    return ext


def write_anonymized(reader: ImageReader, uri: str, ext: str,
                     client: S3Client | None = None) -> None:
    """Write ``reader``'s pixels (an :class:`~tilescope.anonymize.AnonymizedReader`) to
    ``uri`` (path or ``s3://``) as ``ext``; a TIFF tile by tile, staged on local disk."""
    pillow_format, content_type, options = FORMATS[ext]
    if ext == "tif":
        if not is_s3_uri(uri):
            write_tiled_tiff(reader, uri)
            return
        loc = parse_s3_uri(uri)
        with tempfile.NamedTemporaryFile(suffix=".tif", dir=TMP.get()) as tmp:
            write_tiled_tiff(reader, tmp.name)
            if client is None:
                from tilescope.storage import default_s3_client

                client = default_s3_client()
            client.upload_file(tmp.name, loc.bucket, loc.key,
                               ExtraArgs={"ContentType": content_type})
        return
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(reader.read_all()).save(out, format=pillow_format, **options)
    write_bytes(uri, out.getvalue(), content_type, client)


def anonymize_copy(reader: ImageReader, result: Result, params: InferenceParams, uri: str,
                   ext: str, client: S3Client | None = None) -> dict[str, Any]:
    """Write the anonymized copy of the image ``reader`` reads (full resolution) to ``uri``:
    the boxes of ``params.anonymize``'s classes among ``result``'s detections, and faces
    when asked. Returns the record kept in the result (``Result.anonymized``); its
    ``regions`` (the boxes with their margin) let an archival copy replay the very same
    anonymization (:func:`~tilescope.anonymize.replayed_reader`)."""
    boxes, per_target = boxes_to_anonymize(reader, result.image, result.detections,
                                           result.category_names, params)
    anonymized = anonymized_reader(reader, boxes, params)
    write_anonymized(anonymized, uri, ext, client)
    return {"uri": uri, "format": ext, "mode": params.anonymize_mode,
            "margin": params.anonymize_margin, "boxes": len(anonymized.marks),
            "targets": per_target,
            "regions": [[m.x1, m.y1, m.x2, m.y2] for m in anonymized.marks]}
