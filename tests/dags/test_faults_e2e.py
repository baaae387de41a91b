"""Faults injected into real processes while ``tiled_inference`` runs under the real scheduler
(LocalExecutor, SQLite metadata) on SeaweedFS, sharing one stack:

* ``kill -9`` of one region task's process → only that region is retried;
* ``kill -9`` of one work unit's process in a *batch* run (six small images packed a few to
  a unit) → only that unit is retried, and every image gets one result and one catalog row;
* SeaweedFS SIGKILLed and restarted (same ports, data on disk) while regions read and while
  the result is written → botocore retries ride it out, nothing half-written;
* the scheduler crashes (its whole process tree, running tasks included) and a new one is
  started → the run resumes, each region completes once, one catalog row.

Each run's detections must equal a clean run of the same stage functions in this process
(``tilescope.pipeline.run_image``). Regions use ``slow-nanodet``: NanoDet that marks its
process and pauses 3 s on its first call, so a fault can be aimed at a running region.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.airflow_support import model_plugin, running_airflow

from tilescope.models.nanodet import NanoDetModel
from tilescope.outputs.catalog import connect, find_results
from tilescope.params import InferenceParams
from tilescope.pipeline import run_image
from tilescope.readers import reader_for_bytes
from tilescope.results import ImageInfo
from tilescope.stack import procs
from tilescope.stack.provision import trigger, wait_for_run

pytestmark = pytest.mark.slow
BUCKET = "tilescope"
IMAGE_KEY = "incoming/kite.jpg"
PAUSE_SECONDS = 3
UNIT_SECONDS = 0.1
#: the batch: six 320×240 crops of the sample photo (one slice each), (top, left)
BATCH_CROPS = ((500, 0), (500, 330), (500, 660), (500, 990), (660, 200), (660, 800))

SLOW_MODEL = '''
import os
import time

from tilescope.models.nanodet import NanoDetModel


class SlowNanoDet(NanoDetModel):
    """NanoDet that leaves a file named by its PID, then pauses, on its first call."""

    paused = False

    def predict(self, images):
        if not SlowNanoDet.paused:
            SlowNanoDet.paused = True
            marks = os.environ["TILESCOPE_TEST_MARKS"]
            open(os.path.join(marks, str(os.getpid())), "w").close()
            time.sleep(float(os.environ["TILESCOPE_TEST_PAUSE_SECONDS"]))
        return super().predict(images)
'''


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    """SeaweedFS with the image uploaded; ``seaweed["server"]`` is the current process (a
    test that crashes and restarts it puts the new one there)."""
    from support.s3_faults import start

    server = start(tmp_path_factory.mktemp("seaweed"), BUCKET)
    holder = {"server": server}
    try:
        from tilescope.samples import sample_path

        server.client().put_object(Bucket=BUCKET, Key=IMAGE_KEY,
                                   Body=Path(sample_path("kite")).read_bytes())
        yield holder
    finally:
        holder["server"].stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, seaweed):
    tmp = tmp_path_factory.mktemp("faults")
    server = seaweed["server"]
    marks = tmp / "marks"
    marks.mkdir()
    env = {
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({
            "conn_type": "aws", "login": server.credentials.access_key,
            "password": server.credentials.secret_key,
            "extra": {"endpoint_url": server.endpoint, "region_name": "us-east-1"}}),
        "PYTHONPATH": str(model_plugin(tmp / "plugins", "slow_model", SLOW_MODEL,
                                              "slow-nanodet = slow_model:SlowNanoDet")),
        "TILESCOPE_TEST_MARKS": str(marks),
        "TILESCOPE_TEST_PAUSE_SECONDS": str(PAUSE_SECONDS),
        "TILESCOPE_REGION_RETRIES": "2",
        "TILESCOPE_RETRY_DELAY_SECONDS": "1",
        # batch runs: units of ~0.1 model-second, i.e. 2 slices (slow-nanodet: 0.04 s a
        # slice), so six one-slice images make three units (single-image runs: no units)
        "TILESCOPE_UNIT_SECONDS": str(UNIT_SECONDS),
    }
    with running_airflow(tmp, server.endpoint, dags=("tiled_inference",), extra_env=env,
                         components=("api-server", "scheduler", "dag-processor"),
                         pool_slots=2) as running:
        yield {"airflow": running.airflow, "api": running.api, "catalog": running.catalog,
               "marks": marks, "seaweed": seaweed}


def conf_for(score_threshold: float) -> dict[str, Any]:
    """Run parameters; each test its own threshold, so its own result keys and catalog row."""
    return {"image_uri": f"s3://{BUCKET}/{IMAGE_KEY}", "grid": "2x2", "model": "slow-nanodet",
            "score_threshold": score_threshold}


def clean_detections(client, conf: dict[str, Any], key: str = IMAGE_KEY
                     ) -> list[dict[str, Any]]:
    """The detections of a fault-free run: the same stages in this process, plain NanoDet."""
    data = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    params = InferenceParams.from_dict(conf)
    reader = reader_for_bytes(data)
    info = ImageInfo(f"s3://{BUCKET}/{key}", reader.width, reader.height, "0" * 64, "JPEG",
                     len(data))
    with NanoDetModel(score_threshold=params.score_threshold) as model:
        return run_image(reader, info, params, model).to_dict()["detections"]


def task_rows(stack, run_id: str) -> list[dict[str, Any]]:
    with sqlite3.connect(stack["airflow"].db_path) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT id, task_id, map_index, state, try_number, pid FROM "
                            "task_instance WHERE run_id=?", (run_id,)).fetchall()
    return [dict(r) for r in rows]


def state_of(stack, run_id: str, task_id: str) -> str | None:
    return next((r["state"] for r in task_rows(stack, run_id) if r["task_id"] == task_id), None)


def tries(stack, run_id: str) -> dict[tuple[str, int], int]:
    return {(r["task_id"], r["map_index"]): r["try_number"] for r in task_rows(stack, run_id)}


def region_successes(stack, run_id: str) -> dict[int, int]:
    """Map index → how many tries of that region ended in success (current + history)."""
    with sqlite3.connect(stack["airflow"].db_path) as conn:
        rows = conn.execute(
            "SELECT map_index, state FROM task_instance WHERE run_id=? AND task_id='analyze' "
            "UNION ALL SELECT map_index, state FROM task_instance_history WHERE run_id=? "
            "AND task_id='analyze'", (run_id, run_id)).fetchall()
    counts: dict[int, int] = {}
    for index, state in rows:
        counts[index] = counts.get(index, 0) + (state == "success")
    return counts


def paused_regions(stack, run_id: str) -> list[dict[str, Any]]:
    """Running region tasks whose process is inside the model's pause (its mark exists)."""
    return [r for r in task_rows(stack, run_id)
            if r["task_id"] == "analyze" and r["state"] == "running" and r["pid"]
            and (stack["marks"] / str(r["pid"])).exists()]


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    return procs.wait_for(check, timeout, what, interval=0.2)


