"""Object access for ``s3://`` URIs and local paths: whole reads, ranged reads, writes.

The library never builds credentials: it takes a boto3 client (Airflow passes one built from
its connection, ``tilescope.airflow.connections.s3_client``); without one it makes a default
client, which honours the usual ``AWS_*`` environment variables including
``AWS_ENDPOINT_URL`` for local S3 servers. Both retry with backoff (:func:`resilient_config`)
and log failed attempts.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tilescope.errors import BadImageError, ConfigError, StorageError

_MISSING_CODES = ("NoSuchKey", "404", "NoSuchBucket", "NotFound")

log = logging.getLogger(__name__)

#: botocore's "standard" retry mode retries connection errors, timeouts, 5xx answers and
#: throttling with jittered exponential backoff (rand × 1, 2, 4, 8, 16 s, then 20 s caps): 10
#: attempts in all ride out an S3 server that is away for about a minute (55 s of backoff
#: expected, up to 111 s). Without it, an Airflow AWS connection gets the "legacy" mode's 5.
S3_RETRIES = {"mode": "standard", "total_max_attempts": 10}
#: botocore waits 60 s for a TCP connect by default, per attempt: a host that drops packets
#: would then hold a region task for 10 minutes before its own retry could start.
S3_CONNECT_TIMEOUT = 5.0


class S3Paginator(Protocol):
    """What ``S3Client.get_paginator`` returns: pages of boto3 responses."""

    def paginate(self, **kwargs: Any) -> Iterable[dict[str, Any]]: ...


class S3Client(Protocol):
    """The S3 calls tilescope makes, spelled as boto3's ``client("s3")`` spells them (its
    keyword arguments, its response dicts). Every function that takes an S3 client takes
    this: a boto3 client, Airflow's ``S3Hook`` client or a test double all fit."""

    def get_object(self, *, Bucket: str, Key: str, **kwargs: Any) -> dict[str, Any]: ...

    def head_object(self, *, Bucket: str, Key: str, **kwargs: Any) -> dict[str, Any]: ...

    def put_object(self, *, Bucket: str, Key: str, **kwargs: Any) -> dict[str, Any]: ...

    def copy_object(self, *, CopySource: str | Mapping[str, Any], Bucket: str, Key: str,
                    **kwargs: Any) -> dict[str, Any]: ...

    def delete_object(self, *, Bucket: str, Key: str, **kwargs: Any) -> dict[str, Any]: ...

    def delete_objects(self, *, Bucket: str, Delete: Mapping[str, Any],
                       **kwargs: Any) -> dict[str, Any]: ...

    def list_objects_v2(self, *, Bucket: str, **kwargs: Any) -> dict[str, Any]: ...

    def list_buckets(self) -> dict[str, Any]: ...

    def create_bucket(self, *, Bucket: str, **kwargs: Any) -> dict[str, Any]: ...

    def get_paginator(self, operation_name: str) -> S3Paginator: ...

    def copy(self, CopySource: Mapping[str, Any], Bucket: str, Key: str,
             ExtraArgs: Mapping[str, Any] | None = None, **kwargs: Any) -> None: ...

    def upload_file(self, Filename: str, Bucket: str, Key: str,
                    ExtraArgs: Mapping[str, Any] | None = None, **kwargs: Any) -> None: ...

    def download_file(self, Bucket: str, Key: str, Filename: str,
                      ExtraArgs: Mapping[str, Any] | None = None, **kwargs: Any) -> None: ...


@dataclass(frozen=True)
class S3Location:
    """A bucket and key parsed from ``s3://bucket/key``."""

    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def is_s3_uri(uri: str) -> bool:
    return str(uri).startswith("s3://")


def parse_s3_uri(uri: str) -> S3Location:
    """``s3://bucket/key`` → :class:`S3Location`; anything else is a :class:`ConfigError`.

    Split by hand, not with ``urlparse``: an S3 key may hold ``#`` and ``?``, which a URL
    parser would cut off as fragment and query (``a#1.png`` read as ``a``)."""
    text = str(uri)
    bucket, _, key = text.removeprefix("s3://").partition("/")
    key = key.lstrip("/")
    if not text.startswith("s3://") or not bucket or not key:
        raise ConfigError(f"expected s3://bucket/key, got {uri!r}")
    return S3Location(bucket, key)


