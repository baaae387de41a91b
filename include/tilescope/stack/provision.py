"""What the pipelines need inside Airflow: the pool, the connections, unpaused DAGs, a run.

Everything goes through the REST API (no ``airflow`` CLI start-up per call) and is read
back: a missing pool does not fail a task, it leaves it "scheduled" forever with one log line,
so the pool's existence is checked here, loudly, at set-up time.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from tilescope.stack.api import Api, ApiError
from tilescope.stack.errors import StackError
from tilescope.stack.procs import wait_for

POOL = "tilescope"


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def ensure_pool(api: Api, name: str = POOL, slots: int = 4,
                description: str = "tilescope region tasks (caps concurrent model runs)") -> dict:
    """Create or resize the pool, then read it back; StackError if it is not there as asked."""
    if slots < 1:
        raise StackError(f"pool {name!r}: slots must be ≥ 1, got {slots}")
    body = {"slots": slots, "description": description, "include_deferred": False}
    try:
        api.request("PATCH", f"/api/v2/pools/{_quote(name)}", {"pool": name, **body})
    except ApiError as exc:
        if exc.status != 404:
            raise StackError(f"pool {name!r} could not be updated: {exc}") from exc
        try:
            api.request("POST", "/api/v2/pools", {"name": name, **body})
        except ApiError as create_exc:
            raise StackError(f"pool {name!r} could not be created: {create_exc}") from create_exc
    return check_pool(api, name, slots)


def check_pool(api: Api, name: str = POOL, slots: int | None = None) -> dict:
    """Read the pool back; StackError (the set-up must stop) if it is absent or wrong."""
    try:
        pool = api.request("GET", f"/api/v2/pools/{_quote(name)}")
    except ApiError as exc:
        if exc.status == 404:
            raise StackError(f"Airflow pool {name!r} does not exist after creating it: tasks "
                             f"using it would stay 'scheduled' forever — aborting") from exc
        raise StackError(f"Airflow pool {name!r} could not be read back: {exc}") from exc
    if not isinstance(pool, dict) or pool.get("name") != name:
        raise StackError(f"Airflow pool {name!r} could not be read back (got {pool!r})")
    if slots is not None and pool.get("slots") != slots:
        raise StackError(f"Airflow pool {name!r} has {pool.get('slots')} slots, "
                         f"expected {slots}")
    return pool


def ensure_connection(api: Api, connection_id: str, conn_type: str,
                      **fields: Any) -> None:
    """Create or overwrite a connection (``extra`` may be a dict); read it back."""
    body: dict[str, Any] = {"connection_id": connection_id, "conn_type": conn_type}
    for key, value in fields.items():
        body[key] = json.dumps(value) if key == "extra" and not isinstance(value, str) else value
    path = f"/api/v2/connections/{_quote(connection_id)}"
    try:
        api.request("PATCH", path, body)
    except ApiError as exc:
        if exc.status != 404:
            raise StackError(f"connection {connection_id!r} could not be updated: {exc}") from exc
        api.request("POST", "/api/v2/connections", body)
    got = api.request("GET", path)
    if not isinstance(got, dict) or got.get("conn_type") != conn_type:
        raise StackError(f"connection {connection_id!r} could not be read back (got {got!r})")


def aws_connection_fields(endpoint: str, access_key: str, secret_key: str,
                          region: str = "us-east-1") -> dict[str, Any]:
    """Fields of ``aws_default`` pointing the amazon provider at the local S3 endpoint."""
    return {"login": access_key, "password": secret_key,
            "extra": {"endpoint_url": endpoint, "region_name": region}}


def sqlite_connection_fields(path: str) -> dict[str, Any]:
    """The database file as ``host``: what ``SqliteHook`` and ``catalog.url_from_connection`` read.

    (Airflow would parse the URI ``sqlite:////ABS/PATH`` into ``schema`` instead.)
    """
    return {"host": path}


def dag_exists(api: Api, dag_id: str) -> bool:
    try:
        api.request("GET", f"/api/v2/dags/{_quote(dag_id)}")
    except ApiError as exc:
        if exc.status == 404:
            return False
        raise
    return True


def import_errors(api: Api) -> list[str]:
    """``file: first line of the error`` for every DAG file that failed to import."""
    try:
        answer = api.request("GET", "/api/v2/importErrors") or {}
    except ApiError:
        return []
    out = []
    for item in answer.get("import_errors", []):
        lines = [ln for ln in str(item.get("stack_trace", "")).splitlines() if ln.strip()]
        out.append(f"{item.get('filename')}: {lines[-1] if lines else '?'}")
    return out


def wait_for_dag(api: Api, dag_id: str, timeout: float = 180.0) -> None:
    """Block until the DAG is parsed and serialized (the API knows it), else say why not."""
    try:
        wait_for(lambda: dag_exists(api, dag_id), timeout, f"DAG {dag_id!r}", interval=1.0)
    except StackError as exc:
        errors = import_errors(api)
        hint = f"; import errors: {' | '.join(errors)}" if errors else ""
        raise StackError(f"DAG {dag_id!r} did not appear within {timeout:.0f} s{hint}") from exc


def unpause(api: Api, dag_id: str) -> None:
    api.request("PATCH", f"/api/v2/dags/{_quote(dag_id)}", {"is_paused": False})


def trigger(api: Api, dag_id: str, conf: Mapping[str, Any]) -> dict:
    """``POST dagRuns`` with no logical date (manual runs of ``schedule=None`` DAGs)."""
    return dict(api.request("POST", f"/api/v2/dags/{_quote(dag_id)}/dagRuns",
                            {"logical_date": None, "conf": dict(conf)}))


def run_state(api: Api, dag_id: str, run_id: str) -> str:
    run = api.request("GET", f"/api/v2/dags/{_quote(dag_id)}/dagRuns/{_quote(run_id)}")
    return str(run["state"])


def wait_for_run(api: Api, dag_id: str, run_id: str, timeout: float = 300.0) -> str:
    """Block until the run finishes; returns its final state (``success``/``failed``)."""
    deadline = time.monotonic() + timeout
    while True:
        state = run_state(api, dag_id, run_id)
        if state in ("success", "failed"):
            return state
        if time.monotonic() > deadline:
            raise StackError(f"run {run_id} of {dag_id} still {state} after {timeout:.0f} s")
        time.sleep(1.0)


def paged(api: Api, path: str, key: str, page: int = 100) -> list[dict]:
    """Every item of a list endpoint. The REST API caps a page at ``[api]
    maximum_page_limit`` (100 by default), so a single request silently misses the rest."""
    items: list[dict] = []
    separator = "&" if "?" in path else "?"
    while True:
        answer = api.request("GET", f"{path}{separator}limit={page}&offset={len(items)}")
        batch = answer.get(key, [])
        items.extend(batch)
        if not batch or len(items) >= int(answer.get("total_entries", 0)):
            return items


def list_runs(api: Api, dag_id: str) -> list[dict]:
    """Every run of ``dag_id``."""
    return paged(api, f"/api/v2/dags/{_quote(dag_id)}/dagRuns?order_by=run_after", "dag_runs")


@contextmanager
def serving(airflow: Any, *, dags: Sequence[str], pool_slots: int,
            timeout: float = 240.0) -> Iterator[Api]:
    """Start an ``AirflowStack``, wait until it runs tasks, check the ``tilescope`` pool and
    unpause ``dags`` once parsed; yields the REST client. Every process started is stopped
    on the way out, whichever step failed (tests and benchmarks share this)."""
    try:
        airflow.migrate()
        airflow.start()
        airflow.wait_ready(timeout=timeout)
        api = airflow.api()
        ensure_pool(api, POOL, pool_slots)
        for dag_id in dags:
            wait_for_dag(api, dag_id, timeout=timeout)
            unpause(api, dag_id)
        yield api
    finally:
        airflow.stop()
