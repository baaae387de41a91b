"""Arrivals under ``incoming/``: list, screen, and move originals — never lose one.

Moves are copy-then-delete, and the delete happens only if the object still has the ETag
that was claimed: a new version uploaded under the same key meanwhile is left alone (it is
a new arrival of its own).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tilescope.readers.sniff import SNIFF_BYTES, describe_head, sniff_format

DEFAULT_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif")
INCOMING, PROCESSED, QUARANTINE = "incoming/", "processed/", "quarantine/"


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


def list_arrivals(client: Any, bucket: str, prefix: str = INCOMING) -> list[Arrival]:
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


def screen(client: Any, arrival: Arrival,
           suffixes: tuple[str, ...] = DEFAULT_SUFFIXES) -> str | None:
    """Why this object cannot be an image we process, or ``None`` if it may be one.

    Cheap checks only (size, name, the first bytes by a ranged GET); decoding problems are
    found later by the pipeline's preprocess.
    """
    if arrival.size == 0:
        return "empty object (0 bytes)"
    if not arrival.key.lower().endswith(tuple(s.lower() for s in suffixes)):
        return f"not an image suffix (accepted: {', '.join(suffixes)})"
    head = client.get_object(Bucket=arrival.bucket, Key=arrival.key,
                             Range=f"bytes=0-{SNIFF_BYTES - 1}")["Body"].read()
    if sniff_format(head) is None:
        return f"not an image: content starts with {describe_head(head)}"
    return None


def destination(key: str, folder: str) -> str:
    """``incoming/a/b.jpg`` → ``<folder>a/b.jpg`` (keys outside incoming/ keep their path)."""
    rest = key[len(INCOMING):] if key.startswith(INCOMING) else key
    return f"{folder}{rest}"


def _delete_if_unchanged(client: Any, bucket: str, key: str, etag: str) -> bool:
    """Delete ``key`` only if it is still the version with ``etag``; True if deleted."""
    try:
        current = str(client.head_object(Bucket=bucket, Key=key)["ETag"]).strip('"')
    except Exception:  # already gone (a concurrent mover finished first)
        return False
    if current != etag.strip('"'):
        return False
    client.delete_object(Bucket=bucket, Key=key)
    return True


def _copy_version(client: Any, bucket: str, key: str, etag: str, target: str) -> bool:
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


def move_to_processed(client: Any, bucket: str, key: str, etag: str) -> str | None:
    """Move a processed original to ``processed/`` (copy, then delete); the new key, or
    ``None`` if the object was replaced by a newer version meanwhile (left in place)."""
    target = destination(key, PROCESSED)
    if not _copy_version(client, bucket, key, etag, target):
        return None
    _delete_if_unchanged(client, bucket, key, etag)
    return target


def quarantine(client: Any, bucket: str, key: str, etag: str, *, reason: str,
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
    client.put_object(Bucket=bucket, Key=f"{target}.error.json",
                      Body=json.dumps(record, indent=1).encode(),
                      ContentType="application/json")
    _delete_if_unchanged(client, bucket, key, etag)
    return target
