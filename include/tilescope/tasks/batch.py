"""The DAG's task bodies for a *batch* run: many images in one ``tiled_inference`` run.

A batch is a list of images (``images`` Param: ``s3://`` URIs or prefixes ending in ``/``;
or a ``manifest``: a JSON object ``{"images": [{"uri": ..., "claim": ...}]}``, a JSON list
of URIs, or one URI per line — what ``s3_arrivals`` writes). Everything an image has in a
single-image run stays per image: its ``results/<image-id>/<params>/`` keys, catalog row,
asset event, notification and claim. What changes is what one mapped ``analyze`` task is:

* **preprocess** (:func:`prepare_batch`) plans every image. A small image (at most
  :data:`WHOLE_MAX_PIXELS`) is read once here to hash it and read its header, and is then
  read *whole* by the unit that analyzes it — no staging copy. A big image (or a tiled
  TIFF) is prepared exactly as a single-image run prepares it
  (:func:`tilescope.tasks.image.prepare`: staged or read in place) and its regions are
  spread over units. A video is prepared as in a single-image run (its sampled frames
  staged) and each frame is a range-read source like a big image's. All the sources'
  regions are packed together into work units
  (:mod:`tilescope.units`) sized by model cost; the plan of every image goes to
  ``scratch/batch/<run>/plan.json`` (XComs stay small: the mapped list only names sources
  by number — an image's is its index in the batch, a video's frames come after all images).
  An image refused here (not an image, empty, over a budget, blocked) is marked bad with its
  reason; the others go on.
* **analyze** (:func:`analyze_unit`) runs one unit; a small image found truncated or corrupt
  when the unit decodes it is reported bad in the unit's finding, without failing the unit.
* **synthesize** (:func:`combine_batch`) merges each image's region findings exactly as a
  single-image run does; ``min_success_ratio`` applies per image (a failed unit fails only the
  images whose slices it carried).
* **store** (:func:`store_batch`) writes each stored image's outputs and catalog row, and
  the per-image outcomes to ``outcomes.json``; with ``anonymize`` or an archival copy, each
  image's copies first and, once every row is committed, the keep policy for its original.
* **finalize** (:func:`settle_batch`) settles each image's claim: ``processed/``,
  ``quarantine/`` with its reason, or released for another attempt.

Nothing here imports Airflow.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from tilescope.archival import ArchivePolicy
from tilescope.errors import (
    BadImageError,
    ConfigError,
    HandoffError,
    ImageBlockedError,
    RegionsFailedError,
    TilescopeError,
)
from tilescope.handoffs import BatchPrepared, BatchStoreSummary, Prepared
from tilescope.layout import BatchLayout
from tilescope.limits import RunLimits
from tilescope.models.base import DetectionModel
from tilescope.models.registry import model_categories, model_coco_ids
from tilescope.moderation import ModerationPolicy
from tilescope.params import InferenceParams
from tilescope.pipeline import plan_image, synthesize
from tilescope.readers import reader_for_bytes, reopen_planned
from tilescope.readers.base import ImageReader, refuse_over_pixel_limit
from tilescope.readers.sniff import SNIFF_BYTES, sniff_format, sniff_video
from tilescope.results import ImageInfo, RegionFinding, Result
from tilescope.slicing import SlicePlan
from tilescope.storage import S3Client, is_s3_uri, parse_s3_uri, read_bytes, read_start, write_bytes
from tilescope.units import (
    BATCHED_SOURCE_SLICES,
    SourcePlan,
    WorkUnit,
    pack_units,
    run_unit,
    source_findings,
    unit_payload,
    unit_slice_budget,
)

if TYPE_CHECKING:  # SQLAlchemy loads only where the catalog is used
    import sqlalchemy as sa

    from tilescope.outputs.reuse import ResultIndex

#: images up to this many pixels are read whole by their unit (no staging): 4096² = 16.8 MP,
#: a 12 MP phone photo decoded is 36 MB
WHOLE_MAX_PIXELS = 4096 * 4096
#: the first read of each image: a photo of up to this size needs one request in all
FIRST_READ_BYTES = 1 << 20
#: S3 requests of one task at once (planning reads, stores, settling moves)
IO_THREADS = 8
#: images whose copies (anonymized, archival) store makes at once: each holds its picture
#: decoded (~7 bytes a pixel while an archive is encoded) and keeps a core busy
COPY_THREADS = max(1, os.cpu_count() or 1)
#: at most this many images in one batch run (each is a row in the plan, an entry in results)
MAX_BATCH_IMAGES = 10_000
#: the merged results of a batch, parked in its scratch for store
RESULTS_NAME = "results.json"
STORED, BAD, FAILED = "stored", "bad", "failed"


@dataclass
class BatchItem:
    """One input object of a batch and what preprocess learned about it."""

    index: int
    uri: str
    claim: dict[str, Any] | None = None
    image: dict[str, Any] | None = None  # ImageInfo.to_dict()
    plan: dict[str, Any] | None = None  # SlicePlan.summary()
    #: read whole by its unit; otherwise ``prepared`` is a single-image run's preparation
    whole: bool = True
    prepared: Prepared | None = None
    #: a video: the source number of its first sampled frame (the others follow)
    first_source: int | None = None
    moderation: dict[str, Any] | None = None
    #: why the image was refused (it is quarantined with this reason), and the error class
    bad: str | None = None
    error_class: str | None = None
    #: the stored result these bytes already have (:mod:`tilescope.tasks.reuse`): the image
    #: is in no unit, and store records a reused catalog row for it
    reused: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        """The object's key (what the UI and logs show)."""
        return parse_s3_uri(self.uri).key if is_s3_uri(self.uri) else self.uri

    @property
    def video(self) -> bool:
        return bool(self.prepared and self.prepared.video)

    @property
    def staged(self) -> Prepared:
        """The preparation of a big image or a video (prepared as a run of its own)."""
        if self.prepared is None:
            raise HandoffError(f"{self.uri} was planned to be read whole: no preparation")
        return self.prepared

    @property
    def frame_count(self) -> int:
        """How many sampled frames (unit sources) a video has; 0 for an image."""
        return len(self.prepared.video_frames) if self.prepared else 0

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.prepared is not None:
            data["prepared"] = self.prepared.to_dict()
        return {k: v for k, v in data.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchItem:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if known.get("prepared") is not None:
            known["prepared"] = Prepared.from_dict(known["prepared"])
        return cls(**known)


def batch_entries(params: Mapping[str, Any], *, client: S3Client) -> list[dict[str, Any]]:
    """The batch's images as ``[{"uri", "claim"?}]``, in order, each URI once: the
    ``images`` Param (URIs; a URI ending in ``/`` is a prefix: every object under it) then
    the ``manifest``'s entries."""
    entries: list[dict[str, Any]] = []
    for uri in params.get("images") or []:
        uri = str(uri).strip()
        if uri.endswith("/"):
            entries.extend({"uri": u} for u in _list_prefix(uri, client))
        elif uri:
            entries.append({"uri": uri})
    manifest = str(params.get("manifest") or "").strip()
    if manifest:
        entries.extend(parse_manifest(read_bytes(manifest, client), manifest))
    unique: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if not is_s3_uri(entry["uri"]):
            raise ConfigError(f"batch images must be s3:// URIs, got {entry['uri']!r}")
        unique.setdefault(entry["uri"], entry)
    if not unique:
        raise ConfigError("the batch is empty: no images in 'images' or the manifest")
    if len(unique) > MAX_BATCH_IMAGES:
        raise ConfigError(f"{len(unique):,} images in one batch, over the limit of "
                          f"{MAX_BATCH_IMAGES:,}: split it into several runs")
    return list(unique.values())


def parse_manifest(data: bytes, name: str = "manifest") -> list[dict[str, Any]]:
    """Entries of a manifest: ``{"images": [{"uri", "claim"?} | uri]}``, a JSON list, or
    one URI per line (blank lines and ``#`` comments skipped)."""
    text = data.decode("utf-8", "replace").strip()
    if text.startswith(("{", "[")):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{name} is not valid JSON: {exc}") from exc
        items = doc.get("images", []) if isinstance(doc, dict) else doc
        out = []
        for item in items:
            if isinstance(item, str):
                out.append({"uri": item})
            elif isinstance(item, dict) and isinstance(item.get("uri"), str):
                out.append({"uri": item["uri"], **{k: item[k] for k in ("claim", "screened")
                                                   if isinstance(item.get(k), dict)}})
            else:
                raise ConfigError(f"{name}: each image is a URI or {{'uri': ...}}, got {item!r}")
        return out
    return [{"uri": line.strip()} for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _list_prefix(prefix_uri: str, client: S3Client) -> list[str]:
    from tilescope.intake.arrivals import list_arrivals

    loc = parse_s3_uri(prefix_uri)
    return [a.uri for a in list_arrivals(client, loc.bucket, loc.key)]


def batch_layout(entries: Sequence[Mapping[str, Any]], run: str) -> BatchLayout:
    """The batch run's documents, in the bucket of its first image: the plan in scratch, the
    outcomes kept for good (finalize, notifications and the results viewer read them)."""
    return BatchLayout(parse_s3_uri(entries[0]["uri"]).bucket, run)


def _plan_item(index: int, entry: Mapping[str, Any], params: InferenceParams, *,
               client: S3Client, run: str, model_slice_size: int, limits: RunLimits,
               moderation: ModerationPolicy | None,
               reuse: ResultIndex | None = None) -> BatchItem:
    """Check and plan one image of the batch (see the module docstring)."""
    from tilescope.tasks.image import gate, prepare

    item = BatchItem(index, entry["uri"], claim=entry.get("claim"))
    try:
        if _plan_screened(item, entry.get("screened"), params, model_slice_size, limits,
                          moderation):
            return item
        # One ranged GET: a small image comes back whole, a big one tells its size.
        data, size = read_start(item.uri, FIRST_READ_BYTES, client)
        limits.check_size(item.uri, size)
        small = sniff_format(data[:SNIFF_BYTES]) not in (None, "TIFF") \
            and not sniff_video(data[:SNIFF_BYTES])
        if small and size <= 3 * WHOLE_MAX_PIXELS:
            if len(data) < size:
                data = read_bytes(item.uri, client)
            reader = reader_for_bytes(data, max_pixels=limits.max_pixels, name=item.uri)
            if reader.width * reader.height <= WHOLE_MAX_PIXELS:
                with reader:
                    image = ImageInfo(uri=item.uri, width=reader.width, height=reader.height,
                                      sha256=hashlib.sha256(data).hexdigest(),
                                      format=reader.header.format, bytes=size)
                    plan = _plan_whole(image, params, model_slice_size, limits)
                    item.moderation = gate(reader, image, moderation)
                item.image, item.plan = image.to_dict(), plan
                return item
            reader.close()
        # big, tiled or a video: prepared exactly as a run of its own would prepare it
        # (its own regions or units are not kept: prepare_batch packs every source anew)
        _, prepared = prepare(item.uri, params, client=client, run=f"{run}-{index}",
                              model_slice_size=model_slice_size, moderation=moderation,
                              limits=limits, reuse=reuse)
        item.whole, item.reused = False, prepared.reused
        item.image, item.plan = prepared.image.to_dict(), prepared.plan
        item.moderation = prepared.moderation
        item.prepared = prepared
    except TilescopeError as exc:
        if exc.retryable:
            raise
        item.bad, item.error_class = str(exc), type(exc).__name__
        if isinstance(exc, ImageBlockedError):
            item.image, item.moderation = exc.image, exc.verdict
    return item


def _plan_screened(item: BatchItem, facts: Any, params: InferenceParams,
                   model_slice_size: int, limits: RunLimits,
                   moderation: ModerationPolicy | None) -> bool:
    """Plan a small image from what ``s3_arrivals``' screen read of it (the manifest's
    ``screened`` facts: SHA-256, size, format, oriented pixel size), without reading it again.
    ``False`` (read it as usual) when the facts are missing or incomplete, or a moderation
    gate must look at the pixels. The facts are checked when the unit reads the image: bytes
    that do not match the SHA-256, or pixels of another size, make it a bad image."""
    if moderation is not None and moderation.enabled:
        return False
    try:
        image = ImageInfo(uri=item.uri, width=int(facts["width"]), height=int(facts["height"]),
                          sha256=str(facts["sha256"]), format=str(facts["format"]),
                          bytes=int(facts["bytes"]))
    except (TypeError, KeyError, ValueError):
        return False
    pixels = image.width * image.height
    if image.format == "TIFF" or not 0 < pixels <= WHOLE_MAX_PIXELS or len(image.sha256) != 64:
        return False
    refuse_over_pixel_limit(item.uri, image.width, image.height, limits.max_pixels)
    item.image, item.plan = image.to_dict(), _plan_whole(image, params, model_slice_size,
                                                         limits)
    return True


def _plan_whole(image: ImageInfo, params: InferenceParams, model_slice_size: int,
                limits: RunLimits) -> dict[str, Any]:
    """The plan summary of a small image read whole by its unit, within the run's budgets."""
    plan = plan_image(image.width, image.height, params, model_slice_size,
                      max_regions=limits.max_regions)
    limits.check_plan(plan)
    return plan.summary()


def prepare_batch(entries: Sequence[Mapping[str, Any]], params: InferenceParams, *,
                  client: S3Client, run: str, model_slice_size: int,
                  slice_seconds: float | None = None, limits: RunLimits | None = None,
                  moderation: ModerationPolicy | None = None,
                  reuse: ResultIndex | None = None
                  ) -> tuple[list[dict[str, Any]], BatchPrepared]:
    """Plan every image and pack the work units. Returns ``(items to map over, prepared)``:
    the mapped items are work units (of images and videos' frames alike); ``prepared`` is
    small — the plan itself is written to ``<scratch>/plan.json``. ``reuse`` finds the
    images that have a stored result already (one catalog query for the small ones): they
    are dropped from the units."""
    if params.full_image_pass:
        raise ConfigError("full_image_pass is not supported in batch runs (one image per run)")
    limits = limits or RunLimits()
    layout = batch_layout(entries, run)
    with ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="plan") as pool:
        items = list(pool.map(lambda pair: _plan_item(
            pair[0], pair[1], params, client=client, run=run,
            model_slice_size=model_slice_size, limits=limits, moderation=moderation,
            reuse=reuse), enumerate(entries)))
    if reuse is not None:
        from tilescope.tasks.reuse import mark_reused

        mark_reused(items, reuse)
    if params.anonymize:
        _refuse_anonymized_videos(items)
    sources: list[SourcePlan] = []
    next_frame = len(items)  # a video's frames are numbered after every image
    for item in items:
        if item.bad or item.reused:
            continue
        plan = SlicePlan.from_summary(item.plan or {})
        if item.video:  # its sampled frames are sources like any other
            from tilescope.tasks.video import frame_sources

            item.first_source = next_frame
            sources.extend(frame_sources(plan, item.frame_count, next_frame))
            next_frame += item.frame_count
            continue
        sources.append(SourcePlan(item.index, plan, whole=item.whole))
    units = pack_units(sources, unit_slice_budget(slice_seconds),
                       max_units=limits.max_regions)
    table = _SourceTable(items)
    mapped = [{**unit.to_dict(), "name": _unit_label(unit, table)} for unit in units]
    write_bytes(layout.plan_uri, json.dumps(
        {"items": [i.to_dict() for i in items]}).encode(), "application/json", client)
    return mapped, BatchPrepared(plan_uri=layout.plan_uri, outcomes_uri=layout.outcomes_uri,
                                 images=len(items), bad=sum(1 for i in items if i.bad),
                                 units=len(units), scratch_prefix=layout.scratch_uri,
                                 ready_at=time.time())


class _SourceTable:
    """Which image (and which of a video's frames) each source number of a batch is."""

    def __init__(self, items: Sequence[BatchItem]) -> None:
        self.items = list(items)
        self.videos = [i for i in self.items if i.first_source is not None]

    def item(self, source: int) -> tuple[BatchItem, int | None]:
        """``(item, frame position)``; the position is ``None`` for an image."""
        if source < len(self.items):
            return self.items[source], None
        for item in self.videos:
            position = source - (item.first_source or 0)
            if 0 <= position < item.frame_count:
                return item, position
        raise KeyError(f"no source {source} in this batch")

    def plan(self, source: int) -> SlicePlan:
        return SlicePlan.from_summary(self.item(source)[0].plan or {})

    def name(self, source: int) -> str:
        """``a.jpg``, or ``clip.avi f120`` for a video's frame."""
        item, position = self.item(source)
        if position is None:
            return item.name
        index = int(item.prepared.video_frames[position][0]) if item.prepared else 0
        return f"{item.name} f{index}"


def _refuse_anonymized_videos(items: Sequence[BatchItem]) -> None:
    """``anonymize`` copies images: a batch with a video is refused before anything is
    analysed (re-encoding a video is out of scope; a single-image run refuses it too)."""
    videos = [item.uri for item in items if item.video and not item.reused]
    if videos:
        more = f" (and {len(videos) - 1} more videos)" if len(videos) > 1 else ""
        raise ConfigError(f"{videos[0]}{more} is a video: anonymize works on images "
                          "(re-encoding a video is out of scope)")


def _unit_label(unit: WorkUnit, table: _SourceTable) -> str:
    """``a.jpg`` · ``a.jpg … z.jpg (40 images)`` · ``big.tif r0c1–r1c1`` ·
    ``clip.avi f0 … clip.avi f90 (4 frames)``."""
    sources = unit.sources
    first, last = table.name(sources[0]), table.name(sources[-1])
    if len(sources) == 1:
        item, _ = table.item(sources[0])
        part = unit.parts[0]
        regions = table.plan(sources[0]).regions
        if item.whole or (part.first == 0 and part.stop == len(regions)):
            return first
        return f"{first} {regions[part.first].name}–{regions[unit.parts[-1].stop - 1].name}"
    kinds = {table.item(s)[1] is None for s in sources}
    what = "images" if kinds == {True} else "frames" if kinds == {False} else "sources"
    return f"{first} … {last} ({len(sources)} {what})"


def load_items(prepared: BatchPrepared, client: S3Client) -> list[BatchItem]:
    """The batch's items from its ``plan.json``."""
    doc = json.loads(read_bytes(prepared.plan_uri, client))
    return [BatchItem.from_dict(d) for d in doc["items"]]


def analyze_unit(unit_data: Mapping[str, Any], prepared: BatchPrepared,
                 params: InferenceParams, model: DetectionModel, *, client: S3Client,
                 budget: int, attempt: int = 1,
                 max_pixels: int | None = None) -> dict[str, Any]:
    """One work unit → its finding dict (over ``budget`` bytes: written to scratch and
    passed as a key). A video's frames are opened from their staged TIFFs."""
    from tilescope.layout import open_source

    items = load_items(prepared, client)
    table = _SourceTable(items)
    unit = WorkUnit.from_dict(unit_data)
    plans = {s: table.plan(s) for s in unit.sources}
    whole = {s: table.item(s)[1] is None and table.item(s)[0].whole for s in unit.sources}
    frames: dict[int, Any] = {}  # video item → its frame opener

    def open_reader(source: int) -> Any:
        item, position = table.item(source)
        if position is not None:
            if item.index not in frames:
                from tilescope.tasks.video import frame_opener

                frames[item.index] = frame_opener(item.staged, client,
                                                  item.first_source or 0)
            return frames[item.index](source)
        if not item.whole:
            return open_source(item.staged.source_uri, client)
        # small ones decoded here, on the read-ahead thread, while the model runs
        reader = reopen_planned(item.uri, (item.image or {}).get("sha256", ""), client=client,
                                max_pixels=max_pixels or RunLimits().max_pixels,
                                decode=plans[source].slice_count <= BATCHED_SOURCE_SLICES)
        plan = plans[source]
        if (reader.width, reader.height) != (plan.width, plan.height):
            reader.close()
            raise BadImageError(f"{item.uri} is {reader.width}×{reader.height}, planned as "
                                f"{plan.width}×{plan.height}: not analysed")
        return reader

    with ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="companions") as pool:
        writes: list[Any] = []

        def write_companions(source: int, findings: list[RegionFinding],
                             reader: Any) -> None:
            """A small image's thumbnail, overlay and COCO go out from here, while its pixels
            are at hand; ``store`` then writes only its ``result.json`` (the commit point)."""
            from tilescope.layout import THUMBNAIL_SIDE

            result = _image_result(items[source], findings, params)
            writes.append(pool.submit(_write_companions, result,
                                      reader.thumbnail(THUMBNAIL_SIDE), params, client))

        finding = run_unit(unit, plans, whole, open_reader, model, params, attempt=attempt,
                           on_source_done=write_companions)
        for write in writes:
            write.result()
    return unit_payload(finding, unit, prepared.scratch_prefix, budget, client)


