"""s3_arrivals + tiled_inference under the real scheduler and triggerer (deferrable sensor):
every image processed exactly once, bad input quarantined with a reason, nothing lost."""

from __future__ import annotations

import io
import json
import sqlite3
import time
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BUCKET = "tilescope"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, s3_server):
    from tilescope.stack.airflow_stack import AirflowStack
    from tilescope.stack.procs import free_ports
    from tilescope.stack.provision import ensure_pool, unpause, wait_for_dag

    tmp = tmp_path_factory.mktemp("arrivals")
    catalog = tmp / "catalog.sqlite"
    env = {
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({
            "conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"endpoint_url": s3_server, "region_name": "us-east-1"}}),
        "AIRFLOW_CONN_TILESCOPE_CATALOG": json.dumps({"conn_type": "sqlite",
                                                      "host": str(catalog)}),
        "TILESCOPE_ARRIVALS_SCHEDULE": "none",
        "TILESCOPE_ARRIVALS_WAIT_SECONDS": "20",
        "TILESCOPE_ARRIVALS_POKE_SECONDS": "2",
        "TILESCOPE_MAX_ACTIVE_RUNS": "8",
        "AIRFLOW__CORE__PARALLELISM": "8",
    }
    (port,) = free_ports(1)
    airflow = AirflowStack(home=tmp / "airflow", dags_folder=REPO / "dags", port=port,
                           components=("api-server", "scheduler", "dag-processor",
                                       "triggerer"), extra_env=env)
    airflow.migrate()
    airflow.start()
    try:
        airflow.wait_ready(timeout=240)
        api = airflow.api()
        ensure_pool(api, "tilescope", 2)
        for dag_id in ("tiled_inference", "s3_arrivals"):
            wait_for_dag(api, dag_id, timeout=240)
            unpause(api, dag_id)
        yield {"airflow": airflow, "api": api, "catalog": catalog}
    finally:
        airflow.stop()


def small_jpeg(sample, name: str, box: tuple[int, int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.open(sample(name)).convert("RGB").crop(box).save(out, format="JPEG", quality=90)
    return out.getvalue()


def keys(s3, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def run_arrivals(api) -> str:
    from tilescope.stack.provision import trigger, wait_for_run

    run_id = trigger(api, "s3_arrivals", {})["dag_run_id"]
    assert wait_for_run(api, "s3_arrivals", run_id, timeout=600) == "success"
    return run_id


def wait_for_pipelines(api, expected: int, timeout: float = 900) -> dict[str, str]:
    """Block until ``expected`` tiled_inference runs exist and all have finished."""
    deadline = time.monotonic() + timeout
    while True:
        runs = api.request("GET", "/api/v2/dags/tiled_inference/dagRuns?limit=1000")
        states = {r["dag_run_id"]: r["state"] for r in runs["dag_runs"]}
        if len(states) >= expected and all(s in ("success", "failed") for s in states.values()):
            return states
        assert time.monotonic() < deadline, f"runs still going: {states}"
        time.sleep(2)


def test_images_processed_bad_input_quarantined_nothing_lost(stack, s3_client, sample):
    s3 = s3_client
    s3.create_bucket(Bucket=BUCKET)
    good = {"incoming/cat.jpg": small_jpeg(sample, "chelsea", (0, 0, 451, 300)),
            "incoming/deep/dir/dog 1.jpg": small_jpeg(sample, "dog", (0, 0, 400, 400)),
            "incoming/ünïcode kite.jpg": small_jpeg(sample, "kite", (0, 300, 416, 716))}
    dog = Path(sample("dog")).read_bytes()
    bad = {"incoming/notes.txt": b"not an image", "incoming/cut.jpg": dog[: len(dog) // 3]}
    for key, body in {**good, **bad}.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)

    run_arrivals(stack["api"])
    states = wait_for_pipelines(stack["api"], expected=4)  # 3 images + the truncated JPEG
    assert sorted(states.values()) == ["failed", "success", "success", "success"]

    assert keys(s3, "incoming/") == []
    assert keys(s3, "processed/") == sorted(k.replace("incoming/", "processed/") for k in good)
    for key, body in good.items():  # originals intact
        assert s3.get_object(Bucket=BUCKET, Key=key.replace("incoming/", "processed/"))[
            "Body"].read() == body
    assert keys(s3, "quarantine/") == ["quarantine/cut.jpg", "quarantine/cut.jpg.error.json",
                                       "quarantine/notes.txt", "quarantine/notes.txt.error.json"]
    cut = json.loads(s3.get_object(Bucket=BUCKET, Key="quarantine/cut.jpg.error.json")[
        "Body"].read())
    assert cut["error_class"] == "BadImageError" and "truncated" in cut["reason"]
    assert cut["run_id"].startswith("arrival__")
    notes = json.loads(s3.get_object(Bucket=BUCKET, Key="quarantine/notes.txt.error.json")[
        "Body"].read())
    assert "suffix" in notes["reason"]
    assert sum(k.endswith("result.json") for k in keys(s3, "results/")) == 3
    with sqlite3.connect(stack["catalog"]) as conn:
        assert conn.execute("SELECT COUNT(*) FROM tilescope_results").fetchone()[0] == 3
        claims = dict(conn.execute("SELECT key, status FROM tilescope_claims").fetchall())
    assert sorted(claims.values()) == ["processed"] * 3 + ["quarantined"] * 2

    # Nothing new: the next tick's sensor times out quietly and starts nothing.
    run_arrivals(stack["api"])
    assert len(wait_for_pipelines(stack["api"], expected=4)) == 4
