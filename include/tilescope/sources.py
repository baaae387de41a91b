"""What ``tilescope predict`` was pointed at → the images it analyzes, each with a stable name.

An input is a path to a file, a folder (searched recursively for image suffixes), a glob
pattern (``photos/**/*.jpg``), an ``s3://bucket/key`` object or an ``s3://bucket/prefix/``
prefix (listed with the paginator; "folder" keys ending in ``/`` skipped). Images are sorted
within each input, inputs keep their order, and an image reached twice is kept once (where it
was first reached).

Each image also gets a *name* relative to its input's root (the folder, the prefix, the
glob's fixed leading directories; a plain file's own name), subfolders kept: ``--out-dir``
writes ``DIR/<name>.json``, so two runs over the same folder write the same files.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tilescope.errors import BadImageError, ConfigError, StorageError
from tilescope.readers.sniff import IMAGE_SUFFIXES
from tilescope.storage import S3Client, default_s3_client, is_s3_uri

# a folder or prefix is searched for IMAGE_SUFFIXES (videos are not expanded from folders;
# name one explicitly to analyze it)
#: output names the run's own files take in ``--out-dir``
RESERVED_NAMES = frozenset({"coco", "summary"})
#: keys per listing page (S3's maximum)
LIST_PAGE_SIZE = 1000


@dataclass(frozen=True)
class NamedInput:
    """One image to analyze: where it is, and its name relative to its input's root."""

    uri: str
    name: str


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def is_s3_prefix(text: str) -> bool:
    """``s3://bucket/prefix/`` or ``s3://bucket`` (a prefix), not ``s3://bucket/key``."""
    if not is_s3_uri(text):
        return False
    bucket, _, key = text.removeprefix("s3://").partition("/")
    return bool(bucket) and (not key or key.endswith("/"))


def is_pattern(text: str) -> bool:
    """A glob pattern (that is not also the literal name of an existing path)."""
    return not is_s3_uri(text) and glob.has_magic(text) and not os.path.exists(text)


def is_plain_file(text: str) -> bool:
    """One file or object named exactly: not a folder, pattern or prefix."""
    return not (is_s3_prefix(text) or is_pattern(text) or os.path.isdir(text))


def _folder(root: str) -> list[NamedInput]:
    base = Path(root)
    found = sorted(p for p in base.rglob("*") if p.is_file() and is_image_name(p.name))
    if not found:
        raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under folder {root}")
    return [NamedInput(str(p), p.relative_to(base).as_posix()) for p in found]


def _pattern_root(pattern: str) -> str:
    """The pattern's leading directories without glob characters: names are kept relative
    to it (``shots/**/*.jpg`` → ``shots``)."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else ""


def _pattern(pattern: str) -> list[NamedInput]:
    found = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not found:
        raise ConfigError(f"pattern {pattern!r} matches no files")
    root = _pattern_root(pattern)
    return [NamedInput(p, os.path.relpath(p, root).replace(os.sep, "/") if root
                       else Path(p).as_posix()) for p in found]


def _prefix(uri: str, client: S3Client | None) -> list[NamedInput]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    client = client or default_s3_client()
    keys: list[str] = []
    try:
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": LIST_PAGE_SIZE})
        for page in pages:
            keys.extend(obj["Key"] for obj in page.get("Contents", [])
                        if not obj["Key"].endswith("/") and is_image_name(obj["Key"]))
    except Exception as exc:
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("NoSuchBucket", "404", "NotFound"):
            raise BadImageError(f"no such bucket: {uri} ({code})") from exc
        raise StorageError(f"listing {uri} failed: {exc}") from exc
    if not keys:
        raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {uri}")
    return [NamedInput(f"s3://{bucket}/{key}", key[len(prefix):]) for key in sorted(keys)]


def _one(text: str, client: S3Client | None) -> list[NamedInput]:
    if is_s3_prefix(text):
        return _prefix(text, client)
    if is_s3_uri(text):  # one object: a missing one is reported when it is opened
        return [NamedInput(text, PurePosixPath(text.removeprefix("s3://")).name)]
    if os.path.isdir(text):
        return _folder(text)
    if is_pattern(text):
        return _pattern(text)
    if not os.path.isfile(text):
        raise BadImageError(f"no such file or folder: {text}")
    return [NamedInput(text, Path(text).name)]


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name~2``, ``name~3``… when another input already has it."""
    candidate, number = name, 1
    while candidate in taken or candidate in RESERVED_NAMES:
        number += 1
        candidate = f"{name}~{number}"
    return candidate


def expand_named(inputs: list[str] | tuple[str, ...],
                 client: S3Client | None = None) -> list[NamedInput]:
    """Every image the inputs reach, in order (sorted within an input), each once, with an
    output name unique across the run. A missing path is a :class:`BadImageError`; a
    folder, pattern or prefix without images is a :class:`ConfigError`."""
    if not inputs:
        raise ConfigError("no inputs given")
    seen: set[str] = set()
    taken: set[str] = set()
    out: list[NamedInput] = []
    for text in inputs:
        for item in _one(str(text), client):
            key = item.uri if is_s3_uri(item.uri) else os.path.realpath(item.uri)
            if key in seen:
                continue
            seen.add(key)
            name = _unique(item.name, taken)
            taken.add(name)
            out.append(NamedInput(item.uri, name))
    return out


def expand_inputs(inputs: list[str] | tuple[str, ...], client: S3Client | None = None) -> list[str]:
    """The URIs of :func:`expand_named`."""
    return [item.uri for item in expand_named(inputs, client)]
