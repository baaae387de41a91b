"""Worst inputs through the Airflow path: ``tiled_inference`` runs (``dag.test()``) started the
way ``s3_arrivals`` starts them (claimed versions, awkward keys), on moto S3 and a SQLite
catalog. Checks each run's state, the task tries (no retry loop on bad input), the catalog,
the quarantine record — and every XCom a crowded run stores, each under 64 KB.
"""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image
from support.badinputs import corpus
from support.blob_model import BrightBlobModel, blob_image
from test_tiled_inference import (  # helpers shared with that module (fixtures: conftest)
    BUCKET,
    keys_under,
    run_xcoms,
    task_tries,
)

from tilescope.intake.arrivals import PROCESSED, QUARANTINE, destination, error_record_key
from tilescope.intake.claims import PROCESSED as CLAIM_PROCESSED
from tilescope.intake.claims import QUARANTINED, status_of
from tilescope.intake.flow import IntakePolicy, claim_arrivals, trigger_requests
from tilescope.models import register_model
from tilescope.outputs.catalog import connect, find_results

pytestmark = pytest.mark.slow


register_model("bright-blobs-dag", BrightBlobModel)  # in-process: dag.test() runs tasks here
XCOM_LIMIT = 64 * 1024
#: every parameter stated: dag.test() keeps the previous run's conf in dag.params
BASE_CONF = {"model": "bright-blobs-dag", "slice_size": "256", "overlap": 0.3, "grid": "2x2",
             "postprocess": "greedynmm", "match_metric": "ios", "match_threshold": 0.5,
             "class_agnostic": False, "score_threshold": 0.1, "full_image_pass": False,
             "min_success_ratio": 1.0}


def claimed_run(dag, engine, client, key: str, data: bytes):
    """Upload under incoming/, claim it as s3_arrivals does, run tiled_inference for it."""
    client.put_object(Bucket=BUCKET, Key=key, Body=data)
    claims, rejected = claim_arrivals(client, engine, BUCKET, IntakePolicy(), run_id="tick")
    assert rejected == [] and [c.key for c in claims] == [key]
    (request,) = trigger_requests(claims)
    run = dag.test(run_conf={**BASE_CONF, **request["conf"]})
    return run, claims[0]


def quarantine_record(client, key: str) -> dict:
    record_key = error_record_key(destination(key, QUARANTINE))
    return json.loads(client.get_object(Bucket=BUCKET, Key=record_key)["Body"].read())


def test_worst_inputs_fail_once_quarantined_and_a_crowded_run_keeps_xcoms_small(
        dag, airflow_env, monkeypatch):
    client = airflow_env["client"]
    engine = connect(airflow_env["catalog"])

    # 1. A decompression bomb under a unicode key: refused from its header, in one try.
    bomb = next(c for c in corpus() if c.kind == "decompression-bomb")
    key = "incoming/Überweisung – 日本語 ✓/bomb.png"
    run, owned = claimed_run(dag, engine, client, key, bomb.data)
    assert str(run.state) == "failed"
    assert task_tries(dag.dag_id, run.run_id, "preprocess") == {-1: ("failed", 1)}
    # synthesize (all_done) fails at once too, instead of retrying a missing XCom
    assert task_tries(dag.dag_id, run.run_id, "synthesize") == {-1: ("failed", 1)}
    assert task_tries(dag.dag_id, run.run_id, "finalize")[-1][0] == "failed"
    record = quarantine_record(client, key)
    assert record["error_class"] == "ImageTooLargeError" and record["run_id"] == run.run_id
    assert "declares 100000×100000 = 10,000,000,000 pixels" in record["reason"]
    assert status_of(engine, BUCKET, key, owned.etag)["status"] == QUARANTINED
    assert keys_under(client, "incoming/") == [] and keys_under(client, "scratch/") == []

    # 2. Over the slice budget (set for the deployment): refused with the numbers, kept.
    pixels, truth = blob_image(1200, 1200, 2500, seed=1, max_side=12)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    crowded = out.getvalue()
    monkeypatch.setenv("TILESCOPE_MAX_SLICES", "20")
    key = "incoming/scans/over budget 01.png"
    run, _ = claimed_run(dag, engine, client, key, crowded)
    assert str(run.state) == "failed"
    assert task_tries(dag.dag_id, run.run_id, "preprocess") == {-1: ("failed", 1)}
    record = quarantine_record(client, key)
    assert record["error_class"] == "ConfigError"
    assert "makes 49 slices, over the budget of 20 (TILESCOPE_MAX_SLICES)" in record["reason"]
    monkeypatch.delenv("TILESCOPE_MAX_SLICES")

    # 3. The same crowded image under another awkward key, within budget: processed, and no
    #    XCom of the run carries more than 64 KB (findings that would are offloaded to S3).
    key = "incoming/scans/crowded scan (2500 objects).png"
    run, owned = claimed_run(dag, engine, client, key, crowded)
    assert str(run.state) == "success"
    xcoms = run_xcoms(dag.dag_id, run.run_id)
    assert {task for task, _, _ in xcoms} >= {"preprocess", "analyze", "synthesize", "store",
                                               "finalize"}
    assert {index for task, index, _ in xcoms if task == "analyze"} == {0, 1, 2, 3}
    too_big = [(task, index, size) for task, index, size in xcoms if size >= XCOM_LIMIT]
    assert too_big == [], too_big
    (row,) = find_results(engine)
    assert row["status"] == "complete" and row["detections"] == len(truth)
    assert status_of(engine, BUCKET, key, owned.etag)["status"] == CLAIM_PROCESSED
    assert keys_under(client, destination(key, PROCESSED)) == [destination(key, PROCESSED)]
    assert keys_under(client, "incoming/") == [] and keys_under(client, "scratch/") == []


def test_params_out_of_bounds_are_refused_at_trigger_time(dag):
    """No run is created for a request the Param schema refuses."""
    from airflow.models.dagrun import DagRun
    from airflow.sdk.definitions.param import ParamValidationError
    from airflow.utils.session import create_session

    def runs() -> int:
        with create_session() as session:
            return session.query(DagRun).filter(DagRun.dag_id == dag.dag_id).count()

    before = runs()
    for bad in ({"slice_size": "16"}, {"slice_size": "8193"}, {"grid": "1025x1"},
                {"grid": "0x3"}, {"overlap": 0.9}, {"overlap": -0.1},
                {"match_threshold": 1.5}, {"score_threshold": -0.01},
                {"min_success_ratio": 2}):
        with pytest.raises(ParamValidationError):
            dag.test(run_conf={**BASE_CONF, "image_uri": "s3://tilescope/incoming/x.png",
                               **bad})
    assert runs() == before
