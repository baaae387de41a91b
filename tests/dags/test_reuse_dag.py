"""Result reuse in ``tiled_inference`` (``dag.test()`` on a moto S3 server, SQLite catalog):
the same bytes under a new key are not analysed again, yet the arrival is settled and gets
its own catalog row; other parameters, other model weights or ``reuse: false`` recompute."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import sqlalchemy as sa
from test_tiled_inference import keys_under, task_tries, upload

from tilescope.intake.claims import PROCESSED, all_claims, claim
from tilescope.outputs.catalog import connect, find_results

pytestmark = pytest.mark.slow
BUCKET = "tilescope"


def claimed_conf(client, engine, key: str, data: bytes, **params) -> dict:
    """A run's conf for ``key`` uploaded and claimed, as s3_arrivals triggers it."""
    uri = upload(client, key, data)
    head = client.head_object(Bucket=BUCKET, Key=key)
    owned = claim(engine, BUCKET, key, head["ETag"].strip('"'), len(data))
    # (dag.test() keeps the previous run's conf in dag.params: every value that matters)
    return {"image_uri": uri, "claim": owned.to_dict(), "model": "nanodet-coco",
            "score_threshold": 0.3, "reuse": True, **params}


def analyzed(dag, run) -> bool:
    """Whether any analyze task instance of the run did work (none: skipped or absent)."""
    return any(state != "skipped"
               for state, _ in task_tries(dag.dag_id, run.run_id, "analyze").values())


def test_same_bytes_under_a_new_key_reuse_the_stored_result(dag, airflow_env, sample):
    """Seen red: with preprocess not asking the index (reuse=None) analyze ran for b.jpg and
    its row was a computed one; with store_reused not recording the row, no reused row."""
    client, engine = airflow_env["client"], connect(airflow_env["catalog"])
    data = Path(sample("kite")).read_bytes()
    sha = hashlib.sha256(data).hexdigest()

    first = dag.test(run_conf=claimed_conf(client, engine, "incoming/a.jpg", data))
    assert str(first.state) == "success" and analyzed(dag, first)
    (computed,) = find_results(engine, sha)
    result_key = computed["result_keys"]["result"].split(f"{BUCKET}/", 1)[1]
    stored = client.get_object(Bucket=BUCKET, Key=result_key)
    results_before = sorted(keys_under(client, "results/"))

    second = dag.test(run_conf=claimed_conf(client, engine, "incoming/b.jpg", data))
    assert str(second.state) == "success"
    assert not analyzed(dag, second)  # no analyze task ran
    assert task_tries(dag.dag_id, second.run_id, "store")[-1][0] == "success"
    again = client.get_object(Bucket=BUCKET, Key=result_key)
    assert again["Body"].read() == stored["Body"].read()  # the result is the stored one
    assert again["LastModified"] == stored["LastModified"]  # not written again
    assert sorted(keys_under(client, "results/")) == results_before
    rows = find_results(engine, sha)
    reused = [r for r in rows if r["reused_from"] is not None]
    assert len(rows) == 2 and len(reused) == 1
    assert reused[0]["reused_from"] == computed["id"]
    assert reused[0]["image_uri"] == f"s3://{BUCKET}/incoming/b.jpg"
    assert reused[0]["result_keys"] == computed["result_keys"]
    assert reused[0]["detections"] == computed["detections"]
    # the arrival is settled as any stored one: the original moved to processed/
    assert sorted(keys_under(client, "processed/")) == ["processed/a.jpg", "processed/b.jpg"]
    assert keys_under(client, "incoming/") == [] and keys_under(client, "scratch/") == []
    assert {c["key"]: c["status"] for c in all_claims(engine)} == {
        "incoming/a.jpg": PROCESSED, "incoming/b.jpg": PROCESSED}


