"""What becomes of an original once its archival copy is stored: the keep policy.

``keep`` (the default) leaves the original to the usual path — moved to ``processed/`` when
the run settles a claim, else left where it is. ``replace`` puts the archival copy where the
original would be kept (``processed/<name>.<ext>``) and removes the original; ``delete``
removes the original and keeps only the copy beside the results.

Never is anything deleted before its replacement is stored and read back (the caller, the
store step, verifies the copy first: :mod:`tilescope.tasks.archive`), and the original is
deleted only while it is still the very bytes that were analysed: its SHA-256 is checked
against the result's and the delete is conditional on the ETag seen then (a new version
uploaded meanwhile is a new arrival and is left alone).
"""

from __future__ import annotations

from tilescope.intake.arrivals import PROCESSED, _delete_if_unchanged, destination
from tilescope.storage import S3Client, parse_s3_uri, sha256_hex

KEPT, REMOVED, CHANGED, GONE = "kept", "removed", "changed meanwhile: left", "already gone"


def replacement_key(original_key: str, extension: str) -> str:
    """Where ``replace`` puts the archival copy: the original's ``processed/`` key with the
    copy's extension (``incoming/a/b.png`` → ``processed/a/b.webp``)."""
    kept = destination(original_key, PROCESSED)
    stem, dot, suffix = kept.rpartition(".")
    base = stem if dot and "/" not in suffix else kept
    return f"{base}{extension}"


def settle_original(image_uri: str, image_sha256: str, keep_original: str,
                    client: S3Client) -> str:
    """Apply the keep policy to the original at ``image_uri`` (its archival copy already
    stored and verified) → :data:`KEPT`, :data:`REMOVED`, :data:`CHANGED` or :data:`GONE`."""
    if keep_original == "keep":
        return KEPT
    loc = parse_s3_uri(image_uri)
    try:
        etag = str(client.head_object(Bucket=loc.bucket, Key=loc.key)["ETag"]).strip('"')
    except Exception as exc:
        if str(getattr(exc, "response", {}).get("Error", {}).get("Code", "")) in (
                "404", "NoSuchKey", "NotFound"):
            return GONE  # a retry after the delete already happened
        raise
    if sha256_hex(image_uri, client) != image_sha256:
        return CHANGED
    return REMOVED if _delete_if_unchanged(client, loc.bucket, loc.key, etag) else CHANGED