def resilient_config(override: Any = None) -> Any:
    """The botocore ``Config`` for tilescope's S3 clients: :data:`S3_RETRIES` and
    :data:`S3_CONNECT_TIMEOUT`, with whatever ``override`` (e.g. an Airflow connection's
    ``config_kwargs``) sets explicitly taking precedence."""
    from botocore.config import Config

    base = Config(retries=dict(S3_RETRIES), connect_timeout=S3_CONNECT_TIMEOUT)
    if override is None:
        return base
    # Config.merge replaces the retries dict whole: merge its keys instead, so a connection
    # that only sets max_attempts keeps the standard mode (and its count wins over ours).
    theirs = dict(getattr(override, "retries", None) or {})
    retries = dict(S3_RETRIES)
    if {"max_attempts", "total_max_attempts"} & theirs.keys():
        del retries["total_max_attempts"]
    return base.merge(override).merge(Config(retries={**retries, **theirs}))


def log_retries(client: Any) -> Any:
    """Log every failed S3 attempt botocore is about to retry (or gives up on) as a warning,
    so a task log shows an S3 outage being ridden out instead of an unexplained pause.
    (``Any``: it reaches into the botocore client's ``meta``, which no S3 call needs.)"""
    def failed_attempt(attempts: int, caught_exception: Exception | None = None,
                       response: Any = None, operation: Any = None, **_: Any) -> None:
        if caught_exception is not None:
            reason = f"{type(caught_exception).__name__}: {caught_exception}"
        elif response is not None and response[0].status_code >= 500:
            reason = f"HTTP {response[0].status_code}"
        else:
            return None
        limit = client.meta.config.retries.get("total_max_attempts", "?")
        log.warning("S3 %s attempt %d of %s failed (%s)%s",
                    getattr(operation, "name", "request"), attempts, limit, reason,
                    "; giving up" if attempts == limit else "")
        return None  # never decides: botocore's own retry handler does

    client.meta.events.register("needs-retry.s3", failed_attempt)
    return client


def default_s3_client() -> S3Client:
    """A boto3 S3 client from the environment (path-style addressing works with local servers)."""
    import boto3
    from botocore.config import Config

    return log_retries(boto3.client(
        "s3",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
        config=resilient_config(Config(signature_version="s3v4",
                                       s3={"addressing_style": "path"})),
    ))


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _local_file(uri: str) -> Path:
    path = Path(uri)
    if not path.is_file():
        raise BadImageError(f"no such file: {uri}")
    return path


def read_bytes(uri: str, client: S3Client | None = None) -> bytes:
    """The whole object or file; a missing one is a :class:`BadImageError`."""
    if not is_s3_uri(uri):
        return _local_file(uri).read_bytes()
    loc = parse_s3_uri(uri)
    client = client or default_s3_client()
    try:
        return client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
    except Exception as exc:  # botocore raises ClientError subclasses per code
        if _error_code(exc) in _MISSING_CODES:
            raise BadImageError(f"no such object: {uri} ({_error_code(exc)})") from exc
        raise StorageError(f"reading {uri} failed: {exc}") from exc


def read_head(uri: str, count: int, client: S3Client | None = None,
              size: int | None = None) -> bytes:
    """The first ``count`` bytes of an object or file (one ranged GET): enough to tell its
    format by signature without downloading it. ``size`` (if known) saves a HEAD request."""
    if not is_s3_uri(uri):
        with _local_file(uri).open("rb") as handle:
            return handle.read(count)
    return RangedS3File(uri, client, size=size).read(count)


def read_start(uri: str, count: int, client: S3Client | None = None) -> tuple[bytes, int]:
    """The first ``count`` bytes of an object and its whole size, in one ranged GET: a small
    image comes back whole in one request (no HEAD first). A missing object is a
    :class:`BadImageError`; an empty one gives ``(b"", 0)``."""
    if not is_s3_uri(uri):
        path = _local_file(uri)
        with path.open("rb") as handle:
            return handle.read(count), path.stat().st_size
    loc = parse_s3_uri(uri)
    client = client or default_s3_client()
    try:
        response = client.get_object(Bucket=loc.bucket, Key=loc.key, Range=f"bytes=0-{count - 1}")
    except Exception as exc:
        code = _error_code(exc)
        if code in _MISSING_CODES:
            raise BadImageError(f"no such object: {uri} ({code})") from exc
        if code == "InvalidRange":  # a range past the end: the object is empty
            return b"", 0
        raise StorageError(f"reading {uri} failed: {exc}") from exc
    body = response["Body"].read()
    total = str(response.get("ContentRange") or "").rpartition("/")[2]
    return body, int(total) if total.isdigit() else len(body)


