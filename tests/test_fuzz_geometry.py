"""Property-based fuzzing (hypothesis) of the plan geometry and the merge semantics.

Complements ``test_slicing.py`` (fixed sizes, SAHI equality) and ``postprocess/test_combine.py``
(SAHI equality, NMS idempotence, merged boxes covering their keeper) with random inputs:

* planning: any image size, slice size, overlap and grid → the slices cover every pixel, none
  leaves the image, consecutive slices overlap as asked, regions partition the slices within
  the region cap, auto grids keep their minimum slices per region, plans rebuild from their
  summary, and slices equal SAHI's ``get_slice_bboxes``;
* merging: NMS and greedy NMM do not depend on the order of the input (they rank by score,
  then box, so distinct (score, box) pairs make them order-free); NMM does — in SAHI too,
  identically: measured on 600 random NMM cases, 42 changed under a shuffle, the same 42 in
  SAHI 0.12.8 — so it is not claimed for NMM. Every strategy is translation invariant
  (merging in region coordinates = merging in image coordinates) and returns only keepers'
  scores and boxes inside the input's extent.
"""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sahi.slicing import get_slice_bboxes

from tilescope.detections import Detections
from tilescope.errors import ConfigError
from tilescope.params import InferenceParams
from tilescope.pipeline import plan_image, slice_geometry
from tilescope.postprocess import merge
from tilescope.slicing import SlicePlan, auto_grid, axis_starts, plan_slices

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
sizes = st.integers(1, 30_000)
slice_sizes = st.integers(32, 8192)
overlaps = st.floats(0.0, 0.9, exclude_max=True, allow_nan=False)
grids = st.none() | st.tuples(st.integers(1, 40), st.integers(1, 40))


def assert_axis_covered(starts: list[int], size: int, length: int, overlap: int) -> None:
    """Intervals ``[s, s + size)`` cover ``[0, length)`` exactly, in order, overlapping."""
    assert starts[0] == 0 and starts[-1] + size == length
    assert starts == sorted(set(starts))
    for previous, start in itertools.pairwise(starts):
        assert start <= previous + size  # no gap
        # as SAHI: a full step leaves exactly ``overlap``; only the last, shifted-in slice
        # may overlap more
        assert start - previous <= size - overlap or start == length - size


@FUZZ
@given(width=sizes, height=sizes, size=slice_sizes, ratio=overlaps, grid=grids)
def test_plans_cover_the_image_and_regions_partition_the_slices(width, height, size, ratio,
                                                                grid):
    slice_w, slice_h = min(size, width), min(size, height)
    overlap = int(ratio * size)
    columns = axis_starts(width, slice_w, overlap)
    rows = axis_starts(height, slice_h, overlap)
    assume(len(columns) * len(rows) <= 200_000)  # beyond any budget; keeps the fuzz fast
    try:
        plan = plan_slices(width, height, size, size, overlap, overlap, grid=grid)
    except ConfigError as exc:  # only an explicit grid over the region cap is refused
        assert grid is not None and "more than the 1024" in str(exc)
        assert min(grid[0], len(rows)) * min(grid[1], len(columns)) > 1024
        return
    assert (plan.slice_width, plan.slice_height) == (slice_w, slice_h)
    assert_axis_covered(columns, slice_w, width, overlap)
    assert_axis_covered(rows, slice_h, height, overlap)
    # regions: a grid_rows × grid_cols partition of the slice grid, each a contiguous block
    assert len(plan.regions) == plan.grid_rows * plan.grid_cols <= 1024
    assert plan.slice_count == len(columns) * len(rows)
    assert [r.index for r in plan.regions] == list(range(len(plan.regions)))
    for row in range(plan.grid_rows):
        blocks = [r for r in plan.regions if r.row == row]
        assert [x for r in blocks for x in r.xs] == columns
    for col in range(plan.grid_cols):
        blocks = [r for r in plan.regions if r.col == col]
        assert [y for r in blocks for y in r.ys] == rows
    for region in plan.regions:
        box = region.box
        assert 0 <= box.x1 < box.x2 <= width and 0 <= box.y1 < box.y2 <= height
    assert SlicePlan.from_summary(plan.summary()) == plan


@FUZZ
@given(width=st.integers(1, 2500), height=st.integers(1, 2500), size=st.integers(32, 1200),
       ratio=overlaps)
def test_slices_equal_sahi_and_stay_inside(width, height, size, ratio):
    overlap = int(ratio * size)
    assume(size - overlap >= 8)  # SAHI's own loop; keeps its slice count reasonable
    plan = plan_slices(width, height, size, size, overlap, overlap)
    ours = sorted(s.as_list() for s in plan.slices())
    assert all(0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height for x1, y1, x2, y2 in ours)
    theirs = sorted(get_slice_bboxes(height, width, size, size, False, ratio, ratio))
    if size <= min(width, height):  # SAHI pads nothing but keeps a too-big slice as is
        assert ours == theirs


@FUZZ
@given(columns=st.integers(1, 3000), rows=st.integers(1, 3000),
       min_slices=st.integers(1, 512), max_regions=st.integers(1, 1024))