def _image_result(item: BatchItem, findings: Sequence[RegionFinding],
                  params: InferenceParams) -> Result:
    """A small image's result from its region findings, exactly as a single-image run
    merges them (``min_success_ratio`` enforced)."""
    return synthesize(ImageInfo.from_dict(item.image or {}),
                      SlicePlan.from_summary(item.plan or {}), findings, params,
                      model_name=params.model,
                      category_names=model_categories(params.model, params.model_options),
                      coco_category_ids=model_coco_ids(params.model),
                      moderation=item.moderation)


def _write_companions(result: Result, thumbnail: Any, params: InferenceParams,
                      client: S3Client) -> None:
    """The thumbnail, ``coco.json`` and the overlay (in the run's preview format) beside the
    image's future ``result.json``."""
    from tilescope.outputs.writers import coco_json, overlay_bytes
    from tilescope.previews import encode_preview, preview_format
    from tilescope.tasks.image import result_targets

    fmt = preview_format(params.preview_format)
    targets = result_targets(parse_s3_uri(result.image.uri).bucket, result.image.image_id,
                             params)
    write_bytes(targets.thumbnail, encode_preview(thumbnail, fmt), fmt.media_type, client)
    write_bytes(targets.coco, coco_json(result), "application/json", client)
    write_bytes(targets.overlay, overlay_bytes(result, thumbnail, fmt), fmt.media_type, client)


