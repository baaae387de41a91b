"""A user's ONNX model file: found locally or fetched once from S3, checked, and its names.

``s3://`` models land in ``<cache>/models/onnx/<sha256>.onnx``: the first task on a machine
downloads the object (streamed and hashed), checks that it parses as ONNX and — when
``sha256`` is given — that it is that file, and renames it into place; later tasks find it
by the object's ETag and size (``by-source/``), re-hash the cached file and use it. A
download that fails a check is deleted: nothing half-checked is ever cached.

Class names come from ``labels`` (a list, or a text file with one name per line) or from
the model's metadata: Ultralytics exports write ``names`` as a Python dict literal
(``{0: 'person', 1: 'bicycle'}``) into ``metadata_props``.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from tilescope.errors import BadImageError, BadModelError, ConfigError, StorageError
from tilescope.models.weights import _locked, cache_root, sha256_file
from tilescope.storage import S3Client, default_s3_client, is_s3_uri, parse_s3_uri

__all__ = ["class_names", "graph_input_size", "graph_metadata", "local_model_file", "read_labels"]

_CHUNK = 8 << 20


def _client(conn_id: str | None) -> S3Client:
    if conn_id:
        from tilescope.airflow.connections import s3_client

        return s3_client(conn_id)
    return default_s3_client()


def local_model_file(uri: str, *, sha256: str | None = None, conn_id: str | None = None,
                     cache_dir: Path | None = None) -> Path:
    """A local, checked copy of the model at ``uri`` (a path or ``s3://``)."""
    if not uri:
        raise ConfigError("model onnx needs model_options.path (a local path or s3:// URI)")
    if not is_s3_uri(uri):
        path = Path(uri).expanduser()
        if not path.is_file():
            raise ConfigError(f"model file {uri} does not exist")
        if sha256 and sha256_file(path) != sha256.lower():
            raise BadModelError(f"model file {uri} has sha256 {sha256_file(path)}, expected "
                                f"{sha256}")
        return path
    root = (cache_dir or cache_root()) / "models" / "onnx"
    (root / "by-source").mkdir(parents=True, exist_ok=True)
    client = _client(conn_id)
    loc = parse_s3_uri(uri)
    try:
        head = client.head_object(Bucket=loc.bucket, Key=loc.key)
    except Exception as exc:
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
            raise ConfigError(f"model object {uri} does not exist") from exc
        raise StorageError(f"reading {uri} failed: {exc}") from exc
    source = f"{uri}\n{head.get('ETag', '')}\n{head.get('ContentLength', '')}"
    index = root / "by-source" / hashlib.sha256(source.encode()).hexdigest()
    with _locked(index):
        known = index.read_text().strip() if index.is_file() else ""
        if known and (not sha256 or known == sha256.lower()):
            cached = root / f"{known}.onnx"
            if cached.is_file() and sha256_file(cached) == known:
                return cached
        digest, tmp = _download(client, uri, root)
        try:
            if sha256 and digest != sha256.lower():
                raise BadModelError(f"model object {uri} has sha256 {digest}, expected "
                                    f"{sha256}")
            _check_onnx(tmp, uri)
            target = root / f"{digest}.onnx"
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        index.write_text(digest)
    return target


def _download(client: S3Client, uri: str, root: Path) -> tuple[str, Path]:
    """Stream the object into a temp file beside the cache, hashing it on the way."""
    loc = parse_s3_uri(uri)
    fd, name = tempfile.mkstemp(dir=root, prefix=".download-", suffix=".onnx")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as handle:
            body = client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"]
            for block in body.iter_chunks(_CHUNK):
                digest.update(block)
                handle.write(block)
    except Exception as exc:
        Path(name).unlink(missing_ok=True)
        raise StorageError(f"downloading model {uri} failed: {exc}") from exc
    return digest.hexdigest(), Path(name)


def _check_onnx(path: Path, label: str) -> None:
    """Refuse a file that is not an ONNX model (truncated, corrupt, another format)."""
    graph_metadata(str(path), label)


@lru_cache(maxsize=16)
def _metadata(path: str, mtime_ns: int, label: str
              ) -> tuple[dict[str, str], tuple[int | str, ...]]:
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise BadModelError(f"{label} is not a readable ONNX model (corrupt or another "
                            f"format): {str(exc)[:200]}") from exc
    if not model.graph.node and not model.graph.output:
        raise BadModelError(f"{label} is not a readable ONNX model: it has no graph")
    initialized = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initialized]
    dims = tuple(d.dim_value or d.dim_param or "?" for d in
                 inputs[0].type.tensor_type.shape.dim) if inputs else ()
    return {p.key: p.value for p in model.metadata_props}, dims


def graph_metadata(path: str, label: str | None = None) -> dict[str, str]:
    """The model's ``metadata_props`` (parsed once per file version and process)."""
    return _metadata(path, os.stat(path).st_mtime_ns, label or path)[0]


def graph_input_size(path: str) -> int | None:
    """The image input's side (the larger of height and width) when the graph fixes it."""
    dims = _metadata(path, os.stat(path).st_mtime_ns, path)[1]
    if len(dims) != 4:
        return None
    spatial = dims[2:4] if dims[1] == 3 else dims[1:3]
    sides = [d for d in spatial if isinstance(d, int)]
    return max(sides) if len(sides) == 2 else None


def read_labels(labels: str | Sequence[str], conn_id: str | None = None) -> list[str]:
    """Names from a list, or from a text file (local or ``s3://``) with one name a line."""
    if not isinstance(labels, str):
        return [str(name) for name in labels]
    from tilescope.storage import read_bytes

    try:
        client = _client(conn_id) if is_s3_uri(labels) else None
        text = read_bytes(labels, client).decode("utf-8")
    except BadImageError as exc:  # storage's "no such file" speaks of images
        raise ConfigError(f"labels file {labels} does not exist") from exc
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ConfigError(f"labels file {labels} has no names")
    return names


def class_names(path: Path, labels: str | Sequence[str] | None, label: str,
                conn_id: str | None = None) -> list[str]:
    """Category names per class index: ``labels`` when given (an ``s3://`` file read with
    ``conn_id``'s credentials, as the model), else the model's ``names``."""
    if labels:
        return read_labels(labels, conn_id)
    props = graph_metadata(str(path), label)
    text = props.get("names") or props.get("labels") or props.get("classes")
    if not text:
        raise BadModelError(f"missing labels: {label} has no class names in its metadata "
                            "('names', as Ultralytics exports write); give "
                            "model_options.labels (a file with one name a line)")
    try:
        parsed: Any = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = [n.strip() for n in text.split(",")]
    if isinstance(parsed, dict):
        return [str(parsed[k]) for k in sorted(parsed, key=int)]
    return [str(name) for name in parsed]
