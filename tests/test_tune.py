"""``tilescope tune``: the search finds the setting known to be best on a constructed case,
within its budget, and the Params JSON it writes runs as it was scored (the CLI reads it
back with ``predict --params``; the DAG's conf validation is checked in
tests/dags/test_evaluate_dag.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from support.blob_model import BrightBlobModel, blob_image
from support.pasted_objects import big_and_small
from support.seam_objects import GRID, OVERLAP, OVERLAPPING, PLACED, build_scene

from tilescope.cli import main
from tilescope.evaluation import evaluate
from tilescope.models import register_model
from tilescope.models.coco import COCO_NAMES
from tilescope.models.nanodet import NanoDetModel
from tilescope.params import InferenceParams
from tilescope.readers import open_image
from tilescope.tune import Merging, SearchSpace, merge_grid, params_json, refined_sizes, tune

register_model("bright-blobs", BrightBlobModel)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[Path, Path]:
    """A 900-px giraffe (cut by model-sized slices, whole in the full-image pass) and six
    80-px objects (too small in a 1024-px slice): (image, its COCO ground truth)."""
    folder = tmp_path_factory.mktemp("tune")
    pixels, gt = big_and_small("scene.png")
    image, truth = folder / "scene.png", folder / "gt.json"
    Image.fromarray(pixels).save(image)
    truth.write_text(json.dumps(gt))
    return image, truth


def test_tune_finds_the_known_best_setting_and_its_params_run_as_scored(scene, tmp_path,
                                                                        capsys):
    """Starting from one 1024-px slice, only model-sized slices *and* the full-image pass
    find every object (measured: AP50 0.96 there; 0.71 without the full-image pass, 0.50 at
    1024, 0.88 at 320 with it, 0.59 at 640). Seen red with the full-image step dropped from
    the search order (best: model/0.2 without it) and with the full-image detections left
    out of the re-merge (the full-image pass then looks useless: best model/0.2)."""
    image, truth = scene
    out, report = tmp_path / "best.json", tmp_path / "report.json"
    assert main(["tune", str(image), str(truth), "--model", "nanodet-coco", "--slice", "1024",
                 "--slice-sizes",
                 "model,1024", "--overlaps", "0.2", "--thresholds", "0.5", "--budget", "300",
                 "--params", str(out), "--json", str(report), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "model/0.2+full" in table and "settings tried" in table

    chosen = json.loads(out.read_text())
    assert chosen["slice_size"] == "model" and chosen["full_image_pass"] is True
    assert chosen["overlap"] == 0.2
    params = InferenceParams.from_dict(chosen)
    assert params.slice_size is None and params.full_image_pass

    doc = json.loads(report.read_text())
    first, best = doc["trials"][0], doc["best"]
    assert first["slicing"] == "1024/0.2" and first["merging"] == "greedynmm ios 0.5"
    assert best["AP50"] > 0.9 > first["AP50"] + 0.3
    assert doc["spent"] <= doc["budget"]
    # a model pass per slicing, not per setting: many merges scored on few passes
    assert len(doc["trials"]) > 3 * len({t["slicing"] for t in doc["trials"]})

    # predict with the file runs exactly what was scored
    result = tmp_path / "result.json"
    assert main(["predict", str(image), "--params", str(out), "--out", str(result),
                 "--quiet"]) == 0
    run = json.loads(result.read_text())
    assert run["params"] == params.to_dict()
    scored = evaluate(run, json.loads(truth.read_text()))
    assert scored.AP50 is not None and abs(scored.AP50 - best["AP50"]) < 1e-9


@pytest.fixture(scope="module")
def overlapping_scene(tmp_path_factory) -> tuple[Path, Path]:
    """tests/support/seam_objects.py's scene: real objects on slice overlaps and region
    borders, plus two people overlapping inside one slice (NanoDet boxes them at IoS 0.36):
    (image, its COCO ground truth)."""
    folder = tmp_path_factory.mktemp("seams")
    pixels, placed = build_scene(PLACED + OVERLAPPING)
    names = sorted({COCO_NAMES[obj.category_id] for obj in placed})
    gt = {"images": [{"id": 1, "file_name": "seams.png", "width": pixels.shape[1],
                      "height": pixels.shape[0]}],
          "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
          "annotations": [{"id": i + 1, "image_id": 1,
                           "category_id": names.index(COCO_NAMES[obj.category_id]) + 1,
                           "bbox": [obj.box[0], obj.box[1], obj.box[2] - obj.box[0],
                                    obj.box[3] - obj.box[1]]}
                          for i, obj in enumerate(placed)]}
    image, truth = folder / "seams.png", folder / "gt.json"
    Image.fromarray(pixels).save(image)
    truth.write_text(json.dumps(gt))
    return image, truth


def test_tune_chooses_the_seam_aware_merge_where_the_default_fuses_two_objects(
        overlapping_scene, tmp_path):
    """Matching at IoS 0.3 fuses the two overlapping people into one box (one person
    missed: AP50 0.94 under every IoS merge); the seam-aware merge keeps them apart and
    still finds every object on a seam once (AP50 1), so tune — re-merging the one model
    pass — chooses ``merge_scope=seams``, shows it in its table, and ``predict --params`` on
    its file scores what it reported. (Under IoU at 0.3 the pair, IoU 0.24, stays apart in
    either scope, so the search is held to IoS to make seams strictly the best.) Seen red
    with the scopes left out of the search (best: the default merge, the file without
    ``merge_scope``)."""
    image, truth = overlapping_scene
    gt = json.loads(truth.read_text())
    base = InferenceParams(model="nanodet-coco", overlap=OVERLAP, grid=GRID,
                           score_threshold=0.4, match_threshold=0.3)
    space = SearchSpace(slice_sizes=(None,), overlaps=(OVERLAP,), match_metrics=("ios",),
                        thresholds=(0.3,), full_image_pass=False, refine_sizes=False)
    reader, info = open_image(str(image))
    with reader, NanoDetModel(score_threshold=base.score_threshold) as model:
        report = tune([(reader, info)], gt, model, base, budget=300, space=space)

    first, best = report.trials[0], report.best
    assert first.params == base
    assert best.params.merge_scope == "seams" and best.merging.label().endswith(" seams")
    assert best.score == 1.0 > first.score
    assert all(t.score < best.score for t in report.trials if t.merging.merge_scope == "all")
    assert f"* {best.slicing.label()}" in report.table()
    assert best.merging.label() in report.table()
    assert len(report.trials) > 6 and len({t.slicing for t in report.trials}) == 1

    out = tmp_path / "best.json"
    out.write_bytes(params_json(best.params))
    assert json.loads(out.read_text())["merge_scope"] == "seams"
    result = tmp_path / "result.json"
    assert main(["predict", str(image), "--params", str(out), "--out", str(result),
                 "--quiet"]) == 0
    run = json.loads(result.read_text())
    assert run["params"]["merge_scope"] == "seams" and run["params"] == best.params.to_dict()
    scored = evaluate(run, gt)
    assert scored.AP50 is not None and abs(scored.AP50 - best.score) < 1e-9


def test_the_params_file_leaves_the_default_merge_scope_out():
    """A file choosing the default merge reads as before the scope existed. Seen red with
    ``tuned_conf`` keeping every key."""
    assert "merge_scope" not in json.loads(params_json(InferenceParams()))
    seams = json.loads(params_json(InferenceParams(merge_scope="seams")))
    assert seams["merge_scope"] == "seams"
    assert InferenceParams.from_dict(seams) == InferenceParams(merge_scope="seams")


def test_the_merge_grid_tries_seams_only_where_a_run_accepts_it():
    """Seen red with ``Merging.valid`` dropped (wbf/softnms with seams: ConfigError)."""
    grid = merge_grid(SearchSpace(thresholds=(0.0, 0.5)), True, Merging("greedynmm", "ios", 0.5))
    seams = {(m.postprocess, m.match_threshold) for m in grid if m.merge_scope == "seams"}
    assert {p for p, _ in seams} == {"greedynmm", "nmm", "nms"}
    assert all(t > 0 for _, t in seams)
    assert Merging("nms", "iou", 0.5, "seams") in grid and Merging("nms", "iou", 0.5) in grid
    for merging in grid:  # every setting is a valid run
        InferenceParams(postprocess=merging.postprocess, match_metric=merging.match_metric,
                        match_threshold=merging.match_threshold,
                        merge_scope=merging.merge_scope)


def test_a_tiny_budget_tries_only_the_starting_parameters(scene):
    """The first trial always runs; after it the budget is spent. Seen red with the budget
    check removed from the search loop (dozens of trials)."""
    image, truth = scene
    reader, info = open_image(str(image))
    base = InferenceParams(model="nanodet-coco", slice_size=1024)
    with reader, NanoDetModel(score_threshold=base.score_threshold) as model:
        report = tune([(reader, info)], json.loads(truth.read_text()), model, base,
                      budget=1e-3)
    assert len(report.trials) == 1 and report.best.params == base
    assert report.pareto() == report.trials


def test_refined_sizes_lie_between_the_best_and_its_neighbours():
    assert refined_sizes(416, [256, 416, 1024]) == [320, 640]
    assert refined_sizes(256, [256, 512]) == [192, 352]
    assert refined_sizes(1024, [416, 1024]) == [640, 1536]


def test_params_file_sets_predicts_defaults_and_given_options_win(tmp_path):
    """Seen red with the second parse (the file's values as defaults) removed."""
    pixels, _ = blob_image(300, 200, 3, seed=2)
    image = tmp_path / "blobs.png"
    Image.fromarray(pixels).save(image)
    conf = InferenceParams(model="bright-blobs", slice_size=128, overlap=0.3,
                           postprocess="nms", match_metric="iou").to_conf()
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"image_uri": "s3://bucket/incoming/x.png", **conf}))
    out = tmp_path / "r.json"
    assert main(["predict", str(image), "--params", str(params), "--out", str(out),
                 "--quiet"]) == 0
    assert json.loads(out.read_text())["params"] == InferenceParams.from_dict(conf).to_dict()
    assert main(["predict", str(image), "--params", str(params), "--overlap", "0.1",
                 "--out", str(out), "--quiet"]) == 0
    got = json.loads(out.read_text())["params"]
    assert got["overlap"] == 0.1 and got["slice_size"] == 128 and got["postprocess"] == "nms"


@pytest.mark.parametrize(("content", "message"), [
    ("{", "is not JSON"), ("[1]", "not a JSON object"),
    ('{"slice_sise": 256}', "not parameters: slice_sise"),
    ('{"overlap": 0.95}', "overlap must be in")])
def test_a_bad_params_file_exits_2_with_its_reason(tmp_path, capsys, content, message):
    params = tmp_path / "params.json"
    params.write_text(content)
    assert main(["predict", "whatever.png", "--params", str(params)]) == 2
    assert message in capsys.readouterr().err


def test_to_conf_reads_back_to_equal_parameters():
    params = InferenceParams(slice_size=640, overlap=0.25, postprocess="wbf",
                             full_image_pass=True, model_options={"a": 1}, bands="3,2,1")
    assert InferenceParams.from_dict(params.to_conf()) == params
    assert InferenceParams.from_dict(InferenceParams().to_conf()) == InferenceParams()
