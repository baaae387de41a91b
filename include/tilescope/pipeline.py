"""The stages of a sliced-inference run, shared by every driver.

``image → plan_image → analyze_region (per region) → synthesize → Result``. The CLI calls
these in a loop in one process; the Airflow DAG calls the very same functions as tasks, so
both give identical results by construction and every stage is testable without Airflow.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from tilescope.banding import predict_region
from tilescope.detections import Detections
from tilescope.errors import ModelOutputError, RegionsFailedError
from tilescope.models.base import DetectionModel
from tilescope.models.vocabulary import reconcile
from tilescope.params import InferenceParams
from tilescope.postprocess.combine import merge
from tilescope.readers.base import ImageReader
from tilescope.results import ImageInfo, RegionFinding, Result, quantize
from tilescope.slicing import (
    Box,
    Region,
    SlicePlan,
    parse_grid,
    plan_slices,
    sahi_auto_slice_params,
)

#: ``progress(done_slices, total_slices)`` callback type
Progress = Callable[[int, int], None]


def slice_geometry(width: int, height: int, params: InferenceParams,
                   model_slice_size: int) -> tuple[int, int, int, int]:
    """``(slice_w, slice_h, overlap_x, overlap_y)`` in pixels for this image and parameters."""
    if params.slice_size == "auto":
        return sahi_auto_slice_params(width, height)
    size = int(params.slice_size or model_slice_size)
    overlap = int(params.overlap * size)  # SAHI truncates the same way
    return size, size, overlap, overlap


def plan_image(width: int, height: int, params: InferenceParams, model_slice_size: int,
               **grid_options: int) -> SlicePlan:
    """Slices and regions for an image of this size."""
    slice_w, slice_h, overlap_x, overlap_y = slice_geometry(width, height, params,
                                                            model_slice_size)
    return plan_slices(width, height, slice_w, slice_h, overlap_x, overlap_y,
                       grid=parse_grid(params.grid), **grid_options)


def merge_detections(dets: Detections, params: InferenceParams) -> Detections:
    """Merge with the run's postprocess settings."""
    return merge(dets, strategy=params.postprocess, metric=params.match_metric,  # type: ignore[arg-type]  # merge() checks the strings
                 threshold=params.match_threshold, class_agnostic=params.class_agnostic,
                 sigma=params.soft_nms_sigma, score_threshold=params.score_threshold,
                 seams=params.merge_scope == "seams")


def analyze_region(reader: ImageReader, region: Region, model: DetectionModel,
                   params: InferenceParams, *, attempt: int = 1,
                   skip_nodata: bool = True) -> RegionFinding:
    """Run the model over one region's slices; detections come back in full-image pixels.
    Slices entirely nodata are skipped (counted in the finding) unless ``skip_nodata`` is
    False (tests compare the two)."""
    started = time.perf_counter()
    try:
        banded = predict_region(reader, region, model, skip_nodata=skip_nodata)
    except ModelOutputError as exc:  # say where: the backend names itself, we add the region
        raise ModelOutputError(f"region {region.name}: {exc}") from exc
    # "read" is the time the model waited for pixels: reads overlapped with model calls
    # (see tilescope.banding) cost nothing on the critical path.
    return region_finding(region, banded.per_slice, banded.slices, model, params,
                          attempt=attempt, read=banded.read_wait, model_seconds=banded.model,
                          elapsed=time.perf_counter() - started, skipped=banded.skipped)


def region_finding(region: Region, per_slice: Sequence[Detections], slices: Sequence[Box],
                   model: DetectionModel, params: InferenceParams, *, attempt: int,
                   read: float, model_seconds: float, elapsed: float,
                   skipped: int = 0) -> RegionFinding:
    """Per-slice detections → the region's finding: shifted to image pixels, each tagged
    with its slice, thresholded — and **not merged**: :func:`synthesize` merges every
    region's raw detections once. (Merged here and again there, greedy NMM re-merged its own
    union boxes, which absorbed neighbouring objects: SAHI kept detections tilescope lost,
    ``bench/recall_gap.py``.) ``elapsed`` is the time spent before this step (read + model);
    shared by :func:`analyze_region` and the deferred path (:mod:`tilescope.deferred`)."""
    merge_started = time.perf_counter()
    dets = Detections.concat(d.from_slice(0, 0, s.width, s.height).shifted(s.x1, s.y1)
                             for d, s in zip(per_slice, slices, strict=True))
    merged = quantize(dets.select(dets.scores >= params.score_threshold))
    merge = time.perf_counter() - merge_started
    return RegionFinding(
        index=region.index, name=region.name, row=region.row, col=region.col,
        box=region.box.as_list(), slice_count=region.slice_count, detections=merged,
        attempts=attempt, skipped_slices=skipped,
        seconds={"read": read, "model": model_seconds, "merge": merge,
                 "total": elapsed + merge},
        category_names=open_names(model))


def open_names(model: DetectionModel) -> list[str] | None:
    """What an open-vocabulary model's ids mean right now (``None`` for fixed vocabularies)."""
    return list(model.category_names) if model.open_vocabulary else None


