"""tiled_inference under the real scheduler (LocalExecutor, SQLite, components on free ports):
the pool caps concurrent regions, clearing a failed region completes the result, and a stored
result notifies (SNS, from a real worker) and starts the results_consumer DAG."""

from __future__ import annotations

import io
import json
import sqlite3
import time
import urllib.parse
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.airflow_support import (
    connection_env,
    model_plugin,
    running_airflow,
    task_intervals,
)
from support.intervals import max_overlap

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BUCKET = "tilescope"
POOL_SLOTS = 2
# moto accepts any credentials: distinctive ones make a leak into a log findable
SECRET_KEY = f"ts-secret-key-{uuid.uuid4().hex}"
SECRET_TOKEN = f"ts-session-token-{uuid.uuid4().hex}"

POISON_MODULE = '''
import os
import numpy as np
from tilescope.errors import ModelError
from tilescope.models.nanodet import NanoDetModel

class PoisonedNanoDet(NanoDetModel):
    """Fails on slices with a magenta marker while the flag file exists (a fixable fault)."""

    def __init__(self, **options):
        super().__init__(**options)
        # A careless backend that prints its connection's secrets: the worker's log must
        # show Airflow's mask, never the values (checked by test_connection_secrets_...).
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection("aws_default")
        print("leak check:", conn.password, conn.extra_dejson.get("aws_session_token"))

    def predict(self, images):
        flag = os.environ["TILESCOPE_TEST_POISON_FLAG"]
        for image in images:
            marker = np.all(image == np.array([255, 0, 255], np.uint8), axis=2).sum() > 100
            if marker and os.path.exists(flag):
                raise ModelError("poisoned slice (magenta marker)")
        return super().predict(images)
'''


@pytest.fixture(scope="module")
def stack(tmp_path_factory, s3_server):
    tmp = tmp_path_factory.mktemp("scheduler")
    flag = tmp / "poison.flag"
    aws = json.loads(connection_env(s3_server, tmp / "catalog.sqlite")["AIRFLOW_CONN_AWS_DEFAULT"])
    aws["password"] = SECRET_KEY
    aws["extra"]["aws_session_token"] = SECRET_TOKEN
    env = {
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws),
        "PYTHONPATH": str(model_plugin(tmp / "plugins", "poison_model", POISON_MODULE,
                                              "poisoned-nanodet = poison_model:PoisonedNanoDet")),
        "TILESCOPE_TEST_POISON_FLAG": str(flag),
        "TILESCOPE_REGION_RETRIES": "1",
        "TILESCOPE_RETRY_DELAY_SECONDS": "1",
    }
    with running_airflow(tmp, s3_server, dags=("tiled_inference", "results_consumer"),
                         extra_env=env,
                         components=("api-server", "scheduler", "dag-processor"),
                         pool_slots=POOL_SLOTS) as running:
        yield {"airflow": running.airflow, "api": running.api, "flag": flag,
               "catalog": running.catalog}


def test_pool_caps_concurrent_regions(stack, s3_client, sample):
    from tilescope.stack.provision import trigger, wait_for_run

    s3_client.create_bucket(Bucket=BUCKET)
    s3_client.put_object(Bucket=BUCKET, Key="incoming/kite.jpg",
                         Body=Path(sample("kite")).read_bytes())
    run = trigger(stack["api"], "tiled_inference",
                  {"image_uri": f"s3://{BUCKET}/incoming/kite.jpg", "grid": "3x4",
                   "model": "nanodet-coco"})  # 12 slices of 416 px: 12 regions
    state = wait_for_run(stack["api"], "tiled_inference", run["dag_run_id"], timeout=600)
    assert state == "success"
    regions = task_intervals(f"sqlite:///{stack['airflow'].db_path}", run["dag_run_id"])
    assert len(regions) == 12
    assert 2 <= max_overlap((r.start, r.end) for r in regions) <= POOL_SLOTS
    listing = s3_client.list_objects_v2(Bucket=BUCKET, Prefix="results/")
    assert sum(o["Key"].endswith("result.json") for o in listing["Contents"]) == 1


def test_clearing_a_failed_region_completes_the_result(stack, s3_client, sample):
    from tilescope.stack.provision import trigger, wait_for_run

    s3_client.create_bucket(Bucket=BUCKET)
    pixels = np.array(Image.open(sample("kite")).convert("RGB"))
    pixels[800:830, 1100:1130] = (255, 0, 255)  # only in region r1c1 of a 2x2 grid
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    s3_client.put_object(Bucket=BUCKET, Key="incoming/poisoned.png", Body=out.getvalue())
    stack["flag"].write_text("fail")
    api = stack["api"]
    run_id = trigger(api, "tiled_inference", {
        "image_uri": f"s3://{BUCKET}/incoming/poisoned.png", "grid": "2x2",
        "model": "poisoned-nanodet", "min_success_ratio": 1.0})["dag_run_id"]
    assert wait_for_run(api, "tiled_inference", run_id, timeout=600) == "failed"
    tis = api.request("GET", f"/api/v2/dags/tiled_inference/dagRuns/{run_id}/taskInstances")
    states = {(t["task_id"], t["map_index"]): t["state"] for t in tis["task_instances"]}
    assert states[("analyze", 3)] == "failed" and states[("synthesize", -1)] == "failed"

    stack["flag"].unlink()  # the fault is fixed; clear the failed region with its downstream
    api.request("POST", "/api/v2/dags/tiled_inference/clearTaskInstances", {
        "dry_run": False, "dag_run_id": run_id, "task_ids": [["analyze", 3]],
        "include_downstream": True, "only_failed": False, "reset_dag_runs": True})
    assert wait_for_run(api, "tiled_inference", run_id, timeout=600) == "success"
    tis = api.request("GET", f"/api/v2/dags/tiled_inference/dagRuns/{run_id}/taskInstances")
    tries = {(t["task_id"], t["map_index"]): t["try_number"] for t in tis["task_instances"]}
    assert tries[("analyze", 0)] == 1 and tries[("preprocess", -1)] == 1  # only r1c1 re-ran
    with sqlite3.connect(stack["catalog"]) as conn:
        statuses = conn.execute("SELECT status, failed_regions FROM tilescope_results "
                                "WHERE image_uri LIKE '%poisoned.png'").fetchall()
    assert statuses == [("complete", "[]")]


