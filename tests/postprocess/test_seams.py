"""One merge over every raw detection, and the seam-aware merge.

* The pipeline merges once, at synthesis, over the raw detections of every slice: merged
  per region and again across regions, greedy NMM re-merged its own union boxes and lost
  objects SAHI keeps (``bench/recall_gap.py`` counts them on real photos).
* ``merge_scope="seams"`` only merges boxes from different slices that meet in those
  slices' overlap; it needs each detection's slice, which ``Detections.slices`` carries
  from the region through JSON to synthesis.
"""

from __future__ import annotations

import numpy as np
import pytest
from support.blob_model import BrightBlobModel

from tilescope.detections import Detections
from tilescope.errors import ConfigError
from tilescope.params import InferenceParams
from tilescope.pipeline import region_finding, synthesize
from tilescope.postprocess import merge
from tilescope.postprocess.combine import seam_pairs
from tilescope.results import ImageInfo, detections_from_compact, detections_to_compact
from tilescope.slicing import plan_slices

LEFT, RIGHT = (0, 0, 100, 100), (80, 0, 180, 100)  # two slices overlapping at x 80..100


def dets(boxes: list, scores: list, slices: list | None = None, cats: list | None = None):
    return Detections(np.array(boxes, np.float32), np.array(scores, np.float32),
                      np.array(cats or [0] * len(boxes), np.int32),
                      None if slices is None else np.array(slices, np.int32))


def test_seam_pairs_are_boxes_of_two_slices_meeting_in_their_overlap():
    boxes = np.array([[82, 10, 98, 30], [84, 12, 99, 31],  # both in the overlap
                      [10, 10, 60, 60], [30, 20, 70, 70],  # one slice's two objects
                      [60, 40, 90, 50], [85, 40, 120, 50]], np.float32)
    slices = np.array([LEFT, RIGHT, LEFT, LEFT, LEFT, RIGHT], np.int32)
    a, b = np.array([0, 2, 4, 4]), np.array([1, 3, 5, 0])
    # 4 and 5 meet at x 85..90, inside the overlap; 4 and 0 come from the same slice
    assert seam_pairs(boxes, slices, a, b).tolist() == [True, False, True, False]
    # a box reaching beyond its slice meets another slice's box outside their overlap
    wide = np.array([[0, 0, 150, 10], [120, 0, 170, 10]], np.float32)
    assert not seam_pairs(wide, np.array([LEFT, RIGHT], np.int32), np.array([0]),
                          np.array([1]))[0]


@pytest.mark.parametrize("strategy", ["greedynmm", "nmm", "nms"])
def test_seams_keep_one_slices_overlapping_objects_and_merge_across_the_overlap(strategy):
    # two objects one slice told apart (IoS 0.6): every-pair merging fuses them
    apart = dets([[10, 10, 60, 60], [30, 10, 80, 60]], [0.9, 0.8], [LEFT, LEFT])
    assert len(merge(apart, strategy, "ios", 0.5)) == 1
    assert len(merge(apart, strategy, "ios", 0.5, seams=True)) == 2
    # one object seen whole by both slices: merged either way
    twice = dets([[82, 10, 98, 30], [83, 11, 98, 31]], [0.9, 0.8], [LEFT, RIGHT])
    assert len(merge(twice, strategy, "ios", 0.5, seams=True)) == 1
    # many boxes take the general (strip sweep) path: same answer per pair
    many = Detections.concat([apart.shifted(0, 200 * k) for k in range(80)]
                             + [twice.shifted(0, 200 * k) for k in range(80)])
    assert len(merge(many, strategy, "ios", 0.5, seams=True)) == 80 * 3


def test_seams_need_slices_a_sahi_mode_and_a_positive_threshold():
    plain = dets([[0, 0, 10, 10]], [0.9])
    with pytest.raises(ValueError, match="slice"):
        merge(plain, "greedynmm", seams=True)
    tagged = dets([[0, 0, 10, 10]], [0.9], [LEFT])
    with pytest.raises(ValueError, match="nms, nmm and greedynmm"):
        merge(tagged, "wbf", seams=True)
    with pytest.raises(ValueError, match="threshold"):
        merge(tagged, "nms", threshold=0.0, seams=True)
    with pytest.raises(ConfigError, match="seams"):
        InferenceParams(merge_scope="seams", postprocess="softnms")
    with pytest.raises(ConfigError, match="merge_scope"):
        InferenceParams(merge_scope="regions")
    # the default stays out of the parameters' digest: earlier results keep their keys
    assert "merge_scope" not in InferenceParams().to_dict()
    assert InferenceParams(merge_scope="seams").digest() != InferenceParams().digest()


def test_slices_travel_with_the_detections_through_json():
    raw = Detections.concat([dets([[1, 2, 3, 4], [5, 6, 7, 8]], [0.5, 0.6]).from_slice(*LEFT),
                             dets([[90, 2, 95, 4]], [0.7]).from_slice(*RIGHT)])
    moved = raw.shifted(1000, 10)
    assert moved.slices.tolist() == [[1000, 10, 1100, 110]] * 2 + [[1080, 10, 1180, 110]]
    assert moved.select(np.array([2])).slices.tolist() == [[1080, 10, 1180, 110]]
    back = detections_from_compact(detections_to_compact(moved))
    assert back.slices.tolist() == moved.slices.tolist()
    assert "slice_boxes" not in detections_to_compact(dets([[1, 2, 3, 4]], [0.5]))
    # one part without slices: the concatenation has none (it could not say where all came from)
    assert Detections.concat([raw, dets([[0, 0, 1, 1]], [0.1])]).slices is None


def test_the_image_is_merged_once_over_every_raw_detection():
    """Greedy NMM is not idempotent: A absorbs B, and the union A∪B then matches C, which
    B alone matched (and A did not). Merged per region and again at synthesis, C was lost."""
    chain = dets([[0, 0, 100, 100], [40, 0, 140, 100], [100, 0, 150, 50]], [0.9, 0.8, 0.7])
    once = merge(chain, "greedynmm", "ios", 0.5)
    assert len(once) == 2 and len(merge(once, "greedynmm", "ios", 0.5)) == 1
    params = InferenceParams(slice_size=256, overlap=0.2, score_threshold=0.3)
    plan = plan_slices(400, 256, 256, 256, 51, 51)
    (region,) = plan.regions
    slices = region.slices()
    per_slice = [chain, Detections.empty()]
    model = BrightBlobModel()
    finding = region_finding(region, per_slice, slices, model, params, attempt=1, read=0.0,
                             model_seconds=0.0, elapsed=0.0)
    assert len(finding.detections) == 3  # raw: the region does not merge
    info = ImageInfo("mem://x.png", 400, 256, "0" * 64, "PNG", 1)
    result = synthesize(info, plan, [finding], params, model)
    assert result.detections.boxes.tolist() == once.boxes.tolist()
