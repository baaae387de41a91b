"""tiled_inference on a real street video with ``dag.test()`` (moto S3 on loopback): the same
DAG maps ``analyze`` over work units of the sampled frames and stores per-frame results, COCO
per frame and a contact sheet — equal to the one-process CLI path."""

from __future__ import annotations

import hashlib
import io
import json

import pytest
from PIL import Image
from support.video_samples import vtest_path
from test_tiled_inference import (  # helpers shared with that module (fixtures: conftest)
    BUCKET,
    keys_under,
    run_xcoms,
    task_tries,
    upload,
)

from tilescope.models.nanodet import NanoDetModel
from tilescope.outputs.catalog import connect, find_results
from tilescope.params import InferenceParams
from tilescope.results import ImageInfo
from tilescope.units import UNIT_SECONDS_ENV
from tilescope.video.decoder import VideoSource
from tilescope.video.pipeline import run_video

pytestmark = pytest.mark.slow


def test_street_video_end_to_end_equals_the_cli(dag, airflow_env, monkeypatch):
    vtest = vtest_path()
    client = airflow_env["client"]
    data = vtest.read_bytes()
    uri = upload(client, "incoming/street.avi", data)
    # 8 frames (one every 10 s) × 6 slices; 16 slices a unit (NanoDet: 0.04 s a slice)
    # → 3 mapped analyze tasks
    monkeypatch.setenv(UNIT_SECONDS_ENV, "0.64")
    conf = {"image_uri": uri, "video_fps": 0.1, "model": "nanodet-coco"}
    run = dag.test(run_conf=conf)
    assert str(run.state) == "success"

    tries = task_tries("tiled_inference", run.run_id, "analyze")
    assert sorted(tries) == [0, 1, 2]
    assert all(state == "success" for state, _ in tries.values())
    # every XCom of the run is small: units and findings, never pixels
    sizes = run_xcoms("tiled_inference", run.run_id)
    assert max(size for *_, size in sizes) < 16 * 1024, sizes

    params = InferenceParams.from_dict(conf)
    sha = hashlib.sha256(data).hexdigest()
    prefix = f"results/{sha[:16]}/{params.digest()}/"
    assert sorted(keys_under(client, prefix)) == sorted(
        prefix + name for name in ("result.json", "coco.json", "overlay.webp", "thumbnail.webp"))
    assert keys_under(client, "scratch/") == []
    doc = json.loads(client.get_object(Bucket=BUCKET, Key=prefix + "result.json")["Body"]
                     .read())
    assert doc["status"] == "complete" and doc["image"]["format"] == "AVI"
    assert doc["video"]["sample_fps"] == 0.1 and doc["video"]["decoded_frames"] == 795
    assert [(f["frame_index"], f["timestamp_ms"]) for f in doc["frames"]] == [
        (100 * k, 10_000.0 * k) for k in range(8)]
    assert all(f["counts"].get("person", 0) >= 3 for f in doc["frames"]), doc["frames"]
    assert doc["plan"]["units"] == 8 and doc["summary"]["frames"] == 8
    coco = json.loads(client.get_object(Bucket=BUCKET, Key=prefix + "coco.json")["Body"].read())
    assert [i["frame_index"] for i in coco["images"]] == [100 * k for k in range(8)]
    assert len(coco["annotations"]) == len(doc["detections"])
    with Image.open(io.BytesIO(client.get_object(Bucket=BUCKET, Key=prefix + "overlay.webp")
                               ["Body"].read())) as sheet:
        assert sheet.size == (4 + 6 * 324, 4 + 2 * 262)  # 8 annotated frames, 6 a row

    rows = find_results(connect(airflow_env["catalog"]), sha)
    assert len(rows) == 1 and rows[0]["regions"] == 8 and rows[0]["status"] == "complete"

    # the same stages in one process (the CLI's path) give the same detections
    with VideoSource(str(vtest), container="AVI", name=uri) as source, \
            NanoDetModel(score_threshold=params.score_threshold) as model:
        local, _ = run_video(source, ImageInfo(uri, 768, 576, sha, "AVI", len(data)), params,
                             model)
    assert doc["detections"] == local.to_dict()["detections"]