def full_image_detections(reader: ImageReader, model: DetectionModel,
                          params: InferenceParams) -> Detections:
    """One model call on the whole (downscaled) image, as SAHI's ``perform_standard_pred``."""
    (dets,) = model.predict([reader.read_all()])
    # the whole image is one more "slice": the seam-aware merge joins its boxes to any
    # slice's boxes they meet
    dets = dets.from_slice(0, 0, reader.width, reader.height)
    return quantize(dets.select(dets.scores >= params.score_threshold))


def failed_finding(region: Region, error: str, attempts: int = 1) -> RegionFinding:
    """The finding recorded for a region whose task did not succeed."""
    return RegionFinding(index=region.index, name=region.name, row=region.row, col=region.col,
                         box=region.box.as_list(), slice_count=region.slice_count,
                         status="failed", attempts=attempts, error=error)


def enforce_success_ratio(complete: Sequence[RegionFinding], params: InferenceParams) -> None:
    """Raise :class:`RegionsFailedError` naming the failed regions when fewer than
    ``min_success_ratio`` of ``complete`` (every region's finding, failed ones included)
    succeeded."""
    failed = [f for f in complete if f.status != "success"]
    ratio = 1 - len(failed) / len(complete) if complete else 1.0
    if failed and ratio < params.min_success_ratio:
        names = ", ".join(f.name for f in failed[:20]) + (" …" if len(failed) > 20 else "")
        raise RegionsFailedError(
            f"{len(failed)} of {len(complete)} regions failed ({names}): success ratio "
            f"{ratio:.3f} is below min_success_ratio {params.min_success_ratio}")


def synthesize(image: ImageInfo, plan: SlicePlan, findings: Sequence[RegionFinding],
               params: InferenceParams, model: DetectionModel | None = None, *,
               model_name: str | None = None, category_names: Sequence[str] | None = None,
               coco_category_ids: Sequence[int] | None = None,
               full_image: Detections | None = None,
               full_image_names: Sequence[str] | None = None,
               moderation: dict | None = None,
               seconds: dict[str, float] | None = None) -> Result:
    """Merge every region's findings into one result, enforcing ``min_success_ratio``.

    Regions without a finding count as failed. Below the ratio, :class:`RegionsFailedError`
    names the failed regions; at or above it, the result is marked partial. Findings of an
    open-vocabulary model carry their own names and are put on one vocabulary first
    (``full_image_names`` does the same for ``full_image``). With ``params.synthesis_model``
    set, that model writes the scene description. ``moderation`` is the gate's verdict, kept
    in the result.
    """
    by_index = {f.index: f for f in findings}
    complete = [by_index.get(r.index) or failed_finding(r, "no finding") for r in plan.regions]
    enforce_success_ratio(complete, params)
    started = time.perf_counter()
    fixed = list(category_names if category_names is not None else
                 [] if model is None or model.open_vocabulary else model.category_names)
    sources: list[tuple[Detections, Sequence[str] | None]] = [
        (f.detections, f.category_names) for f in complete if f.status == "success"]
    if full_image is not None:
        sources.append((full_image, full_image_names))
    parts, names = reconcile(fixed, sources)
    merged = merge_detections(Detections.concat(parts), params)
    if image.microscopy is not None:  # found on a reduced level: back to level-0 pixels
        merged = merged.scaled(*image.microscopy.downsample())
    merged = merged.clipped(image.width, image.height).sorted_by_score()
    timing = dict(seconds or {})
    timing["synthesize"] = time.perf_counter() - started
    timing.setdefault("model", float(sum(f.seconds.get("model", 0.0) for f in complete)))
    result = Result(image=image, model=model_name or (model.name if model else params.model),
                    params=params.to_dict(), plan=plan.summary(), regions=complete,
                    detections=merged, category_names=names, seconds=timing,
                    coco_category_ids=list(coco_category_ids) if coco_category_ids else
                    (list(model.COCO_CATEGORY_IDS) if model and model.COCO_CATEGORY_IDS
                     else None), moderation=moderation)
    if params.synthesis_model:
        from tilescope.describe import describe_result

        describe_result(result, params.synthesis_model, params.synthesis_options)
    return result


def run_image(reader: ImageReader, image: ImageInfo, params: InferenceParams,
              model: DetectionModel, *, progress: Progress | None = None,
              skip_nodata: bool = True) -> Result:
    """The whole pipeline in this process over an opened image: plan, analyze each region,
    synthesize. ``Result.seconds["total"]`` covers these stages (not opening the image)."""
    started = time.perf_counter()
    plan = plan_image(*image.analysed_size, params, model.preferred_slice_size)
    findings: list[RegionFinding] = []
    done = 0
    if progress:
        progress(0, plan.slice_count)
    for region in plan.regions:
        findings.append(analyze_region(reader, region, model, params,
                                       skip_nodata=skip_nodata))
        done += region.slice_count
        if progress:
            progress(done, plan.slice_count)
    full = full_image_detections(reader, model, params) if params.full_image_pass else None
    result = synthesize(image, plan, findings, params, model, full_image=full,
                        full_image_names=open_names(model))
    result.seconds["total"] = time.perf_counter() - started
    return result
