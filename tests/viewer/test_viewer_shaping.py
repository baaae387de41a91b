"""The viewer's JSON: plan, live states in one list, findings (inline or offloaded), result."""

from __future__ import annotations

import json

import numpy as np

from tilescope.detections import Detections
from tilescope.params import InferenceParams
from tilescope.results import ImageInfo, RegionFinding, Result
from tilescope.slicing import plan_slices
from tilescope.viewer.shaping import (
    TaskRow,
    class_counts,
    finding_payload,
    plan_payload,
    result_payload,
    states_payload,
    viewer_state,
)


def test_plan_payload_lists_regions_in_map_index_order():
    plan = plan_slices(4000, 3000, 416, 416, 83, 83, grid=(3, 4))
    regions = [r.to_dict() for r in reversed(plan.regions)]
    prepared = {"image": {"uri": "s3://b/k.jpg", "width": 4000, "height": 3000,
                          "image_id": "0123456789abcdef", "sha256": "x"},
                "plan": plan.summary()}
    payload = plan_payload(regions, prepared)
    assert [r["index"] for r in payload["regions"]] == list(range(12))
    assert payload["grid"] == {"rows": 3, "cols": 4, "slices": plan.slice_count}
    first = payload["regions"][0]
    assert first["box"][:2] == [0, 0] and first["name"] == plan.regions[0].name
    assert payload["image"]["width"] == 4000
    # analyze maps the regions themselves: each region is its own task
    assert [r["task"] for r in payload["regions"]] == list(range(12))
    assert payload["tasks"] == 12
    assert plan_payload(None, None) == {"image": None, "grid": None, "regions": [],
                                        "tasks": 0}


def test_states_of_a_thousand_regions_in_one_payload():
    rows = [TaskRow("analyze", i, ["success", "running", "queued", "failed", "up_for_retry"]
                    [i % 5], 1 + (i % 5 == 4)) for i in range(1000)]
    rows += [TaskRow("preprocess", -1, "success", 1), TaskRow("synthesize", -1, None, 0)]
    payload = states_payload(rows, 1000, "running")
    assert len(payload["states"]) == 1000 and payload["states"][:5] == [
        "success", "running", "queued", "failed", "up_for_retry"]
    assert payload["counts"] == {"success": 200, "running": 200, "queued": 200, "failed": 200,
                                 "up_for_retry": 200}
    assert payload["tries"][4] == 2
    assert payload["stages"]["preprocess"] == "success"
    assert payload["stages"]["synthesize"] == "none"
    assert payload["terminal"] is False and payload["result_ready"] is False
    assert len(json.dumps(payload)) < 40_000  # small enough to poll every 2 s


def test_states_before_expansion_and_after_store():
    unexpanded = [TaskRow("analyze", -1, None, 0), TaskRow("preprocess", -1, "running", 1)]
    payload = states_payload(unexpanded, 0, "running")
    assert payload["states"] == [] and payload["stages"]["preprocess"] == "running"
    done = states_payload([TaskRow("store", -1, "success", 1)], 0, "success")
    assert done["terminal"] and done["result_ready"]
    assert viewer_state("not-a-state") == "none" and viewer_state(None) == "none"


def _finding(n: int, offload: bool = False) -> dict:
    boxes = np.array([[10 + i, 20, 30 + i, 40] for i in range(n)], np.float64)
    finding = RegionFinding(3, "r0c3", 0, 3, [0, 0, 100, 100], 4,
                            Detections(boxes, np.full(n, 0.5), np.arange(n) % 2),
                            seconds={"total": 1.5})
    data = finding.to_dict()
    if offload:
        data["detections"] = None
        data["detections_uri"] = "s3://b/scratch/x/y/findings/region-0003.json"
    return data


def test_inline_finding_becomes_columnar_boxes():
    payload = finding_payload(_finding(3))
    assert payload["index"] == 3 and payload["name"] == "r0c3" and not payload["missing"]
    assert payload["boxes"][0] == [10.0, 20.0, 30.0, 40.0]
    assert payload["classes"] == [0, 1, 0] and payload["scores"] == [0.5, 0.5, 0.5]
    assert payload["count"] == 3 and payload["seconds"] == {"total": 1.5}


def test_offloaded_finding_uses_the_fetched_boxes_or_says_they_are_gone():
    data = _finding(5, offload=True)
    fetched = _finding(5)["detections"]
    assert len(finding_payload(data, fetched)["boxes"]) == 5
    gone = finding_payload(data, None)
    assert gone["missing"] and gone["boxes"] == [] and gone["count"] == 5


def test_result_payload_converts_xywh_and_keeps_counts():
    result = Result(ImageInfo("s3://b/k.jpg", 200, 100, "ab" * 32, "JPEG", 10),
                    "nanodet-coco", InferenceParams().__dict__, {"regions": 1},
                    [RegionFinding(0, "r0c0", 0, 0, [0, 0, 200, 100], 1)],
                    Detections(np.array([[10.0, 20.0, 50.0, 60.0], [0, 0, 5, 5]]),
                               np.array([0.9, 0.4]), np.array([1, 0])),
                    ["person", "bicycle"])
    payload = result_payload(json.loads(json.dumps(result.to_dict())))
    assert payload["boxes"] == [[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 5.0, 5.0]]
    assert payload["classes"] == [1, 0] and payload["scores"] == [0.9, 0.4]
    assert payload["counts"] == {"bicycle": 1, "person": 1}
    assert payload["category_names"] == ["person", "bicycle"]
    assert payload["status"] == "complete"


def test_class_counts_with_a_score_filter():
    names = ["person", "kite"]
    assert class_counts([0, 0, 1], names) == {"person": 2, "kite": 1}
    assert class_counts([0, 0, 1, 7], names, [0.9, 0.2, 0.5, 0.8], min_score=0.5) == {
        "person": 1, "kite": 1, "7": 1}
