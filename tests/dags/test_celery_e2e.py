"""tiled_inference, unchanged, on CeleryExecutor: the machine's PostgreSQL (a metadata DB of
its own, also Celery's result backend) and Redis (a broker database of its own), the
scheduler, api-server, dag-processor, triggerer and two Celery workers. The regions spread
over both workers while the ``tilescope`` pool caps them across the two — the settings that
docker-compose.yaml deploys."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
from support.airflow_support import running_airflow, task_intervals
from support.intervals import max_overlap

pytestmark = pytest.mark.slow
BUCKET = "tilescope"
POOL_SLOTS = 2
WORKERS = ("w1", "w2")
# Each worker could run 2 regions at once (4 in all): only the pool keeps it to 2.
WORKER_CONCURRENCY = 2


@pytest.fixture(scope="module")
def services():
    """(metadata DB URL, broker URL): both created for this module and removed after it."""
    from tilescope.stack.broker import SERVER_URL, throwaway_redis_db
    from tilescope.stack.postgres import ADMIN_URL, throwaway_database

    with throwaway_database("airflow_celery") as metadata, \
            throwaway_redis_db("tilescope-celery-e2e") as broker:
        if metadata is None:
            pytest.skip(f"CeleryExecutor test needs PostgreSQL at {ADMIN_URL} (Airflow's "
                        f"metadata DB and Celery's result backend); none answered")
        if broker is None:
            pytest.skip(f"CeleryExecutor test needs Redis at {SERVER_URL} (the Celery "
                        f"broker); none answered")
        yield metadata, broker


@pytest.fixture(scope="module")
def stack(tmp_path_factory, s3_server, services):
    metadata, broker = services
    env = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata,
        "AIRFLOW__CELERY__BROKER_URL": broker,
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{metadata}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
    }
    components = ("api-server", "scheduler", "dag-processor", "triggerer",
                  *(f"celery-worker-{name}" for name in WORKERS))
    with running_airflow(tmp_path_factory.mktemp("celery"), s3_server,
                         dags=("tiled_inference",), extra_env=env, components=components,
                         executor="CeleryExecutor", pool_slots=POOL_SLOTS) as running:
        yield {"api": running.api, "metadata": metadata}


def test_regions_spread_over_two_workers_within_the_pool(stack, s3_client, sample):
    import sqlalchemy as sa

    from tilescope.stack.provision import trigger, wait_for_run

    s3_client.create_bucket(Bucket=BUCKET)
    s3_client.put_object(Bucket=BUCKET, Key="incoming/kite.jpg",
                         Body=Path(sample("kite")).read_bytes())
    run_id = trigger(stack["api"], "tiled_inference", {
        "image_uri": f"s3://{BUCKET}/incoming/kite.jpg", "grid": "3x4",
        "model": "nanodet-coco"})["dag_run_id"]  # 12 slices of 416 px: 12 regions
    assert wait_for_run(stack["api"], "tiled_inference", run_id, timeout=600) == "success"

    regions = task_intervals(stack["metadata"], run_id, "analyze")
    assert sorted(r.map_index for r in regions) == list(range(12))
    by_worker = {name: sum(r.hostname == name for r in regions) for name in WORKERS}
    assert all(by_worker.values()) and sum(by_worker.values()) == 12, by_worker
    overlap = max_overlap((r.start, r.end) for r in regions)
    assert 2 <= overlap <= POOL_SLOTS, f"{overlap} regions ran at once with {POOL_SLOTS} slots"
    for task_id in ("preprocess", "synthesize", "store", "finalize"):
        (single,) = task_intervals(stack["metadata"], run_id, task_id)
        assert single.hostname in WORKERS, (task_id, single.hostname)

    # No worker runs a log server: the api-server serves each worker's task log from the
    # shared log folder.
    for region in (next(r for r in regions if r.hostname == name) for name in WORKERS):
        log = stack["api"].request(
            "GET", f"/api/v2/dags/tiled_inference/dagRuns/{quote(run_id, safe='')}/"
            f"taskInstances/analyze/logs/1?map_index={region.map_index}")
        events = [e.get("event", "") for e in log["content"] if isinstance(e, dict)]
        # the task runner's own line after a region's finding was returned (analyze is an
        # operator, so there is no PythonOperator "Done. Returned value" line)
        assert "Pushing xcom" in events, events[-5:]

    listing = s3_client.list_objects_v2(Bucket=BUCKET, Prefix="results/")
    assert sum(o["Key"].endswith("result.json") for o in listing["Contents"]) == 1
    # Celery's result backend is the PostgreSQL database: one row per task it ran (the last
    # one may still be STARTED: its task instance reports success before the Celery task
    # returns).
    engine = sa.create_engine(stack["metadata"])
    try:
        with engine.connect() as conn:
            states = conn.execute(sa.text(
                "SELECT status, COUNT(*) FROM celery_taskmeta GROUP BY status")).fetchall()
    finally:
        engine.dispose()
    assert set(dict(states)) <= {"SUCCESS", "STARTED"} and sum(dict(states).values()) >= 16, \
        states