def combine_batch(prepared: BatchPrepared, findings: Iterable[Mapping[str, Any] | None],
                  params: InferenceParams, model_name: str, *, client: S3Client,
                  run_started: float | None = None) -> str:
    """Merge each image's findings into its Result (``min_success_ratio`` per image) and
    write every result and refusal to ``<scratch>/results.json``; returns that URI."""
    from tilescope.tasks.image import combine

    items = load_items(prepared, client)
    regions, bad_sources = source_findings(findings, client)
    entries: list[dict[str, Any]] = []
    for item in items:
        entry: dict[str, Any] = {"index": item.index}
        try:
            if item.reused:  # analysed before: the stored result stands
                entry.update(status=STORED, reused=item.reused)
                entries.append(entry)
                continue
            if item.bad:
                raise _Refused(item.bad, item.error_class or "BadImageError")
            if item.index in bad_sources:
                raise _Refused(bad_sources[item.index], "BadImageError")
            if item.whole:
                result = _image_result(item, regions.get(item.index, []), params)
            elif item.video:  # merged per frame, never across frames
                from tilescope.tasks.video import video_result

                first = item.first_source or 0
                result = video_result(item.staged, {
                    position: regions.get(first + position, [])
                    for position in range(item.frame_count)}, params, model_name)
            else:
                result = combine(item.staged,
                                 [f.to_dict() for f in regions.get(item.index, [])], params,
                                 model_name, client=client)
            if run_started is not None:
                result.seconds["total"] = max(0.0, time.time() - run_started)
            entry.update(status=STORED, result=result.to_dict())
        except _Refused as refused:
            entry.update(status=BAD, error=refused.reason, error_class=refused.error_class)
        except RegionsFailedError as exc:
            entry.update(status=FAILED, error=str(exc), error_class=type(exc).__name__)
        entries.append(entry)
    uri = prepared.scratch_prefix + RESULTS_NAME
    write_bytes(uri, json.dumps({"results": entries}).encode(), "application/json", client)
    return uri


