"""What the viewer accepts from a URL: DAG ids, run ids, region numbers and S3 keys.

Everything a browser sends is checked here before it reaches the metadata DB or S3. S3
keys are the sensitive part: the api-server holds the S3 credentials, so a key taken from a
URL must stay inside the objects of *that* run — its ``scratch/<image-id>/<run>/`` prefix
and its ``results/<image-id>/<params-hash>/`` prefix — or the viewer would be a read-anything
proxy for the bucket. A *batch* run (many images in one run) owns its
``results/batches/<run>/`` prefix and the ``results/<image-id>/<params-hash>/`` prefix of each
image its own ``outcomes.json`` says it stored (:func:`batch_prefixes`), nothing else.
GeoJSON (``.geojson``) is served from a stored image's results prefix only
(:data:`RESULTS_ONLY_SUFFIXES`). A stored result's overlay and thumbnail are found by the
keys its run recorded (WebP, JPEG or PNG: the run's preview format), never by a fixed
name; results stored before the preview format existed have PNGs and no thumbnail key.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tilescope.errors import TilescopeError
from tilescope.layout import (
    ARTIFACTS,
    GEO_ARTIFACTS,
    IMAGE_ID,
    LEGACY_PREVIEWS,
    OUTCOMES,
    PLAN,
    BatchLayout,
    ResultsLayout,
    ScratchLayout,
    preview_names,
)
from tilescope.previews import EXTENSIONS
from tilescope.storage import S3Location

# Airflow's own limits: ids are at most 250 characters; run ids match
# ``[scheduler] allowed_run_id_pattern`` (default ``^[A-Za-z0-9_.~:+-]+$``).
ID_MAX = 250
_DAG_ID = re.compile(r"[A-Za-z0-9_.\-]+")
_RUN_ID = re.compile(r"[A-Za-z0-9_.~:+\-]+")
_SAFE_PART = re.compile(r"[A-Za-z0-9._-]+")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
KEY_MAX = 1024
#: what the viewer serves from a run's prefixes (results, COCO, overlay, thumbnails, STAC
#: items, GeoJSON)
SERVABLE_SUFFIXES = (".json", *EXTENSIONS, ".geojson")
#: suffixes served from a stored image's results prefix only (never scratch, never a batch's
#: own ``results/batches/<run>/``): the georeferenced detections beside ``coco.json``
RESULTS_ONLY_SUFFIXES = (".geojson",)


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


def validate_region(region: str | int | None, count: int | None = None,
                    what: str = "region") -> int | None:
    """A map index from a query string: ``None`` (empty, -1) or an int in ``[0, count)``."""
    if region is None or region in ("", "-1", -1):  # -1: an unmapped task instance
        return None
    text = str(region)
    if not text.isascii() or not text.isdigit() or len(text) > 6:
        raise ViewerInputError(f"invalid {what} {region!r}")
    index = int(text)
    if count is not None and index >= count:
        raise ViewerInputError(f"{what} {index} does not exist (the run has {count})")
    return index


def validate_image(image: str | int | None) -> int | None:
    """A batch image's number (its outcome ``index``) from a query string, or ``None``."""
    return validate_region(image, what="image")


@dataclass(frozen=True)
class RunPrefixes:
    """The S3 prefixes that belong to one run: where a URL-supplied key may point."""

    bucket: str
    scratch: str | None = None  # "scratch/<image-id>/<safe run id>/"
    results: str | None = None  # "results/<image-id>/<params hash>/"
    #: the stored previews' file names by role, from the run's recorded keys
    previews: Mapping[str, str] = field(default_factory=lambda: dict(LEGACY_PREVIEWS))

    @property
    def prefixes(self) -> tuple[str, ...]:
        return tuple(p for p in (self.results, self.scratch) if p)

    @property
    def buckets(self) -> tuple[str, ...]:
        return (self.bucket,)

    def allows(self, bucket: str, key: str) -> bool:
        return bucket == self.bucket and any(key.startswith(p) for p in self.prefixes)

    def in_results(self, bucket: str, key: str) -> bool:
        """Whether ``key`` is under the run's stored results prefix."""
        return bucket == self.bucket and self.results is not None \
            and key.startswith(self.results)

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
    Each prefix must be exactly where the pipeline writes it for *this* run and image
    (:mod:`tilescope.layout`), so a tampered XCom cannot widen what the viewer serves.
    """
    if not prepared:
        return None
    image_id = str((prepared.get("image") or {}).get("image_id", ""))
    if not IMAGE_ID.fullmatch(image_id):
        raise ViewerInputError(f"run {run_id}: unexpected image id {image_id!r}")
    bucket, scratch = _split_s3(str(prepared.get("scratch_prefix", "")))
    if scratch != ScratchLayout(bucket, image_id, run_id).prefix:
        raise ViewerInputError(f"run {run_id}: unexpected scratch prefix {scratch!r}")
    results = None
    keys = (stored or {}).get("keys") or {}
    result_uri = keys.get("result")
    if result_uri:
        layout = ResultsLayout.of_result(str(result_uri))
        if layout is None or layout.bucket != bucket or layout.image_id != image_id:
            raise ViewerInputError(f"run {run_id}: unexpected result key {result_uri!r}")
        _check_previews(run_id, layout, keys)
        results = layout.prefix
    return RunPrefixes(bucket, scratch, results, preview_names(keys))


def _check_previews(run_id: str, layout: ResultsLayout, keys: Mapping[str, Any]) -> None:
    """Each recorded preview key must be that preview beside the result, in a preview
    format: a tampered key cannot name another object through the preview's name."""
    for role in LEGACY_PREVIEWS:
        if keys.get(role) is not None and not layout.is_preview(role, keys[role]):
            raise ViewerInputError(f"run {run_id}: unexpected {role} key {keys[role]!r}")


