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

from tilescope.cli import main
from tilescope.evaluation import evaluate
from tilescope.models import register_model
from tilescope.models.nanodet import NanoDetModel
from tilescope.params import InferenceParams
from tilescope.readers import open_image
from tilescope.tune import refined_sizes, tune

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