class _Refused(Exception):
    def __init__(self, reason: str, error_class: str) -> None:
        super().__init__(reason)
        self.reason, self.error_class = reason, error_class


@dataclass
class ItemOutcome:
    """How one image of a batch ended (what finalize settles and notifies)."""

    index: int
    uri: str
    status: str
    image_id: str | None = None
    keys: dict[str, str] = field(default_factory=dict)
    detections: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    result_status: str | None = None
    error: str | None = None
    error_class: str | None = None
    #: the catalog row whose stored result this image reused (``None``: analysed)
    reused_from: int | None = None

    def asset_extra(self) -> dict[str, Any]:
        """The results-asset event extra, as a single-image run's ``store`` emits it."""
        return {"image_id": self.image_id, "image_uri": self.uri, "status": self.result_status,
                "detections": self.detections, "counts": self.counts,
                "result": self.keys.get("result")}


def store_batch(results_uri: str, prepared: BatchPrepared, params: InferenceParams, *,
                client: S3Client, catalog_url: str | None, run_id: str | None = None,
                archive: ArchivePolicy | None = None
                ) -> tuple[BatchStoreSummary, list[ItemOutcome]]:
    """Write every stored image's ``result.json``, COCO, overlay and thumbnail under its own
    ``results/`` prefix and its catalog row (one transaction). Writes the per-image outcomes
    to the batch's ``outcomes.json``, then removes the big images' scratch. Returns a small
    summary and the outcomes.

    Each image's copies — anonymized (``anonymize``) and archival (``archive``) — are made
    before its ``result.json``, as in a run of its own; only once every catalog row is
    committed are the originals settled by ``keep_original``
    (:func:`tilescope.intake.keep.settle_original`). An image whose copy cannot be made for
    a reason no retry changes (a :class:`TilescopeError` that is not retryable: a WebP over
    16383 px, a scene with ``replace``, a video, an original changed since planning) is
    ``failed`` on its own — no result, no row, its original untouched — and the others are
    stored; anything retryable (S3, a copy that does not read back) fails the store, whose
    retry redoes every image (nothing was settled yet, or the settled ones' copies are taken
    back from their ``result.json``)."""
    items = load_items(prepared, client)
    entries = json.loads(read_bytes(results_uri, client))["results"]
    by_index = {item.index: item for item in items}
    archive = archive if archive is not None and archive.active else None
    clashes = _replace_clashes(entries, by_index, archive)
    copying = threading.BoundedSemaphore(COPY_THREADS)

    def store_one(entry: Mapping[str, Any]) -> tuple[ItemOutcome, Result | None]:
        item = by_index[int(entry["index"])]
        outcome = ItemOutcome(item.index, item.uri, entry["status"],
                              image_id=(item.image or {}).get("image_id"),
                              error=entry.get("error"), error_class=entry.get("error_class"))
        if entry["status"] != STORED:
            return outcome, None
        if entry.get("reused"):
            from tilescope.tasks.reuse import reused_outcome

            for name, value in reused_outcome(entry["reused"], item.uri).items():
                setattr(outcome, name, value)
            return outcome, None
        result = Result.from_dict(entry["result"])
        try:  # before its result.json, as a single-image run's transform and store
            if item.index in clashes:
                raise ConfigError(clashes[item.index])
            with copying:
                _keep_copies(item, result, params, archive, client)
        except TilescopeError as exc:
            if exc.retryable:
                raise
            outcome.status, outcome.error_class = FAILED, type(exc).__name__
            outcome.error = f"its copies were not made: {exc}"
            return outcome, None
        outcome.keys = _write_outputs(item, result, params, client)
        outcome.detections, outcome.counts = len(result.detections), result.counts()
        outcome.result_status = result.status
        return outcome, result

    with ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="store") as pool:
        done = list(pool.map(store_one, entries))
    if catalog_url:
        from tilescope.models.fingerprint import model_fingerprint
        from tilescope.outputs.catalog import connect, record_results
        from tilescope.tasks.reuse import record_batch_reused

        engine = connect(catalog_url)
        try:
            record_results(engine, [(result, params.digest(), outcome.keys)
                                    for outcome, result in done if result is not None],
                           run_id, model_fingerprint(params.model, params.model_options))
        finally:
            engine.dispose()
        record_batch_reused(catalog_url, entries, by_index, run_id=run_id)
    if archive is not None:  # every row committed: only now may an original be touched
        _settle_originals([result for _, result in done if result is not None], archive,
                          client)
    outcomes = [outcome for outcome, _ in done]
    write_bytes(prepared.outcomes_uri,
                json.dumps({"run_id": run_id, "outcomes": [asdict(o) for o in outcomes]}
                           ).encode(), "application/json", client)
    _clean_staged([by_index[o.index] for o in outcomes if o.status == STORED], client)
    stored = [o for o in outcomes if o.status == STORED]
    return BatchStoreSummary(images=len(outcomes), stored=len(stored),
                             bad=sum(1 for o in outcomes if o.status == BAD),
                             failed=sum(1 for o in outcomes if o.status == FAILED),
                             detections=sum(o.detections or 0 for o in stored)), outcomes


