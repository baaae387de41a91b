"""tiled_inference with an archival copy and ``keep_original=replace``, end to end with
``dag.test()`` against a real S3 server: the WebP copy (at the lowest quality reaching the
SSIM target) stands where the original would be kept, the original is gone only after it,
and the catalog row records the bytes saved."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tilescope.outputs.catalog import connect, find_results

pytestmark = pytest.mark.slow
BUCKET = "tilescope"


def test_archive_replaces_the_original_and_the_catalog_records_the_bytes_saved(
        dag, airflow_env, sample):
    client = airflow_env["client"]
    data = Path(sample("kite")).read_bytes()
    client.put_object(Bucket=BUCKET, Key="incoming/kite.jpg", Body=data)
    run = dag.test(run_conf={"image_uri": f"s3://{BUCKET}/incoming/kite.jpg", "grid": "1x1",
                             "model": "nanodet-coco", "archive_format": "webp",
                             "archive_ssim": 0.95, "keep_original": "replace"})
    assert str(run.state) == "success"

    listing = client.list_objects_v2(Bucket=BUCKET, Prefix="")
    keys = {o["Key"] for o in listing.get("Contents", [])}
    assert "incoming/kite.jpg" not in keys and "processed/kite.webp" in keys
    copy = client.get_object(Bucket=BUCKET, Key="processed/kite.webp")["Body"].read()
    pixels = cv2.imdecode(np.frombuffer(copy, np.uint8), cv2.IMREAD_COLOR)
    assert pixels is not None and pixels.shape == (900, 1352, 3)

    [row] = find_results(connect(airflow_env["catalog"]), hashlib.sha256(data).hexdigest())
    assert row["archive_uri"] == f"s3://{BUCKET}/processed/kite.webp"
    assert row["archive_bytes"] == len(copy) and row["bytes_saved"] == len(data) - len(copy)
    assert row["bytes_saved"] > 0 and row["archive_ssim"] >= 0.95
    doc = json.loads(client.get_object(Bucket=BUCKET, Key=row["result_keys"]["result"].split(
        f"s3://{BUCKET}/", 1)[1])
                     ["Body"].read())
    assert doc["archive"]["quality"] == row["archive_quality"] and doc["archive"]["target_met"]
    assert doc["archive"]["keep_original"] == "replace"
    assert not [k for k in keys if k.startswith("scratch/")]
