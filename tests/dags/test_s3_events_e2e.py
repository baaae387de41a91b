"""s3_events + tiled_inference under the real scheduler, dag-processor and triggerer: S3 event
notifications reach an SQS queue (moto), the asset watcher's SQS trigger turns them into asset
events, and every notified image is processed exactly once — a redelivered message included,
and a message naming more objects than one run starts (the backlog continues in another run).
Runs are started per batch (``conf={"manifest": uri}``); one image per run here, so that a
two-image message leaves a backlog."""

from __future__ import annotations

import io
import json
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
from PIL import Image
from support.airflow_support import running_airflow

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BUCKET = "tilescope"
QUEUE = "tilescope-arrivals"
ASSET = "tilescope_incoming_events"


@pytest.fixture(scope="module")
def aws(s3_server):
    """Bucket + queue + S3→SQS notification (ObjectCreated under incoming/) on the session's
    moto server, reset first (this module does not use the resetting ``s3_client`` fixture:
    the queue must outlive each test while the stack polls it)."""
    import boto3
    import requests
    from botocore.config import Config

    requests.post(f"{s3_server}/moto-api/reset", timeout=10)
    common = {"endpoint_url": s3_server, "region_name": "us-east-1",
              "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    s3 = boto3.client("s3", config=Config(signature_version="s3v4",
                                          s3={"addressing_style": "path"}), **common)
    sqs = boto3.client("sqs", **common)
    s3.create_bucket(Bucket=BUCKET)
    queue_url = sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={
        "QueueConfigurations": [{
            "QueueArn": arn, "Events": ["s3:ObjectCreated:*"],
            "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "incoming/"}]}}}]})
    # Saving the configuration queued an s3:TestEvent: the first run consumes it (no-op).
    return {"s3": s3, "sqs": sqs, "queue_url": queue_url}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, s3_server, aws):
    env = {
        "TILESCOPE_SQS_QUEUE_URL": aws["queue_url"],
        "TILESCOPE_ARRIVALS_SCHEDULE": "none",  # only the event path starts runs here
        "TILESCOPE_EVENTS_PER_RUN": "1",  # so that a 2-image message leaves a backlog
    }
    with running_airflow(tmp_path_factory.mktemp("s3_events"), s3_server,
                         dags=("tiled_inference", "s3_events"), extra_env=env) as running:
        api = running.api
        # Watchers are registered only for unpaused DAGs, when the file is parsed: ask for
        # that parse now instead of waiting for the next periodic one.
        token = api.request("GET", "/api/v2/dags/s3_events/details")["file_token"]
        api.request("PUT", f"/api/v2/parseDagFile/{token}")
        yield {"airflow": running.airflow, "api": api, "catalog": running.catalog}


def wait(what: str, check, timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(interval)


def runs(api, dag_id: str) -> list[dict[str, Any]]:
    from tilescope.stack.provision import list_runs

    return list_runs(api, dag_id)


def finished(api, dag_id: str, count: int) -> list[dict[str, Any]] | None:
    """All runs of ``dag_id`` once there are ``count`` and all have finished, else None."""
    found = runs(api, dag_id)
    done = len(found) >= count and all(r["state"] in ("success", "failed") for r in found)
    return found if done else None


def watched(api) -> bool:
    assets = api.request("GET", f"/api/v2/assets?name_pattern={ASSET}")["assets"]
    return any(a["name"] == ASSET and a["watchers"] for a in assets)


def when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def jpeg(sample, box: tuple[int, int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.open(sample("kite")).convert("RGB").crop(box).save(out, format="JPEG", quality=90)
    return out.getvalue()


def manifest_keys(s3, run: dict[str, Any]) -> list[str]:
    """Keys of the images a batch run was started for, from its manifest."""
    bucket, _, key = run["conf"]["manifest"].removeprefix("s3://").partition("/")
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    return [item["claim"]["key"] for item in manifest["images"]]


def keys(s3, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_notified_images_are_processed_once_and_redelivery_starts_nothing(stack, aws, sample):
    api, s3, sqs = stack["api"], aws["s3"], aws["sqs"]

    # 1. The watcher is registered and the triggerer consumed the s3:TestEvent: one run of
    #    s3_events that started nothing. The trigger now polls the queue again.
    wait("the asset watcher", lambda: watched(api), 120, interval=1)
    (first,) = wait("the test-event run", lambda: finished(api, "s3_events", 1), 120)
    assert first["state"] == "success" and first["run_type"] == "asset_triggered"
    assert runs(api, "tiled_inference") == []

    # 2. Two real images (one key with a space, unicode and a plus) and a non-image arrive.
    good = {"incoming/kite crops/ünï kite+1.jpg": jpeg(sample, (0, 300, 416, 716)),
            "incoming/kite-2.jpg": jpeg(sample, (600, 250, 1000, 650))}
    bad = {"incoming/readme.txt": b"this is not an image\n"}
    uploaded: dict[str, datetime] = {}
    for key, body in {**good, **bad}.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        uploaded[key] = datetime.now(UTC)

    pipelines = wait("2 tiled_inference runs", lambda: finished(api, "tiled_inference", 2),
                     180, interval=1)
    assert sorted(r["state"] for r in pipelines) == ["success", "success"]
    assert all(r["dag_run_id"].startswith("arrivals__") for r in pipelines)
    assert all(set(r["conf"]) == {"manifest"} for r in pipelines)
    events_runs = wait("s3_events runs", lambda: finished(api, "s3_events", 2), 60)
    assert all(r["state"] == "success" for r in events_runs)

    # 3. Results stored, originals in processed/, the non-image quarantined with its reason.
    assert keys(s3, "incoming/") == []
    assert keys(s3, "processed/") == sorted(k.replace("incoming/", "processed/") for k in good)
    for key, body in good.items():
        assert s3.get_object(Bucket=BUCKET, Key=key.replace("incoming/", "processed/"))[
            "Body"].read() == body
    assert keys(s3, "quarantine/") == ["quarantine/readme.txt",
                                       "quarantine/readme.txt.error.json"]
    error = json.loads(s3.get_object(Bucket=BUCKET, Key="quarantine/readme.txt.error.json")[
        "Body"].read())
    assert error["error_class"] == "NotAnImage" and "suffix" in error["reason"]
    assert sum(k.endswith("result.json") for k in keys(s3, "results/")) == 2
    with sqlite3.connect(stack["catalog"]) as conn:
        stored = {uri for (uri,) in conn.execute("SELECT image_uri FROM tilescope_results")}
        claims = conn.execute("SELECT key, etag, status FROM tilescope_claims").fetchall()
    assert stored == {f"s3://{BUCKET}/{k}" for k in good}
    assert sorted((k, s) for k, _, s in claims) == sorted(
        [(k, "processed") for k in good] + [("incoming/readme.txt", "quarantined")])

    # Measured latency: upload → s3_events run queued → tiled_inference run started.
    start = min(uploaded.values())
    event_run = min((r for r in events_runs if r["dag_run_id"] != first["dag_run_id"]),
                    key=lambda r: r["queued_at"])
    by_key = {key: r for r in pipelines for key in manifest_keys(s3, r)}
    assert sorted(by_key) == sorted(good)  # each image in exactly one run's manifest
    report = {"upload_to_events_run_queued_s":
              round((when(event_run["queued_at"]) - start).total_seconds(), 1),
              "upload_to_events_run_started_s":
              round((when(event_run["start_date"]) - start).total_seconds(), 1)}
    for key, run in by_key.items():
        report[f"upload_to_pipeline_started_s[{key}]"] = round(
            (when(run["start_date"]) - uploaded[key]).total_seconds(), 1)
    print("\nlatency", json.dumps(report, ensure_ascii=False))

    # 4. What the watcher recorded: the SQS messages as the trigger received them.
    asset_id = next(a["id"] for a in api.request(
        "GET", f"/api/v2/assets?name_pattern={ASSET}")["assets"] if a["name"] == ASSET)
    recorded = api.request("GET", f"/api/v2/assets/events?asset_id={asset_id}&limit=100")[
        "asset_events"]
    bodies = [m["Body"] for e in recorded if (e.get("extra") or {}).get("from_trigger")
              for m in e["extra"]["payload"]["message_batch"]]
    image_body = next(b for b in bodies if "kite-2.jpg" in b)
    assert json.loads(image_body)["Records"][0]["s3"]["bucket"]["name"] == BUCKET

    # 5. SQS is at-least-once, and one message may name several objects. With notifications
    #    switched off, two more images arrive silently; then one hand-made message names them
    #    and redelivers kite-2.jpg. The redelivery starts nothing; of the two new ones one
    #    starts at once and one is left as backlog (1 per run here), for the run that
    #    `continue_backlog` asks for.
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={})
    late = {"incoming/late a.jpg": jpeg(sample, (100, 100, 300, 250)),
            "incoming/late+b.jpg": jpeg(sample, (900, 100, 1100, 250))}
    records = json.loads(image_body)["Records"]
    for key, body in late.items():
        etag = s3.put_object(Bucket=BUCKET, Key=key, Body=body)["ETag"].strip('"')
        record = json.loads(json.dumps(records[0]))
        record["s3"]["object"].update(key=quote_plus(key, safe="/"), eTag=etag, size=len(body))
        records.append(record)
    before = len(runs(api, "s3_events"))
    sqs.send_message(QueueUrl=aws["queue_url"], MessageBody=json.dumps({"Records": records}))
    pipelines = wait("4 tiled_inference runs", lambda: finished(api, "tiled_inference", 4),
                     180, interval=1)
    assert sorted(r["state"] for r in pipelines) == ["success"] * 4
    started = [k for r in pipelines for k in manifest_keys(s3, r)]
    assert sorted(started) == sorted([*good, *late])  # the redelivery started nothing
    after = wait("the message and backlog runs", lambda: finished(api, "s3_events", before + 2),
                 60)
    assert len(after) == before + 2 and all(r["state"] == "success" for r in after)
    assert keys(s3, "incoming/") == []
    with sqlite3.connect(stack["catalog"]) as conn:
        claims = conn.execute("SELECT key, status FROM tilescope_claims").fetchall()
    assert len(claims) == 5 and sorted(s for _, s in claims) == ["processed"] * 4 + [
        "quarantined"]
