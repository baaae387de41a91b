"""Arrivals under ``incoming/``: list, screen, and move originals — never lose one.

Moves are copy-then-delete, and the delete happens only if the object still has the ETag
that was claimed: a new version uploaded under the same key meanwhile is left alone (it is
a new arrival of its own).
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tilescope.readers.sniff import (
    IMAGE_SUFFIXES,
    SNIFF_BYTES,
    VIDEO_SUFFIXES,
    describe_head,
    sniff_format,
    sniff_video,
)
from tilescope.storage import S3Client

DEFAULT_SUFFIXES = IMAGE_SUFFIXES + VIDEO_SUFFIXES  # videos: sampled frames
INCOMING, PROCESSED, QUARANTINE = "incoming/", "processed/", "quarantine/"
#: S3's limit on a key, in UTF-8 bytes
MAX_KEY_BYTES = 1024
ERROR_SUFFIX = ".error.json"
#: bytes read by the screen's ranged GET: the signature and, for most images, the header
#: that holds the pixel size (JPEG headers after a big EXIF block may lie beyond it)
HEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class Arrival:
    """One object version found under the incoming prefix."""

    bucket: str
    key: str
    etag: str
    size: int

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def list_arrivals(client: S3Client, bucket: str, prefix: str = INCOMING) -> list[Arrival]:
    """Every object under ``prefix`` (all pages), oldest first; "folder" markers skipped."""
    found: list[tuple[Any, Arrival]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("/") and obj["Size"] == 0:
                continue
            found.append((obj.get("LastModified"), Arrival(
                bucket, obj["Key"], str(obj["ETag"]).strip('"'), int(obj["Size"]))))
    found.sort(key=lambda pair: (pair[0] is None, pair[0], pair[1].key))
    return [arrival for _, arrival in found]


@dataclass(frozen=True)
class Screened:
    """What the screen found: why the object is refused (``reason``), else its pixel size
    where the header could be read cheaply (``None`` for videos and unreadable headers)."""

    reason: str | None
    width: int | None = None
    height: int | None = None
    video: bool = False
    #: when the ranged GET brought the whole object (a small photo): its identity as the
    #: pipeline's preprocess would read it (``sha256``, ``bytes``, ``format``, oriented
    #: ``width`` and ``height``), so a batch run can plan it without reading it again
    facts: dict[str, Any] | None = None


def inspect(client: S3Client, arrival: Arrival,
            suffixes: tuple[str, ...] = DEFAULT_SUFFIXES) -> Screened:
    """Screen an arrival (see :func:`screen`) and read its pixel size from the same ranged
    GET of the first :data:`HEAD_BYTES` (a TIFF whose first IFD lies further in costs one
    more ranged GET)."""
    if arrival.size == 0:
        return Screened("empty object (0 bytes)")
    if not arrival.key.lower().endswith(tuple(s.lower() for s in suffixes)):
        return Screened(f"not an image suffix (accepted: {', '.join(suffixes)})")
    head = _read_range(client, arrival, 0, HEAD_BYTES)
    kind = sniff_format(head[:SNIFF_BYTES])
    if kind is None:
        if sniff_video(head[:SNIFF_BYTES]) is not None:
            return Screened(None, video=True)
        return Screened(f"not an image: content starts with {describe_head(head)}")
    size = image_size(head)
    if size is None and kind == "TIFF":
        size = _tiff_size(client, arrival, head)
    facts = whole_facts(head) if kind != "TIFF" and len(head) == arrival.size else None
    width, height = size or (None, None)
    return Screened(None, width, height, facts=facts)


def whole_facts(data: bytes) -> dict[str, Any] | None:
    """``sha256``, ``bytes``, ``format`` and the oriented ``width``/``height`` of a whole
    image in memory, read from its header exactly as the pipeline's reader reads it; ``None``
    if the header cannot be read (the run then reads the object itself and says why)."""
    from tilescope.errors import TilescopeError
    from tilescope.readers import reader_for_bytes

    try:
        with reader_for_bytes(data) as reader:
            width, height, fmt = reader.width, reader.height, reader.header.format
    except TilescopeError:
        return None
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "format": fmt,
            "width": int(width), "height": int(height)}


def screen(client: S3Client, arrival: Arrival,
           suffixes: tuple[str, ...] = DEFAULT_SUFFIXES) -> str | None:
    """Why this object cannot be an image we process, or ``None`` if it may be one.

    Cheap checks only (size, name, the first bytes by a ranged GET); decoding problems are
    found later by the pipeline's preprocess.
    """
    return inspect(client, arrival, suffixes).reason


def _read_range(client: S3Client, arrival: Arrival, start: int, length: int) -> bytes:
    """Up to ``length`` bytes from ``start`` (fewer at the end of the object; the range is
    not clipped to ``arrival.size``, which a notification or a claim may have wrong)."""
    return client.get_object(Bucket=arrival.bucket, Key=arrival.key,
                             Range=f"bytes={start}-{start + length - 1}")["Body"].read()


def image_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from an image's first bytes (Pillow reads only the header), or
    ``None`` when the header is not all there or not understood."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(head)) as image:
                width, height = image.size
    except Exception:  # truncated header, decompression-bomb guard, unknown format
        return None
    return (int(width), int(height)) if width > 0 and height > 0 else None


def _tiff_size(client: S3Client, arrival: Arrival, head: bytes) -> tuple[int, int] | None:
    """Width and height from the first IFD of a TIFF (classic or BigTIFF), fetched with one
    more ranged GET when it lies past the head (writers often put it at the end)."""
    try:
        order = "<" if head[:2] == b"II" else ">"
        big = struct.unpack(order + "H", head[2:4])[0] == 43
        offset = struct.unpack(order + ("Q" if big else "I"), head[8:16] if big else head[4:8])[0]
        if offset <= 0 or offset >= arrival.size:
            return None
        count_size, entry_size = (8, 20) if big else (2, 12)
        block = head[offset:offset + HEAD_BYTES] if offset + 64 <= len(head) else None
        if block is None:
            block = _read_range(client, arrival, offset, 4096)
        count = struct.unpack(order + ("Q" if big else "H"), block[:count_size])[0]
        tags: dict[int, int] = {}
        for i in range(min(count, (len(block) - count_size) // entry_size)):
            entry = block[count_size + i * entry_size: count_size + (i + 1) * entry_size]
            tag, kind = struct.unpack(order + "HH", entry[:4])
            if tag in (256, 257):
                value = entry[12:] if big else entry[8:]
                fmt = {3: "H", 4: "I", 16: "Q"}.get(kind)
                if fmt:
                    tags[tag] = struct.unpack(order + fmt, value[:struct.calcsize(fmt)])[0]
        if tags.get(256, 0) > 0 and tags.get(257, 0) > 0:
            return tags[256], tags[257]
    except (struct.error, IndexError, ValueError):
        return None
    except Exception as exc:  # the extra GET failed: estimate from the byte size instead
        if _code(exc):
            return None
        raise
    return None


def fit_key(key: str, suffix: str = "") -> str:
    """``key + suffix``, or — past S3's 1,024-byte limit — ``key`` cut short and ended by a
    hash of all of it (distinct keys stay distinct), then ``suffix``.

    Moving ``incoming/<name>`` to ``quarantine/<name>`` adds two bytes, its error record
    eleven more: a name near the limit must not make the move or the record impossible.
    """
    if len((key + suffix).encode()) <= MAX_KEY_BYTES:
        return key + suffix
    tag = "~" + hashlib.sha256(key.encode()).hexdigest()[:16]
    budget = MAX_KEY_BYTES - len((tag + suffix).encode())
    return key.encode()[:budget].decode("utf-8", "ignore") + tag + suffix


def destination(key: str, folder: str) -> str:
    """``incoming/a/b.jpg`` → ``<folder>a/b.jpg`` (keys outside incoming/ keep their path),
    shortened with :func:`fit_key` if it would exceed S3's key limit."""
    rest = key[len(INCOMING):] if key.startswith(INCOMING) else key
    stem, dot, extension = rest.rpartition(".")
    if dot and stem and len(extension) <= 8 and "/" not in extension:
        return fit_key(f"{folder}{stem}", f".{extension}")
    return fit_key(f"{folder}{rest}")


