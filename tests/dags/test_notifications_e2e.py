"""tiled_inference's outcome reporting, end to end with ``dag.test()``: one SNS message per
image (moto's SNS delivering to SQS queues subscribed to a success and an error topic, read
back from SQS) and StatsD metrics (a UDP socket on 127.0.0.1 standing in for the StatsD
server, Airflow's ``[metrics]`` pointed at it)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_tiled_inference import poisoned_kite  # also registers "poisoned-nanodet"

pytestmark = pytest.mark.slow
BUCKET = "tilescope"


@pytest.fixture
def topics(s3_client, s3_server, monkeypatch) -> dict[str, Any]:
    """Bucket, two SNS topics each subscribed by an SQS queue, and the DAG's configuration:
    ``aws_default`` → moto, topic ARNs in the environment."""
    import boto3

    common = {"endpoint_url": s3_server, "region_name": "us-east-1"}
    sns, sqs = boto3.client("sns", **common), boto3.client("sqs", **common)
    s3_client.create_bucket(Bucket=BUCKET)
    queues = {}
    for kind in ("success", "error"):
        topic = sns.create_topic(Name=f"tilescope-{kind}")["TopicArn"]
        queue = sqs.create_queue(QueueName=f"tilescope-{kind}")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
        monkeypatch.setenv(f"TILESCOPE_{kind.upper()}_TOPIC_ARN", topic)
        queues[kind] = queue
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": s3_server, "region_name": "us-east-1"}}))
    return {"s3": s3_client, "sqs": sqs, "queues": queues}


def samples(lines: list[str], name: str) -> list[tuple[float, str]]:
    """(value, type) of every sample of ``airflow.<name>``."""
    out = []
    for line in lines:
        metric, _, rest = line.partition(":")
        if metric == f"airflow.{name}":
            value, kind = rest.split("|")[:2]
            out.append((float(value), kind))
    return out


def messages(sqs, queue: str) -> list[dict[str, Any]]:
    """The SNS notifications delivered to a queue (envelopes, ``Message`` decoded)."""
    out = []
    for _ in range(3):  # delivery from moto's SNS is synchronous; a few polls drain it
        reply = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        for msg in reply.get("Messages", []):
            envelope = json.loads(msg["Body"])
            envelope["Message"] = json.loads(envelope["Message"])
            out.append(envelope)
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=msg["ReceiptHandle"])
    return out


def test_one_message_per_image_and_statsd_metrics(dag, topics, statsd_server, sample):
    s3, sqs, queues = topics["s3"], topics["sqs"], topics["queues"]

    # A result with one failed region: stored as "partial" → the success topic.
    s3.put_object(Bucket=BUCKET, Key="incoming/poisoned.png", Body=poisoned_kite(sample))
    run = dag.test(run_conf={"image_uri": f"s3://{BUCKET}/incoming/poisoned.png",
                             "grid": "2x2", "model": "poisoned-nanodet",
                             "min_success_ratio": 0.7})
    assert str(run.state) == "success"
    assert messages(sqs, queues["error"]) == []
    (note,) = messages(sqs, queues["success"])
    body = note["Message"]
    assert note["Subject"] == f"tilescope partial: image {body['image']['id']}"
    assert note["MessageAttributes"]["status"]["Value"] == "partial"
    assert body["status"] == "partial" and body["run_id"] == run.run_id
    assert body["image"]["uri"] == f"s3://{BUCKET}/incoming/poisoned.png"
    assert body["failed_regions"] == ["r1c1"] and body["regions"] == 4
    assert body["counts"]["person"] >= 5 and body["detections"] == sum(body["counts"].values())
    assert body["duration_seconds"] > 0 and 0 < body["model_share"] <= 1
    assert "r1c1" in body["reason"] and "poisoned slice" in body["reason"]
    assert [(f["task_id"], f["map_index"], f["try_number"]) for f in body["failures"]] == [
        ("analyze", 3, 2)]
    result_key = body["result_keys"]["result"].removeprefix(f"s3://{BUCKET}/")
    doc = json.loads(s3.get_object(Bucket=BUCKET, Key=result_key)["Body"].read())
    assert doc["summary"]["counts"] == body["counts"]

    # Per-region timings in the result, the run's model share over its wall time.
    done = [r for r in doc["regions"] if r["status"] == "success"]
    assert len(done) == 3
    for region in done:
        assert {"read", "model", "merge", "total", "queue_wait"} <= set(region["seconds"])
        assert region["seconds"]["queue_wait"] >= 0
    assert doc["seconds"]["total"] >= doc["seconds"]["regions"] > doc["seconds"]["model"] > 0
    assert doc["summary"]["model_share"] == pytest.approx(
        doc["seconds"]["model"] / doc["seconds"]["total"], abs=1e-3)

    lines = statsd_server.take()
    assert any(line.startswith("airflow.ti.finish") for line in lines)  # Airflow's own, too
    assert samples(lines, "tilescope.regions") == [(1.0, "c")] * 3
    assert sum(v for v, _ in samples(lines, "tilescope.slices")) == sum(
        r["slice_count"] for r in done)
    assert samples(lines, "tilescope.region_failures") == [(1.0, "c")]
    assert [k for _, k in samples(lines, "tilescope.model")] == ["ms"] * 3
    assert [k for _, k in samples(lines, "tilescope.region")] == ["ms"] * 3
    assert len(samples(lines, "tilescope.queue_wait")) == 3
    assert samples(lines, "tilescope.images") == [(1.0, "c")]
    assert samples(lines, "tilescope.images.partial") == [(1.0, "c")]
    (image_ms, kind), = samples(lines, "tilescope.image")
    assert kind == "ms" and image_ms == pytest.approx(body["duration_seconds"] * 1000, rel=0.1)
    assert samples(lines, "tilescope.model_share") == [(body["model_share"], "g")]

    # Every region required: synthesize fails → one message on the error topic, whose reason
    # is the failure that stopped the run (synthesize's), with the region's error listed too.
    run = dag.test(run_conf={"image_uri": f"s3://{BUCKET}/incoming/poisoned.png",
                             "grid": "2x2", "model": "poisoned-nanodet",
                             "min_success_ratio": 1.0})
    assert str(run.state) == "failed"
    assert messages(sqs, queues["success"]) == []
    (note,) = messages(sqs, queues["error"])
    body = note["Message"]
    assert body["status"] == "failed" and note["MessageAttributes"]["status"]["Value"] == "failed"
    assert body["image"]["uri"] == f"s3://{BUCKET}/incoming/poisoned.png"
    assert body["image"]["id"] == doc["image"]["image_id"]  # known from preprocess
    assert body["reason"].startswith("synthesize: RegionsFailedError: 1 of 4 regions failed")
    assert [f["task_id"] for f in body["failures"]] == ["analyze", "synthesize"]
    assert body["failures"][0]["label"] == "r1c1" and body["failed_regions"] == ["r1c1"]
    assert body["result_keys"] == {} and body["detections"] is None and body["regions"] == 4
    assert body["duration_seconds"] > 0
    lines = statsd_server.take()
    assert samples(lines, "tilescope.images.failed") == [(1.0, "c")]
    assert samples(lines, "tilescope.images.partial") == []
    assert samples(lines, "tilescope.region_failures") == [(1.0, "c")]


def test_a_batch_run_sends_one_message_per_image_on_its_topic(dag, topics, statsd_server,
                                                              sample):
    """Two good images and a non-image in one batch run: two messages on the success topic,
    one on the error topic with the reason, each image's metrics — though finalize fails
    the run (an image was not stored)."""
    import io

    import numpy as np
    from PIL import Image

    s3, sqs, queues = topics["s3"], topics["sqs"], topics["queues"]
    kite = np.asarray(Image.open(sample("kite")).convert("RGB"))
    inputs = {"batch/a.jpg": kite[100:356, 200:456], "batch/b.jpg": kite[300:556, 500:756],
              "batch/notes.jpg": b"this is not a picture"}
    for key, pixels in inputs.items():
        body = pixels
        if not isinstance(pixels, bytes):
            out = io.BytesIO()
            Image.fromarray(pixels).save(out, format="JPEG", quality=90)
            body = out.getvalue()
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    uris = [f"s3://{BUCKET}/{key}" for key in inputs]
    statsd_server.take()  # nothing left from an earlier test
    run = dag.test(run_conf={"images": uris, "grid": "auto", "model": "nanodet-coco"})
    assert str(run.state) == "failed"  # finalize: 1 of 3 images not stored

    good = sorted(messages(sqs, queues["success"]), key=lambda n: n["Message"]["image"]["uri"])
    assert [n["Message"]["image"]["uri"] for n in good] == uris[:2]
    for index, note in enumerate(good):
        body = note["Message"]
        assert body["status"] == "succeeded" and body["run_id"] == run.run_id
        assert note["MessageAttributes"]["status"]["Value"] == "succeeded"
        assert body["batch"] == {"index": index, "images": 3}
        assert body["reason"] is None and body["failures"] == []
        result_key = body["result_keys"]["result"].removeprefix(f"s3://{BUCKET}/")
        doc = json.loads(s3.get_object(Bucket=BUCKET, Key=result_key)["Body"].read())
        assert doc["image"]["uri"] == uris[index] and doc["image"]["image_id"] == \
            body["image"]["id"]
        assert body["detections"] == len(doc["detections"])
        assert body["counts"] == doc["summary"]["counts"]
        assert note["Subject"] == f"tilescope succeeded: image {body['image']['id']}"
    (bad,) = messages(sqs, queues["error"])
    body = bad["Message"]
    assert body["status"] == "failed" and body["image"]["uri"] == uris[2]
    assert body["batch"] == {"index": 2, "images": 3}
    assert body["reason"].startswith("BadImageError: ") and "not an image" in body["reason"]
    assert body["result_keys"] == {} and body["failures"] == []

    lines = statsd_server.take()
    assert samples(lines, "tilescope.images") == [(1.0, "c")] * 3
    assert samples(lines, "tilescope.images.succeeded") == [(1.0, "c")] * 2
    assert samples(lines, "tilescope.images.failed") == [(1.0, "c")]
    assert [kind for _, kind in samples(lines, "tilescope.image")] == ["ms"] * 3
