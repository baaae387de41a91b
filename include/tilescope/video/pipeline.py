"""The stages of a video run, built on the image stages of :mod:`tilescope.pipeline`.

``video → sample frames → plan one frame (as an image) → analyze each (frame, region) unit
with analyze_region → synthesize: merge per frame, never across frames → Result``. The CLI
runs :func:`run_video` in one process; the DAG calls the same functions from its tasks
(:mod:`tilescope.tasks.video`), so both give the same result by construction.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tilescope.detections import Detections
from tilescope.errors import BadImageError, ConfigError, ImageTooLargeError
from tilescope.limits import RunLimits
from tilescope.models.base import DetectionModel
from tilescope.models.vocabulary import reconcile
from tilescope.params import InferenceParams
from tilescope.pipeline import (
    Progress,
    analyze_region,
    enforce_success_ratio,
    merge_detections,
    plan_image,
)
from tilescope.readers.array import ArrayReader
from tilescope.readers.base import ImageReader
from tilescope.results import ImageInfo, RegionFinding, Result, VideoFrame
from tilescope.slicing import Region, SlicePlan
from tilescope.video.decoder import VideoHeader, VideoSource
from tilescope.video.sampling import SheetCells


@dataclass(frozen=True)
class VideoUnit:
    """One region of one sampled frame: unit ``k`` is region ``k % R`` of the ``k // R``-th
    sampled frame (``R`` regions a frame; every frame has the same plan)."""

    index: int
    frame: VideoFrame
    region: Region

    @property
    def name(self) -> str:
        """E.g. ``f120.r0c1``: frame 120 of the stream, region r0c1 of it."""
        return f"{self.frame.name}.{self.region.name}"


def video_units(frames: Sequence[VideoFrame], plan: SlicePlan) -> list[VideoUnit]:
    """Every (frame, region) unit, frame by frame in time order."""
    regions = plan.regions
    return [VideoUnit(position * len(regions) + region.index, frame, region)
            for position, frame in enumerate(frames) for region in regions]


def plan_frames(header: VideoHeader, params: InferenceParams, model_slice_size: int,
                limits: RunLimits, width: int | None = None,
                height: int | None = None) -> SlicePlan:
    """The plan every frame shares, refused over budget from the header, before decoding:
    pixels per frame, sampled frames, and slices of all frames together. ``width``/
    ``height`` override the header's (a rotated stream decodes with its sides swapped)."""
    width, height = width or header.width, height or header.height
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(f"video frames of {width}×{height} = {width * height:,} "
                                 f"pixels are over the limit of {limits.max_pixels:,}")
    expected = header.expected_samples(params.video_fps)
    limits.check_frames(expected, header.describe(params.video_fps))
    plan = plan_image(width, height, params, model_slice_size, max_regions=limits.max_regions)
    limits.check_video_plan(expected, plan)
    return plan


@dataclass
class SampledVideo:
    """What one decoding pass produced besides the frames themselves."""

    header: VideoHeader
    plan: SlicePlan
    frames: list[VideoFrame] = field(default_factory=list)
    sheet: SheetCells = field(default_factory=SheetCells)
    first_frame: np.ndarray | None = None
    decoded: int = 0

    def describe(self, params: InferenceParams) -> dict[str, Any]:
        """The ``video`` section of the result: the stream and how it was sampled."""
        return {**self.header.to_dict(), "decoded_frames": self.decoded,
                "sample_fps": params.video_fps, "sampled_frames": len(self.frames)}


def sample_video(source: VideoSource, params: InferenceParams, model_slice_size: int,
                 limits: RunLimits) -> tuple[SampledVideo, Iterator[tuple[VideoFrame,
                                                                            np.ndarray]]]:
    """Check the video against the budgets from its header, then iterate its sampled frames
    (RGB) while recording them (frame list, contact-sheet cells, the plan of the real frame
    size). The frame budget is enforced again while decoding: headers can be wrong."""
    header = source.header
    sampled = SampledVideo(header, plan_frames(header, params, model_slice_size, limits))

    def frames() -> Iterator[tuple[VideoFrame, np.ndarray]]:
        for position, (frame, pixels) in enumerate(source.frames(params.video_fps)):
            height, width = pixels.shape[:2]
            if position == 0:
                sampled.first_frame = pixels
                if (width, height) != (sampled.plan.width, sampled.plan.height):
                    sampled.plan = plan_frames(header, params, model_slice_size, limits,
                                               width, height)
            elif (width, height) != (sampled.plan.width, sampled.plan.height):
                raise BadImageError(f"frame {frame.frame_index} is {width}×{height}, the "
                                    f"first was {sampled.plan.width}×{sampled.plan.height}: "
                                    "streams that change size are not supported")
            limits.check_frames(position + 1, f"{header.describe(params.video_fps)} (while "
                                "decoding; the header promised fewer)")
            sampled.frames.append(frame)
            sampled.sheet.offer(position, pixels)
            sampled.decoded = source.decoded
            yield frame, pixels
        sampled.decoded = source.decoded
        limits.check_video_plan(len(sampled.frames), sampled.plan)

    return sampled, frames()


def analyze_unit(reader: ImageReader, unit: VideoUnit, model: DetectionModel,
                 params: InferenceParams, *, attempt: int = 1) -> RegionFinding:
    """One region of one frame (``reader`` serves that frame): an image region's finding,
    named and numbered as the unit and carrying its frame."""
    return as_unit(analyze_region(reader, unit.region, model, params, attempt=attempt), unit)