def error_record_key(quarantined_key: str) -> str:
    """The key of the JSON record beside a quarantined object."""
    return fit_key(quarantined_key, ERROR_SUFFIX)


def _delete_if_unchanged(client: S3Client, bucket: str, key: str, etag: str) -> bool:
    """Delete ``key`` only if it is still the version with ``etag``; True if deleted."""
    try:
        current = str(client.head_object(Bucket=bucket, Key=key)["ETag"]).strip('"')
    except Exception:  # already gone (a concurrent mover finished first)
        return False
    if current != etag.strip('"'):
        return False
    client.delete_object(Bucket=bucket, Key=key)
    return True


def _copy_version(client: S3Client, bucket: str, key: str, etag: str, target: str) -> bool:
    """Copy ``key`` to ``target`` only while it is still the version with ``etag``.

    One server-side CopyObject with ``CopySourceIfMatch``; objects over its 5 GB limit fall
    back to a managed multipart copy with the same precondition.
    """
    source = {"Bucket": bucket, "Key": key}
    etag = etag.strip('"')
    try:
        try:
            copied = client.copy_object(CopySource=source, Bucket=bucket, Key=target,
                                        CopySourceIfMatch=etag)
            copied_etag = str(copied.get("CopyObjectResult", {}).get("ETag", "")).strip('"')
            if "-" not in etag and copied_etag and copied_etag != etag:
                # A server that ignores the precondition copied a newer version: undo.
                client.delete_object(Bucket=bucket, Key=target)
                return False
        except Exception as exc:
            if _code(exc) not in ("EntityTooLarge", "InvalidRequest"):
                raise
            client.copy(source, bucket, target, ExtraArgs={"CopySourceIfMatch": etag})
    except Exception as exc:
        if _code(exc) in ("PreconditionFailed", "412", "NoSuchKey", "404"):
            return False  # replaced or gone meanwhile: that version is not ours to move
        raise
    return True


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def move_to_processed(client: S3Client, bucket: str, key: str, etag: str) -> str | None:
    """Move a processed original to ``processed/`` (copy, then delete); the new key, or
    ``None`` if the object was replaced by a newer version meanwhile (left in place)."""
    target = destination(key, PROCESSED)
    if not _copy_version(client, bucket, key, etag, target):
        return None
    _delete_if_unchanged(client, bucket, key, etag)
    return target


def quarantine(client: S3Client, bucket: str, key: str, etag: str, *, reason: str,
               error_class: str, run_id: str | None) -> str | None:
    """Move a bad original to ``quarantine/`` with ``<key>.error.json`` beside it.

    The error record is written before the original is deleted, so at every moment either
    the original is still in ``incoming/`` or its copy and the reason are in ``quarantine/``.
    """
    target = destination(key, QUARANTINE)
    if not _copy_version(client, bucket, key, etag, target):
        return None
    record = {"key": key, "quarantined_as": target, "etag": etag.strip('"'), "reason": reason,
              "error_class": error_class, "run_id": run_id,
              "time": datetime.now(UTC).isoformat()}
    client.put_object(Bucket=bucket, Key=error_record_key(target),
                      Body=json.dumps(record, indent=1).encode(),
                      ContentType="application/json")
    _delete_if_unchanged(client, bucket, key, etag)
    return target
