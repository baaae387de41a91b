"""(frame, region) units packed into chunks: every unit once, in order, under the map length."""

from __future__ import annotations

import json

import pytest

from tilescope.params import InferenceParams
from tilescope.pipeline import plan_image
from tilescope.results import VideoFrame
from tilescope.video.units import chunk_bounds, chunk_units, unit_chunks, video_units


def frames(count: int, fps: float = 1.0) -> list[VideoFrame]:
    return [VideoFrame(i * 30, round(i * 1000 / fps, 3)) for i in range(count)]


def test_units_are_every_region_of_every_frame_in_time_order():
    plan = plan_image(1920, 1080, InferenceParams(grid="2x2"), 416)
    units = video_units(frames(3), plan)
    assert [u.index for u in units] == list(range(12))
    assert [u.name for u in units[:5]] == ["f0.r0c0", "f0.r0c1", "f0.r1c0", "f0.r1c1",
                                           "f30.r0c0"]
    assert {u.region.index for u in units} == {0, 1, 2, 3}


@pytest.mark.parametrize(("count", "regions", "max_tasks", "min_slices"), [
    (80, 1, 1024, 256),     # vtest at 1 fps: 480 slices → one task
    (80, 1, 1024, 16),      # → 30 tasks of 16 slices
    (3600, 4, 1024, 1),     # an hour at 1 fps, 4 regions a frame: capped at the map length
    (7, 9, 100, 10_000),    # fewer slices than a task wants: still one task
    (5, 1, 3, 1),
])
def test_chunks_cover_every_unit_once_within_the_map_length(count, regions, max_tasks,
                                                            min_slices):
    grid = {1: "1x1", 4: "2x2", 9: "3x3"}[regions]
    plan = plan_image(1920, 1080, InferenceParams(grid=grid), 416)
    chunks = unit_chunks(frames(count), plan, max_tasks=max_tasks, min_slices=min_slices)
    assert 1 <= len(chunks) <= max_tasks
    covered = [u.index for chunk in chunks for u in chunk_units(chunk)]
    assert covered == list(range(count * regions))  # each once, in order, contiguous
    total = count * plan.slice_count
    assert sum(c["slice_count"] for c in chunks) == total
    if len(chunks) > 1:
        assert min(c["slice_count"] for c in chunks) >= min(min_slices, total // max_tasks)
        sizes = [c["slice_count"] for c in chunks]
        assert max(sizes) - min(sizes) <= 2 * max(r.slice_count for r in plan.regions)
    assert [c["index"] for c in chunks] == list(range(len(chunks)))


def test_a_chunk_is_small_self_contained_json_with_a_readable_name():
    plan = plan_image(768, 576, InferenceParams(), 416)
    chunks = unit_chunks(frames(80), plan, min_slices=120)
    assert [c["name"] for c in chunks] == ["f0–f570", "f600–f1170", "f1200–f1770",
                                           "f1800–f2370"]
    assert [c["slice_count"] for c in chunks] == [120] * 4
    again = json.loads(json.dumps(chunks[1]))
    units = chunk_units(again)
    assert units[0].frame == VideoFrame(600, 20000.0) and units[0].index == 20
    assert units[0].region == plan.regions[0]
    # with several regions a frame, names say which region too
    multi = unit_chunks(frames(4), plan_image(1920, 1080, InferenceParams(grid="1x2"), 416),
                        min_slices=20)
    assert multi[0]["name"].startswith("f0.r0c0–")
    # an hour at 1 fps travels as < 200 KB in all (the preprocess XCom)
    hour = unit_chunks(frames(3600), plan)
    assert len(json.dumps(hour)) < 200_000


def test_chunk_bounds_split_by_slices_not_by_units():
    # cuts follow the running slice total: every cut that falls in a heavy unit lands
    # after it, and no chunk is ever empty
    assert chunk_bounds([1, 1, 1, 100, 1, 1, 1], max_tasks=4, min_slices=20) == [
        (0, 4), (4, 7)]
    assert chunk_bounds([10] * 10, max_tasks=3, min_slices=1) == [(0, 4), (4, 7), (7, 10)]
    assert chunk_bounds([], max_tasks=3) == []
