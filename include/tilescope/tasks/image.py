"""The DAG's task bodies as plain functions: small JSON-able dicts in and out, S3 in between.

``prepare`` (preprocess) validates the image, plans regions and writes the decoded pixels once
to a scratch *tiled* TIFF, so every region task fetches only the tiles it needs with ranged
GETs instead of decoding the whole image again. ``analyze`` runs one region (or
``analyze_unit`` several: :func:`image_units`);
``synthesize`` merges; ``store`` writes the artefacts. Nothing here imports Airflow, so each
step is unit-testable against any S3 server, and the XComs stay small by construction.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from tilescope import deferred
from tilescope.archival import ArchivePolicy
from tilescope.deferred import SubmittedRegion
from tilescope.detections import Detections
from tilescope.errors import BadImageError, ConfigError, ImageBlockedError
from tilescope.handoffs import Prepared, StoreSummary
from tilescope.layout import (
    GEO_ARTIFACTS,
    THUMBNAIL_SIDE,
    ResultsLayout,
    ScratchLayout,
    delete_prefix,
    finding_uri,
    open_source,
    upload_tiled_tiff,
)
from tilescope.limits import RunLimits
from tilescope.models.base import DetectionModel
from tilescope.models.registry import model_categories, model_coco_ids
from tilescope.models.sagemaker import AsyncOutcome, SageMakerAsyncModel
from tilescope.moderation import ModerationPolicy, gate
from tilescope.outputs.geo import has_crs
from tilescope.outputs.writers import (
    OutputTargets,
    ResultTargets,
    coco_json,
    overlay_bytes,
    result_json,
    write_geo_outputs,
)
from tilescope.params import InferenceParams
from tilescope.pipeline import (
    analyze_region,
    full_image_detections,
    open_names,
    plan_image,
    synthesize,
)
from tilescope.previews import encode_preview, format_of_path, preview_format
from tilescope.readers import TiffReader, image_info, open_input
from tilescope.readers.base import DEFAULT_MAX_PIXELS
from tilescope.readers.sniff import SNIFF_BYTES, sniff_video
from tilescope.results import (
    ImageInfo,
    RegionFinding,
    Result,
    detections_from_compact,
    detections_to_compact,
)
from tilescope.slicing import MAX_MAP_LENGTH, Region
from tilescope.storage import (
    S3Client,
    object_size,
    parse_s3_uri,
    read_bytes,
    read_head,
    write_bytes,
)
from tilescope.units import (
    WorkUnit,
    is_unit_payload,
    region_units,
    run_unit,
    source_findings,
    unit_payload,
    unit_slice_budget,
)

#: SHA-256 of an image's bytes → the stored result it may reuse (or ``None``)
ReuseLookup = Callable[[str], Any]

#: findings larger than this go to S3 and travel as a key (Airflow XComs should stay small)
XCOM_BUDGET_BYTES = 48 * 1024


def prepare(image_uri: str, params: InferenceParams, *, client: S3Client, run: str,
            model_slice_size: int, max_pixels: int = DEFAULT_MAX_PIXELS,
            moderation: ModerationPolicy | None = None,
            full_image_model: DetectionModel | None = None,
            limits: RunLimits | None = None,
            reuse: ReuseLookup | None = None) -> tuple[list[dict[str, Any]], Prepared]:
    """Validate the image, plan its regions, stage its pixels for region tasks.

    ``limits`` (default: ``max_pixels`` and the default byte, slice and region budgets)
    refuses an object over budget from its size, and a plan over budget from the image
    header, before the pixels are decoded.

    Returns ``(regions, prepared)``: the regions to map analyze over (``Region.to_dict``;
    a video's work units) and the :class:`~tilescope.handoffs.Prepared` hand-off — boxes and
    keys only, never pixels. Its ``full_image`` holds the detections of one whole-image pass
    when ``full_image_model`` is given (the image is decoded here). ``moderation`` gates the
    image before anything is staged: a blocked image raises :class:`ImageBlockedError`
    (carrying the verdict); a passed one keeps its verdict in ``prepared.moderation``.
    ``reuse`` (SHA-256 → a stored result or ``None``) is asked once the bytes are hashed:
    an image that has a result already returns no regions and ``prepared.reused``
    (:mod:`tilescope.tasks.reuse`) — nothing decoded, staged or analysed.
    """
    limits = limits or RunLimits(max_pixels=max_pixels)
    size = object_size(image_uri, client)
    limits.check_size(image_uri, size)
    head = read_head(image_uri, SNIFF_BYTES, client, size=size)
    container = sniff_video(head)  # by signature, not by name
    if container:
        from tilescope.tasks.video import prepare_video

        return prepare_video(image_uri, params, container=container, client=client, run=run,
                             model_slice_size=model_slice_size, limits=limits,
                             moderation=moderation, full_image_model=full_image_model)
    reader, sha256 = open_input(image_uri, head, client=client, size=size,
                                max_pixels=limits.max_pixels, bands=params.band_list(),
                                magnification=params.slide_magnification())
    with reader:
        header_plan = plan_image(reader.width, reader.height, params, model_slice_size,
                                 max_regions=limits.max_regions)
        limits.check_plan(header_plan)
        # hashed once: a tiled TIFF's hash is a stream over the whole object
        digest = sha256() if reuse is not None else None
        stored = reuse(digest) if reuse is not None and digest else None
        if stored is not None:
            from tilescope.tasks.reuse import reused_prepared

            return [], reused_prepared(image_info(reader, image_uri, digest or "", size),
                                       header_plan, stored, run)
        reader.validate()
        image = image_info(reader, image_uri, digest or sha256(), size)
        verdict = gate(reader, image, moderation)
        plan = plan_image(*image.analysed_size, params, model_slice_size,
                          max_regions=limits.max_regions)
        limits.check_plan(plan)  # again: a late EXIF orientation may have swapped the sides
        scratch = ScratchLayout(parse_s3_uri(image_uri).bucket, image.image_id, run)
        if isinstance(reader, TiffReader) and reader.header.tiled and reader.pixels is None \
                and not (reader.microscopy and reader.microscopy.level):
            source_uri = image_uri  # already tiled: regions read its tiles directly
        else:
            # (a scene whose bands are chosen or stretched is staged as the 8-bit RGB the
            # model sees, converted once here, tile by tile: regions then read plain tiles;
            # so is a slide's reduced level, which region tasks then need not choose again)
            source_uri = scratch.uri("pixels.tif")
            upload_tiled_tiff(reader, source_uri, client)
        full_image = None
        if full_image_model is not None:
            full_image = detections_to_compact(
                full_image_detections(reader, full_image_model, params))
        thumbnail = reader.thumbnail(THUMBNAIL_SIDE)
    # encoded once the reader has let the decoded image go: the two never add up; in the
    # run's preview format already, so store keeps these very bytes (one encode a run)
    thumbnail_uri, thumbnail_bytes, media_type = scratch.thumbnail(
        thumbnail, preview_format(params.preview_format))
    write_bytes(thumbnail_uri, thumbnail_bytes, media_type, client)
    return [r.to_dict() for r in plan.regions], Prepared(
        image=image, plan=plan.summary(), source_uri=source_uri, thumbnail_uri=thumbnail_uri,
        full_image=full_image,
        full_image_names=open_names(full_image_model) if full_image_model else None,
        moderation=verdict, scratch_prefix=f"s3://{scratch.bucket}/{scratch.prefix}",
        ready_at=time.time())  # regions may run from now: their queue wait starts


def record_blocked(error: ImageBlockedError, params: InferenceParams, *, client: S3Client,
                   catalog_url: str | None, run_id: str | None = None) -> str:
    """Record a blocked image as its result: ``result.json`` with status ``blocked``, the
    verdict and no detections, and the catalog row. Returns the result URI."""
    image = ImageInfo.from_dict(error.image)
    result = Result(image=image, model=params.model, params=params.to_dict(), plan={},
                    regions=[], detections=Detections.empty(), category_names=[],
                    moderation=error.verdict,
                    description=f"not analysed: {error.verdict.get('reason', error)}")
    targets = result_targets(parse_s3_uri(image.uri).bucket, image.image_id, params)
    write_bytes(targets.result, result_json(result), "application/json", client)
    if catalog_url:
        from tilescope.outputs.catalog import connect, record_result

        engine = connect(catalog_url)
        try:
            record_result(engine, result, params.digest(), {"result": targets.result}, run_id)
        finally:
            engine.dispose()
    return targets.result


def analyze(region: dict[str, Any], source_uri: str, params: InferenceParams,
            model: DetectionModel, *, client: S3Client, scratch_prefix: str,
            attempt: int = 1) -> dict[str, Any]:
    """One region → a finding dict small enough for an XCom (large detections go to S3).
    (A video's work units run through :func:`tilescope.tasks.video.analyze_frames`.)"""
    with open_source(source_uri, client) as reader:
        finding = analyze_region(reader, Region.from_dict(region), model, params,
                                 attempt=attempt)
    return finding_payload(finding, scratch_prefix, client)


def image_units(prepared: Prepared, params: InferenceParams, *,
                slice_seconds: float | None, workers: int,
                max_units: int = MAX_MAP_LENGTH) -> list[dict[str, Any]] | None:
    """What a one-image run maps ``analyze`` over when its regions are packed into work
    units (:func:`tilescope.units.region_units`), or ``None`` to map one task per region.

    Packed only when the grid is ``auto`` (an explicit grid is the user choosing the
    fan-out: one task a region, as documented) and the model runs on the worker's cores and
    says what a slice costs (``slice_seconds``): a remote model's time is network-bound, and
    more tasks in flight are what make it faster. A video's frames are packed already."""
    if params.grid != "auto" or not slice_seconds or prepared.video or prepared.reused:
        return None
    units = region_units(prepared.slice_plan(),
                         unit_slice_budget(slice_seconds), workers=workers,
                         max_units=max_units)
    return [unit.to_dict() for unit in units] if units else None


def analyze_unit(unit_data: Mapping[str, Any], prepared: Prepared, params: InferenceParams,
                 model: DetectionModel, *, client: S3Client, budget: int = XCOM_BUDGET_BYTES,
                 attempt: int = 1) -> dict[str, Any]:
    """One work unit of a one-image run (several of its regions, one task) → the unit's
    finding dict. The source is opened once for all of them; each region is analyzed and
    merged exactly as :func:`analyze` does it."""
    unit = WorkUnit.from_dict(unit_data)
    finding = run_unit(unit, {0: prepared.slice_plan()}, {0: False},
                       lambda _: open_source(prepared.source_uri, client), model, params,
                       attempt=attempt)
    if finding.bad:  # the image itself turned out unreadable: no retry can help
        raise BadImageError(finding.bad[0])
    return unit_payload(finding, unit, prepared.scratch_prefix, budget, client)


def finding_payload(finding: RegionFinding, scratch_prefix: str,
                    client: S3Client) -> dict[str, Any]:
    """A finding as its XCom dict: detections over the budget go to S3 as a key."""
    data = finding.to_dict()
    if len(json.dumps(data)) > XCOM_BUDGET_BYTES:
        uri = finding_uri(scratch_prefix, finding.index)
        write_bytes(uri, json.dumps(data["detections"]).encode(), "application/json", client)
        data["detections"] = None
        data["detections_uri"] = uri
    return data


def submit_region(region: dict[str, Any], source_uri: str, model: SageMakerAsyncModel, *,
                  client: S3Client) -> SubmittedRegion:
    """The deferred ``analyze``'s first half: one region's slices submitted to a model that
    answers later (:mod:`tilescope.deferred`)."""
    with open_source(source_uri, client) as reader:
        return deferred.submit_region(reader, Region.from_dict(region), model)


def finish_region(region: dict[str, Any], submitted: SubmittedRegion,
                  outcomes: list[AsyncOutcome] | None, params: InferenceParams,
                  model: SageMakerAsyncModel, *, client: S3Client, scratch_prefix: str,
                  attempt: int = 1) -> dict[str, Any]:
    """The deferred ``analyze``'s second half: the same finding dict as :func:`analyze`."""
    finding = deferred.finish_region(Region.from_dict(region), submitted, outcomes, model,
                                     params, attempt=attempt)
    return finding_payload(finding, scratch_prefix, client)


def load_finding(data: Mapping[str, Any], client: S3Client) -> RegionFinding:
    """A finding dict from :func:`analyze`, with offloaded detections fetched back."""
    finding = RegionFinding.from_dict(data)
    if data.get("detections_uri"):
        finding.detections = detections_from_compact(
            json.loads(read_bytes(data["detections_uri"], client)))
    return finding


def combine(prepared: Prepared, findings: Sequence[Mapping[str, Any] | None],
            params: InferenceParams, model_name: str, *, client: S3Client,
            run_started: float | None = None) -> Result:
    """Merge the findings of every region (``min_success_ratio`` enforced) into a Result.

    ``findings`` may miss regions (their tasks failed): they count as failed regions.
    ``run_started`` (epoch seconds) adds the run's wall time as ``seconds.total`` (so the
    summary's ``model_share`` is model time over the whole run), plus region sums.
    """
    if prepared.video:  # merged per frame, never across frames
        from tilescope.tasks.video import combine_video

        return combine_video(prepared, findings, params, model_name, client=client,
                             run_started=run_started)
    plan = prepared.slice_plan()
    present = [f for f in findings if f]
    if present and is_unit_payload(present[0]):  # regions packed into units
        loaded = source_findings(present, client)[0].get(0, [])
    else:
        loaded = [load_finding(f, client) for f in present]
    result = synthesize(prepared.image, plan, loaded, params,
                        model_name=model_name,
                        category_names=model_categories(model_name, params.model_options),
                        coco_category_ids=model_coco_ids(model_name),
                        full_image_names=prepared.full_image_names,
                        moderation=prepared.moderation,
                        full_image=detections_from_compact(prepared.full_image)
                        if prepared.full_image else None)
    if run_started is not None:
        from tilescope.outputs.metrics import run_seconds

        result.seconds.update(run_seconds((f.seconds for f in loaded), run_started,
                                          time.time()))
    return result


def save_result(result: Result, scratch_prefix: str, client: S3Client) -> str:
    """Park the synthesized result in scratch for the store step (it is too big for XCom)."""
    uri = f"{scratch_prefix}result.json"
    write_bytes(uri, result_json(result), "application/json", client)
    return uri


def results_layout(bucket: str, image_id: str, params: InferenceParams) -> ResultsLayout:
    """Where this image's result is stored with these parameters (:mod:`tilescope.layout`)."""
    return ResultsLayout(bucket, image_id, params.digest())


def result_targets(bucket: str, image_id: str, params: InferenceParams) -> ResultTargets:
    """Where a stored result's ``result.json``, ``coco.json``, overlay and thumbnail go (the
    previews in the run's ``preview_format``)."""
    return ResultTargets(**results_layout(bucket, image_id, params).artifacts(
        preview_format(params.preview_format)))


def copy_keys(result: Result) -> dict[str, str]:
    """The catalog's result keys of the image's copies made before its ``result.json``: the
    anonymized copy (the transform step's) and the archival copy, those it has."""
    return {role: str(record["uri"]) for role, record in
            (("anonymized", result.anonymized), ("archive", result.archive)) if record}


def store(result_uri: str, prepared: Prepared, params: InferenceParams, *,
          client: S3Client, catalog_url: str | None, run_id: str | None = None,
          archive: ArchivePolicy | None = None) -> StoreSummary:
    """Write result JSON, COCO and overlay under ``results/``, record the catalog row, and
    remove the run's scratch objects. Returns a small summary (keys, counts, status).
    ``archive`` asks for an archival copy and says what becomes of the original
    (:mod:`tilescope.tasks.archive`, :mod:`tilescope.intake.keep`)."""
    result = Result.from_dict(json.loads(read_bytes(result_uri, client)))
    return store_result(result, prepared, params, client=client, catalog_url=catalog_url,
                        run_id=run_id, archive=archive)


def store_result(result: Result, prepared: Prepared, params: InferenceParams, *,
                 client: S3Client, catalog_url: str | None,
                 run_id: str | None = None,
                 archive: ArchivePolicy | None = None,
                 clean_scratch: bool = True) -> StoreSummary:
    """:func:`store` for a result already in hand (a batch's big image: its copies made
    and its original settled by the batch, its scratch kept — ``clean_scratch=False`` — until
    every image of the batch is stored, so that a retry of the batch's store finds it)."""
    from PIL import Image

    bucket = parse_s3_uri(result.image.uri).bucket
    targets = result_targets(bucket, result.image.image_id, params)
    fmt = preview_format(params.preview_format)
    staged = read_bytes(prepared.thumbnail_uri, client)
    with Image.open(io.BytesIO(staged)) as thumb:
        thumbnail = np.asarray(thumb.convert("RGB"))
    # The plain picture outlives scratch: the results viewer draws its boxes over it. Staged
    # in the run's format, it is kept as it is (a run staged by an older version: PNG).
    write_bytes(targets.thumbnail, staged if format_of_path(prepared.thumbnail_uri) == fmt
                else encode_preview(thumbnail, fmt), fmt.media_type, client)
    write_bytes(targets.coco, coco_json(result), "application/json", client)
    if prepared.video:  # a contact sheet of annotated frames
        from tilescope.tasks.video import video_overlay

        overlay = video_overlay(result, prepared, client, fmt)
    else:
        overlay = overlay_bytes(result, thumbnail, fmt)
    write_bytes(targets.overlay, overlay, fmt.media_type, client)
    keys = {"coco": targets.coco, "overlay": targets.overlay, "thumbnail": targets.thumbnail}
    if has_crs(result):  # a georeferenced scene: GeoJSON (lon/lat, native CRS), STAC Item
        layout = results_layout(bucket, result.image.image_id, params)
        keys.update(write_geo_outputs(result, OutputTargets(
            result=targets.result, **{role: layout.uri(name)
                                      for role, name in GEO_ARTIFACTS.items()}), client))
    if archive is not None and archive.active:  # stored and read back before result.json
        from tilescope.tasks.archive import store_archive

        if prepared.video:
            raise ConfigError("an archival copy is made of images, not videos")
        outcome = store_archive(prepared.source_uri, result.image,
                                results_layout(bucket, result.image.image_id, params),
                                archive, client, anonymized=result.anonymized)
        result.archive = outcome.to_dict()
    write_bytes(targets.result, result_json(result), "application/json", client)  # last
    keys = {"result": targets.result, **keys, **copy_keys(result)}
    if catalog_url:
        from tilescope.models.fingerprint import model_fingerprint
        from tilescope.outputs.catalog import connect, record_result

        engine = connect(catalog_url)
        try:
            record_result(engine, result, params.digest(), keys, run_id,
                          model_fingerprint(params.model, params.model_options))
        finally:
            engine.dispose()
    if result.archive and archive is not None:  # only now may the original be touched
        from tilescope.intake.keep import settle_original

        settle_original(result.image.uri, result.image.sha256, archive.keep_original, client)
    deleted = delete_prefix(prepared.scratch_prefix, client) if clean_scratch else 0
    return StoreSummary(image_id=result.image.image_id, image_uri=result.image.uri,
                        status=result.status, detections=len(result.detections),
                        counts=result.counts(), failed_regions=result.failed_regions,
                        regions=len(result.regions),
                        model_share=result.summary()["model_share"], keys=keys,
                        scratch_objects_deleted=deleted)
