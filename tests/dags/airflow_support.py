"""Start the real Airflow components for a test (LocalExecutor, on free ports, in a temp
dir), wired to the test's S3 server and a SQLite catalog; always stopped afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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


@contextmanager
def running_airflow(tmp: Path, s3_server: str, *, dags: Sequence[str],
                    extra_env: Mapping[str, str] | None = None,
                    components: Sequence[str] = ALL_COMPONENTS,
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
                           extra_env=env)
    with serving(airflow, dags=dags, pool_slots=pool_slots) as api:
        yield RunningAirflow(airflow, api, catalog)
