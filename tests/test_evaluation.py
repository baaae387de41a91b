"""`tilescope evaluate` / `tilescope.evaluation.evaluate`: the reference evaluator's figures,
recall and duplicates counted by hand, a real pipeline run scored, bad input refused."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from support.blob_model import BrightBlobModel, blob_image

from tilescope.cli import main
from tilescope.evaluation import METRICS, EvaluationInputError, evaluate
from tilescope.models import register_model

register_model("bright-blobs", BrightBlobModel)

CATEGORIES = [{"id": 1, "name": "car"}, {"id": 2, "name": "boat"}, {"id": 3, "name": "tree"},
              {"id": 4, "name": "bus"}]  # no bus anywhere: its figures are None
#: (image, category, [x, y, w, h]); small < 32², medium < 96², large above
OBJECTS = [
    (1, 1, [10, 10, 20, 20]),      # G1 car small: found
    (1, 1, [100, 100, 50, 50]),    # G2 car medium: found, and found again (a duplicate)
    (1, 2, [300, 300, 150, 150]),  # G3 boat large: found shifted (IoU 0.875)
    (2, 2, [50, 50, 60, 40]),      # G4 boat medium: missed
    (2, 1, [400, 400, 200, 100]),  # G5 car large: found; also a boat box on it (wrong class)
    (2, 3, [700, 100, 25, 25]),    # G6 tree small: found at IoU 0.515 (AP50, not AP55)
    (3, 1, [100, 100, 30, 30]),    # G7 car small: only a box at IoU 0.333 (missed, no dup)
    (3, 1, [500, 500, 80, 80]),    # G8 car medium: found at IoU 0.6, then exactly (a dup)
]
DETECTIONS = [
    (1, 1, [10, 10, 20, 20], 0.9),
    (1, 1, [100, 100, 50, 50], 0.8),
    (1, 1, [102, 101, 50, 50], 0.6),    # duplicate of G2
    (1, 2, [310, 300, 150, 150], 0.7),
    (1, 1, [600, 600, 40, 40], 0.95),   # false positive on nothing
    (2, 1, [400, 400, 200, 100], 0.5),
    (2, 2, [400, 400, 200, 100], 0.85),  # boat on the car: false positive, not a duplicate
    (2, 3, [708, 100, 25, 25], 0.3),
    (3, 1, [115, 100, 30, 30], 0.2),    # IoU 0.333 with G7: a miss, not a duplicate
    (3, 1, [500, 516, 80, 80], 0.9),     # IoU 0.667 with G8: matches it first
    (3, 1, [500, 500, 80, 80], 0.4),    # exact on G8, but G8 is taken: duplicate
]


def ground_truth() -> dict:
    images = [{"id": i, "file_name": f"scene{i}.png", "width": 1000, "height": 800}
              for i in (1, 2, 3)]
    annotations = [{"id": n, "image_id": img, "category_id": cat, "bbox": box,
                    "area": box[2] * box[3], "iscrowd": 0}
                   for n, (img, cat, box) in enumerate(OBJECTS, start=1)]
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def results() -> list[dict]:
    return [{"image_id": img, "category_id": cat, "bbox": box, "score": score}
            for img, cat, box, score in DETECTIONS]


def reference(gt: dict, dets: list[dict], max_dets: list[int] | None = None,
              cat_ids: list[int] | None = None) -> np.ndarray:
    """pycocotools' own COCOeval, run as its README runs it → its 12 stats."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        if max_dets:
            evaluator.params.maxDets = max_dets
        if cat_ids:
            evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def same(ours: float | None, theirs: float) -> bool:
    return (theirs == -1 and ours is None) or \
        (ours is not None and abs(ours - theirs) <= 1e-6)


@pytest.mark.parametrize("max_dets", [None, [1, 100, 10000]])
def test_agrees_with_the_reference_evaluator(max_dets):
    """≤ 100 boxes per image here, so summarize()'s fixed maxDets=100 for AP is no difference."""
    ours = evaluate(results(), ground_truth())
    stats = reference(ground_truth(), results(), max_dets)
    for name, value in zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), stats[:6], strict=True):
        assert same(getattr(ours, name), value), (name, getattr(ours, name), value)
    assert 0 < ours.AP50 < 1 and ours.APs is not None and ours.APl is not None
    for category in CATEGORIES:
        stats = reference(ground_truth(), results(), max_dets, [category["id"]])
        per_class = ours.per_class[category["name"]]
        assert same(per_class.AP, stats[0]) and same(per_class.AP50, stats[1]), category
    assert ours.per_class["bus"].AP is None


def test_recall_and_duplicates_are_the_hand_counted_ones():
    ours = evaluate(results(), ground_truth())
    assert (ours.objects, ours.detections, ours.images) == (8, 11, 3)
    assert ours.recall50 == 6 / 8  # G4 and G7 missed
    assert ours.dup_rate == 2 / 11  # the second boxes on G2 and G8
    car, boat, tree, bus = (ours.per_class[n] for n in ("car", "boat", "tree", "bus"))
    assert (car.objects, car.matched, car.detections, car.duplicates) == (5, 4, 8, 2)
    assert (car.recall50, car.dup_rate) == (4 / 5, 2 / 8)
    assert (boat.recall50, boat.dup_rate) == (1 / 2, 0.0)
    assert (tree.recall50, tree.dup_rate) == (1.0, 0.0)
    assert (bus.recall50, bus.dup_rate, bus.objects) == (None, None, 0)
    document = ours.to_dict()
    assert set(METRICS) | {"per_class"} <= set(document)
    assert document["per_class"]["car"]["counts"]["duplicates"] == 2


