"""Reads from Airflow's metadata DB for the viewer (api-server only; imports Airflow lazily).

The api-server already holds a DB session per request, so the viewer asks the DB directly
instead of paging through the REST API (100 items per page): every region's state is
**one** query, new findings are one query filtered by XCom timestamp.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tilescope.viewer.shaping import TaskRow


@dataclass(frozen=True)
class RunInfo:
    """The DAG run's own row: its state and the conf it was triggered with."""

    dag_id: str
    run_id: str
    state: str | None
    conf: dict[str, Any]
    start_date: datetime | None
    end_date: datetime | None


def find_run(session: Any, dag_id: str, run_id: str) -> RunInfo | None:
    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    row = session.execute(
        select(DagRun.state, DagRun.conf, DagRun.start_date, DagRun.end_date)
        .where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)).first()
    if row is None:
        return None
    state = row.state.value if hasattr(row.state, "value") else row.state
    return RunInfo(dag_id, run_id, state, dict(row.conf or {}), row.start_date, row.end_date)


def task_rows(session: Any, dag_id: str, run_id: str) -> list[TaskRow]:
    """Every task instance of the run (all regions included), in one query."""
    from airflow.models.taskinstance import TaskInstance
    from sqlalchemy import select

    result = session.execute(
        select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.state,
               TaskInstance.try_number, TaskInstance.start_date, TaskInstance.end_date)
        .where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id))
    return [TaskRow(r.task_id, int(r.map_index), r.state, int(r.try_number or 0),
                    r.start_date, r.end_date) for r in result]


def xcom_value(session: Any, dag_id: str, run_id: str, task_id: str,
               key: str = "return_value", map_index: int = -1) -> Any:
    """One XCom's value, deserialised as Airflow does, or ``None``."""
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    row = session.execute(
        select(XComModel.value).where(
            XComModel.dag_id == dag_id, XComModel.run_id == run_id,
            XComModel.task_id == task_id, XComModel.key == key,
            XComModel.map_index == map_index)).first()
    return None if row is None else XComModel.deserialize_value(row)


def xcom_values_since(session: Any, dag_id: str, run_id: str, task_id: str,
                      since: datetime | None, key: str = "return_value"
                      ) -> list[tuple[int, datetime, Any]]:
    """``(map_index, timestamp, value)`` of a mapped task's XComs written at or after
    ``since`` (all when ``None``), oldest first — the page's incremental cursor."""
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    query = select(XComModel.map_index, XComModel.timestamp, XComModel.value).where(
        XComModel.dag_id == dag_id, XComModel.run_id == run_id,
        XComModel.task_id == task_id, XComModel.key == key)
    if since is not None:
        query = query.where(XComModel.timestamp >= since)
    rows = session.execute(query.order_by(XComModel.timestamp)).all()
    return [(int(r.map_index), r.timestamp, XComModel.deserialize_value(r)) for r in rows]
