"""s3_arrivals + tiled_inference under the real scheduler and triggerer (deferrable sensor):
every image processed exactly once, bad input quarantined with a reason, nothing lost."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import time
from pathlib import Path

import pytest
from airflow_support import running_airflow
from PIL import Image

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BUCKET = "tilescope"


@pytest.fixture(scope="module")
def metadata_db() -> str | None:
    """A database of its own on the machine's PostgreSQL for Airflow's metadata (hundreds of
    concurrent runs lock a SQLite file); ``None`` where no PostgreSQL runs."""
    from tilescope.stack.postgres import throwaway_database

    with throwaway_database("airflow_test") as url:
        yield url


@pytest.fixture(scope="module")
def stack(tmp_path_factory, s3_server, metadata_db):
    env = {
        "TILESCOPE_ARRIVALS_SCHEDULE": "none",
        "TILESCOPE_ARRIVALS_WAIT_SECONDS": "20",
        "TILESCOPE_ARRIVALS_POKE_SECONDS": "2",
        "TILESCOPE_MAX_ACTIVE_RUNS": "16",
        "AIRFLOW__CORE__PARALLELISM": "16",
    }
    if metadata_db:
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = metadata_db
    with running_airflow(tmp_path_factory.mktemp("arrivals"), s3_server,
                         dags=("tiled_inference", "s3_arrivals"), extra_env=env) as running:
        yield {"airflow": running.airflow, "api": running.api, "catalog": running.catalog,
               "postgres": metadata_db is not None}


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
    assert wait_for_run(api, "s3_arrivals", run_id, timeout=1800) == "success"
    return run_id


def wait_for_pipelines(api, expected: int, timeout: float = 1800) -> dict[str, str]:
    """Block until ``expected`` tiled_inference runs exist and all have finished."""
    deadline = time.monotonic() + timeout
    while True:
        from tilescope.stack.provision import list_runs

        states = {r["dag_run_id"]: r["state"] for r in list_runs(api, "tiled_inference")}
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


@pytest.mark.timeout(3000)
def test_burst_exactly_once_with_crash_and_new_versions(stack, s3_client, sample):
    """200 images arrive in waves while pipelines run; a claimer 'crashes' between claim and
    trigger; an unchanged re-upload is ignored and a changed one is processed again."""
    from tilescope.catalog import connect
    from tilescope.claims import claim

    if not stack["postgres"]:
        pytest.skip("needs PostgreSQL on 127.0.0.1:5432 for Airflow's metadata under a burst "
                    "(a SQLite metadata DB locks under hundreds of concurrent runs)")
    s3 = s3_client
    s3.create_bucket(Bucket=BUCKET)
    base = Image.open(sample("kite")).convert("RGB")
    before = len(wait_for_pipelines(stack["api"], expected=0))

    def image(i: int) -> bytes:
        out = io.BytesIO()
        x, y = (i * 37) % 1100, (i * 53) % 700
        base.crop((x, y, x + 200, y + 150)).save(out, format="JPEG", quality=85)
        return out.getvalue()

    total = int(os.environ.get("TILESCOPE_TEST_BURST", "200"))
    wave_size = total // 4
    etags = {}
    engine = connect(f"sqlite:///{stack['catalog']}")
    for wave in range(4):
        for i in range(wave * wave_size, total if wave == 3 else (wave + 1) * wave_size):
            key = f"incoming/burst/{i:03d}.jpg"
            etags[key] = s3.put_object(Bucket=BUCKET, Key=key, Body=image(i))["ETag"]
        if wave == 1:  # a claimer died right after claiming these two, before triggering
            for i in (wave_size, wave_size + 1):
                key = f"incoming/burst/{i:03d}.jpg"
                assert claim(engine, BUCKET, key, etags[key], 1) is not None
        run_arrivals(stack["api"])
    for _ in range(total // 50 + 3):  # drain: per-tick limit 50, waves overlapped pipelines
        wait_for_pipelines(stack["api"], expected=0)
        if not keys(s3, "incoming/"):
            break
        run_arrivals(stack["api"])
    assert keys(s3, "incoming/") == [], "arrivals did not drain"
    states = wait_for_pipelines(stack["api"], expected=before + total)
    assert len(states) == before + total and list(states.values()).count("failed") <= 1

    with sqlite3.connect(stack["catalog"]) as conn:
        rows = conn.execute("SELECT image_uri, COUNT(*) FROM tilescope_results WHERE "
                            "image_uri LIKE '%/burst/%' GROUP BY image_uri").fetchall()
        claims = conn.execute("SELECT key, COUNT(*), MAX(status) FROM tilescope_claims WHERE "
                              "key LIKE 'incoming/burst/%' GROUP BY key").fetchall()
    assert len(rows) == total and all(count == 1 for _, count in rows)
    assert len(claims) == total and all(c == 1 and s == "processed" for _, c, s in claims)
    assert len(keys(s3, "processed/burst/")) == total

    # The same bytes again under the same key (same ETag): not processed again.
    key = "incoming/burst/007.jpg"
    s3.put_object(Bucket=BUCKET, Key=key, Body=image(7))
    run_arrivals(stack["api"])
    assert len(wait_for_pipelines(stack["api"], expected=0)) == before + total
    assert keys(s3, "incoming/") == [key]  # left alone: that version was processed already
    # Changed bytes (new ETag): a new version, processed.
    s3.put_object(Bucket=BUCKET, Key=key, Body=image(7) + b"\0")
    run_arrivals(stack["api"])
    assert len(wait_for_pipelines(stack["api"], expected=before + total + 1)) == \
        before + total + 1
