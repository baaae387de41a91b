"""Slice planning: SAHI-identical slices, full coverage, regions that partition the slices."""

from __future__ import annotations

import numpy as np
import pytest
from sahi.slicing import get_auto_slice_params, get_slice_bboxes

from tilescope.errors import ConfigError
from tilescope.slicing import (
    DEFAULT_MIN_SLICES_PER_REGION,
    MAX_MAP_LENGTH,
    Region,
    auto_grid,
    from_runs,
    parse_grid,
    plan_slices,
    sahi_auto_slice_params,
    to_runs,
)

SIZES = [(1352, 900), (416, 416), (300, 200), (8192, 8192), (1000, 417), (5000, 333),
         (417, 4999), (1920, 1080), (3840, 2160)]


@pytest.mark.parametrize(("width", "height"), SIZES)
@pytest.mark.parametrize(("slice_size", "overlap"), [(416, 0.2), (640, 0.25), (256, 0.0)])
def test_slices_equal_sahi(width: int, height: int, slice_size: int, overlap: float) -> None:
    ov = int(slice_size * overlap)
    plan = plan_slices(width, height, slice_size, slice_size, ov, ov)
    ours = sorted(s.as_list() for s in plan.slices())
    theirs = sorted(get_slice_bboxes(height, width, slice_size, slice_size, False,
                                     overlap, overlap))
    assert ours == theirs


@pytest.mark.parametrize(("width", "height"), [*SIZES, (640, 480), (2048, 4096), (20000, 900)])
def test_auto_slice_params_equal_sahi(width: int, height: int) -> None:
    slice_w, slice_h, overlap_x, overlap_y = sahi_auto_slice_params(width, height)
    assert (overlap_x, overlap_y, slice_w, slice_h) == get_auto_slice_params(height, width)


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_slices_cover_every_pixel_and_stay_inside(width: int, height: int) -> None:
    plan = plan_slices(width, height, 416, 416, 83, 83)
    covered = np.zeros((height, width), bool)
    for s in plan.slices():
        assert 0 <= s.x1 < s.x2 <= width and 0 <= s.y1 < s.y2 <= height
        covered[s.y1:s.y2, s.x1:s.x2] = True
    assert covered.all()


def test_regions_partition_the_slices_and_cover_their_boxes() -> None:
    plan = plan_slices(8192, 8192, 416, 416, 83, 83, grid=(3, 4))
    assert (plan.grid_rows, plan.grid_cols) == (3, 4)
    all_slices = [s for r in plan.regions for s in r.slices()]
    assert len(all_slices) == len(set(all_slices)) == plan.slice_count == 25 * 25
    for region in plan.regions:
        for s in region.slices():
            b = region.box
            assert b.x1 <= s.x1 and s.x2 <= b.x2 and b.y1 <= s.y1 and s.y2 <= b.y2
    sizes = [r.slice_count for r in plan.regions]
    assert max(sizes) - min(sizes) <= 25 // 3 + 25 // 4 + 2  # near-even split
    assert [r.index for r in plan.regions] == list(range(12))


def test_auto_grid_amortizes_and_respects_max_map_length() -> None:
    assert auto_grid(4, 3) == (1, 1)  # 12 slices: one region is cheaper than fan-out
    rows, cols = auto_grid(25, 25)  # 625 slices (8192² at 416 px) → 2 regions of ≥ 256
    assert 1 < rows * cols <= 625 // DEFAULT_MIN_SLICES_PER_REGION
    rows, cols = auto_grid(50, 50)  # 2500 slices (16384²) → ~9 regions
    assert 4 <= rows * cols <= 2500 // DEFAULT_MIN_SLICES_PER_REGION
    rows, cols = auto_grid(400, 400)  # 160k slices
    assert rows * cols <= MAX_MAP_LENGTH
    assert auto_grid(400, 400, max_regions=100)[0] * auto_grid(400, 400, max_regions=100)[1] \
        <= 100
    rows, cols = auto_grid(200, 10, min_slices_per_region=10)  # wide image → more columns
    assert cols > rows


def test_explicit_grid_is_clamped_to_the_slice_grid() -> None:
    plan = plan_slices(1352, 900, 416, 416, 83, 83, grid=(10, 10))
    assert (plan.grid_rows, plan.grid_cols) == (3, 4)
    assert all(r.slice_count == 1 for r in plan.regions)


def test_grid_over_max_regions_is_refused_with_numbers() -> None:
    with pytest.raises(ConfigError, match="1225 regions"):
        plan_slices(20000, 20000, 416, 416, 83, 83, grid=(35, 35))


def test_image_smaller_than_slice_is_one_slice() -> None:
    plan = plan_slices(300, 200, 416, 416, 83, 83)
    assert [s.as_list() for s in plan.slices()] == [[0, 0, 300, 200]]


@pytest.mark.parametrize("grid", [None, (2, 3), (50, 50)])
def test_plan_rebuilds_from_its_summary(grid) -> None:
    from tilescope.slicing import SlicePlan

    plan = plan_slices(5000, 3000, 416, 416, 83, 83, grid=grid, min_slices_per_region=8)
    assert SlicePlan.from_summary(plan.summary()) == plan


def test_region_round_trips_through_dict() -> None:
    region = plan_slices(3000, 2000, 416, 416, 83, 83, grid=(2, 2)).regions[3]
    data = region.to_dict()
    assert Region.from_dict(data) == region
    assert data["name"] == "r1c1" and data["slice_count"] == region.slice_count


def test_plan_of_50k_slices_is_small_json() -> None:
    import json

    plan = plan_slices(75000, 75000, 416, 416, 83, 83)
    assert plan.slice_count > 50_000
    assert len(plan.regions) <= MAX_MAP_LENGTH
    assert len(json.dumps([r.to_dict() for r in plan.regions])) < 1_000_000


@pytest.mark.parametrize("values", [(), (5,), (0, 128), (0, 128, 256, 300),
                                    (0, 10, 20, 30, 35), (3, 3, 3), (9, 4, 100, 101, 102)])
def test_slice_starts_travel_as_arithmetic_runs(values: tuple[int, ...]) -> None:
    assert from_runs(to_runs(values)) == values
    assert len(to_runs((0, 128, 256, 384, 412))) == 2  # evenly spaced + SAHI's shifted last


def test_region_list_xcom_grows_by_about_200_bytes_a_region() -> None:
    """The list Airflow maps over is the one XCom that grows with the region count."""
    import json

    plan = plan_slices(28704, 28704, 160, 160, 32, 32)  # 50,176 slices, auto grid
    regions = [r.to_dict() for r in plan.regions]
    assert [Region.from_dict(d) for d in regions] == list(plan.regions)
    assert len(json.dumps(regions)) < 220 * len(regions) < 64 * 1024
    legacy = {**regions[0], "xs": list(plan.regions[0].xs), "ys": list(plan.regions[0].ys)}
    del legacy["x_runs"], legacy["y_runs"]
    assert Region.from_dict(legacy) == plan.regions[0]  # explicit lists are still read


@pytest.mark.parametrize(("text", "expected"), [("auto", None), (None, None), ("3x4", (3, 4)),
                                                ("2×5", (2, 5)), (" 1X1 ", (1, 1))])
def test_parse_grid(text: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_grid(text) == expected


@pytest.mark.parametrize("text", ["3", "0x4", "axb", "3x4x5"])
def test_parse_grid_refuses_nonsense(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_grid(text)