def start_run(stack, conf: dict[str, Any]) -> tuple[str, float]:
    for mark in stack["marks"].iterdir():  # PIDs get reused between tests
        mark.unlink()
    return trigger(stack["api"], "tiled_inference", conf)["dag_run_id"], time.monotonic()


def stored(stack, client, conf: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The run's result.json, after checking it is the only one and has one catalog row."""
    params = InferenceParams.from_dict(conf)
    rows = [r for r in find_results(connect(f"sqlite:///{stack['catalog']}"))
            if r["params_hash"] == params.digest()]
    assert len(rows) == 1 and rows[0]["run_id"] == run_id
    key = rows[0]["result_keys"]["result"].split(f"s3://{BUCKET}/", 1)[1]
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix="results/")
    assert sum(o["Key"].endswith(f"/{params.digest()}/result.json")
               for o in listing["Contents"]) == 1
    return json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def s3_retries_logged(stack, run_id: str) -> dict[str, int]:
    """Task (``analyze[2]``, ``store``…) → failed S3 attempts its logs report."""
    root = stack["airflow"].home / "logs" / "dag_id=tiled_inference" / f"run_id={run_id}"
    counts: dict[str, int] = {}
    for log in root.rglob("attempt=*.log"):
        parts = {p.split("=", 1)[0]: p.split("=", 1)[1] for p in log.relative_to(root).parts
                 if "=" in p}
        name = parts["task_id"] + (f"[{parts['map_index']}]" if "map_index" in parts else "")
        for line in log.read_text().splitlines():
            if '"logger":"tilescope.storage"' in line and "attempt" in line:
                counts[name] = counts.get(name, 0) + 1
    return counts


