"""The typed XCom hand-offs (:mod:`tilescope.handoffs`, ``UnitFinding``, ``ClaimState``):
each dict form is today's XCom JSON key for key (a literal of it here), reads back equal,
and a dict with a missing or an unknown key is refused with a message that names it."""

from __future__ import annotations

import json

import pytest

from tilescope.errors import HandoffError
from tilescope.handoffs import (
    BatchPrepared,
    BatchStoreSummary,
    Prepared,
    StoreSummary,
    prepared_from_xcom,
)
from tilescope.results import ImageInfo
from tilescope.units import UnitFinding

SHA = "ab" * 32
IMAGE = {"uri": "s3://tilescope/incoming/kite.jpg", "width": 1000, "height": 800,
         "sha256": SHA, "format": "JPEG", "bytes": 12345, "image_id": SHA[:16],
         "crs": None, "transform": None}  # a plain image says it has no CRS
PLAN = {"width": 1000, "height": 800, "slice_width": 416, "slice_height": 416,
        "overlap_x": 83, "overlap_y": 83, "grid_rows": 1, "grid_cols": 2, "regions": 2,
        "slices": 9}
#: preprocess's ``prepared`` XCom of a one-image run, as tiled_inference pushes it
IMAGE_XCOM = {"image": IMAGE, "plan": PLAN,
              "source_uri": f"s3://tilescope/scratch/{SHA[:16]}/r1/pixels.tif",
              "thumbnail_uri": f"s3://tilescope/scratch/{SHA[:16]}/r1/thumbnail.png",
              "full_image": None, "full_image_names": None,
              "moderation": {"blocked": False, "labels": []},
              "scratch_prefix": f"s3://tilescope/scratch/{SHA[:16]}/r1/",
              "ready_at": 1764600000.5}
#: …of a video run: ``video`` added; with packed units, ``units`` too
VIDEO_XCOM = {**IMAGE_XCOM, "full_image": None, "moderation": None,
              "video": {"fps": 1.0, "frames": [[0, 0.0], [30, 1000.0]],
                        "sheet": {"uri": "s3://tilescope/scratch/x/sheet.png", "cells": 2}},
              "units": 3}
#: …of an image with ground truth found beside it (``evaluate`` runs)
LABELLED_XCOM = {**IMAGE_XCOM, "ground_truth": "s3://tilescope/incoming/kite.jpg.gt.json"}
BATCH_XCOM = {"batch": {"plan_uri": "s3://tilescope/scratch/batch/r1/plan.json",
                        "images": 12, "bad": 1, "units": 2,
                        "outcomes_uri": "s3://tilescope/results/batches/r1/outcomes.json"},
              "scratch_prefix": "s3://tilescope/scratch/batch/r1/", "ready_at": 1764600000.0}
STORED_XCOM = {"image_id": SHA[:16], "image_uri": IMAGE["uri"], "status": "partial",
               "detections": 7, "counts": {"kite": 5, "person": 2},
               "failed_regions": ["r0c1"], "regions": 2, "model_share": 0.41,
               "keys": {"result": "s3://tilescope/results/x/p/result.json",
                        "coco": "s3://tilescope/results/x/p/coco.json",
                        "overlay": "s3://tilescope/results/x/p/overlay.png"},
               "scratch_objects_deleted": 4}
BATCH_STORED_XCOM = {"batch": True, "images": 12, "stored": 10, "bad": 1, "failed": 1,
                     "detections": 31}
#: a unit's finding as analyze returns it, whole and offloaded to scratch
UNIT_XCOM = {"index": 3, "attempts": 2, "seconds": {"read": 0.25, "model": 1.5, "total": 2.0},
             "sources": {}, "bad": {"4": "truncated JPEG"}, "slice_count": 40}
UNIT_OFFLOADED_XCOM = {"index": 3, "slice_count": 40, "attempts": 1,
                       "seconds": {"model": 1.5}, "bad": {},
                       "finding_uri": "s3://tilescope/scratch/x/r1/findings/unit-0003.json"}

CASES = [(Prepared, IMAGE_XCOM), (Prepared, VIDEO_XCOM), (Prepared, LABELLED_XCOM),
         (BatchPrepared, BATCH_XCOM), (StoreSummary, STORED_XCOM),
         (BatchStoreSummary, BATCH_STORED_XCOM), (UnitFinding, UNIT_XCOM),
         (UnitFinding, UNIT_OFFLOADED_XCOM)]
IDS = ["prepared", "prepared-video", "prepared-labelled", "prepared-batch", "stored",
       "stored-batch", "unit", "unit-offloaded"]


@pytest.mark.parametrize(("kind", "xcom"), CASES, ids=IDS)
def test_the_dict_form_is_the_xcom_json_and_reads_back_equal(kind, xcom):
    value = kind.from_dict(json.loads(json.dumps(xcom)))
    assert value.to_dict() == xcom
    assert kind.from_dict(value.to_dict()) == value


def test_typed_fields_come_back_typed():
    prepared = Prepared.from_dict(IMAGE_XCOM)
    assert prepared.image == ImageInfo.from_dict(IMAGE) and prepared.image.image_id == SHA[:16]
    assert prepared.slice_plan().summary() == PLAN and prepared.video_frames == []
    assert Prepared.from_dict(VIDEO_XCOM).video_frames == [[0, 0.0], [30, 1000.0]]
    assert isinstance(prepared_from_xcom(BATCH_XCOM), BatchPrepared)
    assert prepared_from_xcom(IMAGE_XCOM) == prepared
    assert StoreSummary.from_dict(STORED_XCOM).asset_extra() == {
        "image_id": SHA[:16], "image_uri": IMAGE["uri"], "status": "partial",
        "detections": 7, "counts": {"kite": 5, "person": 2},
        "result": "s3://tilescope/results/x/p/result.json"}
    unit = UnitFinding.from_dict(UNIT_XCOM)
    assert unit.bad == {4: "truncated JPEG"} and unit.slice_count == 40


@pytest.mark.parametrize(("kind", "xcom"), CASES, ids=IDS)
def test_a_missing_key_is_refused_by_name(kind, xcom):
    key = "index" if kind is UnitFinding else next(iter(xcom))
    with pytest.raises(HandoffError, match=rf"missing keys \['{key}'\]"):
        kind.from_dict({k: v for k, v in xcom.items() if k != key})


@pytest.mark.parametrize(("kind", "xcom"), CASES, ids=IDS)
def test_an_unknown_key_is_refused_by_name(kind, xcom):
    with pytest.raises(HandoffError, match=r"unknown keys \['regions_typo'\]"):
        kind.from_dict({**xcom, "regions_typo": 1})


def test_nested_and_malformed_hand_offs_are_refused():
    with pytest.raises(HandoffError, match=r"prepared\['batch'\]: missing keys \['units'\]"):
        BatchPrepared.from_dict({**BATCH_XCOM, "batch": {
            k: v for k, v in BATCH_XCOM["batch"].items() if k != "units"}})
    with pytest.raises(HandoffError, match="expected a JSON object, got list"):
        Prepared.from_dict([IMAGE_XCOM])
    with pytest.raises(HandoffError, match="not true"):
        BatchStoreSummary.from_dict({**BATCH_STORED_XCOM, "batch": False})
    with pytest.raises(HandoffError, match="unknown keys"):  # a batch XCom is no image's
        Prepared.from_dict(BATCH_XCOM)