@dataclass(frozen=True)
class BatchRun:
    """Where a batch run keeps its own documents, from its ``prepared`` XCom (checked)."""

    run_id: str
    bucket: str
    scratch: str  # "scratch/batch/<safe run id>/": the plan (gone once the run ended)
    batch: str  # "results/batches/<safe run id>/": outcomes.json, kept

    @property
    def plan(self) -> S3Location:
        return S3Location(self.bucket, self.scratch + PLAN)

    @property
    def outcomes(self) -> S3Location:
        return S3Location(self.bucket, self.batch + OUTCOMES)


def batch_run(run_id: str, prepared: dict[str, Any] | None) -> BatchRun | None:
    """The batch run's document locations, or ``None`` for a single-image run (or before
    preprocess planned the batch). Each URI must be exactly where ``tasks.batch`` writes it
    for *this* run id — a tampered XCom cannot point the viewer elsewhere."""
    batch = (prepared or {}).get("batch")
    if not batch:
        return None
    if not isinstance(batch, dict):
        raise ViewerInputError(f"run {run_id}: unexpected batch description")
    bucket, scratch = _split_s3(str((prepared or {}).get("scratch_prefix", "")))
    layout = BatchLayout(bucket, run_id)
    if not _BUCKET.fullmatch(bucket) or scratch != layout.scratch_prefix:
        raise ViewerInputError(f"run {run_id}: unexpected batch scratch {scratch!r}")
    if str(batch.get("plan_uri", "")) != layout.plan_uri:
        raise ViewerInputError(f"run {run_id}: unexpected plan {batch.get('plan_uri')!r}")
    if str(batch.get("outcomes_uri", "")) != layout.outcomes_uri:
        raise ViewerInputError(f"run {run_id}: unexpected outcomes "
                               f"{batch.get('outcomes_uri')!r}")
    return BatchRun(run_id, bucket, scratch, layout.results_prefix)


@dataclass(frozen=True)
class BatchPrefixes:
    """What a batch run owns: its ``results/batches/<run>/`` prefix and the results prefix
    of every image its ``outcomes.json`` lists as stored (by the outcome's ``index``)."""

    bucket: str
    batch: str
    images: Mapping[int, tuple[str, str]] = field(default_factory=dict)
    #: each stored image's preview file names by role (missing: the legacy PNGs)
    previews: Mapping[int, Mapping[str, str]] = field(default_factory=dict)

    @property
    def prefixes(self) -> tuple[str, ...]:
        return (self.batch, *sorted({p for b, p in self.images.values() if b == self.bucket}))

    @property
    def buckets(self) -> tuple[str, ...]:
        return (self.bucket, *sorted({b for b, _ in self.images.values()} - {self.bucket}))

    def allows(self, bucket: str, key: str) -> bool:
        if bucket == self.bucket and key.startswith(self.batch):
            return True
        return self.in_results(bucket, key)

    def in_results(self, bucket: str, key: str) -> bool:
        """Whether ``key`` is under the results prefix of one of the batch's stored images."""
        return any(bucket == b and key.startswith(p) for b, p in self.images.values())

    def object(self, index: int, name: str) -> S3Location | None:
        """``<the stored image's results prefix><name>``, or ``None`` (not stored, unknown)."""
        where = self.images.get(index)
        return S3Location(where[0], where[1] + name) if where else None

    def preview(self, index: int, role: str) -> S3Location | None:
        """The stored image's ``overlay`` or ``thumbnail``, by the name its keys recorded."""
        return self.object(index, self.previews.get(index, LEGACY_PREVIEWS)[role])

    def artifacts(self, index: int, *, geo: bool = False) -> dict[str, str]:
        """The stored image's result, COCO and overlay as ``s3://`` URIs, and with ``geo``
        (its image has a CRS) its GeoJSON, native GeoJSON and STAC Item."""
        names = [*ARTIFACTS.values(), self.previews.get(index, LEGACY_PREVIEWS)["overlay"],
                 *(GEO_ARTIFACTS.values() if geo else ())]
        return {name: loc.uri for name in names
                if (loc := self.object(index, name)) is not None}


