"""tiled_inference end to end with ``dag.test()`` against a real S3 server (moto on loopback):
real image in → result JSON + COCO + overlay + catalog row out, equal to the CLI's result."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tilescope.errors import ModelError
from tilescope.models import register_model
from tilescope.models.nanodet import NanoDetModel
from tilescope.outputs.catalog import connect, find_results
from tilescope.params import InferenceParams
from tilescope.pipeline import run_image
from tilescope.readers import reader_for_bytes
from tilescope.results import ImageInfo

pytestmark = pytest.mark.slow
BUCKET = "tilescope"
MAGENTA = np.array([255, 0, 255], np.uint8)


class PoisonedNanoDet(NanoDetModel):
    """NanoDet that fails on any slice showing a magenta marker (a region made to fail)."""

    def predict(self, images):
        for image in images:
            if np.all(image == MAGENTA, axis=2).sum() > 100:
                raise ModelError("poisoned slice (magenta marker)")
        return super().predict(images)


register_model("poisoned-nanodet", PoisonedNanoDet)


def upload(client, key: str, data: bytes) -> str:
    client.put_object(Bucket=BUCKET, Key=key, Body=data)
    return f"s3://{BUCKET}/{key}"


def keys_under(client, prefix: str) -> list[str]:
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


def run_xcoms(dag_id: str, run_id: str) -> list[tuple[str, int, int]]:
    """(task_id, map_index, size in bytes) of every XCom the run stored."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.dag_id == dag_id,
                                               XComModel.run_id == run_id).all()
        return [(r.task_id, r.map_index, len(json.dumps(r.value))) for r in rows]


def task_tries(dag_id: str, run_id: str, task_id: str) -> dict[int, tuple[str, int]]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id,
                                                 TaskInstance.run_id == run_id,
                                                 TaskInstance.task_id == task_id).all()
        return {ti.map_index: (str(ti.state), ti.try_number) for ti in tis}


def test_kite_end_to_end_equals_the_cli(dag, airflow_env, sample):
    client = airflow_env["client"]
    data = Path(sample("kite")).read_bytes()
    uri = upload(client, "incoming/kite.jpg", data)
    conf = {"image_uri": uri, "grid": "2x2", "model": "nanodet-coco", "slice_size": "model",
            "overlap": 0.2, "postprocess": "greedynmm", "match_metric": "ios",
            "match_threshold": 0.5, "class_agnostic": False, "score_threshold": 0.3,
            "full_image_pass": False, "min_success_ratio": 1.0}
    run = dag.test(run_conf=conf)
    assert str(run.state) == "success"

    params = InferenceParams.from_dict(conf)
    prefix = f"results/{__import__('hashlib').sha256(data).hexdigest()[:16]}/{params.digest()}/"
    assert sorted(keys_under(client, prefix)) == sorted(
        prefix + name for name in ("result.json", "coco.json", "overlay.webp", "thumbnail.webp"))
    doc = json.loads(client.get_object(Bucket=BUCKET, Key=prefix + "result.json")["Body"].read())
    assert doc["status"] == "complete" and doc["plan"]["regions"] == 4
    assert doc["summary"]["counts"]["person"] >= 10

    # The same stage functions in one process (the CLI path) give the same detections.
    reader = reader_for_bytes(data)
    info = ImageInfo(uri, reader.width, reader.height, doc["image"]["sha256"], "JPEG", len(data))
    with NanoDetModel(score_threshold=params.score_threshold) as model:
        local = run_image(reader, info, params, model)
    assert doc["detections"] == local.to_dict()["detections"]

    coco = json.loads(client.get_object(Bucket=BUCKET, Key=prefix + "coco.json")["Body"].read())
    assert len(coco["annotations"]) == len(doc["detections"])
    overlay = client.get_object(Bucket=BUCKET, Key=prefix + "overlay.webp")["Body"].read()
    with Image.open(io.BytesIO(overlay)) as picture:  # the compact default preview format
        assert (picture.format, picture.size) == ("WEBP", (1352, 900))

    rows = find_results(connect(airflow_env["catalog"]), doc["image"]["sha256"])
    assert len(rows) == 1 and rows[0]["status"] == "complete"
    assert rows[0]["detections"] == len(doc["detections"])
    assert rows[0]["result_keys"]["result"] == f"s3://{BUCKET}/{prefix}result.json"
    assert rows[0]["result_keys"]["thumbnail"] == f"s3://{BUCKET}/{prefix}thumbnail.webp"

    assert keys_under(client, "scratch/") == []  # scratch cleaned after store
    assert keys_under(client, "incoming/") == ["incoming/kite.jpg"]  # original untouched
    sizes = run_xcoms(dag.dag_id, run.run_id)
    assert sizes and max(size for _, _, size in sizes) < 64 * 1024

    # Same image and params again — asking for PNG previews, which are no parameter of the
    # detections: same digest, the stored result reused as it is, still one catalog row.
    assert str(dag.test(run_conf={**conf, "preview_format": "png"}).state) == "success"
    assert len(find_results(connect(airflow_env["catalog"]), doc["image"]["sha256"])) == 1
    assert sorted(keys_under(client, f"results/{doc['image']['image_id']}/")) == sorted(
        prefix + name for name in ("result.json", "coco.json", "overlay.webp", "thumbnail.webp"))