def test_other_params_other_weights_or_reuse_off_recompute(dag, airflow_env, sample):
    """Seen red: with the ``reuse`` Param ignored (always on), d.jpg was reused."""
    client, engine = airflow_env["client"], connect(airflow_env["catalog"])
    data = Path(sample("kite")).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    assert str(dag.test(run_conf=claimed_conf(client, engine, "incoming/a.jpg", data)).state) \
        == "success"

    other = dag.test(run_conf=claimed_conf(client, engine, "incoming/c.jpg", data,
                                           score_threshold=0.35))
    assert str(other.state) == "success" and analyzed(dag, other)
    assert len({r["params_hash"] for r in find_results(engine, sha)}) == 2

    forced = dag.test(run_conf=claimed_conf(client, engine, "incoming/d.jpg", data,
                                            reuse=False))
    assert str(forced.state) == "success" and analyzed(dag, forced)

    with engine.begin() as conn:  # as if the stored result came from other weights
        conn.execute(sa.text("UPDATE tilescope_results SET model_digest = :d"), {"d": "0" * 64})
    weights = dag.test(run_conf=claimed_conf(client, engine, "incoming/e.jpg", data))
    assert str(weights.state) == "success" and analyzed(dag, weights)
    rows = find_results(engine, sha)
    assert all(r["reused_from"] is None for r in rows)  # nothing was reused
    assert len(rows) == 2  # one computed row per (image, params), updated by recomputes
    assert len(keys_under(client, "processed/")) == 4


def preprocess_units(dag_id: str, run_id: str) -> list[dict]:
    """The work units preprocess returned (what analyze was mapped over)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter(
            XComModel.dag_id == dag_id, XComModel.run_id == run_id,
            XComModel.task_id == "preprocess", XComModel.key == "return_value").one()
        return list(row.value)


def test_a_batch_drops_reused_images_from_its_units_and_settles_them(dag, airflow_env,
                                                                     sample):
    """Seen red: with mark_reused not called, x.jpg and y.jpg were packed into the second
    batch's units again (and got computed rows, not reused ones)."""
    import io

    import numpy as np
    from PIL import Image

    client, engine = airflow_env["client"], connect(airflow_env["catalog"])
    kite = np.asarray(Image.open(sample("kite")).convert("RGB"))

    def jpeg(x: int) -> bytes:
        out = io.BytesIO()
        Image.fromarray(kite[100:420, x:x + 480]).save(out, format="JPEG", quality=90)
        return out.getvalue()

    crops = {name: jpeg(x) for name, x in (("one", 200), ("two", 500), ("three", 800))}

    def batch(pairs: list[tuple[str, bytes]]):
        import json

        images = []
        for key, data in pairs:
            conf = claimed_conf(client, engine, key, data)
            images.append({"uri": conf["image_uri"], "claim": conf["claim"]})
        manifest = f"manifests/{pairs[0][0].rsplit('/', 1)[1]}.json"
        client.put_object(Bucket=BUCKET, Key=manifest, Body=json.dumps({"images": images}))
        return dag.test(run_conf={"manifest": f"s3://{BUCKET}/{manifest}", "images": [],
                                  "model": "nanodet-coco", "score_threshold": 0.3,
                                  "reuse": True})

    first = batch([("incoming/a.jpg", crops["one"]), ("incoming/b.jpg", crops["two"])])
    assert str(first.state) == "success" and analyzed(dag, first)
    second = batch([("incoming/x.jpg", crops["one"]), ("incoming/y.jpg", crops["two"]),
                    ("incoming/z.jpg", crops["three"])])
    assert str(second.state) == "success" and analyzed(dag, second)  # z.jpg is new
    units = preprocess_units(dag.dag_id, second.run_id)
    from tilescope.units import WorkUnit

    sources = {s for unit in units for s in WorkUnit.from_dict(unit).sources}
    assert sources == {2}, units  # z.jpg's only: x.jpg (0) and y.jpg (1) are in no unit
    rows = {r["image_uri"].rsplit("/", 1)[1]: r for r in find_results(engine)}
    assert sorted(rows) == ["a.jpg", "b.jpg", "x.jpg", "y.jpg", "z.jpg"]
    assert rows["x.jpg"]["reused_from"] == rows["a.jpg"]["id"]
    assert rows["y.jpg"]["reused_from"] == rows["b.jpg"]["id"]
    assert rows["z.jpg"]["reused_from"] is None
    assert rows["x.jpg"]["result_keys"] == rows["a.jpg"]["result_keys"]
    assert sorted(keys_under(client, "processed/")) == [
        f"processed/{k}.jpg" for k in ("a", "b", "x", "y", "z")]
    assert keys_under(client, "incoming/") == [] and keys_under(client, "scratch/") == []