def sha256_hex(uri: str, client: S3Client | None = None, chunk_bytes: int = 8 << 20) -> str:
    """The SHA-256 of an object or file, read as a stream in ``chunk_bytes`` pieces: an image
    of many gigabytes is hashed in constant memory."""
    digest = hashlib.sha256()
    if not is_s3_uri(uri):
        with _local_file(uri).open("rb") as handle:
            while block := handle.read(chunk_bytes):
                digest.update(block)
        return digest.hexdigest()
    loc = parse_s3_uri(uri)
    client = client or default_s3_client()
    try:
        body = client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"]
        for block in body.iter_chunks(chunk_bytes):
            digest.update(block)
    except Exception as exc:
        if _error_code(exc) in _MISSING_CODES:
            raise BadImageError(f"no such object: {uri} ({_error_code(exc)})") from exc
        raise StorageError(f"reading {uri} failed: {exc}") from exc
    return digest.hexdigest()


def object_size(uri: str, client: S3Client | None = None) -> int:
    """Size in bytes without reading the object."""
    if not is_s3_uri(uri):
        return _local_file(uri).stat().st_size
    loc = parse_s3_uri(uri)
    client = client or default_s3_client()
    try:
        return int(client.head_object(Bucket=loc.bucket, Key=loc.key)["ContentLength"])
    except Exception as exc:
        if _error_code(exc) in _MISSING_CODES:
            raise BadImageError(f"no such object: {uri} ({_error_code(exc)})") from exc
        raise StorageError(f"head of {uri} failed: {exc}") from exc


def exists(uri: str, client: S3Client | None = None) -> bool:
    """Whether the object (or file) is there: a missing one is ``False``, other failures
    raise :class:`StorageError` (:func:`object_size`)."""
    try:
        object_size(uri, client)
    except BadImageError:  # no such object
        return False
    return True


def write_bytes(uri: str, data: bytes, content_type: str = "application/octet-stream",
                client: S3Client | None = None) -> None:
    """Write an object or file whole; local files are replaced atomically."""
    if not is_s3_uri(uri):
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return
    loc = parse_s3_uri(uri)
    client = client or default_s3_client()
    try:
        client.put_object(Bucket=loc.bucket, Key=loc.key, Body=data, ContentType=content_type)
    except Exception as exc:
        raise StorageError(f"writing {uri} failed: {exc}") from exc


class RangedS3File(io.RawIOBase):
    """A read-only, seekable file over an S3 object that fetches only the bytes asked for.

    Lets tifffile read a tiled TIFF's header and just the tiles a region needs with ranged
    GETs, instead of downloading a multi-gigabyte object.
    """

    def __init__(self, uri: str, client: S3Client | None = None, size: int | None = None) -> None:
        super().__init__()
        self._loc = parse_s3_uri(uri)
        self._client = client or default_s3_client()
        self._size = size if size is not None else object_size(uri, self._client)
        self._pos = 0
        self.requests = 0
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        end = self._size if size is None or size < 0 else min(self._size, self._pos + size)
        if end <= self._pos:
            return b""
        try:
            body = self._client.get_object(Bucket=self._loc.bucket, Key=self._loc.key,
                                           Range=f"bytes={self._pos}-{end - 1}")["Body"].read()
        except Exception as exc:
            raise StorageError(f"ranged read of {self._loc.uri} failed: {exc}") from exc
        self.requests += 1
        self.bytes_read += len(body)
        self._pos += len(body)
        return body

    def readall(self) -> bytes:
        return self.read(-1)


def open_in_place(uri: str, client: S3Client | None = None,
                  size: int | None = None) -> io.BufferedReader:
    """A seekable, buffered read handle on a file or an ``s3://`` object (ranged GETs), so a
    tiled TIFF is read tile by tile where it lies instead of whole into memory. ``size`` (if
    known) saves an object's HEAD request; a missing file is a :class:`BadImageError`."""
    if not is_s3_uri(uri):
        return _local_file(uri).open("rb")
    # Buffered: tifffile parses the header with many small reads, each a GET unbuffered.
    return io.BufferedReader(RangedS3File(uri, client, size=size), buffer_size=64 << 10)
