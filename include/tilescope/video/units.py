"""A video's work: every (sampled frame, region) pair is a unit; units are packed into chunks.

Every frame has the same size, so one plan (slices grouped into regions, exactly as for an
image) serves all frames, and unit ``k`` is region ``k % R`` of frame ``k // R``. Mapping one
task per unit would waste Airflow's fixed per-task cost on frames of a few slices each and
could pass ``[core] max_map_length``, so consecutive units are packed into chunks: at least
``min_slices`` slices per chunk (the same amortisation as an image's auto regions), never
more chunks than ``max_tasks``. A chunk travels as a small JSON dict — the plan summary and
``[unit, frame_index, timestamp_ms, region]`` rows — and is self-contained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from tilescope.results import VideoFrame
from tilescope.slicing import DEFAULT_MIN_SLICES_PER_REGION, MAX_MAP_LENGTH, Region, SlicePlan


@dataclass(frozen=True)
class VideoUnit:
    """One region of one sampled frame."""

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


def chunk_bounds(slice_counts: Sequence[int], *, max_tasks: int = MAX_MAP_LENGTH,
                 min_slices: int = DEFAULT_MIN_SLICES_PER_REGION) -> list[tuple[int, int]]:
    """``[start, stop)`` unit ranges: consecutive units, about equal slices per range, at
    least ``min_slices`` per range where there are enough, at most ``max_tasks`` ranges."""
    counts = np.asarray(slice_counts, np.int64)
    if not len(counts):
        return []
    total = int(counts.sum())
    tasks = max(1, min(max_tasks, len(counts), total // max(1, min_slices)))
    # cut where the running slice total crosses each k/tasks of the whole
    ends = np.cumsum(counts)
    cuts = np.searchsorted(ends, np.arange(1, tasks) * total / tasks, side="left") + 1
    bounds = np.unique(np.concatenate([[0], cuts, [len(counts)]]))
    return [(int(a), int(b)) for a, b in pairwise(bounds)]


def unit_chunks(frames: Sequence[VideoFrame], plan: SlicePlan, *,
                max_tasks: int = MAX_MAP_LENGTH,
                min_slices: int = DEFAULT_MIN_SLICES_PER_REGION) -> list[dict[str, Any]]:
    """The list an ``analyze`` task is mapped over: one dict per chunk, with ``index``,
    ``name`` (first–last unit), ``slice_count`` and its units under ``video``."""
    units = video_units(frames, plan)
    by_frame = len(plan.regions) == 1  # then a frame name says it all
    chunks = []
    for number, (start, stop) in enumerate(chunk_bounds(
            [u.region.slice_count for u in units], max_tasks=max_tasks, min_slices=min_slices)):
        part = units[start:stop]
        first, last = ((part[0].frame.name, part[-1].frame.name) if by_frame
                       else (part[0].name, part[-1].name))
        chunks.append({
            "index": number, "name": first if first == last else f"{first}–{last}",
            "slice_count": sum(u.region.slice_count for u in part),
            # where a region grid is drawn (the results viewer), a chunk is its frames' box
            "row": number, "col": 0, "box": [0, 0, plan.width, plan.height],
            "video": {"plan": plan.summary(),
                      "units": [[u.index, u.frame.frame_index, u.frame.timestamp_ms,
                                 u.region.index] for u in part]}})
    return chunks


def chunk_units(chunk: dict[str, Any]) -> list[VideoUnit]:
    """The units of a chunk made by :func:`unit_chunks`."""
    plan = SlicePlan.from_summary(chunk["video"]["plan"])
    return [VideoUnit(int(unit), VideoFrame(int(frame), float(ms)), plan.regions[int(region)])
            for unit, frame, ms, region in chunk["video"]["units"]]


def is_video_chunk(item: dict[str, Any]) -> bool:
    """Whether a mapped ``analyze`` item is a chunk of video units (not an image region)."""
    return "video" in item