def _replace_clashes(entries: Sequence[Mapping[str, Any]], by_index: Mapping[int, BatchItem],
                     archive: ArchivePolicy | None) -> dict[int, str]:
    """Images whose ``replace`` copy would land where another image of the batch puts its
    own (``incoming/a.jpg`` and ``incoming/a.png`` both → ``processed/a.webp``): index → why
    it is refused. The first keeps the place; a later copy overwriting it would leave the
    first original deleted for a copy of another picture."""
    if archive is None or archive.keep_original != "replace":
        return {}
    from tilescope.intake.keep import replacement_key

    taken: dict[str, str] = {}
    clashes: dict[int, str] = {}
    for entry in entries:
        item = by_index[int(entry["index"])]
        if entry["status"] != STORED or entry.get("reused"):
            continue
        key = replacement_key(parse_s3_uri(item.uri).key, archive.extension)
        if key in taken:
            clashes[item.index] = (f"keep_original=replace: its archival copy would take "
                                   f"{key}, the place of {taken[key]}'s: kept")
        else:
            taken[key] = item.uri
    return clashes


def _keep_copies(item: BatchItem, result: Result, params: InferenceParams,
                 archive: ArchivePolicy | None, client: S3Client) -> None:
    """One image's copies beside its result, recorded in ``result``: the anonymized copy
    (``anonymize``) and the archival copy (``archive``: of the anonymized pixels when both),
    from one reading of its pixels — a small image's original read again (its SHA-256
    checked: the bytes that were analysed), a big one's staged or in-place pixels. A retry
    after the keep policy removed an original that was also the source takes back what the
    earlier attempt stored and verified (:func:`tilescope.tasks.archive.earlier_record`)."""
    from tilescope.tasks.archive import earlier_archive, earlier_record, store_archive
    from tilescope.tasks.image import results_layout
    from tilescope.tasks.transform import anonymize_beside

    if archive is not None and item.video:
        raise ConfigError(f"{item.uri} is a video: an archival copy is made of images")
    source_uri = item.uri if item.whole else item.staged.source_uri
    layout = results_layout(parse_s3_uri(item.uri).bucket, result.image.image_id, params)
    anonymized = earlier_record(source_uri, result.image, layout, "anonymized", client) \
        if params.anonymize else None
    archived = earlier_archive(source_uri, result.image, layout, client) if archive else None
    if (params.anonymize and anonymized is None) or (archive and archived is None):
        with _open_pixels(item, result, client) as reader:
            if params.anonymize and anonymized is None:
                anonymized = anonymize_beside(result, reader, params, client)
            if archive is not None and archived is None:
                archived = store_archive(source_uri, result.image, layout, archive, client,
                                         anonymized=anonymized, reader=reader)
    result.anonymized = anonymized
    result.archive = archived.to_dict() if archived else None


