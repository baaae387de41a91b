"""tiled_inference's ``transform`` stage with ``dag.test()`` against a real S3 server: a run
asked to anonymize ``person`` stores an anonymized copy of the full-resolution image beside
its result, records it in ``result.json`` and in the catalog row's keys, and leaves the
original as it was; a class the model does not have fails preprocess, naming it."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tilescope.outputs.catalog import connect, find_results
from tilescope.params import InferenceParams

pytestmark = pytest.mark.slow
BUCKET = "tilescope"


def keys_under(client, prefix: str) -> list[str]:
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def test_transform_stores_the_anonymized_copy_and_records_it(dag, airflow_env, sample):
    client = airflow_env["client"]
    data = Path(sample("astronaut")).read_bytes()  # a PNG: the copy is lossless too
    client.put_object(Bucket=BUCKET, Key="incoming/astronaut.png", Body=data)
    conf = {"image_uri": f"s3://{BUCKET}/incoming/astronaut.png", "grid": "auto",
            "anonymize": "person", "anonymize_mode": "blur", "anonymize_margin": 4}
    run = dag.test(run_conf=conf)
    assert str(run.state) == "success"

    params = InferenceParams.from_dict(conf)
    prefix = f"results/{hashlib.sha256(data).hexdigest()[:16]}/{params.digest()}/"
    assert keys_under(client, prefix) == sorted(
        prefix + name for name in ("result.json", "coco.json", "overlay.webp", "thumbnail.webp",
                                   "anonymized.png"))
    doc = json.loads(client.get_object(Bucket=BUCKET, Key=prefix + "result.json")["Body"].read())
    record = doc["anonymized"]
    assert record["uri"] == f"s3://{BUCKET}/{prefix}anonymized.png"
    assert record["targets"] == {"person": doc["summary"]["counts"]["person"]} and \
        record["boxes"] >= 1 and record["margin"] == 4
    rows = find_results(connect(airflow_env["catalog"]), doc["image"]["sha256"])
    assert rows[0]["result_keys"]["anonymized"] == record["uri"]

    copy = np.asarray(Image.open(io.BytesIO(client.get_object(
        Bucket=BUCKET, Key=prefix + "anonymized.png")["Body"].read())).convert("RGB"))
    original = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    inside = np.zeros(copy.shape[:2], bool)
    for det in doc["detections"]:
        if det["category_name"] != "person":
            continue
        x, y, w, h = det["bbox"]
        x1, y1 = max(0, int(np.floor(x - 4))), max(0, int(np.floor(y - 4)))
        x2, y2 = min(512, int(np.ceil(x + w + 4))), min(512, int(np.ceil(y + h + 4)))
        inside[y1:y2, x1:x2] = True
        grey = [cv2.cvtColor(p[y1:y2, x1:x2], cv2.COLOR_RGB2GRAY) for p in (original, copy)]
        before, after = (cv2.Laplacian(g, cv2.CV_64F).var() for g in grey)
        assert after < 0.1 * before
    assert np.array_equal(copy[~inside], original[~inside])
    # the original stays as it was (what becomes of it is the keep policy's)
    assert client.get_object(Bucket=BUCKET, Key="incoming/astronaut.png")["Body"].read() == data
    assert keys_under(client, "scratch/") == []


def test_unknown_class_fails_preprocess_naming_it(dag, airflow_env, sample):
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    client = airflow_env["client"]
    client.put_object(Bucket=BUCKET, Key="incoming/astronaut.png",
                      Body=Path(sample("astronaut")).read_bytes())
    run = dag.test(run_conf={"image_uri": f"s3://{BUCKET}/incoming/astronaut.png",
                             "anonymize": "person,unicorn", "anonymize_margin": 0.1})
    assert str(run.state) == "failed"
    with create_session() as session:
        states = {ti.task_id: str(ti.state) for ti in session.query(TaskInstance).filter(
            TaskInstance.dag_id == dag.dag_id, TaskInstance.run_id == run.run_id)}
    assert states["preprocess"] == "failed" and states["store"] == "upstream_failed"
    assert keys_under(client, "results/") == [] and keys_under(client, "scratch/") == []


def test_anonymize_with_an_archive_replaces_the_original_by_anonymized_pixels(
        dag, airflow_env, sample):
    """anonymize + archive_format + keep_original=replace through the DAG: the WebP copy
    standing in processed/ is of the anonymized pixels (every region's detail gone, decoded
    by OpenCV) and the original is gone only after it. Seen red with store_archive encoding
    the plain staged source (the regions kept their detail)."""
    client = airflow_env["client"]
    data = Path(sample("astronaut")).read_bytes()
    client.put_object(Bucket=BUCKET, Key="incoming/astronaut.png", Body=data)
    conf = {"image_uri": f"s3://{BUCKET}/incoming/astronaut.png", "grid": "auto",
            "anonymize": "person", "anonymize_margin": 4, "archive_format": "webp",
            "keep_original": "replace"}
    run = dag.test(run_conf=conf)
    assert str(run.state) == "success"

    assert keys_under(client, "incoming/") == [] and keys_under(client, "scratch/") == []
    copy = cv2.imdecode(np.frombuffer(client.get_object(
        Bucket=BUCKET, Key="processed/astronaut.webp")["Body"].read(), np.uint8),
        cv2.IMREAD_COLOR)
    original = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    [row] = find_results(connect(airflow_env["catalog"]), hashlib.sha256(data).hexdigest())
    assert row["archive_uri"] == f"s3://{BUCKET}/processed/astronaut.webp"
    doc = json.loads(client.get_object(Bucket=BUCKET, Key=row["result_keys"]["result"].split(
        f"s3://{BUCKET}/", 1)[1])["Body"].read())
    assert doc["archive"]["keep_original"] == "replace" and doc["archive"]["target_met"]
    assert doc["anonymized"]["regions"]
    for x1, y1, x2, y2 in doc["anonymized"]["regions"]:
        before, after = (cv2.Laplacian(cv2.cvtColor(p[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY),
                                       cv2.CV_64F).var() for p in (original, copy))
        assert after < 0.1 * before, ((x1, y1, x2, y2), before, after)
