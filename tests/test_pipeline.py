"""The stage functions end to end on known ground truth, and the result documents."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.blob_model import BrightBlobModel, blob_image

from tilescope.errors import ConfigError, RegionsFailedError
from tilescope.outputs.writers import OutputTargets, write_outputs
from tilescope.params import InferenceParams
from tilescope.pipeline import analyze_region, failed_finding, plan_image, run_image, synthesize
from tilescope.readers import reader_for_bytes
from tilescope.results import ImageInfo, RegionFinding, Result


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def png_bytes(pixels: np.ndarray) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def scene():
    pixels, truth = blob_image(1800, 1300, 60, seed=3)
    data = png_bytes(pixels)
    reader = reader_for_bytes(data)
    info = ImageInfo("mem://scene.png", reader.width, reader.height, "0" * 64, "PNG", len(data))
    return reader, info, truth


@pytest.mark.parametrize("grid", ["1x1", "2x3", "auto"])
@pytest.mark.parametrize("postprocess", ["greedynmm", "nmm"])
def test_every_object_found_once_across_slice_and_region_borders(scene, grid, postprocess):
    reader, info, truth = scene
    params = InferenceParams(model="bright-blobs", slice_size=256, overlap=0.3, grid=grid,
                             postprocess=postprocess, score_threshold=0.1)
    model = BrightBlobModel()
    result = run_image(reader, info, params, model)
    boxes = result.detections.boxes.tolist()
    assert len(boxes) == len(truth)
    for gt in truth:
        assert max(iou(gt, b) for b in boxes) > 0.99
    assert model.slices_seen == result.plan["slices"] > 20
    if grid == "2x3":
        assert result.plan["regions"] == 6


def test_nms_keeps_a_cut_object_as_its_best_fragment_only(scene):
    reader, info, truth = scene
    params = InferenceParams(slice_size=256, overlap=0.3, postprocess="nms", match_metric="ios",
                             score_threshold=0.1)
    result = run_image(reader, info, params, BrightBlobModel())
    assert len(result.detections) == len(truth)


def test_analyze_region_returns_image_coordinates_and_timings(scene):
    reader, info, truth = scene
    params = InferenceParams(slice_size=256, overlap=0.3, grid="2x2", score_threshold=0.1)
    plan = plan_image(info.width, info.height, params, 256)
    region = plan.regions[3]
    finding = analyze_region(reader, region, BrightBlobModel(), params, attempt=2)
    box = region.box
    inside = [t for t in truth if box.x1 <= t[0] and t[2] <= box.x2 and box.y1 <= t[1]
              and t[3] <= box.y2]
    found = finding.detections.boxes.tolist()
    for gt in inside:
        assert max(iou(gt, b) for b in found) > 0.99
    assert finding.attempts == 2 and finding.name == "r1c1"
    assert set(finding.seconds) == {"read", "model", "merge", "total"}
    assert len(json.dumps(finding.to_dict())) < 64 * 1024
    assert RegionFinding.from_dict(json.loads(json.dumps(finding.to_dict()))).detections.boxes \
        .shape == finding.detections.boxes.shape


def test_failed_regions_partial_or_refused(scene):
    reader, info, _ = scene
    model = BrightBlobModel()
    params = InferenceParams(slice_size=256, overlap=0.3, grid="2x2", score_threshold=0.1,
                             min_success_ratio=0.7)
    plan = plan_image(info.width, info.height, params, 256)
    findings = [analyze_region(reader, r, model, params) for r in plan.regions[:3]]
    findings.append(failed_finding(plan.regions[3], "ModelThrottledError: slow down", 3))
    result = synthesize(info, plan, findings, params, model)
    assert result.partial and result.failed_regions == ["r1c1"] and result.status == "partial"
    doc = result.to_dict()
    assert doc["partial"] is True and doc["failed_regions"] == ["r1c1"]
    assert doc["regions"][3]["error"].startswith("ModelThrottledError")
    strict = InferenceParams(slice_size=256, overlap=0.3, grid="2x2", min_success_ratio=1.0)
    with pytest.raises(RegionsFailedError, match=r"1 of 4 regions failed \(r1c1\)"):
        synthesize(info, plan, findings, strict, model)
    with pytest.raises(RegionsFailedError, match="2 of 4"):  # a missing finding counts as failed
        synthesize(info, plan, findings[:2] + findings[3:], params, model)


def test_result_document_and_coco_export(scene, tmp_path):
    reader, info, truth = scene
    params = InferenceParams(slice_size=256, overlap=0.3, score_threshold=0.1)
    model = BrightBlobModel()
    result = run_image(reader, info, params, model)
    targets = OutputTargets(str(tmp_path / "r.json"), str(tmp_path / "c.json"),
                            str(tmp_path / "o.png"))
    written = write_outputs(result, reader, targets)
    assert set(written) == {"result", "coco", "overlay"}
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["schema"] == "tilescope.result/1" and doc["status"] == "complete"
    assert doc["image"]["width"] == 1800 and doc["params"]["slice_size"] == 256
    assert len(doc["detections"]) == len(truth)
    first = doc["detections"][0]
    assert set(first) == {"bbox", "score", "category_id", "category_name"}
    _x, _y, w, h = first["bbox"]
    assert w > 0 and h > 0 and first["category_name"] in ("white", "yellow")
    assert sum(doc["summary"]["counts"].values()) == len(truth)
    assert doc["summary"]["model_seconds"] <= doc["summary"]["total_seconds"]
    coco = json.loads((tmp_path / "c.json").read_text())
    assert len(coco["annotations"]) == len(truth)
    assert {c["name"] for c in coco["categories"]} == {"white", "yellow"}
    assert all(a["image_id"] == 1 and a["category_id"] in (1, 2) for a in coco["annotations"])
    from PIL import Image

    with Image.open(tmp_path / "o.png") as overlay:
        assert overlay.size == (1800, 1300)  # under the 2048 cap: not downscaled


def test_result_counts_and_description():
    from tilescope.detections import Detections
    from tilescope.results import describe_counts

    dets = Detections(np.zeros((3, 4)), np.ones(3), np.array([1, 1, 0]))
    result = Result(ImageInfo("x", 1, 1, "a" * 64, "PNG", 1), "m", {}, {}, [], dets,
                    ["cat", "dog"])
    assert result.counts() == {"dog": 2, "cat": 1}
    assert describe_counts(result.counts()) == "2 dogs, 1 cat"
    assert describe_counts({}) == "nothing detected"


@pytest.mark.parametrize("bad", [{"overlap": 0.95}, {"score_threshold": 1.5},
                                 {"postprocess": "diou"}, {"match_metric": "giou"},
                                 {"slice_size": 8}, {"slice_size": "big"}, {"grid": "3"}])
def test_bad_params_are_refused(bad):
    with pytest.raises(ConfigError):
        InferenceParams(**bad)


def test_params_digest_is_stable_and_sensitive():
    a = InferenceParams()
    assert a.digest() == InferenceParams.from_dict(a.to_dict()).digest()
    assert a.digest() != InferenceParams(overlap=0.25).digest()
    assert InferenceParams.from_dict({"slice_size": "", "unknown": 1}).slice_size is None


def test_result_round_trips_through_its_json(scene):
    reader, info, _ = scene
    params = InferenceParams(slice_size=256, overlap=0.3, grid="2x2", score_threshold=0.1)
    result = run_image(reader, info, params, BrightBlobModel())
    again = Result.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.to_dict() == result.to_dict()
    assert again.to_coco() == result.to_coco()
