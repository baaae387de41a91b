"""The store step's archival copy: encode the image, upload it, read it back and decode it.

The copy is made from the pixels the run staged (``Prepared.source_uri``: the decoded, oriented
8-bit RGB image as a tiled TIFF, or a tiled input itself), read tile by tile over ranged GETs.
It goes beside the results (``results/<image-id>/<digest>/archive.<ext>``), or with
``keep_original=replace`` where the original would be kept (``processed/<name>.<ext>``).

Verification reads the object back from S3: its bytes must be those uploaded, and they must
decode — a raster copy whole, to its size; a TIFF tile band by tile band, equal to the source
pixels (it is lossless), so memory stays bounded. Only then may the keep policy touch the
original (:func:`tilescope.intake.keep.settle_original`).

With an anonymized run the copy is encoded from the anonymized pixels (the staged source
read through the transform's regions), never from the lossy anonymized file, and verified
against them: the original is then replaced by, or deleted for, a copy without the hidden
detail.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import nullcontext
from typing import Any

import numpy as np

from tilescope.anonymize import replayed_reader
from tilescope.archival import ArchiveOutcome, ArchivePolicy, archive_reader, decode
from tilescope.errors import ConfigError, StorageError
from tilescope.intake.keep import replacement_key
from tilescope.layout import ARTIFACTS, ResultsLayout, open_source
from tilescope.readers.base import ImageReader
from tilescope.results import ImageInfo
from tilescope.settings import TMP
from tilescope.slicing import Box
from tilescope.storage import S3Client, exists, parse_s3_uri, read_bytes

#: the archival copy's name beside the results
ARCHIVE_NAME = "archive"


def archive_uri(image: ImageInfo, layout: ResultsLayout, policy: ArchivePolicy) -> str:
    """Where the archival copy of ``image`` goes under ``policy`` (module docstring)."""
    if policy.keep_original != "replace":
        return layout.uri(f"{ARCHIVE_NAME}{policy.extension}")
    loc = parse_s3_uri(image.uri)
    key = replacement_key(loc.key, policy.extension)
    if key == loc.key:
        raise ConfigError(f"keep_original=replace: the archival copy would overwrite the "
                          f"original {image.uri} itself")
    return f"s3://{loc.bucket}/{key}"


def refuse_lossy_stand_in(image: ImageInfo, policy: ArchivePolicy) -> None:
    """A copy of the 8-bit RGB the model saw cannot stand in for a scene's bands or
    georeference: ``replace``/``delete`` are refused for those (the original stays)."""
    if policy.keep_original == "keep":
        return
    if image.pixels is not None or image.georeference is not None:
        raise ConfigError(f"keep_original={policy.keep_original}: {image.uri} is a scene "
                          "(chosen bands, stretched or georeferenced pixels); its archival "
                          "copy holds only the 8-bit RGB the model saw — keep the original")


def earlier_record(source_uri: str, image: ImageInfo, layout: ResultsLayout, field: str,
                   client: S3Client) -> dict[str, Any] | None:
    """On a retry of ``store`` after the original was removed — when the original was also
    the source (a tiled TIFF read in place) it cannot be read again — what an earlier attempt
    stored and verified (the original goes only after that): ``result.json``'s ``field``
    (``archive``, ``anonymized``) whose copy still exists, else ``None``."""
    if source_uri != image.uri or exists(source_uri, client):
        return None
    result_uri = layout.uri(ARTIFACTS["result"])
    if not exists(result_uri, client):
        return None
    facts = json.loads(read_bytes(result_uri, client)).get(field)
    if facts and exists(str(facts.get("uri", "")), client):
        return dict(facts)
    return None


def earlier_archive(source_uri: str, image: ImageInfo, layout: ResultsLayout,
                    client: S3Client) -> ArchiveOutcome | None:
    """The archival copy an earlier attempt stored, when the source is gone
    (:func:`earlier_record`)."""
    facts = earlier_record(source_uri, image, layout, "archive", client)
    return ArchiveOutcome.from_dict(facts) if facts else None


def store_archive(source_uri: str, image: ImageInfo, layout: ResultsLayout,
                  policy: ArchivePolicy, client: S3Client,
                  anonymized: dict[str, Any] | None = None,
                  reader: ImageReader | None = None) -> ArchiveOutcome:
    """Encode, upload and verify the archival copy → its outcome (with ``uri``). With
    ``anonymized`` (the transform's record) the copy is of the anonymized pixels: the staged
    source replayed through the same regions, so ``replace``/``delete`` keep nothing of what
    was hidden. ``reader``: the source already open (a batch's small photo, read again from
    the original and checked against its SHA-256 — it has no staged TIFF); else
    ``source_uri`` is opened (a staged or in-place tiled TIFF)."""
    refuse_lossy_stand_in(image, policy)
    earlier = earlier_archive(source_uri, image, layout, client)
    if earlier is not None:
        return earlier
    uri = archive_uri(image, layout, policy)
    loc = parse_s3_uri(uri)
    opened = nullcontext(reader) if reader is not None else open_source(source_uri, client)
    with opened as source, tempfile.TemporaryDirectory(dir=TMP.get()) as folder:
        replayed = replayed_reader(source, anonymized) if anonymized else None
        reader = replayed or source
        path = os.path.join(folder, f"{ARCHIVE_NAME}{policy.extension}")
        outcome = archive_reader(reader, policy, path, image.bytes,
                                 replayed.regions if replayed else ())
        with open(path, "rb") as stream:
            digest = hashlib.file_digest(stream, "sha256").hexdigest()
        client.upload_file(path, loc.bucket, loc.key,
                           ExtraArgs={"ContentType": policy.media_type})
        verify_archive(uri, outcome, digest, reader, client)
    return ArchiveOutcome.from_dict({**outcome.to_dict(), "uri": uri})


def verify_archive(uri: str, outcome: ArchiveOutcome, sha256: str, source: ImageReader,
                   client: S3Client) -> None:
    """Read the stored copy back and decode it; :class:`StorageError` if it is not the copy
    that was written or does not decode to its size (a TIFF: to the source's pixels)."""
    if outcome.format != "tiff":
        data = read_bytes(uri, client)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise StorageError(f"the archival copy read back from {uri} is not what was "
                               "written")
        try:
            pixels = decode(data, outcome.format)
        except Exception as exc:
            raise StorageError(f"the archival copy {uri} does not decode: {exc}") from exc
        if pixels.shape[:2] != (outcome.height, outcome.width):
            raise StorageError(f"the archival copy {uri} decodes to {pixels.shape[:2]}, "
                               f"not {(outcome.height, outcome.width)}")
        return
    from tilescope.storage import sha256_hex

    if sha256_hex(uri, client) != sha256:
        raise StorageError(f"the archival copy read back from {uri} is not what was written")
    same_size = (outcome.width, outcome.height) == (source.width, source.height)
    try:
        with open_source(uri, client) as copy:
            if (copy.width, copy.height) != (outcome.width, outcome.height):
                raise StorageError(f"the archival copy {uri} is {copy.width}×{copy.height}")
            for y in range(0, copy.height, 512):
                box = Box(0, y, copy.width, min(copy.height, y + 512))
                band = copy.read(box)
                if same_size and not np.array_equal(band, source.read(box)):
                    raise StorageError(f"the archival copy {uri} differs from the source "
                                       f"in rows {y}–{box.y2}")
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"the archival copy {uri} does not decode: {exc}") from exc
