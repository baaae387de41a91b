"""A user's own ONNX detector, uploaded to S3, named by configuration (``TILESCOPE_MODELS``):
a ``tiled_inference`` run (``dag.test()``) with that name finds what the CLI finds with
``--model onnx --model-option path=s3://...`` on the same photo, and the stored COCO export
names the model's own categories (read from the file's metadata at synthesis)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.airflow_support import detection_keys
from support.onnx_graphs import detector, names_metadata

from tilescope.cli import main
from tilescope.outputs.catalog import connect, find_results

pytestmark = pytest.mark.slow
BUCKET = "tilescope"
NAMES = ["person", "kite", "dog"]
MODEL_URI = f"s3://{BUCKET}/models/kites.onnx"


def kite_detector() -> bytes:
    """A 320² YOLOv8-layout graph whose boxes and scores follow each slice's mean."""
    import numpy as np

    anchors = 40 * 40 + 20 * 20 + 10 * 10
    base, gains = np.zeros((7, anchors), np.float32), np.zeros((7, anchors), np.float32)
    rng = np.random.default_rng(11)
    picked = np.arange(0, anchors, 29)
    base[0:2, picked] = rng.uniform(30, 290, (2, len(picked)))
    base[2:4, picked] = rng.uniform(10, 80, (2, len(picked)))
    gains[0:2, picked] = rng.uniform(-60, 60, (2, len(picked)))
    classes = 4 + picked % 3
    base[classes, picked] = rng.uniform(0.0, 0.4, len(picked))
    gains[classes, picked] = 1.0
    return detector({"output0": base}, gains={"output0": gains},
                    input_shape=("N", 3, 320, 320), metadata=names_metadata(NAMES))


def read_json(s3, uri: str) -> dict:
    return json.loads(s3.get_object(Bucket=BUCKET, Key=uri.split(f"{BUCKET}/", 1)[1])
                      ["Body"].read())


def dag_and_cli(dag, airflow_env, conf: dict, model_uri: str, data: bytes, tmp_path: Path,
                monkeypatch) -> tuple[dict, dict, dict]:
    """``conf`` run by ``dag.test()`` (its model cache ``dag-cache``), then the same photo
    (``data``) by ``tilescope predict`` with the model by URI, another cache and the image
    as a local file → (the run's catalog row, its stored result, the CLI's result)."""
    monkeypatch.setenv("TILESCOPE_CACHE_DIR", str(tmp_path / "dag-cache"))
    run = dag.test(run_conf=conf)
    assert str(run.state) == "success"
    (row,) = find_results(connect(airflow_env["catalog"]))
    doc = read_json(airflow_env["client"], row["result_keys"]["result"])

    monkeypatch.setenv("TILESCOPE_CACHE_DIR", str(tmp_path / "cli-cache"))
    image, out = tmp_path / "kite.jpg", tmp_path / "cli.json"
    image.write_bytes(data)
    assert main(["predict", str(image), "--model", "onnx", "--model-option",
                 f"path={model_uri}", "--grid", "2x2", "--overlap", "0.2",
                 "--score-threshold", "0.3", "--out", str(out), "--quiet"]) == 0
    return row, doc, json.loads(out.read_text())


def test_user_onnx_model_from_s3_dag_equals_cli(dag, airflow_env, sample, tmp_path: Path,
                                                monkeypatch) -> None:
    s3 = airflow_env["client"]
    s3.put_object(Bucket=BUCKET, Key="models/kites.onnx", Body=kite_detector())
    data = Path(sample("kite")).read_bytes()
    s3.put_object(Bucket=BUCKET, Key="incoming/kite.jpg", Body=data)
    models = tmp_path / "models.json"
    models.write_text(json.dumps({"kite-finder": {"model": "onnx", "options": {
        "path": MODEL_URI, "conn_id": "aws_default", "batch": 4}}}))
    monkeypatch.setenv("TILESCOPE_MODELS", str(models))

    conf = {"image_uri": f"s3://{BUCKET}/incoming/kite.jpg", "grid": "2x2",
            "model": "kite-finder", "model_options": {}, "slice_size": "model",
            "overlap": 0.2, "score_threshold": 0.3, "full_image_pass": False,
            "min_success_ratio": 1.0, "claim": None}
    row, doc, local = dag_and_cli(dag, airflow_env, conf, MODEL_URI, data, tmp_path,
                                  monkeypatch)
    assert doc["model"] == "kite-finder" and doc["plan"]["slice_width"] == 320
    assert len(doc["detections"]) > 10
    assert detection_keys(doc["detections"]) == detection_keys(local["detections"])

    coco = read_json(s3, row["result_keys"]["coco"])
    assert [c["name"] for c in coco["categories"]] == NAMES
    assert len(coco["annotations"]) == len(doc["detections"])
