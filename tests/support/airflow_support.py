"""Start the real Airflow components for a test (LocalExecutor unless asked otherwise, on
free ports, in a temp dir), wired to the test's S3 server and a SQLite catalog; always
stopped afterwards. Also: task instance intervals from the metadata DB (their overlap:
``intervals.max_overlap``), and the embedded model's detections of an
image to compare a backend's run with."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
ALL_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


@dataclass
class RunningAirflow:
    airflow: Any  # tilescope.stack.airflow_stack.AirflowStack
    api: Any
    catalog: Path


def connection_env(s3_server: str, catalog: Path) -> dict[str, str]:
    """``aws_default`` → the test's S3 server; ``tilescope_catalog`` → a SQLite file."""
    return {
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({
            "conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"endpoint_url": s3_server, "region_name": "us-east-1"}}),
        "AIRFLOW_CONN_TILESCOPE_CATALOG": json.dumps({"conn_type": "sqlite",
                                                      "host": str(catalog)}),
    }


def model_plugin(root: Path, module: str, source: str, entry_point: str) -> Path:
    """A folder to put on the workers' ``PYTHONPATH``: module ``module`` written from
    ``source`` and a distribution declaring ``entry_point`` (``"name = module:Class"``) in the
    ``tilescope.models`` group — how a user plugs a model into separate worker processes."""
    root.mkdir()
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    dist = module.replace("_", "-")
    info = root / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[tilescope.models]\n{entry_point}\n")
    return root


@contextmanager
def running_airflow(tmp: Path, s3_server: str, *, dags: Sequence[str],
                    extra_env: Mapping[str, str] | None = None,
                    components: Sequence[str] = ALL_COMPONENTS,
                    executor: str = "LocalExecutor",
                    pool_slots: int = 2) -> Iterator[RunningAirflow]:
    """Airflow up and ready, pool ``tilescope`` checked, ``dags`` parsed and unpaused."""
    from tilescope.stack.airflow_stack import AirflowStack
    from tilescope.stack.procs import free_ports
    from tilescope.stack.provision import serving

    catalog = tmp / "catalog.sqlite"
    env = {**connection_env(s3_server, catalog), **(extra_env or {})}
    (port,) = free_ports(1)
    airflow = AirflowStack(home=tmp / "airflow", dags_folder=REPO / "dags", port=port,
                           plugins_folder=REPO / "plugins", components=tuple(components),
                           executor=executor, extra_env=env)
    with serving(airflow, dags=dags, pool_slots=pool_slots) as api:
        yield RunningAirflow(airflow, api, catalog)


@dataclass(frozen=True)
class TaskInterval:
    map_index: int
    hostname: str
    start: datetime
    end: datetime


def task_intervals(db_url: str, run_id: str, task_id: str = "analyze",
                   dag_id: str = "tiled_inference") -> list[TaskInterval]:
    """When and where each (mapped) instance of a task ran, from the metadata DB
    (any SQLAlchemy URL: ``sqlite:///…/airflow.db`` or PostgreSQL)."""
    import sqlalchemy as sa

    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT map_index, hostname, start_date, end_date FROM task_instance "
                "WHERE dag_id = :dag AND task_id = :task AND run_id = :run"),
                {"dag": dag_id, "task": task_id, "run": run_id}).fetchall()
    finally:
        engine.dispose()

    def moment(value: datetime | str) -> datetime:  # SQLite returns ISO text
        return value if isinstance(value, datetime) else datetime.fromisoformat(value)

    return [TaskInterval(i, host or "", moment(s), moment(e)) for i, host, s, e in rows]


def embedded_detections(data: bytes, uri: str, model: Any, params: Any) -> list[dict]:
    """The detection records of image ``data`` run through ``model`` in this process (the
    CLI's path), to compare a DAG run through a remote backend with."""
    import hashlib

    from tilescope.pipeline import run_image
    from tilescope.readers import reader_for_bytes
    from tilescope.results import ImageInfo

    reader = reader_for_bytes(data)
    info = ImageInfo(uri, reader.width, reader.height, hashlib.sha256(data).hexdigest(),
                     reader.header.format, len(data))
    return run_image(reader, info, params, model).to_dict()["detections"]


def detection_keys(records: Iterable[dict]) -> list[tuple]:
    """Detection records as sorted (class, box, score) tuples: equal lists, equal results."""
    return sorted((r["category_name"], r["bbox"], r["score"]) for r in records)
