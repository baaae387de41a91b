"""The few Airflow-specific pieces the DAG files share (imported only inside tasks).

Connections become plain clients/URLs here, and tilescope's error classes become Airflow
outcomes: bad input fails the task at once (no retry can fix it), transient errors retry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, NoReturn, overload

from tilescope.errors import TilescopeError
from tilescope.settings import CATALOG_CONN_ID

if TYPE_CHECKING:  # DAG files import this module: SQLAlchemy loads in the tasks that use it
    import sqlalchemy as sa


def results_asset(bucket: str) -> Any:
    """The asset ``store`` updates (one event per stored result, its extra: image id, counts,
    result key) and consumers schedule on; defined once so producer and consumers agree."""
    from airflow.sdk import Asset

    return Asset(f"s3://{bucket}/results/", extra={"producer": "tiled_inference"})


def catalog_url(conn_id: str | None = None) -> str | None:
    """The SQL catalog's SQLAlchemy URL from an Airflow connection (default
    ``TILESCOPE_CATALOG_CONN_ID``), or ``None`` if undefined."""
    from airflow.sdk import BaseHook

    from tilescope.outputs.catalog import url_from_connection

    conn_id = conn_id or CATALOG_CONN_ID.get()
    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception:  # undefined connection: the catalog is optional, and the log says so
        print(f"no '{conn_id}' connection defined: the SQL catalog is skipped")
        return None
    return url_from_connection(conn.conn_type or "", host=conn.host, login=conn.login,
                               password=conn.password, port=conn.port, schema=conn.schema)


@overload
def catalog_engine(conn_id: str | None = ..., *, required: Literal[True]) -> sa.Engine: ...
@overload
def catalog_engine(conn_id: str | None = ..., *, required: bool = ...) -> sa.Engine | None: ...
def catalog_engine(conn_id: str | None = None, *,
                   required: bool = False) -> sa.Engine | None:
    """A SQLAlchemy engine on the catalog (tables created), or ``None`` when not configured.

    ``required``: claims cannot be exactly-once without it, so the arrivals path refuses to
    run rather than silently processing twice.
    """
    from tilescope.outputs.catalog import connect

    conn_id = conn_id or CATALOG_CONN_ID.get()
    url = catalog_url(conn_id)
    if url is None:
        if required:
            fail(f"the '{conn_id}' connection (SQL catalog) is required for claims")
        return None
    return connect(url)


def run_limits() -> Any:
    """The run budgets: ``TILESCOPE_MAX_PIXELS``/``TILESCOPE_MAX_SLICES`` from the
    environment, and Airflow's own ``[core] max_map_length`` as the region cap."""
    from airflow.sdk.configuration import conf

    from tilescope.limits import RunLimits
    from tilescope.slicing import MAX_MAP_LENGTH

    return RunLimits.from_environment(
        max_regions=conf.getint("core", "max_map_length", fallback=MAX_MAP_LENGTH))


def fail(message: str) -> NoReturn:
    """Fail the task now, without retries."""
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException(message)


@contextmanager
def task_outcome(on_bad_input: Callable[[TilescopeError], None] | None = None
                 ) -> Iterator[None]:
    """Turn non-retryable tilescope errors into an immediate task failure (no retries).

    ``on_bad_input`` runs first for such errors (e.g. to quarantine the original).
    """
    try:
        yield
    except TilescopeError as exc:
        if exc.retryable:
            raise
        if on_bad_input is not None:
            on_bad_input(exc)
        fail(f"{type(exc).__name__}: {exc}")


def start_claimed_pipelines(requests: Any, trigger_dag_id: str = "tiled_inference") -> Any:
    """Inside a DAG: one ``tiled_inference`` run per batch of claims, then mark the claims
    triggered.

    Shared by ``s3_arrivals`` and ``s3_events``. ``requests`` are
    :func:`tilescope.intake.flow.batch_requests` (``conf={"manifest": uri}``, a few hundred bytes
    per batch). Run ids come from the claims and are stored in their rows, so a start whose
    run already exists (a re-offered batch) is *skipped* — and still counts as started:
    ``mark_triggered`` runs unless a start failed, and marks every claim stored under the
    started run ids. Returns the ``mark_triggered`` task.
    """
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
    from airflow.sdk import TriggerRule, task

    @task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def mark_triggered(requests: list[dict[str, Any]]) -> int:
        """The runs exist now: their claims leave the 'unfinished' list."""
        from tilescope.intake.claims import Claim
        from tilescope.intake.flow import mark_batches_triggered
        from tilescope.intake.flow import mark_triggered as mark_step

        engine = catalog_engine(required=True)
        singles = [Claim.from_dict(r["conf"]["claim"]) for r in requests
                   if r["conf"].get("claim")]  # single-image requests (older releases)
        batches = [r["trigger_run_id"] for r in requests if not r["conf"].get("claim")]
        return mark_batches_triggered(engine, batches) + mark_step(engine, singles)

    started = TriggerDagRunOperator.partial(
        task_id="start_pipelines",
        trigger_dag_id=trigger_dag_id,
        skip_when_already_exists=True,  # same claims → same run id → never a second run
        wait_for_completion=False,
    ).expand_kwargs(requests)
    marked = mark_triggered(requests)
    started >> marked
    return marked
