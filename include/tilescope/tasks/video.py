"""The DAG's task bodies for a video: the same DAG, the same tasks; a video's sampled frames
are the sources of its work units.

``prepare_video`` (preprocess) downloads the object once to a local temporary file (FFmpeg
seeks around containers; a file keeps a 2 GiB video out of memory), decodes the sampled
frames in one pass and stages each as a tiled TIFF under the run's scratch prefix — exactly
how an image is staged. Each staged frame is then a range-read source of
:mod:`tilescope.units`: the frames' regions are packed into work units sized by model cost
(:func:`tilescope.units.pack_units`) and each unit runs with :func:`tilescope.units.run_unit`,
in a run of its own (:func:`analyze_frames`) as in a batch (the frames packed with the other
images' sources). ``combine_video`` merges per frame, never across frames;
``video_overlay`` draws the contact sheet for ``store``. Nothing here imports Airflow
or :mod:`tilescope.tasks.image`.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from tilescope.errors import BadImageError, ConfigError, StorageError
from tilescope.handoffs import Prepared
from tilescope.layout import (
    THUMBNAIL_SIDE,
    ScratchLayout,
    delete_prefix,
    open_source,
    upload_tiled_tiff,
)
from tilescope.limits import RunLimits
from tilescope.models.base import DetectionModel
from tilescope.models.registry import model_categories, model_coco_ids, model_slice_seconds
from tilescope.moderation import ModerationPolicy, gate
from tilescope.outputs.contact_sheet import pack_cells, render_contact_sheet, unpack_cells
from tilescope.params import InferenceParams
from tilescope.previews import PreviewFormat, preview_format
from tilescope.readers.array import ArrayReader
from tilescope.readers.base import ImageReader
from tilescope.readers.sniff import SNIFF_BYTES, sniff_video
from tilescope.results import ImageInfo, RegionFinding, Result, VideoFrame
from tilescope.settings import TMP
from tilescope.slicing import SlicePlan
from tilescope.storage import (
    S3Client,
    default_s3_client,
    is_s3_uri,
    parse_s3_uri,
    read_bytes,
    read_head,
    sha256_hex,
    write_bytes,
)
from tilescope.units import (
    OpenReader,
    SourcePlan,
    WorkUnit,
    pack_units,
    run_unit,
    source_findings,
    span_label,
    unit_payload,
    unit_slice_budget,
)
from tilescope.video.decoder import VideoSource
from tilescope.video.pipeline import frame_findings, sample_video, synthesize_video

#: staged frames being encoded/uploaded at once while decoding continues
_UPLOADS_IN_FLIGHT = 4
#: frames up to this size decoded (a 4K frame is 25 MB) are fetched whole with one GET (and
#: opened ahead while the model works: :func:`tilescope.units.run_unit`)
WHOLE_FRAME_BYTES = 64 << 20


def video_container(uri: str, client: S3Client | None = None,
                    size: int | None = None) -> str | None:
    """The object's video container from its first bytes (one ranged GET), or ``None``.
    ``size`` (if known) saves a HEAD request."""
    try:
        return sniff_video(read_head(uri, SNIFF_BYTES, client, size=size))
    except BadImageError:
        return None  # missing: the image path reports it as it always has


def frame_uri(frames_prefix: str, frame_index: int) -> str:
    """Where a sampled frame is staged: ``<scratch>/frames/<frame number>.tif``."""
    return f"{frames_prefix}{frame_index:07d}.tif"


@contextmanager
def local_copy(uri: str, client: S3Client | None) -> Iterator[tuple[str, str]]:
    """``(path, sha256)`` of the object as a local file: an ``s3://`` object is downloaded
    once to a temporary file (deleted afterwards; without ``client``, through
    :func:`tilescope.storage.default_s3_client`); a local path is used in place."""
    if not is_s3_uri(uri):
        yield uri, sha256_hex(uri)
        return
    loc = parse_s3_uri(uri)
    with tempfile.NamedTemporaryFile(suffix=".video",
                                     dir=TMP.get()) as tmp:
        try:
            (client or default_s3_client()).download_file(loc.bucket, loc.key, tmp.name)
        except Exception as exc:
            raise StorageError(f"downloading {uri} failed: {exc}") from exc
        yield tmp.name, sha256_hex(tmp.name)


def prepare_video(uri: str, params: InferenceParams, *, container: str, client: S3Client,
                  run: str, model_slice_size: int, limits: RunLimits,
                  moderation: ModerationPolicy | None = None,
                  full_image_model: DetectionModel | None = None
                  ) -> tuple[list[dict[str, Any]], Prepared]:
    """Check, sample, stage and plan a video: ``(units, prepared)`` as an image's
    ``prepare``, with ``prepared.video`` (the stream's facts, the sampled frames as
    ``[frame_index, timestamp_ms]`` rows, the contact sheet's cells). The units to map over
    are the frames' regions packed by model cost, at most ``limits.max_regions`` of them.

    Over-budget videos are refused from the header before decoding; a stream found truncated
    or corrupt while decoding removes whatever was staged before the error is raised.
    """
    if params.full_image_pass or full_image_model is not None:
        raise ConfigError("full_image_pass is not supported for video")
    with local_copy(uri, client) as (path, sha256), \
            VideoSource(path, container=container, name=uri) as source:
        scratch = ScratchLayout(parse_s3_uri(uri).bucket, sha256[:16], run)
        frames_prefix = scratch.uri("frames/")
        sampled, frames = sample_video(source, params, model_slice_size, limits)
        try:
            pending: list[Future[None]] = []
            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="stage") as pool:
                for frame, pixels in frames:
                    # encoding (zstd) and uploads overlap decoding; a bounded queue keeps
                    # at most a few frames in memory
                    pending.append(pool.submit(upload_tiled_tiff, ArrayReader(pixels),
                                               frame_uri(frames_prefix, frame.frame_index),
                                               client))
                    while len(pending) >= _UPLOADS_IN_FLIGHT:
                        pending.pop(0).result()
                for future in pending:
                    future.result()
            image = ImageInfo(uri=uri, width=sampled.plan.width, height=sampled.plan.height,
                              sha256=sha256, format=container, bytes=os.path.getsize(path))
            cells = sampled.sheet.chosen()
            sheet_png, layout = pack_cells(cells)
            verdict = gate(ArrayReader(_plain_sheet(cells)), image, moderation)
            sheet_uri = scratch.uri("sheet.png")
            write_bytes(sheet_uri, sheet_png, "image/png", client)
            if sampled.first_frame is None:  # sample_video refuses this first; typed out
                raise BadImageError(f"{uri}: no frame could be decoded")
            first = ArrayReader(sampled.first_frame).thumbnail(THUMBNAIL_SIDE)
            thumbnail_uri, thumbnail, media_type = scratch.thumbnail(
                first, preview_format(params.preview_format))
            write_bytes(thumbnail_uri, thumbnail, media_type, client)
            units = frame_units(sampled.frames, sampled.plan, params, limits)
        except BaseException:
            delete_prefix(scratch.prefix_uri, client)
            raise
    return units, Prepared(
        image=image, plan=sampled.plan.summary(), source_uri=frames_prefix,
        thumbnail_uri=thumbnail_uri, moderation=verdict, scratch_prefix=scratch.prefix_uri,
        video={**sampled.describe(params),
               "frames": [[f.frame_index, f.timestamp_ms] for f in sampled.frames],
               "sheet": {"uri": sheet_uri, **layout}},
        ready_at=time.time())


def _plain_sheet(cells: list[tuple[int, Any]]) -> Any:
    """The sheet's pictures without boxes: what the moderation gate looks at."""
    import numpy as np

    from tilescope.outputs.contact_sheet import SHEET_COLUMNS

    width = max(c.shape[1] for _, c in cells)
    height = max(c.shape[0] for _, c in cells)
    columns = min(SHEET_COLUMNS, len(cells))
    rows = -(-len(cells) // columns)
    sheet = np.zeros((rows * height, columns * width, 3), np.uint8)
    for number, (_, cell) in enumerate(cells):
        y, x = (number // columns) * height, (number % columns) * width
        sheet[y:y + cell.shape[0], x:x + cell.shape[1]] = cell
    return sheet


def frame_sources(plan: SlicePlan, count: int, first: int = 0) -> list[SourcePlan]:
    """A video's ``count`` sampled frames as unit sources ``first, first + 1, …``: each read
    by ranges from its staged tiled TIFF (so its regions may spread over units), all with
    the video's one plan."""
    return [SourcePlan(first + position, plan, whole=False) for position in range(count)]


def frame_units(frames: Sequence[VideoFrame], plan: SlicePlan, params: InferenceParams,
                limits: RunLimits) -> list[dict[str, Any]]:
    """What a video's own run maps ``analyze`` over: its frames' regions packed into work
    units of about ``TILESCOPE_UNIT_SECONDS`` of model time (:func:`unit_slice_budget`), at
    most ``limits.max_regions`` of them. Each is a :meth:`WorkUnit.to_dict` named by its
    first and last (frame, region), with the cell the results viewer draws it as."""
    budget = unit_slice_budget(model_slice_seconds(params.model))
    units = pack_units(frame_sources(plan, len(frames)), budget, max_units=limits.max_regions)
    return [{**unit.to_dict(), "name": _frames_label(unit, frames, plan),
             # where a region grid is drawn (the results viewer), a unit is its frames' box
             "row": unit.index, "col": 0, "box": [0, 0, plan.width, plan.height]}
            for unit in units]


def _frames_label(unit: WorkUnit, frames: Sequence[VideoFrame], plan: SlicePlan) -> str:
    """``f0–f570`` (one region a frame), else ``f0.r0c0–f4.r1c1``."""
    ends = []
    for position, region in ((unit.parts[0].source, unit.parts[0].first),
                             (unit.parts[-1].source, unit.parts[-1].stop - 1)):
        name = frames[position].name
        ends.append(name if len(plan.regions) == 1
                    else f"{name}.{plan.regions[region].name}")
    return span_label(*ends)


def open_frame(frames_prefix: str, frame_index: int, plan: SlicePlan,
               client: S3Client) -> ImageReader:
    """A reader over one staged frame. A frame of at most :data:`WHOLE_FRAME_BYTES` decoded
    is fetched whole with one GET (opening it with ranged reads — a HEAD, the header, then
    tile rows — cost ~50 ms a frame); a larger one is read band by band with ranged GETs, as
    image regions are, so memory stays bounded by a band. A staged frame that cannot be read
    is a scratch problem, not bad input: :class:`StorageError` (the task is retried)."""
    from tilescope.readers import TiffReader

    uri = frame_uri(frames_prefix, frame_index)
    try:
        if plan.width * plan.height * 3 <= WHOLE_FRAME_BYTES:
            return TiffReader(io.BytesIO(read_bytes(uri, client)), name=uri)
        return open_source(uri, client)
    except BadImageError as exc:
        raise StorageError(f"staged frame {uri} is unreadable: {exc}") from exc


def frame_opener(prepared: Prepared, client: S3Client, first: int = 0) -> OpenReader:
    """Opens a prepared video's frames as unit sources ``first, first + 1, …`` (through
    :func:`open_frame`)."""
    indices = [int(i) for i, _ in prepared.video_frames]
    plan = prepared.slice_plan()

    def open_reader(source: int) -> ImageReader:
        return open_frame(prepared.source_uri, indices[source - first], plan, client)

    return open_reader


def analyze_frames(unit_data: Mapping[str, Any], prepared: Prepared,
                   params: InferenceParams, model: DetectionModel, *, client: S3Client,
                   budget: int, attempt: int = 1) -> dict[str, Any]:
    """One work unit of a video's own run → its finding dict (region findings per frame
    position; over ``budget`` bytes written to scratch and passed as a key)."""
    unit = WorkUnit.from_dict(unit_data)
    plan = prepared.slice_plan()
    finding = run_unit(unit, dict.fromkeys(unit.sources, plan),
                       dict.fromkeys(unit.sources, False), frame_opener(prepared, client),
                       model, params, attempt=attempt)
    return unit_payload(finding, unit, prepared.scratch_prefix, budget, client)


def video_result(prepared: Prepared,
                 per_frame: Mapping[int, Sequence[RegionFinding]], params: InferenceParams,
                 model_name: str) -> Result:
    """Merge the region findings of each frame (keyed by its position among the sampled
    frames) into the video's Result: per frame, never across frames. Regions without a
    finding count as failed units; ``min_success_ratio`` applies to all units."""
    video = dict(prepared.video or {})
    frames = [VideoFrame(int(i), float(ms)) for i, ms in video.pop("frames")]
    video.pop("sheet", None)
    plan = prepared.slice_plan()
    result = synthesize_video(prepared.image, frames, plan,
                              frame_findings(frames, plan, per_frame), params,
                              model_name=model_name,
                              category_names=model_categories(model_name, params.model_options),
                              coco_category_ids=model_coco_ids(model_name), video=video)
    if prepared.moderation is not None:
        result.moderation = prepared.moderation
    return result


def combine_video(prepared: Prepared, findings: Sequence[Mapping[str, Any] | None],
                  params: InferenceParams, model_name: str, *, client: S3Client,
                  run_started: float | None = None) -> Result:
    """The video's Result from its units' finding dicts (units of failed tasks are missing:
    their regions count as failed). A unit task's queue wait is put on its first finding,
    so the run's sum counts it once."""
    per_frame, _ = source_findings(findings, client)
    loaded = [f for found in per_frame.values() for f in found]
    result = video_result(prepared, per_frame, params, model_name)
    if run_started is not None:
        from tilescope.outputs.metrics import run_seconds

        result.seconds.update(run_seconds((f.seconds for f in loaded), run_started,
                                          time.time()))
    return result


def video_overlay(result: Result, prepared: Prepared, client: S3Client,
                  fmt: PreviewFormat) -> bytes:
    """The contact sheet of a stored video result, from the cells preprocess kept, encoded
    as ``fmt``."""
    sheet = (prepared.video or {})["sheet"]
    return render_contact_sheet(result, unpack_cells(read_bytes(sheet["uri"], client), sheet),
                                fmt=fmt)

