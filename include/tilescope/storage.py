"""Object access for ``s3://`` URIs and local paths: whole reads, ranged reads, writes.

The library never builds credentials: it takes a boto3 client (Airflow passes
``S3Hook(...).get_conn()``); without one it makes a default client, which honours the usual
``AWS_*`` environment variables including ``AWS_ENDPOINT_URL`` for local S3 servers.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tilescope.errors import BadImageError, ConfigError, StorageError

_MISSING_CODES = ("NoSuchKey", "404", "NoSuchBucket", "NotFound")


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
    """``s3://bucket/key`` → :class:`S3Location`; anything else is a :class:`ConfigError`."""
    parsed = urlparse(str(uri))
    key = parsed.path.lstrip("/")
    if parsed.scheme != "s3" or not parsed.netloc or not key:
        raise ConfigError(f"expected s3://bucket/key, got {uri!r}")
    return S3Location(parsed.netloc, key)


def default_s3_client() -> Any:
    """A boto3 S3 client from the environment (path-style addressing works with local servers)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                      retries={"max_attempts": 8, "mode": "standard"}),
    )


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _local_file(uri: str) -> Path:
    path = Path(uri)
    if not path.is_file():
        raise BadImageError(f"no such file: {uri}")
    return path


def read_bytes(uri: str, client: Any = None) -> bytes:
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


def object_size(uri: str, client: Any = None) -> int:
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


def write_bytes(uri: str, data: bytes, content_type: str = "application/octet-stream",
                client: Any = None) -> None:
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

    def __init__(self, uri: str, client: Any = None, size: int | None = None) -> None:
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
