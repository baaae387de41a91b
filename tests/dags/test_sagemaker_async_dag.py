"""tiled_inference end to end (``dag.test()``) with ``model=sagemaker-async``: every mapped
``analyze`` submits its region's slices and **defers**; ``dag.test()`` runs the trigger in
line (as the triggerer would) and resumes the task. The endpoint is the local SageMaker
runtime server (SigV4 checked) whose writer thread runs the real embedded NanoDet on each
staged slice and writes the answer to moto's S3 later — so the result must equal the
embedded model's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.airflow_support import detection_keys, embedded_detections
from support.cloud_wire import AsyncInferenceEndpoint, LocalServer, aws_connection, detections_body

from tilescope.models.nanodet import NanoDetModel
from tilescope.outputs.catalog import connect, find_results
from tilescope.params import InferenceParams

pytestmark = [pytest.mark.slow, pytest.mark.contract]
BUCKET = "tilescope"
ASYNC_BUCKET = "sagemaker-async"


@pytest.fixture(scope="module")
def nanodet():
    with NanoDetModel(score_threshold=0.3, parallel_slices=1) as model:
        yield model


@pytest.fixture
def endpoint(nanodet, airflow_env, monkeypatch):
    """The asynchronous endpoint (NanoDet behind it), its bucket and the run's connections."""

    def detect(pixels) -> dict:
        return detections_body(nanodet, pixels)

    s3_client = airflow_env["client"]
    s3_client.create_bucket(Bucket=ASYNC_BUCKET)
    writer = AsyncInferenceEndpoint(s3_client, ASYNC_BUCKET, detect, delay=0.3)
    with LocalServer(writer, signing_service="sagemaker") as server:
        aws_connection(monkeypatch, "sagemaker_async", server.url)
        try:
            yield {"server": server, "writer": writer, "s3": s3_client,
                   "catalog": airflow_env["catalog"]}
        finally:
            writer.close()


def analyze_instances(dag_id: str, run_id: str) -> list[dict]:
    """Each analyze instance's state, try, label and deferral traces (next_method, trigger)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import Trigger
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id,
                                                 TaskInstance.run_id == run_id,
                                                 TaskInstance.task_id == "analyze").all()
        triggers = {t.id: t.classpath for t in session.query(Trigger).all()}
        return [{"map_index": t.map_index, "state": str(t.state), "try": t.try_number,
                 "label": t.rendered_map_index, "next_method": t.next_method,
                 "trigger": triggers.get(t.trigger_id)} for t in tis]


def test_contract_sagemaker_async_regions_defer_and_match_the_embedded_model(
        dag, endpoint, sample, nanodet, caplog):
    s3 = endpoint["s3"]
    data = Path(sample("kite")).read_bytes()
    s3.put_object(Bucket=BUCKET, Key="incoming/kite.jpg", Body=data)
    options = {"endpoint_name": "nanodet-async", "conn_id": "sagemaker_async",
               "s3_conn_id": "aws_default", "input_uri": f"s3://{ASYNC_BUCKET}/in/",
               "poll_interval": 0.2, "max_wait": 120}
    conf = {"image_uri": f"s3://{BUCKET}/incoming/kite.jpg", "grid": "2x2",
            "model": "sagemaker-async", "model_options": options, "slice_size": "416",
            "overlap": 0.2, "score_threshold": 0.3, "full_image_pass": False,
            "min_success_ratio": 1.0, "claim": None}
    with caplog.at_level("INFO"):
        run = dag.test(run_conf=conf)
    assert str(run.state) == "success"

    # Every region went through DEFERRED: each instance still points at the trigger row
    # written when it deferred, and dag.test() ran one trigger in line per region.
    instances = analyze_instances(dag.dag_id, run.run_id)
    assert len(instances) == 4
    assert all(i["state"] == "success" and i["try"] == 1 and i["trigger"] ==
               "tilescope.airflow.triggers.AsyncInferenceTrigger"
               for i in instances), instances
    inline = [r for r in caplog.records if "running trigger in line" in r.getMessage()]
    assert len(inline) == 4

    (row,) = find_results(connect(endpoint["catalog"]))
    doc = json.loads(s3.get_object(Bucket=BUCKET, Key=row["result_keys"]["result"].split(
        f"{BUCKET}/", 1)[1])["Body"].read())
    assert doc["status"] == "complete" and doc["model"] == "sagemaker-async"
    assert [r["label"] for r in instances if r["map_index"] == 0] == [
        f"r0c0 · {doc['regions'][0]['slice_count']} slices"]
    # one asynchronous invocation per slice, each signed; staged inputs and outputs removed
    requests = endpoint["server"].requests
    assert len(requests) == doc["plan"]["slices"]
    assert all(r.path == "/endpoints/nanodet-async/async-invocations" for r in requests)
    assert not endpoint["server"].signature_problems
    assert s3.list_objects_v2(Bucket=ASYNC_BUCKET).get("KeyCount", 0) == 0
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="scratch/").get("KeyCount", 0) == 0

    # The same image through the embedded model in one process: the same detections.
    params = InferenceParams(grid="2x2", slice_size=416, score_threshold=0.3)
    local = embedded_detections(data, conf["image_uri"], nanodet, params)
    assert detection_keys(doc["detections"]) == detection_keys(local)
    assert doc["summary"]["counts"]["person"] >= 10