def kill_paused_task(stack, run_id: str, map_index: int, what: str) -> float:
    """SIGKILL mapped analyze instance ``map_index`` once it is inside the model; when."""
    target = wait_until(lambda: [r for r in paused_regions(stack, run_id)
                                 if r["map_index"] == map_index], 180, what)[0]
    # The PID is the task runner of that very task instance (its command line names it).
    cmdline = Path(f"/proc/{target['pid']}/cmdline").read_text().replace("\0", " ")
    assert target["id"].replace("-", "") in cmdline.replace("-", "")
    os.kill(target["pid"], signal.SIGKILL)
    return time.monotonic()


def test_kill_9_of_a_region_task_retries_only_that_region(stack):
    client = stack["seaweed"]["server"].client()
    conf = conf_for(0.3)
    run_id, started = start_run(stack, conf)
    killed_at = kill_paused_task(stack, run_id, 1, "region 1 inside the model")

    assert wait_for_run(stack["api"], "tiled_inference", run_id, timeout=300) == "success"
    took = time.monotonic() - started
    assert tries(stack, run_id) == {
        ("preprocess", -1): 1, ("analyze", 0): 1, ("analyze", 1): 2, ("analyze", 2): 1,
        ("analyze", 3): 1, ("synthesize", -1): 1, ("store", -1): 1, ("finalize", -1): 1,
        ("evaluate", -1): 0}  # skipped unstarted: no ground truth
    assert region_successes(stack, run_id) == {0: 1, 1: 1, 2: 1, 3: 1}
    doc = stored(stack, client, conf, run_id)
    assert doc["status"] == "complete"
    assert doc["detections"] == clean_detections(client, conf)
    print(f"\nkill -9 at {killed_at - started:.1f} s: region 1 retried once (try 2), "
          f"run done in {took:.1f} s, {len(doc['detections'])} detections = clean run")


def upload_batch(client) -> list[str]:
    """The batch's six JPEG crops under ``batch/``; their keys."""
    import io

    import numpy as np
    from PIL import Image

    from tilescope.samples import sample_path

    photo = np.asarray(Image.open(sample_path("kite")).convert("RGB"))
    keys = []
    for number, (top, left) in enumerate(BATCH_CROPS):
        out = io.BytesIO()
        Image.fromarray(photo[top:top + 240, left:left + 320]).save(out, format="JPEG",
                                                                     quality=90)
        keys.append(f"batch/crop-{number}.jpg")
        client.put_object(Bucket=BUCKET, Key=keys[-1], Body=out.getvalue())
    return keys


def test_kill_9_of_a_batch_unit_retries_only_that_unit(stack):
    client = stack["seaweed"]["server"].client()
    keys = upload_batch(client)
    conf = {"images": [f"s3://{BUCKET}/{k}" for k in keys], "model": "slow-nanodet",
            "grid": "auto", "score_threshold": 0.29}
    run_id, started = start_run(stack, conf)
    killed_at = kill_paused_task(stack, run_id, 1, "unit 1 inside the model")

    assert wait_for_run(stack["api"], "tiled_inference", run_id, timeout=300) == "success"
    took = time.monotonic() - started
    task_tries = tries(stack, run_id)
    units = sorted(i for t, i in task_tries if t == "analyze")
    assert 2 <= len(units) < len(keys), units  # packed: a few images to a unit
    assert task_tries == {("preprocess", -1): 1, **{("analyze", i): 2 if i == 1 else 1
                                                    for i in units},
                          ("synthesize", -1): 1, ("store", -1): 1, ("finalize", -1): 1,
                          ("evaluate", -1): 0}  # skipped unstarted: a batch
    assert region_successes(stack, run_id) == {i: 1 for i in units}

    # every image: one result.json, one catalog row, the clean run's detections
    params = InferenceParams.from_dict(conf)
    rows = [r for r in find_results(connect(f"sqlite:///{stack['catalog']}"))
            if r["params_hash"] == params.digest()]
    assert sorted(r["image_uri"] for r in rows) == sorted(conf["images"])
    assert {r["run_id"] for r in rows} == {run_id}
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix="results/")
    results = sorted(o["Key"] for o in listing["Contents"]
                     if o["Key"].endswith(f"/{params.digest()}/result.json"))
    assert results == sorted(r["result_keys"]["result"].split(f"s3://{BUCKET}/", 1)[1]
                             for r in rows)
    found = 0
    for row in rows:
        key = row["result_keys"]["result"].split(f"s3://{BUCKET}/", 1)[1]
        doc = json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        assert doc["status"] == "complete" and doc["image"]["uri"] == row["image_uri"]
        image_key = row["image_uri"].split(f"s3://{BUCKET}/", 1)[1]
        assert doc["detections"] == clean_detections(client, conf, image_key), image_key
        found += len(doc["detections"])
    assert found > 0
    print(f"\nbatch of {len(keys)} images in {len(units)} units: kill -9 of unit 1 at "
          f"{killed_at - started:.1f} s, retried once (try 2), run done in {took:.1f} s, "
          f"{found} detections = clean run")