def test_more_objects_than_cocos_100_per_image_are_all_counted():
    """150 objects found exactly: AP is 1 at maxDets 10000, where summarize()'s AP (read at
    100 detections per image) would say 2/3."""
    boxes = [[20 * (i % 15) + 2, 20 * (i // 15) + 2, 10, 10] for i in range(150)]
    gt = {"images": [{"id": 7, "file_name": "many.png", "width": 400, "height": 400}],
          "categories": [{"id": 1, "name": "dot"}],
          "annotations": [{"id": i + 1, "image_id": 7, "category_id": 1, "bbox": b,
                           "area": 100, "iscrowd": 0} for i, b in enumerate(boxes)]}
    dets = [{"image_id": 7, "category_id": 1, "bbox": b, "score": 1 - i / 1000}
            for i, b in enumerate(boxes)]
    ours = evaluate(dets, gt)
    assert ours.AP == 1.0 and ours.AP50 == 1.0 and ours.recall50 == 1.0
    stats = reference(gt, dets, [1, 100, 10000])
    assert stats[1] == 1.0 and stats[0] < 0.7  # AP50 at maxDets[2]; AP at a fixed 100


@pytest.fixture
def blob_run(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A real `tilescope predict` run on an image of known rectangles: (result.json,
    coco.json, its ground truth)."""
    pixels, boxes = blob_image(700, 500, 9, seed=11)
    image = tmp_path / "blobs.png"
    Image.fromarray(pixels).save(image)
    result, coco = tmp_path / "result.json", tmp_path / "coco.json"
    assert main(["predict", str(image), "--model", "bright-blobs", "--slice", "256",
                 "--out", str(result), "--coco", str(coco), "--quiet"]) == 0
    # blob_image paints every third rectangle yellow; ids unlike tilescope's on purpose
    gt = {"images": [{"id": 42, "file_name": "blobs.png", "width": 700, "height": 500}],
          "categories": [{"id": 10, "name": "yellow"}, {"id": 20, "name": "white"}],
          "annotations": [{"id": n + 1, "image_id": 42, "category_id": 10 if n % 3 == 0
                           else 20, "bbox": [x1, y1, x2 - x1, y2 - y1]}  # no area, iscrowd
                          for n, (x1, y1, x2, y2) in enumerate(boxes)]}
    # another labelled image the run did not cover: its object is not a miss of this run
    gt["images"].append({"id": 43, "file_name": "elsewhere.png", "width": 99, "height": 99})
    gt["annotations"].append({"id": 99, "image_id": 43, "category_id": 20,
                              "bbox": [1, 1, 50, 50]})
    truth = tmp_path / "gt.json"
    truth.write_text(json.dumps(gt))
    return result, coco, truth


def test_a_real_run_scores_perfectly_on_its_known_objects(blob_run, tmp_path: Path, capsys):
    result, coco, truth = blob_run
    gt = json.loads(truth.read_text())
    for pred in (result, coco):  # the results JSON and the COCO export, matched by name
        ours = evaluate(json.loads(pred.read_text()), gt)
        assert (ours.AP50, ours.recall50, ours.dup_rate, ours.objects) == (1.0, 1.0, 0.0, 9)
        assert ours.images == 1
        assert ours.per_class["yellow"].objects == 3
    out, plot = tmp_path / "eval.json", tmp_path / "pr.png"
    capsys.readouterr()
    assert main(["evaluate", str(result), str(truth), "--json", str(out),
                 "--plot", str(plot)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["class", "AP", "AP50"]
    assert any(line.split()[:3] == ["all", "1.000", "1.000"] for line in table.splitlines())
    document = json.loads(out.read_text())
    assert (document["AP50"], document["recall50"], document["dup_rate"]) == (1.0, 1.0, 0.0)
    assert set(document["per_class"]) == {"yellow", "white"}
    with Image.open(plot) as png:
        assert png.format == "PNG" and png.size == (640, 480)


def test_a_wrong_image_or_class_is_not_a_perfect_score(blob_run):
    """The name mapping matters: the same boxes under other file or class names."""
    result, _, truth = blob_run
    gt = json.loads(truth.read_text())
    gt["categories"] = [{"id": 10, "name": "white"}, {"id": 20, "name": "yellow"}]
    assert evaluate(json.loads(result.read_text()), gt).AP50 < 0.5
    gt["images"][0]["file_name"] = "other.png"
    with pytest.raises(EvaluationInputError, match="no prediction image"):
        evaluate(json.loads(result.read_text()), gt)


@pytest.mark.parametrize(("pred", "gt", "message"), [
    (b"not json at all", None, "predictions {pred} is not JSON"),
    (None, b'[{"image_id": 1}]', "ground truth is not COCO annotations"),
    (b'{"hello": "world"}', None, "neither a COCO results list nor a tilescope"),
    (b'[{"image_id": 1, "category_id": 1}]', None, "prediction is not COCO"),
    (b'[{"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]', None,
     "image ids the ground truth does not have: [99]"),
    (b"missing", None, "no such file"),
    (None, b'{"images": [{"file_name": "a.png"}], "annotations": [], "categories": []}',
     "every image needs an id"),
])
def test_bad_input_exits_2_with_a_reason(tmp_path: Path, capsys, pred, gt, message):
    pred_path, gt_path = tmp_path / "pred.json", tmp_path / "gt.json"
    if pred != b"missing":
        pred_path.write_bytes(pred if pred is not None else json.dumps(results()).encode())
    gt_path.write_bytes(gt if gt is not None else json.dumps(ground_truth()).encode())
    assert main(["evaluate", str(pred_path), str(gt_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tilescope: error:") and "\n" not in err
    assert message.format(pred=pred_path) in err
