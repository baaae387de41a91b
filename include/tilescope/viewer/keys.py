"""What the viewer accepts from a URL: DAG ids, run ids, region numbers and S3 keys.

Everything a browser sends is checked here before it reaches the metadata DB or S3. S3
keys are the sensitive part: the api-server holds the S3 credentials, so a key taken from a
URL must stay inside the objects of *that* run — its ``scratch/<image-id>/<run>/`` prefix
and its ``results/<image-id>/<params-hash>/`` prefix — or the viewer would be a read-anything
proxy for the bucket.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any

from tilescope.errors import TilescopeError
from tilescope.storage import S3Location

# Airflow's own limits: ids are at most 250 characters; run ids match
# ``[scheduler] allowed_run_id_pattern`` (default ``^[A-Za-z0-9_.~:+-]+$``).
ID_MAX = 250
_DAG_ID = re.compile(r"[A-Za-z0-9_.\-]+")
_RUN_ID = re.compile(r"[A-Za-z0-9_.~:+\-]+")
_IMAGE_ID = re.compile(r"[0-9a-f]{16}")
_PARAMS_HASH = re.compile(r"[0-9a-f]{8,64}")
_SAFE_PART = re.compile(r"[A-Za-z0-9._-]+")
KEY_MAX = 1024
#: what the viewer serves from a run's prefixes (results, COCO, overlay, thumbnails)
SERVABLE_SUFFIXES = (".json", ".png", ".jpg", ".jpeg")


class ViewerInputError(TilescopeError):
    """A URL part the viewer refuses (bad id, traversal, key outside the run's prefixes)."""


def validate_dag_id(dag_id: str) -> str:
    """``dag_id`` unchanged if it is a plausible Airflow DAG id, else :class:`ViewerInputError`."""
    if not isinstance(dag_id, str) or not 0 < len(dag_id) <= ID_MAX \
            or not _DAG_ID.fullmatch(dag_id) or dag_id in (".", ".."):
        raise ViewerInputError(f"invalid DAG id {dag_id!r}")
    return dag_id


def validate_run_id(run_id: str) -> str:
    """``run_id`` unchanged if it matches Airflow's run id pattern (no ``/``, no ``..``)."""
    if not isinstance(run_id, str) or not 0 < len(run_id) <= ID_MAX \
            or not _RUN_ID.fullmatch(run_id) or set(run_id) == {"."}:
        raise ViewerInputError(f"invalid run id {run_id!r}")
    return run_id


def validate_region(region: str | int | None, count: int | None = None) -> int | None:
    """A map index from a query string: ``None`` (empty, -1) or an int in ``[0, count)``."""
    if region is None or region in ("", "-1", -1):  # -1: an unmapped task instance
        return None
    text = str(region)
    if not text.isdigit() or len(text) > 6:
        raise ViewerInputError(f"invalid region {region!r}")
    index = int(text)
    if count is not None and index >= count:
        raise ViewerInputError(f"region {index} does not exist (the run has {count})")
    return index


@dataclass(frozen=True)
class RunPrefixes:
    """The S3 prefixes that belong to one run: where a URL-supplied key may point."""

    bucket: str
    scratch: str | None = None  # "scratch/<image-id>/<safe run id>/"
    results: str | None = None  # "results/<image-id>/<params hash>/"

    @property
    def prefixes(self) -> tuple[str, ...]:
        return tuple(p for p in (self.results, self.scratch) if p)

    def object(self, name: str, *, where: str) -> S3Location | None:
        """``<results or scratch prefix><name>`` when that prefix is known."""
        prefix = self.results if where == "results" else self.scratch
        return S3Location(self.bucket, prefix + name) if prefix else None


def _split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ViewerInputError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def run_prefixes(run_id: str, prepared: dict[str, Any] | None,
                 stored: dict[str, Any] | None) -> RunPrefixes | None:
    """The run's prefixes from its own XComs — never from the URL.

    ``prepared`` is preprocess's ``prepared`` XCom (``scratch_prefix``, ``image``);
    ``stored`` is store's return value (``keys.result``), present once the result exists.
    Each prefix is checked against the layout the pipeline writes (``steps.ScratchLayout``,
    ``steps.results_prefix``), so a tampered XCom cannot widen what the viewer serves.
    """
    from tilescope.steps import safe_key_part

    if not prepared:
        return None
    image_id = str((prepared.get("image") or {}).get("image_id", ""))
    if not _IMAGE_ID.fullmatch(image_id):
        raise ViewerInputError(f"run {run_id}: unexpected image id {image_id!r}")
    bucket, scratch = _split_s3(str(prepared.get("scratch_prefix", "")))
    if scratch != f"scratch/{image_id}/{safe_key_part(run_id)}/":
        raise ViewerInputError(f"run {run_id}: unexpected scratch prefix {scratch!r}")
    results = None
    result_uri = ((stored or {}).get("keys") or {}).get("result")
    if result_uri:
        result_bucket, result_key = _split_s3(str(result_uri))
        parts = result_key.split("/")
        if (result_bucket != bucket or len(parts) != 4 or parts[0] != "results"
                or parts[1] != image_id or not _PARAMS_HASH.fullmatch(parts[2])
                or parts[3] != "result.json"):
            raise ViewerInputError(f"run {run_id}: unexpected result key {result_uri!r}")
        results = f"results/{image_id}/{parts[2]}/"
    return RunPrefixes(bucket, scratch, results)


def resolve_key(raw: str, run: RunPrefixes,
                suffixes: tuple[str, ...] = SERVABLE_SUFFIXES) -> S3Location:
    """A key (``results/…`` or ``s3://bucket/results/…``) from a URL, if it is one of the run's.

    Refused: other buckets, empty or over-long keys, control characters, backslashes, a
    leading ``/``, empty, ``.`` or ``..`` segments (traversal), keys outside the run's
    prefixes, and suffixes the viewer does not serve.
    """
    if not isinstance(raw, str) or not raw:
        raise ViewerInputError("empty key")
    key = raw
    if raw.startswith("s3://"):
        bucket, key = _split_s3(raw)
        if bucket != run.bucket:
            raise ViewerInputError(f"key {raw!r} is not in the run's bucket")
    if len(key) > KEY_MAX or any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise ViewerInputError("key too long or with control characters")
    if "\\" in key or key.startswith("/"):
        raise ViewerInputError(f"invalid key {raw!r}")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts) or posixpath.normpath(key) != key:
        raise ViewerInputError(f"invalid key {raw!r} (empty, '.' or '..' segment)")
    if not any(key.startswith(prefix) for prefix in run.prefixes):
        raise ViewerInputError(f"key {raw!r} is outside this run's results and scratch")
    if not key.lower().endswith(suffixes):
        raise ViewerInputError(f"key {raw!r}: the viewer serves only {', '.join(suffixes)}")
    if not all(_SAFE_PART.fullmatch(p) for p in parts):
        raise ViewerInputError(f"invalid key {raw!r}")
    return S3Location(run.bucket, key)
