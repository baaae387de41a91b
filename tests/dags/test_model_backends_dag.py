"""tiled_inference end to end (``dag.test()``) with cloud-style backends chosen by params and
Airflow connections: the tile model is the ``http`` backend against a local model server
running the real embedded NanoDet, the moderation gate is Rekognition and the synthesis
model is Bedrock (local servers speaking their wire protocols, SigV4 checked). A second run
shows a blocked image: quarantined, not analysed, recorded as a ``blocked`` result."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.airflow_support import detection_keys, embedded_detections
from support.cloud_wire import LocalServer, Reply, aws_connection, detections_body

from tilescope.intake.claims import claim, status_of
from tilescope.models.nanodet import NanoDetModel
from tilescope.outputs.catalog import connect, find_results
from tilescope.params import InferenceParams

pytestmark = [pytest.mark.slow, pytest.mark.contract]
BUCKET = "tilescope"
DESCRIPTION = "Several people fly kites on an open field under a wide sky."


@pytest.fixture(scope="module")
def nanodet():
    with NanoDetModel(score_threshold=0.3, parallel_slices=2) as model:
        yield model


@pytest.fixture
def servers(nanodet, airflow_env, monkeypatch):
    """Model server, Rekognition and Bedrock servers, and the connections naming them."""

    def detect(request) -> Reply:
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(request.json()["image"]))))
        return Reply(200, detections_body(nanodet, pixels))

    def converse(request) -> Reply:
        return Reply(200, {"output": {"message": {"role": "assistant",
                                                  "content": [{"text": DESCRIPTION}]}},
                           "stopReason": "end_turn", "metrics": {"latencyMs": 5},
                           "usage": {"inputTokens": 9, "outputTokens": 9, "totalTokens": 18}})

    with LocalServer(detect) as model_server, \
            LocalServer(signing_service="rekognition") as rekognition, \
            LocalServer(converse, signing_service="bedrock") as bedrock:
        host, port = model_server.url.removeprefix("http://").split(":")
        monkeypatch.setenv("AIRFLOW_CONN_NANODET_SERVER", json.dumps(
            {"conn_type": "http", "host": host, "port": int(port), "schema": "http"}))
        aws_connection(monkeypatch, "moderation_aws", rekognition.url)
        aws_connection(monkeypatch, "bedrock_aws", bedrock.url)
        yield {"model": model_server, "rekognition": rekognition, "bedrock": bedrock,
               "s3": airflow_env["client"], "catalog": airflow_env["catalog"]}


def moderation_labels(*labels: tuple[str, str, float]) -> Reply:
    return Reply(200, {"ModerationLabels": [{"Name": n, "ParentName": p, "Confidence": c}
                                            for n, p, c in labels],
                       "ModerationModelVersion": "7.0"},
                 content_type="application/x-amz-json-1.1")


def task_states(dag_id: str, run_id: str) -> dict[tuple[str, int], tuple[str, int]]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id,
                                                  TaskInstance.run_id == run_id).all()
        return {(t.task_id, t.map_index): (str(t.state), t.try_number) for t in rows}


def read_json(s3, uri: str) -> dict:
    return json.loads(s3.get_object(Bucket=BUCKET, Key=uri.split(f"{BUCKET}/", 1)[1])
                      ["Body"].read())


def test_contract_cloud_backends_end_to_end(dag, servers, sample, nanodet):
    s3 = servers["s3"]
    data = Path(sample("kite")).read_bytes()
    s3.put_object(Bucket=BUCKET, Key="incoming/kite.jpg", Body=data)
    conf = {"image_uri": f"s3://{BUCKET}/incoming/kite.jpg", "grid": "2x2", "model": "http",
            "model_options": {"conn_id": "nanodet_server", "path": "/detect"},
            "slice_size": "416", "overlap": 0.2, "score_threshold": 0.3,
            "full_image_pass": False, "min_success_ratio": 1.0, "claim": None,
            "moderation": "rekognition",
            "moderation_options": {"conn_id": "moderation_aws", "min_confidence": 60},
            "synthesis_model": "bedrock-converse",
            "synthesis_options": {"conn_id": "bedrock_aws", "model_id": "amazon.nova-lite-v1:0"}}
    servers["rekognition"].queue.append(moderation_labels(("Alcohol", "Drugs", 40.0)))
    run = dag.test(run_conf=conf)
    assert str(run.state) == "success"

    (row,) = find_results(connect(servers["catalog"]))
    doc = read_json(s3, row["result_keys"]["result"])
    assert doc["status"] == "complete" and doc["model"] == "http"
    assert doc["params"]["model_options"] == conf["model_options"]
    assert doc["moderation"]["blocked"] is False
    assert doc["summary"]["description"] == DESCRIPTION
    assert doc["summary"]["description_source"]["model_id"] == "amazon.nova-lite-v1:0"
    # one model request per slice, one moderation call, one description call, all signed
    assert len(servers["model"].requests) == doc["plan"]["slices"]
    assert all(r.path == "/detect" for r in servers["model"].requests)
    assert len(servers["rekognition"].requests) == len(servers["bedrock"].requests) == 1
    assert not servers["rekognition"].signature_problems + servers["bedrock"].signature_problems

    # The same image through the embedded model in one process: the same detections.
    params = InferenceParams(grid="2x2", slice_size=416, score_threshold=0.3)
    local = embedded_detections(data, conf["image_uri"], nanodet, params)
    assert detection_keys(doc["detections"]) == detection_keys(local)
    assert doc["summary"]["counts"]["person"] >= 10
    coco = read_json(s3, row["result_keys"]["coco"])
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert sorted(names.values()) == sorted(doc["summary"]["counts"])
    assert len(coco["annotations"]) == len(doc["detections"])


def test_contract_blocked_image_is_quarantined_and_recorded(dag, servers, sample):
    s3 = servers["s3"]
    pixels = np.asarray(Image.open(sample("kite")).convert("RGB"))[:400, :600]
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    put = s3.put_object(Bucket=BUCKET, Key="incoming/flagged.jpg", Body=out.getvalue())
    engine = connect(servers["catalog"])
    owned = claim(engine, BUCKET, "incoming/flagged.jpg", put["ETag"], len(out.getvalue()))
    servers["rekognition"].queue.append(moderation_labels(("Graphic Violence", "Violence",
                                                           96.5)))
    conf = {"image_uri": f"s3://{BUCKET}/incoming/flagged.jpg", "claim": owned.to_dict(),
            "grid": "auto", "model": "http",
            "model_options": {"conn_id": "nanodet_server", "path": "/detect"},
            "slice_size": "416", "score_threshold": 0.3, "full_image_pass": False,
            "min_success_ratio": 1.0, "moderation": "rekognition",
            "moderation_options": {"conn_id": "moderation_aws"}, "synthesis_model": "",
            "synthesis_options": {}}
    run = dag.test(run_conf=conf)
    assert str(run.state) == "failed"
    states = task_states(dag.dag_id, run.run_id)
    assert states[("preprocess", -1)] == ("failed", 1)  # fail fast: no retry
    assert states[("finalize", -1)][0] == "failed"
    assert servers["model"].requests == []  # nothing analysed

    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix="quarantine/")
    assert sorted(o["Key"] for o in listing["Contents"]) == [
        "quarantine/flagged.jpg", "quarantine/flagged.jpg.error.json"]
    record = json.loads(s3.get_object(Bucket=BUCKET, Key="quarantine/flagged.jpg.error.json")
                        ["Body"].read())
    assert record["error_class"] == "ImageBlockedError"
    assert "Graphic Violence (96.5%)" in record["reason"]
    assert status_of(engine, BUCKET, "incoming/flagged.jpg", put["ETag"])["status"] == \
        "quarantined"
    (row,) = [r for r in find_results(engine) if r["image_uri"].endswith("flagged.jpg")]
    assert row["status"] == "blocked"
    doc = read_json(s3, row["result_keys"]["result"])
    assert doc["status"] == "blocked" and doc["detections"] == []
    assert doc["moderation"]["labels"][0]["name"] == "Graphic Violence"
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="scratch/").get("KeyCount", 0) == 0
