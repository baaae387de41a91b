"""Reused rows in the catalog, and the migration of a catalog made before them (SQLite and
the machine's PostgreSQL)."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from tilescope.detections import Detections
from tilescope.outputs.catalog import connect, find_results, record_result
from tilescope.results import ImageInfo, RegionFinding, Result

SHA = "cd" * 32


def result(uri: str = "s3://b/incoming/x.jpg", n: int = 2, failed: bool = False) -> Result:
    region = RegionFinding(0, "r0c0", 0, 0, [0, 0, 10, 10], 1,
                           status="failed" if failed else "success")
    dets = Detections(np.tile([[1, 1, 5, 5]], (n, 1)), np.full(n, 0.9), np.zeros(n))
    return Result(ImageInfo(uri, 10, 10, SHA, "JPEG", 100), "m", {}, {}, [region], dets,
                  ["person"], seconds={"total": 1.0})


def old_catalog(url: str) -> None:
    """The results table as catalogs made before reuse have it, with one row."""
    old = sa.MetaData()
    table = sa.Table(
        "tilescope_results", old,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("params_hash", sa.String(32), nullable=False),
        sa.Column("image_id", sa.String(32), nullable=False, index=True),
        sa.Column("image_uri", sa.Text, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("detections", sa.Integer, nullable=False),
        sa.Column("regions", sa.Integer, nullable=False),
        sa.Column("failed_regions", sa.Text, nullable=False),
        sa.Column("counts", sa.Text, nullable=False),
        sa.Column("result_keys", sa.Text, nullable=False),
        sa.Column("seconds", sa.Text, nullable=False),
        sa.Column("run_id", sa.String(250)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("image_sha256", "params_hash", name="uq_tilescope_image_params"),
    )
    engine = sa.create_engine(url)
    old.create_all(engine)
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(sa.insert(table), [{
            "image_sha256": SHA, "params_hash": "p1", "image_id": SHA[:16],
            "image_uri": "s3://b/incoming/old.jpg", "width": 10, "height": 10, "model": "m",
            "status": "complete", "detections": 5, "regions": 1, "failed_regions": "[]",
            "counts": '{"person": 5}', "result_keys": '{"result": "s3://b/r.json"}',
            "seconds": "{}", "run_id": "old-run", "created_at": now, "updated_at": now}])
    engine.dispose()


def test_an_old_catalog_is_migrated_keeping_its_rows(sql_url):
    """Seen red without the migration: connect() then fails on the missing columns (the
    partial index names reused_from), and with the constraint left in place the reused row
    below is refused as a duplicate of (image, params)."""
    from tilescope.outputs.reuse import StoredResult, record_reused

    old_catalog(sql_url)
    engine = connect(sql_url)
    (row,) = find_results(engine, SHA)
    assert (row["image_uri"], row["detections"], row["run_id"]) == (
        "s3://b/incoming/old.jpg", 5, "old-run")
    assert row["reused_from"] is None and row["model_digest"] is None
    stored = StoredResult(row["id"], {k: v for k, v in row.items()
                                      if k not in ("id", "created_at", "updated_at")})
    record_reused(sql_url, [("s3://b/incoming/again.jpg", stored)], run_id="run-2")
    rows = find_results(engine, SHA)
    assert len(rows) == 2
    reused = next(r for r in rows if r["reused_from"] is not None)
    assert reused["reused_from"] == row["id"] and reused["image_uri"].endswith("again.jpg")
    assert reused["result_keys"] == row["result_keys"] and reused["detections"] == 5
    # a computed re-run still updates the computed row in place
    record_result(engine, result(n=3), "p1", {"result": "s3://b/r2.json"}, "run-3", "md")
    rows = find_results(engine, SHA)
    assert len(rows) == 2
    computed = next(r for r in rows if r["reused_from"] is None)
    assert (computed["detections"], computed["model_digest"]) == (3, "md")
    engine.dispose()
    assert connect(sql_url)  # migrating twice: nothing left to do, no error


def test_each_reupload_is_one_reused_row_and_its_rerun_updates_it(sql_url):
    """Seen red with the reused upsert keyed like a computed row (image, params): the second
    URI then replaced the first URI's row instead of adding its own."""
    from tilescope.outputs.reuse import StoredResult, record_reused

    engine = connect(sql_url)
    record_result(engine, result(), "p1", {"result": "s3://b/r.json"}, "run-1", "md")
    (row,) = find_results(engine, SHA)
    stored = StoredResult(row["id"], {k: v for k, v in row.items()
                                      if k not in ("id", "created_at", "updated_at")})
    record_reused(sql_url, [("s3://b/incoming/a.jpg", stored)], run_id="run-2")
    record_reused(sql_url, [("s3://b/incoming/b.jpg", stored)], run_id="run-3")
    record_reused(sql_url, [("s3://b/incoming/a.jpg", stored)], run_id="run-4")  # again
    rows = find_results(engine, SHA)
    reused = {r["image_uri"]: r for r in rows if r["reused_from"] == row["id"]}
    assert len(rows) == 3 and set(reused) == {"s3://b/incoming/a.jpg", "s3://b/incoming/b.jpg"}
    assert reused["s3://b/incoming/a.jpg"]["run_id"] == "run-4"
    engine.dispose()


@pytest.mark.parametrize("change", ["none", "params", "model", "status", "reused"])
def test_lookup_finds_only_a_complete_computed_row_of_the_same_model_and_params(
        tmp_path, change, s3_client):
    """Seen red: dropping the model-digest condition from the query made the 'model' case
    reuse a result of other weights."""
    from tilescope.outputs.reuse import ResultIndex
    from tilescope.params import InferenceParams
    from tilescope.storage import write_bytes

    client = s3_client
    client.create_bucket(Bucket="bkt")
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    params = InferenceParams()
    index = ResultIndex(url, params, client)
    key = "s3://bkt/results/x/result.json"
    write_bytes(key, b"{}", "application/json", client)
    engine = connect(url)
    stored = result()
    params_hash, model_digest = index.params_hash, index.model_digest
    if change == "params":
        params_hash = InferenceParams(score_threshold=0.4).digest()
    elif change == "model":
        model_digest = "0" * 64
    elif change == "status":
        stored = result(failed=True)  # partial: a region was lost
    record_result(engine, stored, params_hash, {"result": key}, "run-1", model_digest)
    if change == "reused":  # a reused row is never what is reused: its origin is
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE tilescope_results SET reused_from = 99"))
    engine.dispose()
    if change == "none":
        assert index.find(SHA).keys == {"result": key}
        client.delete_object(Bucket="bkt", Key="results/x/result.json")  # the result is gone
    assert index.find(SHA) is None
    assert index.lookup([SHA, "ef" * 32]) == {}
