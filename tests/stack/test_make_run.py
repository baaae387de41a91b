"""``make run``'s success path, through the command the Makefile runs: start → the sample's
result stored and its run successful; ``make run`` again reuses the running stack (same
processes, another run); ``make stop`` then ``make run`` on the same state directory finds
the earlier objects, runs and keys.

The command lines come from the Makefile's ``run`` and ``stop`` recipes (``$(BIN)/python``
becomes this interpreter), so the test follows what users run. The stack lives in a temp
state directory on free ports — every SeaweedFS port moved with ``TILESCOPE_SEAWEED_PORTS``
— so it runs beside a demo stack on the defaults. Whatever fails, it is stopped by its
recorded PIDs at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tilescope
from tilescope.stack import procs, provision
from tilescope.stack.seaweed import SeaweedPorts, find_weed, s3_client
from tilescope.stack.settings import DAG_ID, SEAWEED, Settings
from tilescope.stack.state import Registry, load_or_create_credentials

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BUCKET = "tilescope"
SERVICES = {SEAWEED, "airflow-api-server", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer"}
# What a finished tiled_inference run stores under results/<image_id>/.
RESULT_FILES = {"result.json", "coco.json", "overlay.webp", "thumbnail.webp"}


def make_recipe(target: str) -> list[str]:
    """The argv of a one-line Makefile recipe, ``$(BIN)/python`` replaced by this Python."""
    lines = (REPO / "Makefile").read_text().splitlines()
    start = lines.index(next(ln for ln in lines if ln.startswith(f"{target}:")))
    recipe = [ln.strip() for ln in lines[start + 1:] if ln.startswith("\t")][:1]
    assert recipe and recipe[0].startswith("$(BIN)/python "), \
        f"make {target} no longer runs `$(BIN)/python ...`: {recipe}"
    return [sys.executable, *recipe[0].split()[1:]]


def service_pids(state: Path) -> dict[str, tuple[int, int]]:
    """Service name → (pid, start ticks) of the live processes the state dir records."""
    return {name: (rec.pid, rec.start_ticks)
            for name, rec in Registry(state).running().items()}


def results_under(client, image_id: str) -> dict[str, dict]:
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=f"results/{image_id}/")
    return {o["Key"].rsplit("/", 1)[1]: o for page in pages for o in page.get("Contents", [])}


def test_make_run_stores_the_sample_reuses_the_stack_and_restarts_on_its_data(
        tmp_path: Path, sample) -> None:
    try:
        find_weed()
    except Exception as exc:
        pytest.skip(f"SeaweedFS binary unavailable: {exc}")
    run, stop = make_recipe("run"), make_recipe("stop")
    assert run[1:] == ["-m", "tilescope.stack", "up"] and stop[1:] == \
        ["-m", "tilescope.stack", "down"]

    state = tmp_path / "state"
    api_port, *free = procs.free_ports(12)
    ports = SeaweedPorts(*free[:10])  # every port weed opens, gRPC included
    extra = ",".join(f"{name}={getattr(ports, name)}" for name in
                     ("master", "volume", "filer", "admin", "s3_grpc", "master_grpc",
                      "volume_grpc", "filer_grpc", "admin_grpc"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TILESCOPE_"))}
    env.update({
        "TILESCOPE_STATE_DIR": str(state), "TILESCOPE_API_PORT": str(api_port),
        "TILESCOPE_S3_PORT": str(ports.s3), "TILESCOPE_SEAWEED_PORTS": extra,
        # The tilescope this session tests (an editable install may point at another).
        "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(tilescope.__file__).parents[1]),
                                                    os.environ.get("PYTHONPATH")])),
    })

    def make(argv: list[str], timeout: float = 240) -> str:
        done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=timeout, check=False)
        assert done.returncode == 0, f"{argv[1:]} exited {done.returncode}:\n" \
                                     f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    def run_id_of(out: str) -> str:
        match = re.search(rf"/dags/{DAG_ID}/runs/(\S+)", out)
        assert match, out
        return match.group(1)

    data = Path(sample("kite")).read_bytes()
    image_id = hashlib.sha256(data).hexdigest()[:16]
    timings: dict[str, float] = {}
    try:
        # 1. First start: every service started, the sample processed and stored.
        t0 = time.monotonic()
        out = make(run)
        timings["start"] = time.monotonic() - t0
        assert "airflow db migrate" in out and "created bucket s3://tilescope" in out
        assert f"Results       s3://{BUCKET}/results/{image_id}/" in out
        first = service_pids(state)
        assert set(first) == SERVICES, first
        settings = Settings.load(str(state))
        settings.use_stored_ports()
        assert (settings.api_port, settings.s3_port) == (api_port, ports.s3)
        api = settings.airflow().api()
        run1 = run_id_of(out)
        assert provision.wait_for_run(api, DAG_ID, run1, timeout=180) == "success"
        timings["first run"] = time.monotonic() - t0 - timings["start"]
        creds = load_or_create_credentials(state)
        client = s3_client(f"http://127.0.0.1:{ports.s3}", creds)
        stored = results_under(client, image_id)
        assert set(stored) >= RESULT_FILES, sorted(stored)
        result = json.loads(client.get_object(Bucket=BUCKET, Key=stored["result.json"]["Key"])[
            "Body"].read())
        assert result["image"]["uri"] == f"s3://{BUCKET}/samples/kite.jpg"
        assert result["image"]["image_id"] == image_id
        assert len(result["detections"]) > 0
        with sqlite3.connect(state / "catalog.sqlite") as db:
            assert db.execute("SELECT run_id FROM tilescope_results WHERE image_id = ?",
                              (image_id,)).fetchall() == [(run1,)]

        # 2. `make run` again: the very same processes, one more run.
        t1 = time.monotonic()
        out = make(run)
        timings["reuse"] = time.monotonic() - t1
        assert "already running" in out and "reusing it" in out
        assert "started airflow" not in out and "airflow db migrate" not in out
        assert service_pids(state) == first
        run2 = run_id_of(out)
        assert run2 != run1
        assert provision.wait_for_run(api, DAG_ID, run2, timeout=180) == "success"
        stored = results_under(client, image_id)
        client.put_object(Bucket=BUCKET, Key="kept/marker", Body=run2.encode())

        # 3. `make stop`: every recorded process (whole sessions) ends; the data stays.
        make(stop, timeout=120)
        assert Registry(state).records() == {}
        assert all(procs.session_members(pid) == [] for pid, _ in first.values())
        assert procs.port_is_free(api_port) and procs.port_is_free(ports.s3)

        # 4. `make run` on the same state dir: new processes, the same keys, objects and runs.
        t2 = time.monotonic()
        out = make(run)
        timings["restart"] = time.monotonic() - t2
        assert "airflow db migrate" not in out and "created bucket" not in out
        again = service_pids(state)
        assert set(again) == SERVICES and not set(again.values()) & set(first.values())
        assert load_or_create_credentials(state) == creds
        api = settings.airflow().api()
        before = {r["dag_run_id"]: r["state"] for r in provision.list_runs(api, DAG_ID)}
        assert {run1: "success", run2: "success"}.items() <= before.items()
        # run2's outputs, as they were (run3 has only just been triggered: it stores later)
        kept = results_under(client, image_id)
        assert {k: o["ETag"] for k, o in kept.items()} == \
            {k: o["ETag"] for k, o in stored.items()}
        assert client.get_object(Bucket=BUCKET, Key="kept/marker")["Body"].read() == \
            run2.encode()
        run3 = run_id_of(out)
        assert run3 not in (run1, run2)
        assert provision.wait_for_run(api, DAG_ID, run3, timeout=180) == "success"
        with sqlite3.connect(state / "catalog.sqlite") as db:
            runs = {r for (r,) in db.execute(
                "SELECT run_id FROM tilescope_results WHERE image_id = ?", (image_id,))}
        # the same bytes, model and parameters: run2 and run3 reuse run1's stored result
        # (result reuse, on by default), so the catalog's computed row stays run1's and the
        # stored objects are the very ones run1 wrote
        assert runs == {run1}
        assert {k: o["ETag"] for k, o in results_under(client, image_id).items()} == \
            {k: o["ETag"] for k, o in stored.items()}
    finally:
        recorded = Registry(state).records()
        subprocess.run(stop, env=env, cwd=tmp_path, capture_output=True, timeout=120,
                       check=False)
        procs.stop(list(recorded.values()), timeout=10)  # in case `down` itself failed
    assert all(procs.session_members(rec.pid) == [] for rec in recorded.values())
    print(f"\nmake run: {', '.join(f'{k} {v:.1f} s' for k, v in timings.items())}")