def as_unit(finding: RegionFinding, unit: VideoUnit) -> RegionFinding:
    """A region finding of one frame named and numbered as its unit, carrying its frame."""
    finding.index, finding.name, finding.frame = unit.index, unit.name, unit.frame
    return finding


def frame_findings(frames: Sequence[VideoFrame], plan: SlicePlan,
                   per_frame: Mapping[int, Sequence[RegionFinding]]) -> list[RegionFinding]:
    """Region findings per sampled frame (keyed by the frame's position; each numbered as
    its region, as :func:`tilescope.pipeline.analyze_region` numbers them) → the video's
    unit findings."""
    regions = plan.regions
    return [as_unit(finding, VideoUnit(position * len(regions) + finding.index,
                                       frames[position], regions[finding.index]))
            for position, found in sorted(per_frame.items()) for finding in found]


def failed_unit(unit: VideoUnit, error: str, attempts: int = 1) -> RegionFinding:
    """The finding recorded for a unit whose task did not succeed."""
    region = unit.region
    return RegionFinding(index=unit.index, name=unit.name, row=region.row, col=region.col,
                         box=region.box.as_list(), slice_count=region.slice_count,
                         status="failed", attempts=attempts, error=error, frame=unit.frame)


def synthesize_video(image: ImageInfo, frames: Sequence[VideoFrame], plan: SlicePlan,
                     findings: Sequence[RegionFinding], params: InferenceParams, *,
                     model_name: str, category_names: Sequence[str],
                     coco_category_ids: Sequence[int] | None = None,
                     video: dict[str, Any] | None = None,
                     seconds: dict[str, float] | None = None) -> Result:
    """Merge each frame's units into that frame's detections — never across frames, so an
    object standing still is found once per frame — and build the video's Result.

    Units without a finding count as failed; ``min_success_ratio`` applies to all units of
    the video together (:func:`tilescope.pipeline.enforce_success_ratio`).
    """
    by_index = {f.index: f for f in findings}
    complete = [by_index.get(u.index) or failed_unit(u, "no finding")
                for u in video_units(frames, plan)]
    enforce_success_ratio(complete, params)
    started = time.perf_counter()
    succeeded = [f for f in complete if f.status == "success"]
    parts, names = reconcile(list(category_names),
                             [(f.detections, f.category_names) for f in succeeded])
    position_of = {frame.frame_index: position for position, frame in enumerate(frames)}
    per_frame: list[list[Detections]] = [[] for _ in frames]
    for finding, part in zip(succeeded, parts, strict=True):
        per_frame[position_of[finding.frame.frame_index]].append(part)  # type: ignore[union-attr]  # video findings carry a frame
    merged = [merge_detections(Detections.concat(p), params)
              .clipped(image.width, image.height).sorted_by_score() for p in per_frame]
    timing = dict(seconds or {})
    timing["synthesize"] = time.perf_counter() - started
    timing.setdefault("model", float(sum(f.seconds.get("model", 0.0) for f in complete)))
    result = Result(image=image, model=model_name, params=params.to_dict(),
                    plan={**plan.summary(), "frames": len(frames), "units": len(complete),
                          "total_slices": len(frames) * plan.slice_count},
                    regions=complete, detections=Detections.concat(merged),
                    category_names=names, seconds=timing,
                    coco_category_ids=list(coco_category_ids) if coco_category_ids else None,
                    frames=list(frames), video=video,
                    detection_frames=np.repeat(np.arange(len(frames)),
                                               [len(m) for m in merged]))
    if params.synthesis_model:
        from tilescope.describe import describe_result

        describe_result(result, params.synthesis_model, params.synthesis_options)
    return result


def run_video(source: VideoSource, image: ImageInfo, params: InferenceParams,
              model: DetectionModel, *, limits: RunLimits | None = None,
              progress: Progress | None = None) -> tuple[Result, SheetCells]:
    """The whole video pipeline in this process: decode the sampled frames once, analyze
    each (frame, region) unit as it comes, synthesize. Returns the result and the cells of
    its contact sheet."""
    if params.full_image_pass:
        raise ConfigError("full_image_pass is not supported for video")
    started = time.perf_counter()
    limits = limits or RunLimits()
    sampled, frames = sample_video(source, params, model.preferred_slice_size, limits)
    expected = source.header.expected_samples(params.video_fps)
    findings: list[RegionFinding] = []
    done = 0
    for position, (frame, pixels) in enumerate(frames):
        reader = ArrayReader(pixels)
        regions = sampled.plan.regions
        for region in regions:
            unit = VideoUnit(position * len(regions) + region.index, frame, region)
            findings.append(analyze_unit(reader, unit, model, params))
        done += sampled.plan.slice_count
        if progress:
            progress(done, max(done, expected * sampled.plan.slice_count))
    result = synthesize_video(image, sampled.frames, sampled.plan, findings, params,
                              model_name=model.name,
                              category_names=[] if model.open_vocabulary
                              else list(model.category_names),
                              coco_category_ids=model.COCO_CATEGORY_IDS or None,
                              video=sampled.describe(params))
    result.seconds["total"] = time.perf_counter() - started
    return result, sampled.sheet
