"""Open-vocabulary models through the pipeline: names discovered per region are reconciled at
synthesis, so the CLI path (one model across regions) and the DAG path (a fresh model per
region, findings through JSON) give the same result, with the same schema and COCO export
as a fixed-vocabulary model."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image
from support.blob_model import BrightBlobModel, blob_image
from support.cloud_wire import LocalServer, Reply

from tilescope.detections import Detections
from tilescope.models import load_model
from tilescope.models.registry import model_categories
from tilescope.models.vocabulary import Vocabulary, reconcile, remap
from tilescope.params import InferenceParams
from tilescope.pipeline import analyze_region, plan_image, run_image, synthesize
from tilescope.readers import reader_for_bytes
from tilescope.results import ImageInfo, RegionFinding

PIXELS, TRUTH = blob_image(900, 700, 40, seed=11)
NAMES = {0: "white blob", 1: "yellow blob"}


def labelled_server(request) -> Reply:
    """A model server answering with label strings (what cloud models do)."""
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(request.json()["image"]))))
    (dets,) = BrightBlobModel().predict([pixels])
    return Reply(200, {"detections": [
        {"box": b, "score": s, "label": NAMES[c]} for b, s, c in
        zip(dets.boxes.tolist(), dets.scores.tolist(), dets.category_ids.tolist(),
            strict=True)]})


def test_vocabulary_and_reconcile():
    vocab = Vocabulary(["person"])
    assert [vocab.id_of(n) for n in ("car", "person", "car")] == [1, 0, 1]
    a = Detections(np.zeros((2, 4)), np.ones(2), np.array([0, 1]))  # names ["dog", "cat"]
    b = Detections(np.zeros((1, 4)), np.ones(1), np.array([1]))  # names ["x", "dog"]
    (ra, rb, rf), names = reconcile(["person"], [(a, ["dog", "cat"]), (b, ["x", "dog"]),
                                                 (a, None)])
    assert names == ["person", "cat", "dog"]  # fixed first, then found names sorted; "x" unused
    assert ra.category_ids.tolist() == [2, 1] and rb.category_ids.tolist() == [2]
    assert rf is a  # fixed-vocabulary parts are untouched
    with pytest.raises(ValueError, match="outside a vocabulary"):
        remap(a, ["dog"], Vocabulary())


def test_cli_path_equals_dag_path(tmp_path):
    out = io.BytesIO()
    Image.fromarray(PIXELS).save(out, format="PNG")
    data = out.getvalue()
    reader = reader_for_bytes(data)
    info = ImageInfo("s3://b/blobs.png", reader.width, reader.height, "0" * 64, "PNG", len(data))
    params = InferenceParams(model="http", slice_size=256, overlap=0.25, grid="2x2",
                             score_threshold=0.1)
    assert model_categories("http") == []
    with LocalServer(labelled_server) as server:
        options = {"url": server.url, "score_threshold": 0.1}
        with load_model("http", **options) as model:
            cli = run_image(reader, info, params, model)
        findings = []
        plan = plan_image(reader.width, reader.height, params, 256)
        for region in reversed(plan.regions):  # another order, another model per region
            with load_model("http", **options) as model:
                finding = analyze_region(reader, region, model, params)
            findings.append(RegionFinding.from_dict(json.loads(json.dumps(finding.to_dict()))))
    dag = synthesize(info, plan, findings, params, model_name="http", category_names=[])
    assert cli.category_names == dag.category_names == ["white blob", "yellow blob"]
    assert cli.to_dict()["detections"] == dag.to_dict()["detections"]
    assert len(dag.detections) == len(TRUTH)
    assert sum(dag.counts().values()) == len(TRUTH)
    coco = dag.to_coco()
    assert [c["name"] for c in coco["categories"]] == ["white blob", "yellow blob"]
    assert {a["category_id"] for a in coco["annotations"]} <= {1, 2}
    doc = dag.to_dict()
    assert doc["schema"] == "tilescope.result/1" and doc["status"] == "complete"
    assert {r["category_name"] for r in doc["detections"]} == {"white blob", "yellow blob"}
