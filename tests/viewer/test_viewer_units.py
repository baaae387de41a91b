"""The viewer on a one-image run whose ``analyze`` maps work units (several consecutive
regions a task): the region grid stays, and each region names the task that runs it."""

from __future__ import annotations

from tilescope.scratch import ScratchLayout
from tilescope.slicing import plan_slices
from tilescope.units import SourcePlan, pack_units
from tilescope.viewer.shaping import plan_payload, region_tasks

RUN_ID = "manual__2026-12-02T09:00:00+00:00"
IMAGE_ID = "0123456789abcdef"
PLAN = plan_slices(4000, 3000, 416, 416, 83, 83, grid=(3, 4))  # 12 regions of 9 slices
SCRATCH = ScratchLayout("tilescope", IMAGE_ID, RUN_ID).prefix_uri


def prepared(**extra) -> dict:
    """preprocess's ``prepared`` XCom of a unit-mapped one-image run."""
    return {"image": {"uri": "s3://tilescope/incoming/big.tif", "width": 4000,
                      "height": 3000, "image_id": IMAGE_ID},
            "plan": PLAN.summary(), "scratch_prefix": SCRATCH, **extra}


def units(budget: int = 25) -> list[dict]:
    """What preprocess maps over: 25 slices a unit gives 3, 2, 3, 2 and 2 regions."""
    packed = pack_units([SourcePlan(0, PLAN, whole=False)], budget)
    return [u.to_dict() for u in packed]


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
    assert region_tasks([units(9)[0]], 2) == [0, -1]


def test_a_video_keeps_one_cell_per_mapped_unit():
    frame_units = [{**u, "row": u["index"], "col": 0, "box": [0, 0, 4000, 3000]}
                   for u in units()]
    payload = plan_payload(frame_units, prepared(video={"frames": [[0, 0.0]]}))
    assert [r["index"] for r in payload["regions"]] == [r["task"] for r in
                                                         payload["regions"]] == list(range(5))
    assert payload["tasks"] == 5