def test_s3_crash_and_restart_during_a_run_is_ridden_out(stack):
    from support.s3_faults import crash, restart

    seaweed = stack["seaweed"]
    conf = conf_for(0.31)
    run_id, started = start_run(stack, conf)
    outages = []
    # Down as the regions start reading their tiles, then as the result is written.
    for task_id, states, down in (("preprocess", {"success"}, 12.0),
                                  ("synthesize", {"running", "success"}, 8.0)):
        wait_until(lambda t=task_id, s=states: state_of(stack, run_id, t) in s, 240,
                   f"{task_id} {'/'.join(states)}")
        killed_at = crash(seaweed["server"])
        time.sleep(max(0.0, down - (time.monotonic() - killed_at)))
        seaweed["server"] = restart(seaweed["server"])
        outages.append((task_id, killed_at - started, time.monotonic() - killed_at))

    assert wait_for_run(stack["api"], "tiled_inference", run_id, timeout=300) == "success"
    took = time.monotonic() - started
    client = seaweed["server"].client()
    doc = stored(stack, client, conf, run_id)
    assert doc["status"] == "complete"
    assert doc["detections"] == clean_detections(client, conf)
    retried = s3_retries_logged(stack, run_id)
    assert any(k.startswith("analyze") for k in retried), retried  # the outage hit reads
    assert set(retried) & {"synthesize", "store"}, retried  # ... and the result's writes
    task_tries = tries(stack, run_id)
    print(f"\nS3 outages {[(t, round(at, 1), round(d, 1)) for t, at, d in outages]}: "
          f"failed S3 attempts retried {retried}, task tries {task_tries}, "
          f"run done in {took:.1f} s")
    # the README's claim: botocore rode the outage out inside the calls, no Airflow task retry
    # (evaluate, without ground truth, is skipped at expansion: it never starts, try 0)
    assert task_tries.pop(("evaluate", -1)) == 0, task_tries
    assert set(task_tries.values()) == {1}, task_tries


def test_scheduler_crash_and_restart_resumes_the_run(stack):
    airflow = stack["airflow"]
    client = stack["seaweed"]["server"].client()
    conf = conf_for(0.32)
    run_id, started = start_run(stack, conf)
    running = wait_until(lambda: len(paused_regions(stack, run_id)) == 2
                         and paused_regions(stack, run_id), 180, "two regions in the model")
    # The scheduler dies with everything it started: executor workers, running tasks.
    scheduler = airflow.records["scheduler"]
    for pid in procs.session_members(scheduler.pid):
        os.kill(pid, signal.SIGKILL)
    crashed_at = time.monotonic()
    wait_until(lambda: not procs.session_members(scheduler.pid), 10, "the crash")
    airflow.stop(components=["scheduler"], timeout=5)
    airflow.start(["scheduler"], check_ports=False)
    airflow.wait_ready(components=["scheduler"], timeout=120)
    crashed = {r["map_index"] for r in running}
    wait_until(lambda: {r["map_index"] for r in task_rows(stack, run_id)
                        if r["task_id"] == "analyze" and r["try_number"] == 2
                        and r["state"] == "running"} == crashed, 240, "crashed regions re-run")
    resumed_at = time.monotonic()

    assert wait_for_run(stack["api"], "tiled_inference", run_id, timeout=300) == "success"
    took = time.monotonic() - started
    task_tries = tries(stack, run_id)
    assert {i: task_tries[("analyze", i)] for i in range(4)} == {
        i: 2 if i in crashed else 1 for i in range(4)}
    assert task_tries[("preprocess", -1)] == task_tries[("store", -1)] == 1
    assert region_successes(stack, run_id) == {0: 1, 1: 1, 2: 1, 3: 1}  # none ran twice
    doc = stored(stack, client, conf, run_id)  # one result.json, one catalog row
    assert doc["status"] == "complete"
    assert doc["detections"] == clean_detections(client, conf)
    print(f"\nscheduler crashed at {crashed_at - started:.1f} s with regions "
          f"{sorted(crashed)} running, a new one started at once; the crashed regions ran "
          f"again {resumed_at - crashed_at:.1f} s after the crash; run done in {took:.1f} s")