def _open_pixels(item: BatchItem, result: Result, client: S3Client) -> ImageReader:
    """The pixels the model saw: a small image's original read again and checked against
    its SHA-256 (changed meanwhile: :class:`BadImageError`), a big one's staged or in-place
    tiled TIFF (still in scratch: removed once every image is stored)."""
    from tilescope.layout import open_source

    if item.whole:
        return reopen_planned(item.uri, result.image.sha256, client=client,
                              max_pixels=RunLimits().max_pixels)
    return open_source(item.staged.source_uri, client)


def _settle_originals(results: Sequence[Result], archive: ArchivePolicy,
                      client: S3Client) -> None:
    """``keep_original`` applied to every stored image with a verified archival copy, as a
    run of its own applies it (:func:`tilescope.intake.keep.settle_original`: deleted only
    while still the analysed bytes, conditional on the ETag)."""
    from tilescope.intake.keep import settle_original

    archived = [result for result in results if result.archive]
    with ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="keep") as pool:
        list(pool.map(lambda result: settle_original(
            result.image.uri, result.image.sha256, archive.keep_original, client), archived))


def _clean_staged(items: Iterable[BatchItem], client: S3Client) -> None:
    """Remove the stored big images' scratch (kept until now: a retry of store reads it)."""
    from tilescope.layout import delete_prefix

    staged = [item.staged.scratch_prefix for item in items
              if item.prepared is not None and not item.reused]
    with ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="clean") as pool:
        list(pool.map(lambda prefix: delete_prefix(prefix, client), staged))