def test_connection_secrets_never_reach_task_logs(stack, s3_client, sample):
    """The password and a token in the connection's extra, printed by the poisoned model's
    constructor in the region of this test's own run, appear masked in the task logs (of
    that run and of any other run this stack made)."""
    from tilescope.stack.provision import trigger, wait_for_run

    s3_client.create_bucket(Bucket=BUCKET)
    s3_client.put_object(Bucket=BUCKET, Key="incoming/leak.jpg",
                         Body=Path(sample("kite")).read_bytes())
    api = stack["api"]
    run_id = trigger(api, "tiled_inference", {  # no magenta marker: the model never fails
        "image_uri": f"s3://{BUCKET}/incoming/leak.jpg", "grid": "1x1",
        "model": "poisoned-nanodet"})["dag_run_id"]
    assert wait_for_run(api, "tiled_inference", run_id, timeout=600) == "success"
    logs = [p for p in (stack["airflow"].home / "logs").rglob("*.log") if p.is_file()]
    analyze_logs = [p for p in logs if "task_id=analyze" in str(p)
                    and f"run_id={run_id}" in str(p)]
    assert analyze_logs, "this run's region log is written by the worker"
    printed = [p for p in analyze_logs if "leak check:" in p.read_text(errors="replace")]
    assert printed, "the poisoned model printed its connection in the region log"
    for path in logs:
        text = path.read_text(errors="replace")
        assert SECRET_KEY not in text and SECRET_TOKEN not in text, f"secret in {path}"
    assert all("leak check: *** ***" in p.read_text(errors="replace") for p in printed)


def consumer_runs_of(api, run_id: str) -> list[dict]:
    """The results_consumer runs started by an asset event that run ``run_id`` emitted (its
    store), whatever runs earlier tests' stores started."""
    from tilescope.stack.provision import list_runs

    found = []
    for run in list_runs(api, "results_consumer"):
        events = api.request("GET", "/api/v2/dags/results_consumer/dagRuns/"
                             f"{urllib.parse.quote(run['dag_run_id'], safe='')}"
                             "/upstreamAssetEvents")
        if any(e.get("source_run_id") == run_id for e in events["asset_events"]):
            found.append(run)
    return found


def tally_rows(db: Path, run_id: str) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        try:
            rows = conn.execute("SELECT category, count FROM tilescope_class_tallies "
                                "WHERE source_run_id=?", (run_id,)).fetchall()
        except sqlite3.OperationalError:  # the consumer has not created its table yet
            return {}
    return dict(rows)


def test_a_stored_result_notifies_and_starts_the_consumer(stack, s3_client, s3_server, sample):
    """A real worker's finalize publishes to the topic an Airflow Variable names; store's
    asset event starts results_consumer, which writes the run's per-class tally rows."""
    import boto3

    from tilescope.stack.provision import trigger, wait_for_run

    api = stack["api"]
    s3_client.create_bucket(Bucket=BUCKET)
    s3_client.put_object(Bucket=BUCKET, Key="incoming/kite.jpg",
                         Body=Path(sample("kite")).read_bytes())
    common = {"endpoint_url": s3_server, "region_name": "us-east-1"}
    sns, sqs = boto3.client("sns", **common), boto3.client("sqs", **common)
    topic = sns.create_topic(Name="tilescope-success")["TopicArn"]
    queue = sqs.create_queue(QueueName="tilescope-success")["QueueUrl"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=sqs.get_queue_attributes(
        QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])
    api.request("POST", "/api/v2/variables", {"key": "tilescope_success_topic_arn",
                                              "value": topic})
    try:
        run_id = trigger(api, "tiled_inference", {
            "image_uri": f"s3://{BUCKET}/incoming/kite.jpg", "grid": "1x1"})["dag_run_id"]
        assert wait_for_run(api, "tiled_inference", run_id, timeout=600) == "success"
        reply = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=5)
        (message,) = reply["Messages"]
        body = json.loads(json.loads(message["Body"])["Message"])
        assert body["status"] == "succeeded" and body["run_id"] == run_id
        assert body["counts"]["person"] >= 10

        deadline = time.monotonic() + 180
        while not (tallies := tally_rows(stack["catalog"], run_id)):
            assert time.monotonic() < deadline, "results_consumer wrote no tally rows"
            time.sleep(1)
        assert tallies == body["counts"]
        # the rows are written inside the consumer's task: its run may not be done yet
        while True:
            consumed = consumer_runs_of(api, run_id)
            if any(r["state"] == "success" for r in consumed):
                break
            assert time.monotonic() < deadline, f"no successful consumer run: {consumed}"
            time.sleep(1)
        assert [r["run_type"] for r in consumed] == ["asset_triggered"]
    finally:
        api.request("DELETE", "/api/v2/variables/tilescope_success_topic_arn")
