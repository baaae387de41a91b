"""s3_arrivals + tiled_inference under the real scheduler and triggerer (deferrable sensor):
arrivals started in batches (one run per batch), every image processed exactly once — also
after a claimer killed for real between claim and trigger — bad input quarantined with a
reason, nothing lost."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import time
from pathlib import Path

import pytest
from PIL import Image
from support.airflow_support import running_airflow
from support.claimer import kill_claimer_at

pytestmark = pytest.mark.slow
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


def manifest_keys(s3, run: dict) -> list[str]:
    """Keys of the images a batch run was started for, from its manifest."""
    uri = run["conf"]["manifest"]
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    return [item["claim"]["key"] for item in manifest["images"]]


def pipeline_runs(api) -> list[dict]:
    from tilescope.stack.provision import list_runs

    return list_runs(api, "tiled_inference")


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
    # One batch run for the 3 images + the truncated JPEG (the non-image never starts); it
    # ends failed because one of its images could not be stored.
    states = wait_for_pipelines(stack["api"], expected=1)
    assert list(states.values()) == ["failed"]
    (run,) = pipeline_runs(stack["api"])
    assert run["dag_run_id"].startswith("arrivals__") and set(run["conf"]) == {"manifest"}
    assert sorted(manifest_keys(s3, run)) == sorted([*good, "incoming/cut.jpg"])

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
    assert cut["run_id"] == run["dag_run_id"]
    notes = json.loads(s3.get_object(Bucket=BUCKET, Key="quarantine/notes.txt.error.json")[
        "Body"].read())
    assert "suffix" in notes["reason"]
    assert sum(k.endswith("result.json") for k in keys(s3, "results/")) == 3
    with sqlite3.connect(stack["catalog"]) as conn:
        assert conn.execute("SELECT COUNT(*) FROM tilescope_results").fetchone()[0] == 3
        claims = conn.execute("SELECT key, status, run_id FROM tilescope_claims").fetchall()
    assert sorted(s for _, s, _ in claims) == ["processed"] * 3 + ["quarantined"] * 2
    assert {r for k, _, r in claims if k != "incoming/notes.txt"} == {run["dag_run_id"]}

    # Nothing new: the next tick's sensor times out quietly and starts nothing.
    run_arrivals(stack["api"])
    assert len(wait_for_pipelines(stack["api"], expected=1)) == 1


@pytest.mark.timeout(3000)
def test_burst_exactly_once_with_crash_and_new_versions(stack, s3_client, s3_server, sample):
    """200 images arrive in waves while batch runs go on; after the second wave a claimer
    (the real claim step, ``support.claimer``) is SIGKILLed once it has claimed them, stored
    its batch and written the manifest — before the trigger; the next tick starts that batch
    under the same run id with the same manifest. An unchanged re-upload is ignored and a
    changed one is processed again. Each tick takes all it finds in one batch run (the
    default bounds are far off)."""
    if not stack["postgres"]:
        pytest.skip("needs PostgreSQL on 127.0.0.1:5432 for Airflow's metadata under a burst "
                    "(a SQLite metadata DB locks under hundreds of concurrent runs)")
    s3 = s3_client
    s3.create_bucket(Bucket=BUCKET)
    base = Image.open(sample("kite")).convert("RGB")
    wait_for_pipelines(stack["api"], expected=0)
    earlier = {r["dag_run_id"] for r in pipeline_runs(stack["api"])}

    def image(i: int) -> bytes:
        out = io.BytesIO()
        x, y = (i * 37) % 1100, (i * 53) % 700
        base.crop((x, y, x + 200, y + 150)).save(out, format="JPEG", quality=85)
        return out.getvalue()

    total = int(os.environ.get("TILESCOPE_TEST_BURST", "200"))
    wave_size = total // 4
    etags = {}
    killed: dict[str, str] = {}
    for wave in range(4):
        for i in range(wave * wave_size, total if wave == 3 else (wave + 1) * wave_size):
            key = f"incoming/burst/{i:03d}.jpg"
            etags[key] = s3.put_object(Bucket=BUCKET, Key=key, Body=image(i))["ETag"]
        if wave == 1:  # a claimer killed after its claims, batch and manifest: no trigger
            kill_claimer_at("trigger", endpoint=s3_server, bucket=BUCKET,
                            catalog=f"sqlite:///{stack['catalog']}")
            killed = unfinished_claims(stack["catalog"])
            assert sorted(killed) == [f"incoming/burst/{i:03d}.jpg"
                                      for i in range(wave_size, 2 * wave_size)]
            assert len(set(killed.values())) == 1  # one batch, its manifest written
            (killed_run,) = set(killed.values())
            assert f"manifests/{killed_run}.json" in keys(s3, "manifests/")
            assert killed_run not in {r["dag_run_id"] for r in pipeline_runs(stack["api"])}
        run_arrivals(stack["api"])
    for _ in range(5):  # drain: waves overlapped runs (a failed image rests, then retries)
        wait_for_pipelines(stack["api"], expected=0)
        if not keys(s3, "incoming/"):
            break
        run_arrivals(stack["api"])
    assert keys(s3, "incoming/") == [], "arrivals did not drain"
    wait_for_pipelines(stack["api"], expected=0)
    runs = [r for r in pipeline_runs(stack["api"]) if r["dag_run_id"] not in earlier]
    assert 4 <= len(runs) <= 9, [r["dag_run_id"] for r in runs]  # a run per tick, not per image
    assert all(r["dag_run_id"].startswith("arrivals__") for r in runs)
    started = [k for r in runs for k in manifest_keys(s3, r)]
    assert sorted(started) == sorted(etags), "each image started in exactly one batch run"
    # the killed claimer's batch: started by the next tick, same run id, same members
    (resumed,) = [r for r in runs if r["dag_run_id"] == killed_run]
    assert sorted(manifest_keys(s3, resumed)) == sorted(killed)
    assert [r["state"] for r in runs].count("failed") <= 1

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
    count = len(earlier) + len(runs)
    run_arrivals(stack["api"])
    assert len(wait_for_pipelines(stack["api"], expected=0)) == count
    assert keys(s3, "incoming/") == [key]  # left alone: that version was processed already
    # Changed bytes (new ETag): a new version, processed (a batch of one).
    s3.put_object(Bucket=BUCKET, Key=key, Body=image(7) + b"\0")
    run_arrivals(stack["api"])
    assert len(wait_for_pipelines(stack["api"], expected=count + 1)) == count + 1
    assert keys(s3, "incoming/") == []


def unfinished_claims(catalog: Path, like: str = "incoming/burst/%") -> dict[str, str]:
    """key → stored batch run id of the claims still ``claimed`` (never marked triggered)."""
    with sqlite3.connect(catalog) as conn:
        return dict(conn.execute(
            "SELECT key, run_id FROM tilescope_claims WHERE key LIKE ? AND status = 'claimed'"
            " AND run_id IS NOT NULL", (like,)).fetchall())


def test_a_claimer_killed_between_claim_and_trigger_loses_and_doubles_nothing(
        stack, s3_client, s3_server, sample):
    """The claim step (``take_arrivals``, what the DAG's claim task calls) runs in a process
    SIGKILLed once its claims are committed and its batch run ids stored — before any
    manifest is written or anything triggered (``support.claimer``). The next ordinary tick
    starts those batches under the stored run ids, and every image is processed exactly
    once."""
    s3 = s3_client
    s3.create_bucket(Bucket=BUCKET)
    wait_for_pipelines(stack["api"], expected=0)
    earlier = {r["dag_run_id"] for r in pipeline_runs(stack["api"])}
    images = {f"incoming/crash/{i}.jpg": small_jpeg(sample, "kite", (i * 60, 200, i * 60 + 300,
                                                                    420)) for i in range(6)}
    for key, body in images.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)

    kill_claimer_at("manifest", endpoint=s3_server, bucket=BUCKET,
                    catalog=f"sqlite:///{stack['catalog']}", policy={"images_per_run": 4})
    stored = unfinished_claims(stack["catalog"], "incoming/crash/%")
    assert sorted(stored) == sorted(images)
    batches = sorted(set(stored.values()))
    assert len(batches) == 2  # 4 + 2 images
    assert keys(s3, "manifests/") == []  # killed before any manifest or trigger
    assert not {r["dag_run_id"] for r in pipeline_runs(stack["api"])} - earlier

    run_arrivals(stack["api"])  # an ordinary tick
    wait_for_pipelines(stack["api"], expected=len(earlier) + 2, timeout=600)
    runs = {r["dag_run_id"]: r for r in pipeline_runs(stack["api"])
            if r["dag_run_id"] not in earlier}
    assert sorted(runs) == batches  # the stored run ids, nothing else
    assert all(r["state"] == "success" for r in runs.values())
    for run_id, run in runs.items():
        assert sorted(manifest_keys(s3, run)) == sorted(k for k, v in stored.items()
                                                       if v == run_id)
    with sqlite3.connect(stack["catalog"]) as conn:
        results = conn.execute("SELECT image_uri, COUNT(*) FROM tilescope_results WHERE "
                               "image_uri LIKE '%/crash/%' GROUP BY image_uri").fetchall()
        claims = conn.execute("SELECT key, status, run_id FROM tilescope_claims WHERE "
                              "key LIKE 'incoming/crash/%'").fetchall()
    assert sorted(results) == sorted((f"s3://{BUCKET}/{k}", 1) for k in images)
    assert sorted(claims) == sorted((k, "processed", stored[k]) for k in images)
    assert keys(s3, "incoming/") == []
    assert keys(s3, "processed/crash/") == sorted(k.replace("incoming/", "processed/")
                                                  for k in images)
