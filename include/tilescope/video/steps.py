"""The DAG's task bodies for a video: the same DAG, the same tasks, other units of work.

``prepare_video`` (preprocess) downloads the object once to a local temporary file (FFmpeg
seeks around containers; a file keeps a 2 GiB video out of memory), decodes the sampled
frames in one pass and stages each as a tiled TIFF under the run's scratch prefix — exactly
how an image is staged — so ``analyze_chunk`` reads only the tiles of its units' regions,
band by band, as an image region does. It returns *chunks* of (frame, region) units for
the mapped ``analyze``; ``combine_video`` merges per frame; ``video_overlay_png`` draws
the contact sheet for ``store``. Nothing here imports Airflow.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from itertools import groupby
from typing import Any

from tilescope.errors import BadImageError, ConfigError, StorageError
from tilescope.limits import RunLimits, positive_int_env
from tilescope.models.base import DetectionModel
from tilescope.models.registry import model_categories, model_coco_ids
from tilescope.moderation import ModerationPolicy, gate
from tilescope.params import InferenceParams
from tilescope.readers.array import ArrayReader
from tilescope.readers.base import ImageReader
from tilescope.readers.sniff import SNIFF_BYTES, sniff_video
from tilescope.results import ImageInfo, RegionFinding, Result, VideoFrame
from tilescope.scratch import (
    THUMBNAIL_SIDE,
    ScratchLayout,
    delete_prefix,
    open_source,
    png_bytes,
    upload_tiled_tiff,
)
from tilescope.slicing import DEFAULT_MIN_SLICES_PER_REGION, SlicePlan
from tilescope.storage import (
    is_s3_uri,
    parse_s3_uri,
    read_bytes,
    read_head,
    sha256_hex,
    write_bytes,
)
from tilescope.video.contact_sheet import pack_cells, render_contact_sheet, unpack_cells
from tilescope.video.decoder import VideoSource
from tilescope.video.pipeline import analyze_unit, sample_video, synthesize_video
from tilescope.video.units import chunk_units, unit_chunks

#: slices per mapped analyze task (the chunk size), default: as an image's auto regions
SLICES_PER_TASK_ENV = "TILESCOPE_VIDEO_SLICES_PER_TASK"
#: staged frames being encoded/uploaded at once while decoding continues
_UPLOADS_IN_FLIGHT = 4
#: frames up to this size decoded (a 4K frame is 25 MB) are fetched whole and one ahead
WHOLE_FRAME_BYTES = 64 << 20


def video_container(uri: str, client: Any = None, size: int | None = None) -> str | None:
    """The object's video container from its first bytes (one ranged GET), or ``None``.
    ``size`` (if known) saves a HEAD request."""
    try:
        return sniff_video(read_head(uri, SNIFF_BYTES, client, size=size))
    except BadImageError:
        return None  # missing: the image path reports it as it always has


def frame_uri(frames_prefix: str, frame_index: int) -> str:
    """Where a sampled frame is staged: ``<scratch>/frames/<frame number>.tif``."""
    return f"{frames_prefix}{frame_index:07d}.tif"


def slices_per_task(environ: dict[str, str] | None = None) -> int:
    """``TILESCOPE_VIDEO_SLICES_PER_TASK``, default 256 (as many as an auto image region)."""
    return positive_int_env(environ if environ is not None else os.environ,
                            SLICES_PER_TASK_ENV, DEFAULT_MIN_SLICES_PER_REGION)


@contextmanager
def local_copy(uri: str, client: Any) -> Iterator[tuple[str, str]]:
    """``(path, sha256)`` of the object as a local file: an ``s3://`` object is downloaded
    once to a temporary file (deleted afterwards); a local path is used in place."""
    if not is_s3_uri(uri):
        yield uri, sha256_hex(uri)
        return
    loc = parse_s3_uri(uri)
    with tempfile.NamedTemporaryFile(suffix=".video",
                                     dir=os.environ.get("TILESCOPE_TMP")) as tmp:
        try:
            client.download_file(loc.bucket, loc.key, tmp.name)
        except Exception as exc:
            raise StorageError(f"downloading {uri} failed: {exc}") from exc
        yield tmp.name, sha256_hex(tmp.name)


def prepare_video(uri: str, params: InferenceParams, *, container: str, client: Any,
                  run: str, model_slice_size: int, limits: RunLimits,
                  moderation: ModerationPolicy | None = None,
                  full_image_model: DetectionModel | None = None) -> dict[str, Any]:
    """Check, sample, stage and plan a video; the same keys as an image's ``prepare`` plus
    ``video`` (the stream's facts, the sampled frames as ``[frame_index, timestamp_ms]``
    rows, the contact sheet's cells). ``regions`` holds the unit chunks to map over.

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
            thumbnail_uri = scratch.uri("thumbnail.png")
            first = ArrayReader(sampled.first_frame).thumbnail(THUMBNAIL_SIDE)
            write_bytes(thumbnail_uri, png_bytes(first), "image/png", client)
        except BaseException:
            delete_prefix(f"s3://{scratch.bucket}/{scratch.prefix}", client)
            raise
    chunks = unit_chunks(sampled.frames, sampled.plan, max_tasks=limits.max_regions,
                         min_slices=slices_per_task())
    return {"image": image.to_dict(), "plan": sampled.plan.summary(), "regions": chunks,
            "source_uri": frames_prefix, "thumbnail_uri": thumbnail_uri, "full_image": None,
            "full_image_names": None, "moderation": verdict,
            "scratch_prefix": f"s3://{scratch.bucket}/{scratch.prefix}",
            "video": {**sampled.describe(params),
                      "frames": [[f.frame_index, f.timestamp_ms] for f in sampled.frames],
                      "sheet": {"uri": sheet_uri, **layout}},
            "ready_at": time.time()}


def _plain_sheet(cells: list[tuple[int, Any]]) -> Any:
    """The sheet's pictures without boxes: what the moderation gate looks at."""
    import numpy as np

    from tilescope.video.contact_sheet import SHEET_COLUMNS

    width = max(c.shape[1] for _, c in cells)
    height = max(c.shape[0] for _, c in cells)
    columns = min(SHEET_COLUMNS, len(cells))
    rows = -(-len(cells) // columns)
    sheet = np.zeros((rows * height, columns * width, 3), np.uint8)
    for number, (_, cell) in enumerate(cells):
        y, x = (number // columns) * height, (number % columns) * width
        sheet[y:y + cell.shape[0], x:x + cell.shape[1]] = cell
    return sheet


def analyze_chunk(chunk: dict[str, Any], frames_prefix: str, params: InferenceParams,
                  model: DetectionModel, *, client: Any, scratch_prefix: str,
                  budget: int, attempt: int = 1) -> dict[str, Any]:
    """Every unit of a chunk, frame by frame (each staged frame opened once):
    ``{"index", "name", "slice_count", "attempts", "seconds", "findings"}``. Findings over
    ``budget`` bytes go to scratch and travel as a key."""
    units = chunk_units(chunk)
    whole = _frame_bytes(chunk) <= WHOLE_FRAME_BYTES
    findings: list[RegionFinding] = []
    per_frame = [list(group) for _, group in groupby(units, key=lambda u: u.frame.frame_index)]
    readers = _frame_readers([g[0].frame.frame_index for g in per_frame], frames_prefix,
                             client, whole)
    for group, (reader, waited) in zip(per_frame, readers, strict=True):
        with reader:
            done = [analyze_unit(reader, unit, model, params, attempt=attempt)
                    for unit in group]
        for key in ("read", "total"):  # the wait for this frame's bytes, once per frame
            done[0].seconds[key] = done[0].seconds.get(key, 0.0) + waited
        findings.extend(done)
    seconds: dict[str, float] = {}
    for finding in findings:
        for key, value in finding.seconds.items():
            seconds[key] = round(seconds.get(key, 0.0) + value, 4)
    data: dict[str, Any] = {"index": chunk["index"], "name": chunk["name"],
                            "slice_count": chunk["slice_count"], "attempts": attempt,
                            "seconds": seconds, "findings": [f.to_dict() for f in findings]}
    if len(json.dumps(data)) > budget:
        uri = f"{scratch_prefix}findings/chunk-{int(chunk['index']):04d}.json"
        write_bytes(uri, json.dumps(data["findings"]).encode(), "application/json", client)
        data["findings"], data["findings_uri"] = None, uri
    return data


def _frame_bytes(chunk: dict[str, Any]) -> int:
    plan = chunk["video"]["plan"]
    return int(plan["width"]) * int(plan["height"]) * 3


def _frame_readers(frame_indices: list[int], frames_prefix: str, client: Any,
                   whole: bool) -> Iterator[tuple[ImageReader, float]]:
    """A reader per staged frame, in order, and the seconds spent waiting for it.

    Frames of at most :data:`WHOLE_FRAME_BYTES` decoded are fetched whole with one GET, the
    next one on a background thread while the model works on this one: a chunk holds many
    small frames, and opening each with ranged reads (a HEAD, the header, then tile rows)
    cost ~50 ms a frame on the critical path. Larger frames are read band by band with
    ranged GETs, as image regions are, so memory stays bounded by a band."""
    from tilescope.readers import TiffReader

    if not whole:
        for index in frame_indices:
            started = time.perf_counter()
            reader = open_source(frame_uri(frames_prefix, index), client)
            yield reader, time.perf_counter() - started
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="frame-fetch") as fetcher:
        ahead = [fetcher.submit(read_bytes, frame_uri(frames_prefix, i), client)
                 for i in frame_indices[:1]]
        for position, index in enumerate(frame_indices):
            started = time.perf_counter()
            data = ahead.pop(0).result()
            waited = time.perf_counter() - started
            if position + 1 < len(frame_indices):
                ahead.append(fetcher.submit(read_bytes, frame_uri(
                    frames_prefix, frame_indices[position + 1]), client))
            yield TiffReader(io.BytesIO(data), name=frame_uri(frames_prefix, index)), waited


def load_chunk(data: dict[str, Any], client: Any) -> list[RegionFinding]:
    """The unit findings of a chunk result (offloaded ones fetched back). The chunk task's
    queue wait is put on its first unit, so the run's sum counts it once."""
    items = data["findings"]
    if items is None:
        items = json.loads(read_bytes(data["findings_uri"], client))
    findings = [RegionFinding.from_dict(item) for item in items]
    wait = (data.get("seconds") or {}).get("queue_wait")
    if findings and wait is not None:
        findings[0].seconds["queue_wait"] = float(wait)
    return findings


def combine_video(prepared: dict[str, Any], chunks: list[dict[str, Any] | None],
                  params: InferenceParams, model_name: str, *, client: Any,
                  run_started: float | None = None) -> Result:
    """Merge the chunks' findings per frame into the video's Result (units of failed chunks
    count as failed; ``min_success_ratio`` applies to all units)."""
    video = dict(prepared["video"])
    frames = [VideoFrame(int(i), float(ms)) for i, ms in video.pop("frames")]
    video.pop("sheet", None)
    findings = [f for chunk in chunks if chunk for f in load_chunk(chunk, client)]
    result = synthesize_video(ImageInfo.from_dict(prepared["image"]), frames,
                              SlicePlan.from_summary(prepared["plan"]), findings, params,
                              model_name=model_name, category_names=model_categories(model_name),
                              coco_category_ids=model_coco_ids(model_name), video=video)
    if prepared.get("moderation") is not None:
        result.moderation = prepared["moderation"]
    if run_started is not None:
        from tilescope.metrics import run_seconds

        result.seconds.update(run_seconds((f.seconds for f in findings), run_started,
                                          time.time()))
    return result


def video_overlay_png(result: Result, prepared: dict[str, Any], client: Any) -> bytes:
    """The contact sheet of a stored video result, from the cells preprocess kept."""
    sheet = prepared["video"]["sheet"]
    return render_contact_sheet(result, unpack_cells(read_bytes(sheet["uri"], client), sheet))

