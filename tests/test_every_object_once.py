"""Every object once: real objects on slice overlaps and region borders, the real NanoDet
through the library's stages (plan, analyze each region, synthesize), each merge mode.

The model runs once per scene (a region's finding holds its raw detections, whatever the
merge); each mode is then one ``synthesize``, exactly what ``run_image`` does after the
model. An object counts as found once when exactly one detection of its class overlaps it at
IoU ≥ 0.5.
"""

from __future__ import annotations

import numpy as np
import pytest
from support.seam_objects import GRID, OVERLAP, OVERLAPPING, PLACED, SLICE, Placed, build_scene

from tilescope.detections import Detections
from tilescope.models.nanodet import NanoDetModel
from tilescope.params import InferenceParams
from tilescope.pipeline import analyze_region, plan_image, synthesize
from tilescope.readers.array import ArrayReader
from tilescope.results import ImageInfo, RegionFinding, Result

SCORE = 0.4
#: the modes that keep each object once: a duplicate from a neighbouring slice is removed
#: (nms) or merged into it (greedynmm, nmm; wbf fuses it), with any scope. Not softnms:
#: it only lowers a duplicate's score (see the last test).
ONCE = [("nms", "iou", "all"), ("nms", "ios", "all"), ("greedynmm", "ios", "all"),
        ("nmm", "ios", "all"), ("wbf", "iou", "all"), ("greedynmm", "ios", "seams"),
        ("nmm", "ios", "seams"), ("nms", "iou", "seams")]


def base_params(**changes: object) -> InferenceParams:
    settings: dict = {"score_threshold": SCORE, **changes}
    return InferenceParams(slice_size=SLICE, overlap=OVERLAP, grid=GRID, **settings)


@pytest.fixture(scope="module")
def model():
    with NanoDetModel(score_threshold=SCORE) as nanodet:
        yield nanodet


def analyzed(objects: tuple, model: NanoDetModel) -> tuple[ImageInfo, object, list[RegionFinding],
                                                            list[Placed]]:
    pixels, placed = build_scene(objects)
    reader = ArrayReader(pixels)
    info = ImageInfo(uri="seams.png", width=reader.width, height=reader.height, sha256="0" * 64,
                     format="RAW", bytes=pixels.nbytes)
    params = base_params()
    plan = plan_image(info.width, info.height, params, model.preferred_slice_size)
    findings = [analyze_region(reader, region, model, params) for region in plan.regions]
    return info, plan, findings, placed


@pytest.fixture(scope="module")
def scene(model):
    return analyzed(PLACED, model)


@pytest.fixture(scope="module")
def overlapping_scene(model):
    return analyzed(PLACED + OVERLAPPING, model)


def merged(scene, model, **changes: object) -> Result:
    info, plan, findings, _ = scene
    return synthesize(info, plan, findings, base_params(**changes), model)


def times_found(dets: Detections, obj: Placed) -> int:
    """Detections of the object's class overlapping it at IoU ≥ 0.5."""
    return int((iou_with(dets, obj) >= 0.5).sum())


def iou_with(dets: Detections, obj: Placed) -> np.ndarray:
    """IoU of each detection with the object (0 for other classes)."""
    boxes = dets.boxes.astype(np.float64)
    x1, y1, x2, y2 = obj.box
    iw = np.clip(np.minimum(boxes[:, 2], x2) - np.maximum(boxes[:, 0], x1), 0, None)
    ih = np.clip(np.minimum(boxes[:, 3], y2) - np.maximum(boxes[:, 1], y1), 0, None)
    inter = iw * ih
    union = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) \
        + (x2 - x1) * (y2 - y1) - inter
    return np.where(dets.category_ids == obj.category_id, inter / union, 0.0)


def test_the_scene_puts_objects_where_slices_and_regions_meet(scene):
    _info, plan, findings, placed = scene
    assert (plan.grid_rows, plan.grid_cols, plan.slice_count) == (2, 2, 16)
    slices = plan.slices()
    for obj in placed:
        covering = [s for s in slices if s.x1 <= obj.box[0] and obj.box[2] <= s.x2
                    and s.y1 <= obj.box[1] and obj.box[3] <= s.y2]
        assert len(covering) == int(obj.where.split()[0]), obj
        regions = {r.index for r in plan.regions for s in r.slices() if s in covering}
        assert len(regions) == (int(obj.where.split(", ")[1].split()[0])
                                if "regions" in obj.where else 1), obj
    # what merging has to undo: the raw findings hold the seam objects more than once
    raw = Detections.concat(f.detections for f in findings)
    assert sum(times_found(raw, obj) > 1 for obj in placed) >= 8


@pytest.mark.parametrize(("postprocess", "metric", "scope"), ONCE)
def test_every_object_is_found_exactly_once(scene, model, postprocess, metric, scope):
    result = merged(scene, model, postprocess=postprocess, match_metric=metric,
                    merge_scope=scope)
    found = {obj.where + f" at {obj.box}": times_found(result.detections, obj)
             for obj in scene[3]}
    assert found == dict.fromkeys(found, 1)


def test_only_the_seam_aware_merge_keeps_two_overlapping_objects_of_one_slice(
        overlapping_scene, model):
    objects = overlapping_scene[3]
    pair = objects[-2:]
    settings = {"postprocess": "greedynmm", "match_metric": "ios", "match_threshold": 0.3}
    everywhere = merged(overlapping_scene, model, merge_scope="all", **settings).detections
    seams = merged(overlapping_scene, model, merge_scope="seams", **settings).detections

    def near_pair(dets: Detections) -> np.ndarray:
        return np.flatnonzero(np.max([iou_with(dets, obj) for obj in pair], axis=0) >= 0.3)

    # merging any matching pair fuses the two people into one union box
    assert len(near_pair(everywhere)) == 1
    # the seam-aware merge never joins two boxes of one slice: one box per person...
    close = near_pair(seams)
    assert len(close) == 2
    best = [int(np.argmax(iou_with(seams, obj))) for obj in pair]
    assert sorted(best) == sorted(close.tolist())
    assert all(iou_with(seams, obj).max() >= 0.5 for obj in pair)
    # ...and every object on a seam or a region border is still found once
    assert [times_found(seams, obj) for obj in objects[:-2]] == [1] * (len(objects) - 2)


def test_soft_nms_keeps_a_duplicate_whose_decayed_score_stays_above_the_threshold(scene, model):
    """Soft-NMS removes nothing itself: a neighbour slice's view of an object (IoU ~0.9) is
    decayed to ~0.2 of its score, gone at the run's threshold 0.4 but kept at 0.1."""
    at_run = merged(scene, model, postprocess="softnms", match_metric="iou")
    assert [times_found(at_run.detections, obj) for obj in scene[3]] == [1] * len(scene[3])
    low = merged(scene, model, postprocess="softnms", match_metric="iou", score_threshold=0.1)
    assert sum(times_found(low.detections, obj) > 1 for obj in scene[3]) >= 5