def _write_outputs(item: BatchItem, result: Result, params: InferenceParams,
                   client: S3Client) -> dict[str, str]:
    """One image's outputs: a big image's as a run of its own stores them (its scratch kept
    for now: :func:`_clean_staged`); a small one's ``result.json`` beside the companions
    its unit wrote."""
    from tilescope.outputs.writers import result_json
    from tilescope.tasks.image import copy_keys, result_targets, store_result

    if not item.whole:
        return store_result(result, item.staged, params, client=client,
                            catalog_url=None, clean_scratch=False).keys
    targets = result_targets(parse_s3_uri(item.uri).bucket, result.image.image_id, params)
    write_bytes(targets.result, result_json(result), "application/json", client)
    return {**targets.keys(), **copy_keys(result)}


def batch_event(prepared: BatchPrepared, summary: BatchStoreSummary) -> dict[str, Any]:
    """The one results-asset event extra of a big batch: where its per-image outcomes are,
    and its totals (consumers read the images from the outcomes document)."""
    return {"batch": {"outcomes": prepared.outcomes_uri,
                      "images": summary.images, "stored": summary.stored},
            "detections": summary.detections, "status": "batch"}


def load_outcomes(prepared: BatchPrepared, client: S3Client) -> list[ItemOutcome] | None:
    """The outcomes ``store_batch`` wrote, or ``None`` if store never got that far."""
    try:
        doc = json.loads(read_bytes(prepared.outcomes_uri, client))
    except BadImageError:  # missing object
        return None
    return [ItemOutcome(**o) for o in doc["outcomes"]]


