"""Instance masks through the DAG: a YOLOv8-seg graph uploaded to S3, run by
``tiled_inference`` (``dag.test()``: region findings cross XCom as JSON, synthesis merges
them) stores the same detections *and masks* as ``tilescope predict`` in one process, and
the stored COCO export carries them as RLE segmentations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.airflow_support import detection_keys
from support.onnx_graphs import detector, names_metadata
from test_onnx_dag import dag_and_cli, read_json

from tilescope.instance_masks import Mask

pytestmark = pytest.mark.slow
BUCKET = "tilescope"
NAMES = ["person", "kite", "dog"]
MODEL_URI = f"s3://{BUCKET}/models/kites-seg.onnx"
SIDE = 320


def kite_segmenter() -> bytes:
    """A 320² YOLOv8-seg graph whose boxes follow each slice's mean, with smooth random
    prototypes and per-candidate coefficients: every slice gets its own boxes and masks."""
    anchors = 40 * 40 + 20 * 20 + 10 * 10
    rows = 4 + len(NAMES) + 32
    base, gains = np.zeros((rows, anchors), np.float32), np.zeros((rows, anchors), np.float32)
    rng = np.random.default_rng(12)
    picked = np.arange(0, anchors, 37)
    base[0:2, picked] = rng.uniform(40, 280, (2, len(picked)))
    base[2:4, picked] = rng.uniform(20, 90, (2, len(picked)))
    gains[0:2, picked] = rng.uniform(-60, 60, (2, len(picked)))
    classes = 4 + picked % 3
    base[classes, picked] = rng.uniform(0.0, 0.4, len(picked))
    gains[classes, picked] = 1.0
    base[4 + len(NAMES):, picked] = rng.normal(size=(32, len(picked)))
    cells = SIDE // 4
    protos = np.kron(rng.normal(size=(32, cells // 8, cells // 8)),
                     np.ones((1, 8, 8))).astype(np.float32)
    return detector({"output0": base, "output1": protos}, gains={"output0": gains},
                    input_shape=("N", 3, SIDE, SIDE), metadata=names_metadata(NAMES))


def masks_by_box(records: list[dict]) -> list[tuple]:
    return sorted((r["category_name"], r["bbox"], r["score"], r["segmentation"]["counts"],
                   r["area"]) for r in records)


def test_seg_model_dag_equals_cli_masks_and_all(dag, airflow_env, sample, tmp_path: Path,
                                                monkeypatch) -> None:
    s3 = airflow_env["client"]
    s3.put_object(Bucket=BUCKET, Key="models/kites-seg.onnx", Body=kite_segmenter())
    data = Path(sample("kite")).read_bytes()
    s3.put_object(Bucket=BUCKET, Key="incoming/kite.jpg", Body=data)
    conf = {"image_uri": f"s3://{BUCKET}/incoming/kite.jpg", "grid": "2x2", "model": "onnx",
            "model_options": {"path": MODEL_URI, "conn_id": "aws_default"},
            "slice_size": "model", "overlap": 0.2, "score_threshold": 0.3,
            "full_image_pass": False, "min_success_ratio": 1.0, "claim": None}
    row, doc, local = dag_and_cli(dag, airflow_env, conf, MODEL_URI, data, tmp_path,
                                  monkeypatch)
    assert len(doc["detections"]) > 10
    assert detection_keys(doc["detections"]) == detection_keys(local["detections"])
    assert masks_by_box(doc["detections"]) == masks_by_box(local["detections"])
    height, width = doc["image"]["height"], doc["image"]["width"]
    masked = 0
    for record in doc["detections"]:
        assert record["segmentation"]["size"] == [height, width]
        mask = Mask.from_coco(record["segmentation"])
        assert mask.area == record["area"]
        if mask.area:  # random coefficients may leave a box without mask pixels
            masked += 1
            x, y, w, h = record["bbox"]
            assert x - 1 <= mask.x and mask.x + mask.width <= x + w + 1  # inside its box
            assert y - 1 <= mask.y and mask.y + mask.height <= y + h + 1
    assert masked > len(doc["detections"]) // 2

    coco = read_json(s3, row["result_keys"]["coco"])
    assert sorted(a["segmentation"]["counts"] for a in coco["annotations"]) == \
        sorted(r["segmentation"]["counts"] for r in doc["detections"])
