"""The viewer on a *batch* run (many images in one run): the run's own documents located from
its XCom, keys confined to ``results/batches/<run>/`` and the results prefixes its own
``outcomes.json`` names, and the JSON the page draws (units, image list, one image)."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

from tilescope.detections import Detections
from tilescope.layout import safe_key_part
from tilescope.params import InferenceParams
from tilescope.results import ImageInfo, RegionFinding, Result
from tilescope.slicing import plan_slices
from tilescope.tasks.batch import ItemOutcome
from tilescope.viewer.keys import (
    BatchPrefixes,
    ViewerInputError,
    batch_prefixes,
    batch_run,
    resolve_key,
    validate_image,
)
from tilescope.viewer.shaping import (
    batch_image_payload,
    batch_images_payload,
    batch_plan_payload,
)

RUN_ID = "manual__2026-12-01T10:00:00.123456+00:00"
SAFE = safe_key_part(RUN_ID)
A, B, C = "0123456789abcdef", "fedcba9876543210", "00000000deadbeef"
HASH = "a1b2c3d4e5f6"


def prepared_for(run_id: str = RUN_ID, bucket: str = "tilescope") -> dict:
    """preprocess's ``prepared`` XCom of a batch run, as ``tasks.batch.prepare_batch``
    writes it."""
    safe = safe_key_part(run_id)
    scratch = f"s3://{bucket}/scratch/batch/{safe}/"
    return {"batch": {"plan_uri": scratch + "plan.json", "images": 4, "bad": 1, "units": 2,
                      "outcomes_uri": f"s3://{bucket}/results/batches/{safe}/outcomes.json"},
            "scratch_prefix": scratch, "ready_at": 0.0}


def stored(index: int, image_id: str, bucket: str = "tilescope", **extra) -> dict:
    keys = {name: f"s3://{bucket}/results/{image_id}/{HASH}/{file}" for name, file in
            (("result", "result.json"), ("coco", "coco.json"), ("overlay", "overlay.png"))}
    return asdict(ItemOutcome(index, f"s3://{bucket}/incoming/{index}.jpg", "stored",
                              image_id=image_id, keys=keys, detections=3,
                              counts={"person": 2, "kite": 1}, result_status="complete",
                              **extra))


def outcomes_doc() -> dict:
    """Image 0 and 3 stored, 1 bad (never decoded), 2 failed (too many regions failed)."""
    return {"run_id": RUN_ID, "outcomes": [
        stored(0, A),
        asdict(ItemOutcome(1, "s3://tilescope/incoming/notes.jpg", "bad",
                           error="not an image: " + "x" * 900,
                           error_class="BadImageError")),
        asdict(ItemOutcome(2, "s3://tilescope/incoming/2.jpg", "failed", image_id=C,
                           error="2 of 4 regions failed", error_class="RegionsFailedError")),
        stored(3, B),
    ]}


@pytest.fixture
def run():
    return batch_run(RUN_ID, prepared_for())


@pytest.fixture
def prefixes(run) -> BatchPrefixes:
    return batch_prefixes(run, outcomes_doc())


def test_the_batch_documents_are_found_from_the_runs_own_xcom(run):
    assert run.bucket == "tilescope"
    assert run.plan.uri == f"s3://tilescope/scratch/batch/{SAFE}/plan.json"
    assert run.outcomes.uri == f"s3://tilescope/results/batches/{SAFE}/outcomes.json"
    # a single-image run, or a batch before preprocess pushed its plan, is no batch
    assert batch_run(RUN_ID, {"image": {"image_id": A}, "scratch_prefix": "s3://x/"}) is None
    assert batch_run(RUN_ID, {}) is None and batch_run(RUN_ID, None) is None


def _tampered(where: str, value: str) -> dict:
    prepared = prepared_for()
    if where == "scratch_prefix":
        prepared[where] = value
    else:
        prepared["batch"][where] = value
    return prepared


OTHER = safe_key_part("manual__other")


@pytest.mark.parametrize("prepared", [
    _tampered("scratch_prefix", "s3://tilescope/scratch/"),  # widened
    _tampered("scratch_prefix", f"s3://tilescope/scratch/batch/{OTHER}/"),  # another run's
    _tampered("scratch_prefix", f"s3://tilescope/scratch/batch/{SAFE}/../"),
    _tampered("plan_uri", f"s3://tilescope/scratch/batch/{OTHER}/plan.json"),
    {**prepared_for("manual__other"), "batch": {  # scratch and plan of another run
        **prepared_for()["batch"], "plan_uri": prepared_for("manual__other")["batch"][
            "plan_uri"]}},
    {**prepared_for(), "batch": prepared_for("manual__other")["batch"]},
    _tampered("plan_uri", "s3://tilescope/incoming/secret.json"),
    _tampered("outcomes_uri", f"s3://tilescope/results/batches/{OTHER}/outcomes.json"),
    _tampered("outcomes_uri", f"s3://other/results/batches/{SAFE}/outcomes.json"),
    _tampered("outcomes_uri", "s3://tilescope/results/outcomes.json"),
    {**prepared_for(), "batch": "yes"},
])
def test_a_tampered_batch_xcom_is_refused(prepared):
    with pytest.raises(ViewerInputError):
        batch_run(RUN_ID, prepared)


def test_keys_of_the_runs_stored_images_and_its_batch_prefix_resolve(prefixes):
    for image_id in (A, B):
        for name in ("result.json", "coco.json", "overlay.png", "thumbnail.png"):
            key = f"results/{image_id}/{HASH}/{name}"
            assert resolve_key(key, prefixes).uri == f"s3://tilescope/{key}"
            assert resolve_key(f"s3://tilescope/{key}", prefixes).key == key
    assert resolve_key(f"results/batches/{SAFE}/outcomes.json", prefixes).bucket == "tilescope"
    assert prefixes.object(3, "thumbnail.png").key == f"results/{B}/{HASH}/thumbnail.png"
    assert prefixes.artifacts(0) == {
        "result.json": f"s3://tilescope/results/{A}/{HASH}/result.json",
        "coco.json": f"s3://tilescope/results/{A}/{HASH}/coco.json",
        "overlay.png": f"s3://tilescope/results/{A}/{HASH}/overlay.png"}


@pytest.mark.parametrize("key", [
    f"results/{C}/{HASH}/result.json",  # image 2 failed: its outcome grants nothing
    f"results/{'1' * 16}/{HASH}/result.json",  # an image not in the outcomes at all
    f"results/{A}/ffffffff/result.json",  # a stored image, other parameters
    f"results/{A}/",
    f"results/batches/{OTHER}/outcomes.json",  # another batch's outcomes
    f"results/batches/{SAFE}/../{OTHER}/outcomes.json",
    f"scratch/batch/{SAFE}/plan.json",  # the batch's scratch is not served
    f"s3://elsewhere/results/{A}/{HASH}/result.json",
    "incoming/0.jpg",
    f"results/{A}/{HASH}/notes.txt",
])
def test_keys_outside_the_batch_are_refused(prefixes, key):
    with pytest.raises(ViewerInputError):
        resolve_key(key, prefixes)


def test_before_store_only_the_batch_prefix_is_the_runs(run):
    early = batch_prefixes(run, None)
    assert early.prefixes == (f"results/batches/{SAFE}/",)
    with pytest.raises(ViewerInputError):
        resolve_key(f"results/{A}/{HASH}/result.json", early)
    assert early.object(0, "result.json") is None


def test_an_image_stored_in_its_own_bucket_resolves_only_there(run):
    doc = outcomes_doc()
    doc["outcomes"].append(stored(4, "1" * 16, bucket="other-bucket"))
    prefixes = batch_prefixes(run, doc)
    key = f"s3://other-bucket/results/{'1' * 16}/{HASH}/coco.json"
    assert resolve_key(key, prefixes).bucket == "other-bucket"
    for refused in (f"results/{'1' * 16}/{HASH}/coco.json",  # a bare key: the run's bucket
                    f"s3://other-bucket/results/{A}/{HASH}/coco.json",
                    f"s3://other-bucket/results/batches/{SAFE}/outcomes.json"):
        with pytest.raises(ViewerInputError):
            resolve_key(refused, prefixes)


def _with(position: int, **changes) -> dict:
    doc = outcomes_doc()
    outcome = doc["outcomes"][position]
    for name, value in changes.items():
        if name in ("result", "coco", "overlay"):
            outcome["keys"][name] = value
        else:
            outcome[name] = value
    return doc


@pytest.mark.parametrize("doc", [
    {**outcomes_doc(), "run_id": "manual__other"},  # another run's outcomes
    {k: v for k, v in outcomes_doc().items() if k != "run_id"},
    _with(0, result=f"s3://tilescope/results/{B}/{HASH}/result.json"),  # not its image
    {**outcomes_doc(), "outcomes": [{**stored(0, A), "keys": {  # another image's result
        "result": f"s3://tilescope/results/{B}/{HASH}/result.json"}}]},
    _with(0, result=f"s3://tilescope/results/{A}/result.json"),
    _with(0, result=f"s3://tilescope/incoming/{A}/{HASH}/result.json"),
    _with(0, result=f"s3://elsewhere/results/{A}/{HASH}/result.json"),  # not its bucket
    _with(0, coco="s3://tilescope/incoming/secret.json"),
    _with(0, image_id="../../x"),
    _with(3, index=0),  # two outcomes with one number
    _with(3, index="../1"),
])
def test_a_tampered_outcomes_document_is_refused(run, doc):
    with pytest.raises(ViewerInputError):
        batch_prefixes(run, doc)


def test_image_numbers_from_query_strings():
    assert validate_image(None) is None and validate_image("12") == 12
    for bad in ("x", "-3", "1.0", "1e3", "٣", "9999999"):
        with pytest.raises(ViewerInputError):
            validate_image(bad)


def test_batch_plan_lists_units_in_map_index_order():
    units = [{"index": i, "name": f"incoming/{i}.jpg … incoming/{i + 9}.jpg (10 images)",
              "slice_count": 10, "unit": {"parts": []}} for i in reversed(range(3))]
    payload = batch_plan_payload(units, prepared_for())
    assert payload["mode"] == "batch"
    assert payload["batch"] == {"images": 4, "bad": 1, "units": 2}
    assert [u["index"] for u in payload["units"]] == [0, 1, 2]
    assert payload["units"][1] == {"index": 1, "slices": 10,
                                   "name": "incoming/1.jpg … incoming/10.jpg (10 images)"}
    assert payload["regions"] == [] and payload["image"] is None
    assert batch_plan_payload(None, {})["batch"] is None


def test_image_list_from_outcomes_names_status_detections_and_errors():
    payload = batch_images_payload(outcomes_doc())
    assert payload["final"] and payload["detections"] == 6
    assert payload["counts"] == {"stored": 2, "bad": 1, "failed": 1}
    first, bad, failed, last = payload["images"]
    assert first["name"] == "incoming/0.jpg" and first["status"] == "stored"
    assert first["detections"] == 3 and first["viewable"] and first["counts"]["person"] == 2
    assert bad["status"] == "bad" and not bad["viewable"] and bad["detections"] is None
    assert bad["error"].startswith("not an image") and len(bad["error"]) == 500
    assert bad["error_class"] == "BadImageError"
    assert failed["error"] == "2 of 4 regions failed" and not failed["viewable"]
    assert last["index"] == 3 and last["image_id"] == B


def test_image_list_while_running_comes_from_the_plan():
    plan = {"items": [{"index": 1, "uri": "s3://tilescope/incoming/notes.jpg",
                       "bad": "not an image", "error_class": "BadImageError"},
                      {"index": 0, "uri": "s3://tilescope/incoming/a.jpg",
                       "image": {"image_id": A}, "whole": True}]}
    payload = batch_images_payload(plan_doc=plan)
    assert not payload["final"]
    assert [(i["name"], i["status"]) for i in payload["images"]] == [
        ("incoming/a.jpg", "pending"), ("incoming/notes.jpg", "bad")]
    assert payload["images"][1]["error"] == "not an image"
    assert batch_images_payload() == {"final": False, "images": [], "counts": {},
                                      "detections": 0}


def test_one_batch_image_is_drawn_from_its_result_json():
    plan = plan_slices(1200, 800, 416, 416, 83, 83, grid=(2, 2))
    regions = [RegionFinding(r.index, r.name, r.row, r.col, r.box.as_list(), r.slice_count,
                             status="failed" if r.index == 2 else "success")
               for r in reversed(plan.regions)]
    result = Result(ImageInfo("s3://tilescope/incoming/0.jpg", 1200, 800, A * 4, "JPEG", 10),
                    "nanodet-coco", InferenceParams().__dict__, plan.summary(), regions,
                    Detections(np.array([[10.0, 20.0, 50.0, 60.0]]), np.array([0.9]),
                               np.array([1])), ["person", "bicycle"])
    payload = batch_image_payload(json.loads(json.dumps(result.to_dict())))
    assert payload["image"]["width"] == 1200 and payload["image"]["image_id"] == A
    assert payload["grid"] == {"rows": 2, "cols": 2, "slices": plan.slice_count}
    assert [r["name"] for r in payload["regions"]] == [r.name for r in plan.regions]
    assert [r["index"] for r in payload["regions"]] == [0, 1, 2, 3]
    assert payload["region_states"] == ["success", "success", "failed", "success"]
    assert payload["boxes"] == [[10.0, 20.0, 50.0, 60.0]] and payload["classes"] == [1]


def test_a_batch_video_shows_the_grid_and_boxes_of_its_first_sampled_frame():
    frame = {"row": 0, "col": 0, "slice_count": 1, "status": "success", "attempts": 1}
    doc = {"image": {"uri": "s3://tilescope/incoming/v.avi", "width": 640, "height": 480,
                     "image_id": A}, "plan": {"grid_rows": 1, "grid_cols": 2, "slices": 2},
           "frames": [{"frame_index": 7}, {"frame_index": 9}],
           "regions": [{**frame, "index": 0, "name": "f9 r0c0", "box": [0, 0, 320, 480],
                        "frame_index": 9},
                       {**frame, "index": 3, "name": "f7 r0c1", "box": [320, 0, 640, 480],
                        "frame_index": 7, "status": "failed"},
                       {**frame, "index": 2, "name": "f7 r0c0", "box": [0, 0, 320, 480],
                        "frame_index": 7}],
           "category_names": ["person"],
           "detections": [{"bbox": [1, 2, 3, 4], "score": 0.8, "category_id": 0,
                           "category_name": "person", "frame_index": 7},
                          {"bbox": [5, 6, 7, 8], "score": 0.9, "category_id": 0,
                           "category_name": "person", "frame_index": 9}]}
    payload = batch_image_payload(doc)
    # numbered 0, 1 in order: the page indexes its states by these numbers
    assert [(r["index"], r["name"]) for r in payload["regions"]] == [(0, "f7 r0c0"),
                                                                     (1, "f7 r0c1")]
    assert payload["region_states"] == ["success", "failed"]
    assert payload["boxes"] == [[1.0, 2.0, 4.0, 6.0]]


def test_each_stored_image_shows_the_previews_its_keys_name_webp_or_older_png(run):
    """A batch image stored with WebP previews shows those; one stored before the preview
    format existed (overlay.png, no thumbnail key) its PNGs. Seen red with batch_prefixes
    keeping no per-image preview names (the legacy PNGs for every image)."""
    webp = stored(0, A)
    prefix = f"s3://tilescope/results/{A}/{HASH}/"
    webp["keys"].update(overlay=prefix + "overlay.webp", thumbnail=prefix + "thumbnail.webp")
    doc = {"run_id": RUN_ID, "outcomes": [webp, stored(1, B)]}
    prefixes = batch_prefixes(run, doc)
    assert prefixes.preview(0, "thumbnail").uri == prefix + "thumbnail.webp"
    assert prefixes.artifacts(0)["overlay.webp"] == prefix + "overlay.webp"
    assert prefixes.preview(1, "thumbnail").key == f"results/{B}/{HASH}/thumbnail.png"
    assert "overlay.png" in prefixes.artifacts(1)
    webp["keys"]["thumbnail"] = prefix + "result.json"  # tampered: not a preview
    with pytest.raises(ViewerInputError, match="unexpected thumbnail key"):
        batch_prefixes(run, doc)