def settle_batch(prepared: BatchPrepared, *, client: S3Client, engine: sa.Engine | None,
                 run_id: str | None) -> list[ItemOutcome]:
    """End of a batch run: each claimed image's original to ``processed/`` (stored),
    ``quarantine/`` with its reason (bad input), or its claim released (anything else);
    then the batch's scratch is removed (kept when store never ran, so clearing a failed
    unit and its downstream can still complete the run). Returns every image's outcome
    (images store never reached count as failed, bad ones found in preprocess as bad)."""
    from tilescope.intake.claims import Claim
    from tilescope.intake.flow import quarantine_claimed, settle
    from tilescope.layout import delete_prefix

    items = load_items(prepared, client)
    outcomes = load_outcomes(prepared, client)
    # scratch goes once store has run (clearing a failed unit can still complete the run
    # before that)
    store_ran = outcomes is not None
    if outcomes is None:
        outcomes = [ItemOutcome(i.index, i.uri, BAD if i.bad else FAILED,
                                image_id=(i.image or {}).get("image_id"),
                                error=i.bad or "the run failed before this image was stored",
                                error_class=i.error_class) for i in items]
    by_index = {item.index: item for item in items}

    def settle_one(outcome: ItemOutcome) -> None:
        claim = by_index[outcome.index].claim
        if not claim or engine is None:
            return
        owned = Claim.from_dict(claim)
        if outcome.status == BAD:
            quarantine_claimed(client, engine, owned, reason=outcome.error or "bad input",
                               error_class=outcome.error_class or "BadImageError",
                               run_id=run_id)
        else:
            settle(client, engine, owned, stored=outcome.status == STORED)

    with ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="settle") as pool:
        list(pool.map(settle_one, outcomes))
    if store_ran:
        delete_prefix(prepared.scratch_prefix, client)
    return outcomes