def _image_prefix(run_id: str, outcome: Mapping[str, Any]) -> tuple[str, str]:
    """A stored outcome's ``(bucket, "results/<image-id>/<params-hash>/")``, checked against
    the layout (:mod:`tilescope.layout`): its own image id, the bucket of its own image."""
    image_id = str(outcome.get("image_id", ""))
    if not IMAGE_ID.fullmatch(image_id):
        raise ViewerInputError(f"run {run_id}: unexpected image id {image_id!r}")
    source_bucket, _ = _split_s3(str(outcome.get("uri", "")))
    keys = outcome.get("keys") or {}
    layout = ResultsLayout.of_result(str(keys.get("result", "")))
    if (layout is None or layout.bucket != source_bucket or not _BUCKET.fullmatch(layout.bucket)
            or layout.image_id != image_id):
        raise ViewerInputError(f"run {run_id}: unexpected result key {keys.get('result')!r}")
    for name, file_name in ARTIFACTS.items():
        if keys.get(name) not in (None, layout.uri(file_name)):
            raise ViewerInputError(f"run {run_id}: unexpected {name} key {keys.get(name)!r}")
    _check_previews(run_id, layout, keys)
    return layout.bucket, layout.prefix


def batch_prefixes(run: BatchRun, outcomes_doc: dict[str, Any] | None) -> BatchPrefixes:
    """The batch run's prefixes from its own ``outcomes.json`` (``None``: not stored yet —
    only ``results/batches/<run>/``). The document must name this run; every stored image's
    result key must fit the layout, or the whole document is refused."""
    if outcomes_doc is None:
        return BatchPrefixes(run.bucket, run.batch)
    if not isinstance(outcomes_doc, dict) or outcomes_doc.get("run_id") != run.run_id:
        raise ViewerInputError(f"run {run.run_id}: its outcomes.json names another run")
    images: dict[int, tuple[str, str]] = {}
    previews: dict[int, dict[str, str]] = {}
    for outcome in outcomes_doc.get("outcomes") or []:
        if not isinstance(outcome, dict):
            raise ViewerInputError(f"run {run.run_id}: unexpected outcome {outcome!r}")
        index = validate_image(outcome.get("index"))
        if index is None or index in images:
            raise ViewerInputError(f"run {run.run_id}: bad or repeated outcome index "
                                   f"{outcome.get('index')!r}")
        if outcome.get("status") == "stored":
            images[index] = _image_prefix(run.run_id, outcome)
            previews[index] = preview_names(outcome.get("keys") or {})
    return BatchPrefixes(run.bucket, run.batch, images, previews)


def resolve_key(raw: str, run: RunPrefixes | BatchPrefixes,
                suffixes: tuple[str, ...] = SERVABLE_SUFFIXES) -> S3Location:
    """A key (``results/…`` or ``s3://bucket/results/…``) from a URL, if it is one of the run's.

    Refused: other buckets, empty or over-long keys, control characters, backslashes, a
    leading ``/``, empty, ``.`` or ``..`` segments (traversal), keys outside the run's
    prefixes, and suffixes the viewer does not serve.
    """
    if not isinstance(raw, str) or not raw:
        raise ViewerInputError("empty key")
    key, bucket = raw, run.bucket
    if raw.startswith("s3://"):
        bucket, key = _split_s3(raw)
        if bucket not in run.buckets:
            raise ViewerInputError(f"key {raw!r} is not in the run's bucket")
    if len(key) > KEY_MAX or any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise ViewerInputError("key too long or with control characters")
    if "\\" in key or key.startswith("/"):
        raise ViewerInputError(f"invalid key {raw!r}")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts) or posixpath.normpath(key) != key:
        raise ViewerInputError(f"invalid key {raw!r} (empty, '.' or '..' segment)")
    if not run.allows(bucket, key):
        raise ViewerInputError(f"key {raw!r} is outside this run's results and scratch")
    if not key.lower().endswith(suffixes):
        raise ViewerInputError(f"key {raw!r}: the viewer serves only {', '.join(suffixes)}")
    if key.lower().endswith(RESULTS_ONLY_SUFFIXES) and not run.in_results(bucket, key):
        raise ViewerInputError(f"key {raw!r}: GeoJSON is served from the run's stored "
                               "results only")
    if not all(_SAFE_PART.fullmatch(p) for p in parts):
        raise ViewerInputError(f"invalid key {raw!r}")
    return S3Location(bucket, key)
