"""The viewer on a one-image run whose ``analyze`` maps work units (several consecutive
regions a task): the region grid stays, each region names the task that runs it, and a
unit's findings — inline or offloaded to the run's scratch — arrive as its regions'."""

from __future__ import annotations

import json

import numpy as np

from tilescope.detections import Detections
from tilescope.layout import ScratchLayout
from tilescope.results import RegionFinding
from tilescope.slicing import plan_slices
from tilescope.units import (
    SourcePlan,
    UnitFinding,
    WorkUnit,
    pack_units,
    region_units,
    unit_payload,
)
from tilescope.viewer.keys import ViewerInputError, resolve_key, run_prefixes
from tilescope.viewer.shaping import findings_payload, plan_payload, region_tasks

RUN_ID = "manual__2026-12-02T09:00:00+00:00"
IMAGE_ID = "0123456789abcdef"
PLAN = plan_slices(4000, 3000, 416, 416, 83, 83, grid=(3, 4))  # 12 regions of 9 slices
SCRATCH = ScratchLayout("tilescope", IMAGE_ID, RUN_ID).prefix_uri


def prepared(**extra) -> dict:
    """preprocess's ``prepared`` XCom of a unit-mapped one-image run."""
    return {"image": {"uri": "s3://tilescope/incoming/big.tif", "width": 4000,
                      "height": 3000, "image_id": IMAGE_ID},
            "plan": PLAN.summary(), "scratch_prefix": SCRATCH, **extra}


def units() -> list[dict]:
    """What preprocess maps over (``steps.image_units``): 25 slices a unit gives 3, 2, 3, 2
    and 2 regions."""
    return [u.to_dict() for u in region_units(PLAN, 25, workers=1)]


def test_a_unit_mapped_plan_keeps_the_region_grid_and_names_each_regions_task():
    mapped = units()
    payload = plan_payload(list(reversed(mapped)), prepared(units=len(mapped)))
    assert payload["tasks"] == 5
    assert [r["task"] for r in payload["regions"]] == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4]
    by_region = plan_payload([r.to_dict() for r in PLAN.regions], prepared())
    # the same rows as if analyze mapped the regions, but for the task
    assert [{k: v for k, v in r.items() if k != "task"} for r in payload["regions"]] == [
        {k: v for k, v in r.items() if k != "task"} for r in by_region["regions"]]
    assert payload["grid"] == {"rows": 3, "cols": 4, "slices": 108}
    without_plan = plan_payload(mapped, {**prepared(), "plan": None})
    assert without_plan["regions"] == [] and without_plan["tasks"] == 5


def test_region_tasks_read_singles_and_parts_of_source_zero_only():
    mapped = [{"index": 0, "name": "r0c0", "slice_count": 9,
               "unit": {"singles": [[0, 0]], "parts": []}},
              {"index": 1, "name": "r0c1–r0c2", "slice_count": 18,
               "unit": {"singles": [], "parts": [[0, 1, 3], [1, 3, 4]]}}]
    # region 3 belongs to no unit of source 0: never scheduled, not unit 1's state
    assert region_tasks(mapped, 5) == [0, 1, 1, -1, -1]
    first = pack_units([SourcePlan(0, PLAN, whole=False)], 9)[0].to_dict()
    assert first["unit"] == {"singles": [[0, 0]], "parts": []}
    assert region_tasks([first], 2) == [0, -1]


def test_a_video_keeps_one_cell_per_mapped_unit():
    frame_units = [{**u, "row": u["index"], "col": 0, "box": [0, 0, 4000, 3000]}
                   for u in units()]
    payload = plan_payload(frame_units, prepared(video={"frames": [[0, 0.0]]}))
    assert [r["index"] for r in payload["regions"]] == [r["task"] for r in
                                                         payload["regions"]] == list(range(5))
    assert payload["tasks"] == 5


def _region_finding(index: int) -> RegionFinding:
    """Region ``index`` with one box at x = 100·index (to tell regions apart)."""
    region = PLAN.regions[index]
    x = 100.0 * index
    return RegionFinding(index, region.name, region.row, region.col, region.box.as_list(),
                         region.slice_count,
                         Detections(np.array([[x, 10.0, x + 20, 30.0]]), np.array([0.8]),
                                    np.array([index % 3])),
                         seconds={"total": 0.5 + index})


class _Bucket:
    """Records ``put_object`` like S3 would keep the object (unit_payload's offload)."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_object(self, Bucket: str, Key: str, Body: bytes, ContentType: str) -> None:
        self.objects[f"s3://{Bucket}/{Key}"] = Body


def _analyze_xcoms(bucket: _Bucket) -> list[dict]:
    """Two units' XComs as analyze writes them: unit 0 inline (regions 0–1), unit 1 over
    its XCom budget, so offloaded to the run's scratch (regions 2–3)."""
    out = []
    for index, regions, budget in ((0, (0, 1), 1 << 20), (1, (2, 3), 64)):
        unit = WorkUnit(index, (), 18)
        finding = UnitFinding(index, {0: [_region_finding(r) for r in regions]},
                              seconds={"total": 2.0})
        out.append(json.loads(json.dumps(unit_payload(finding, unit, SCRATCH, budget,
                                                      bucket))))
    return out


def _reader(bucket: _Bucket):
    """The route's reader: a key confined to the run's prefixes, ``None`` once gone."""
    prefixes = run_prefixes(RUN_ID, prepared(), None)

    def read_json(uri: str) -> dict | None:
        try:
            location = resolve_key(uri, prefixes)
        except ViewerInputError:
            return None
        body = bucket.objects.get(location.uri)
        return json.loads(body) if body is not None else None

    return read_json


def test_unit_findings_arrive_as_their_regions_findings_inline_or_offloaded():
    bucket = _Bucket()
    xcoms = _analyze_xcoms(bucket)
    assert "sources" in xcoms[0] and xcoms[1]["finding_uri"] == (
        f"{SCRATCH}findings/unit-0001.json")
    shown = findings_payload(xcoms, _reader(bucket))
    assert [f["index"] for f in shown] == [0, 1, 2, 3]
    for f in shown:  # each region's own box, under its own index
        x = 100.0 * f["index"]
        assert f["boxes"] == [[x, 10.0, x + 20, 30.0]] and f["classes"] == [f["index"] % 3]
        assert f["name"] == PLAN.regions[f["index"]].name and not f["missing"]
        assert f["seconds"] == {"total": 0.5 + f["index"]} and f["count"] == 1


def test_a_unit_offloaded_to_a_cleaned_scratch_is_skipped_quietly():
    bucket = _Bucket()
    xcoms = _analyze_xcoms(bucket)
    bucket.objects.clear()  # the run ended: its scratch is gone
    assert [f["index"] for f in findings_payload(xcoms, _reader(bucket))] == [0, 1]


def test_region_and_video_payloads_are_shown_as_before():
    region = _region_finding(7).to_dict()
    region["detections"] = None
    region["detections_uri"] = f"{SCRATCH}findings/region-0007.json"
    offloaded = {region["detections_uri"]: _region_finding(7).to_dict()["detections"]}
    shown = findings_payload([region, "not a finding"], offloaded.get)
    assert [(f["index"], len(f["boxes"])) for f in shown] == [(7, 1)]
    video_unit = _analyze_xcoms(_Bucket())[0]
    # a video's cells are its units: one boxless row per unit, under the unit's index
    shown = findings_payload([video_unit], {}.get, video=True)
    assert [(f["index"], f["boxes"]) for f in shown] == [(0, [])]