def poisoned_kite(sample) -> bytes:
    pixels = np.array(Image.open(sample("kite")).convert("RGB"))
    pixels[800:830, 1100:1130] = MAGENTA  # inside region r1c1 of a 2x2 grid only
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_failed_region_is_retried_then_partial(dag, airflow_env, sample):
    client = airflow_env["client"]
    uri = upload(client, "incoming/poisoned.png", poisoned_kite(sample))
    run = dag.test(run_conf={"image_uri": uri, "grid": "2x2", "model": "poisoned-nanodet",
                             "min_success_ratio": 0.7})
    assert str(run.state) == "success"
    tries = task_tries(dag.dag_id, run.run_id, "analyze")
    assert tries[3] == ("failed", 2)  # retried once (TILESCOPE_REGION_RETRIES=1), then failed
    assert all(tries[i][0] == "success" for i in (0, 1, 2))
    rows = find_results(connect(airflow_env["catalog"]))
    assert rows[0]["status"] == "partial" and rows[0]["failed_regions"] == ["r1c1"]
    doc = json.loads(client.get_object(
        Bucket=BUCKET, Key=rows[0]["result_keys"]["result"].split(f"{BUCKET}/", 1)[1]
    )["Body"].read())
    assert doc["partial"] is True and doc["failed_regions"] == ["r1c1"]
    assert doc["summary"]["counts"]["person"] >= 5  # the other regions still count


def test_failed_region_below_min_success_ratio_fails_the_run(dag, airflow_env, sample):
    client = airflow_env["client"]
    uri = upload(client, "incoming/poisoned.png", poisoned_kite(sample))
    # dag.test() keeps the previous run's conf in dag.params: state every value that matters.
    run = dag.test(run_conf={"image_uri": uri, "grid": "2x2", "model": "poisoned-nanodet",
                             "min_success_ratio": 1.0})
    assert str(run.state) == "failed"
    assert task_tries(dag.dag_id, run.run_id, "synthesize")[-1][0] == "failed"
    assert task_tries(dag.dag_id, run.run_id, "store")[-1][0] == "upstream_failed"
    assert keys_under(client, "results/") == []
    assert keys_under(client, "scratch/")  # kept, so clearing the region can complete it


def test_bad_image_fails_in_preprocess_and_keeps_the_original(dag, airflow_env):
    client = airflow_env["client"]
    uri = upload(client, "incoming/notes.jpg", b"this is not a picture")
    run = dag.test(run_conf={"image_uri": uri, "model": "nanodet-coco"})
    assert str(run.state) == "failed"
    assert task_tries(dag.dag_id, run.run_id, "preprocess")[-1][0] == "failed"
    assert keys_under(client, "incoming/") == ["incoming/notes.jpg"]
    assert keys_under(client, "results/") == []
