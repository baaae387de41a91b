"""The SQL catalog on SQLite and on the machine's PostgreSQL: one row per image + params."""

from __future__ import annotations

import numpy as np
import pytest

from tilescope.detections import Detections
from tilescope.outputs.catalog import connect, find_results, record_result, url_from_connection
from tilescope.results import ImageInfo, RegionFinding, Result


def result(status_failed: bool = False, n: int = 3) -> Result:
    region = RegionFinding(0, "r0c0", 0, 0, [0, 0, 10, 10], 1,
                           status="failed" if status_failed else "success")
    dets = Detections(np.tile([[1, 1, 5, 5]], (n, 1)), np.full(n, 0.9), np.zeros(n))
    return Result(ImageInfo("s3://b/incoming/x.jpg", 10, 10, "ab" * 32, "JPEG", 100), "m",
                  {}, {}, [region], dets, ["person"], seconds={"total": 1.0, "model": 0.5})


def test_upsert_keeps_one_row_per_image_and_params(sql_url):
    engine = connect(sql_url)
    keys = {"result": "s3://b/results/x/result.json"}
    record_result(engine, result(status_failed=True, n=2), "p1", keys, "run-1")
    record_result(engine, result(n=3), "p1", keys, "run-2")  # a re-run: same row, updated
    record_result(engine, result(n=1), "p2", keys, "run-3")  # other params: another row
    rows = find_results(engine, "ab" * 32)
    assert len(rows) == 2
    p1 = next(r for r in rows if r["params_hash"] == "p1")
    assert p1["status"] == "complete" and p1["detections"] == 3 and p1["run_id"] == "run-2"
    assert p1["counts"] == {"person": 3} and p1["result_keys"] == keys
    assert p1["failed_regions"] == []


def test_url_from_airflow_connection_fields():
    assert url_from_connection("sqlite", host="/data/c.sqlite") == "sqlite:////data/c.sqlite"
    url = url_from_connection("postgres", host="db", login="u", password="p@ss", port=5433,
                              schema="tilescope")
    assert url == "postgresql+psycopg2://u:p%40ss@db:5433/tilescope"
    with pytest.raises(ValueError):
        url_from_connection("mysql", host="x")
    with pytest.raises(ValueError):
        url_from_connection("sqlite")


def test_connect_adds_indexes_a_catalog_made_before_them_lacks(tmp_path):
    """create_all adds indexes only with new tables (seen red without the index pass)."""
    import sqlalchemy as sa

    import tilescope.intake.claims  # noqa: F401 - declares the claims table and its indexes
    from tilescope.outputs.catalog import METADATA, connect

    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = connect(url)
    declared = {i.name for i in METADATA.tables["tilescope_claims"].indexes}
    assert declared  # status and run id
    with engine.begin() as conn:
        for name in declared:
            conn.execute(sa.text(f"DROP INDEX {name}"))
    engine.dispose()
    again = connect(url)
    found = {i["name"] for i in sa.inspect(again).get_indexes("tilescope_claims")}
    assert declared <= found


def test_many_rows_in_one_statement_the_same_image_twice_keeps_the_last(sql_url):
    """A batch's rows go in one executemany; the same bytes twice in one batch (two keys)
    leave one row, the later one — as two upserts in a row would (seen red with the fold
    keeping the first row of a key instead of the last)."""
    from dataclasses import replace

    from tilescope.outputs.catalog import record_results

    engine = connect(sql_url)
    first, second = result(n=2), result(n=4)
    second = replace(second, image=replace(second.image, uri="s3://b/incoming/copy.jpg"))
    others = [replace(result(n=i), image=replace(result().image, sha256=f"{i:064d}"))
              for i in range(1, 300)]
    record_results(engine, [(first, "p1", {"result": "a"}), *[(o, "p1", {}) for o in others],
                            (second, "p1", {"result": "b"})], "run-1")
    assert len(find_results(engine)) == 300
    (row,) = find_results(engine, "ab" * 32)
    assert row["detections"] == 4 and row["image_uri"] == "s3://b/incoming/copy.jpg"
    assert row["result_keys"] == {"result": "b"} and row["run_id"] == "run-1"
    record_results(engine, [(first, "p1", {"result": "c"})], "run-2")  # a re-run updates
    (row,) = find_results(engine, "ab" * 32)
    assert (row["detections"], row["run_id"], row["result_keys"]) == (2, "run-2",
                                                                      {"result": "c"})


#: the results table as catalogs made before the archive columns hold it
_BEFORE_ARCHIVE = """CREATE TABLE tilescope_results (
    id INTEGER PRIMARY KEY, image_sha256 VARCHAR(64) NOT NULL, params_hash VARCHAR(32) NOT NULL,
    image_id VARCHAR(32) NOT NULL, image_uri TEXT NOT NULL, width INTEGER NOT NULL,
    height INTEGER NOT NULL, model VARCHAR(128) NOT NULL, status VARCHAR(16) NOT NULL,
    detections INTEGER NOT NULL, regions INTEGER NOT NULL, failed_regions TEXT NOT NULL,
    counts TEXT NOT NULL, result_keys TEXT NOT NULL, seconds TEXT NOT NULL,
    run_id VARCHAR(250), created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
    CONSTRAINT uq_tilescope_image_params UNIQUE (image_sha256, params_hash))"""


def test_an_existing_catalog_gains_the_archive_columns_and_keeps_its_rows(sql_url):
    import sqlalchemy as sa

    old = sa.create_engine(sql_url)
    with old.begin() as conn:
        conn.execute(sa.text(_BEFORE_ARCHIVE.replace(
            "INTEGER PRIMARY KEY", "SERIAL PRIMARY KEY" if old.dialect.name == "postgresql"
            else "INTEGER PRIMARY KEY")))
        conn.execute(sa.text(
            "INSERT INTO tilescope_results (image_sha256, params_hash, image_id, image_uri, "
            "width, height, model, status, detections, regions, failed_regions, counts, "
            "result_keys, seconds, created_at, updated_at) VALUES ('old', 'p0', 'old', "
            "'s3://b/old.jpg', 1, 1, 'm', 'complete', 0, 1, '[]', '{}', '{}', '{}', "
            "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
    old.dispose()
    engine = connect(sql_url)  # the migration: columns added in place
    archived = result()
    archived.archive = {"uri": "s3://b/processed/x.webp", "bytes": 40, "bytes_saved": 60,
                        "quality": 71, "ssim": 0.951}
    record_result(engine, archived, "p1", {})
    rows = {r["params_hash"]: r for r in find_results(engine)}
    assert rows["p0"]["image_uri"] == "s3://b/old.jpg" and rows["p0"]["bytes_saved"] is None
    assert (rows["p1"]["archive_uri"], rows["p1"]["archive_bytes"], rows["p1"]["bytes_saved"],
            rows["p1"]["archive_quality"]) == ("s3://b/processed/x.webp", 40, 60, 71)
    assert rows["p1"]["archive_ssim"] == pytest.approx(0.951)
    connect(sql_url).dispose()  # a second connect finds nothing to add