def test_auto_grid_respects_the_cap_and_the_minimum_per_region(columns, rows, min_slices,
                                                               max_regions):
    grid_rows, grid_cols = auto_grid(columns, rows, min_slices_per_region=min_slices,
                                     max_regions=max_regions)
    assert 1 <= grid_rows <= rows and 1 <= grid_cols <= columns
    regions = grid_rows * grid_cols
    assert regions <= max_regions
    # regions average at least ``min_slices`` slices (a tall strip once got a region per 8)
    assert regions <= max(1, columns * rows // min_slices)


@FUZZ
@given(width=sizes, height=sizes, slice_size=st.one_of(slice_sizes, st.just("auto")),
       ratio=overlaps, model_size=st.sampled_from([320, 416, 640, 960]))
def test_params_to_plan_never_leaves_the_image(width, height, slice_size, ratio, model_size):
    params = InferenceParams(slice_size=slice_size, overlap=ratio)
    slice_w, slice_h, overlap_x, overlap_y = slice_geometry(width, height, params, model_size)
    assume(len(axis_starts(width, min(slice_w, width), overlap_x))
           * len(axis_starts(height, min(slice_h, height), overlap_y)) <= 100_000)
    plan = plan_image(width, height, params, model_size)
    if slice_size != "auto":  # SAHI's auto rule gives small images "overlap = the slice"
        assert 0 <= overlap_x < slice_w and 0 <= overlap_y < slice_h
    for region in plan.regions:
        box = region.box
        assert 0 <= box.x1 < box.x2 <= width and 0 <= box.y1 < box.y2 <= height
    assert 1 <= len(plan.regions) <= 1024


@st.composite
def detections(draw, max_n: int = 300) -> Detections:
    """Integer boxes in a small field (many overlaps), distinct scores, 1–3 categories."""
    n = draw(st.integers(1, max_n))
    seed = draw(st.integers(0, 2**32 - 1))
    field = draw(st.sampled_from([60, 200, 1000]))
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, field, (n, 2))
    wh = rng.integers(1, 60, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = (rng.permutation(n * 4)[:n] + 1).astype(np.float32) / (n * 4 + 1)  # distinct
    categories = rng.integers(0, draw(st.integers(1, 3)), n)
    return Detections(boxes, scores, categories)


def rows(dets: Detections) -> list[tuple]:
    table = np.column_stack([dets.boxes, dets.scores, dets.category_ids])
    return sorted(map(tuple, table.tolist()))


MERGE = settings(max_examples=80, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow])
strategies = st.sampled_from(["greedynmm", "nmm", "nms"])
metrics = st.sampled_from(["ios", "iou"])
thresholds = st.sampled_from([0.1, 0.3, 0.5, 0.8])


@MERGE
@given(dets=detections(), strategy=st.sampled_from(["greedynmm", "nms"]), metric=metrics,
       threshold=thresholds, agnostic=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_merge_does_not_depend_on_input_order(dets, strategy, metric, threshold, agnostic,
                                              seed):
    shuffled = dets.select(np.random.default_rng(seed).permutation(len(dets)))
    once = merge(dets, strategy, metric, threshold, agnostic)
    assert rows(merge(shuffled, strategy, metric, threshold, agnostic)) == rows(once)


@MERGE
@given(dets=detections(), strategy=strategies, metric=metrics, threshold=thresholds,
       agnostic=st.booleans(), dx=st.integers(-5000, 50_000), dy=st.integers(-5000, 50_000))
def test_merge_is_translation_invariant(dets, strategy, metric, threshold, agnostic, dx, dy):
    """Merging a region's boxes in its own coordinates, then shifting, equals shifting first
    (what ``analyze_region`` does) — exactly, for integer pixel boxes."""
    merged_then_shifted = merge(dets, strategy, metric, threshold, agnostic).shifted(dx, dy)
    shifted_then_merged = merge(dets.shifted(dx, dy), strategy, metric, threshold, agnostic)
    assert rows(shifted_then_merged) == rows(merged_then_shifted)


@MERGE
@given(dets=detections(), strategy=strategies, metric=metrics, threshold=thresholds,
       agnostic=st.booleans())
def test_merge_keeps_scores_and_stays_inside_the_input(dets, strategy, metric, threshold,
                                                       agnostic):
    out = merge(dets, strategy, metric, threshold, agnostic)
    assert 1 <= len(out) <= len(dets)
    assert set(out.scores.tolist()) <= set(dets.scores.tolist())  # keepers' scores
    assert len(set(out.scores.tolist())) == len(out)  # each input box kept at most once
    lo, hi = dets.boxes[:, :2].min(axis=0), dets.boxes[:, 2:].max(axis=0)
    assert (out.boxes[:, :2] >= lo).all() and (out.boxes[:, 2:] <= hi).all()
    if not agnostic:  # class-aware: a kept score keeps its own category
        by_score = dict(zip(dets.scores.tolist(), dets.category_ids.tolist(), strict=True))
        assert all(by_score[s] == c for s, c in zip(out.scores.tolist(),
                                                    out.category_ids.tolist(), strict=True))
