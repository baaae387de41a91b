"""Shared set-up for the benchmarks that run the real pipeline: SeaweedFS (the `make run`
S3 server) and Airflow (api-server, scheduler, dag-processor, triggerer; LocalExecutor) in a
temp dir on free ports. Airflow's metadata goes to a fresh database on the machine's
PostgreSQL when one runs (a burst of hundreds of runs locks a SQLite file), else SQLite."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUCKET = "tilescope"


@dataclass
class BenchStack:
    airflow: Any
    api: Any
    s3: Any
    catalog: Path
    metadata: str


@contextmanager
def bench_stack(tmp: Path, *, pool_slots: int, dags: tuple[str, ...],
                extra_env: Mapping[str, str] | None = None) -> Iterator[BenchStack]:
    from tilescope.stack.airflow_stack import AirflowStack
    from tilescope.stack.postgres import throwaway_database
    from tilescope.stack.procs import free_ports
    from tilescope.stack.provision import serving
    from tilescope.stack.seaweed import SeaweedPorts, start_seaweed

    seaweed = start_seaweed(tmp / "s3", SeaweedPorts.free())
    try:
        seaweed.wait_ready()
        seaweed.ensure_bucket(BUCKET)
        creds = seaweed.credentials
        catalog = tmp / "catalog.sqlite"
        with throwaway_database("airflow_bench") as metadata_url:
            env = {
                "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({
                    "conn_type": "aws", "login": creds.access_key,
                    "password": creds.secret_key,
                    "extra": {"endpoint_url": seaweed.endpoint, "region_name": "us-east-1"}}),
                "AIRFLOW_CONN_TILESCOPE_CATALOG": json.dumps({"conn_type": "sqlite",
                                                              "host": str(catalog)}),
                **(extra_env or {}),
            }
            if metadata_url:
                env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = metadata_url
            (port,) = free_ports(1)
            airflow = AirflowStack(home=tmp / "airflow", dags_folder=REPO / "dags", port=port,
                                   plugins_folder=REPO / "plugins", extra_env=env)
            with serving(airflow, dags=dags, pool_slots=pool_slots, timeout=300) as api:
                yield BenchStack(airflow, api, seaweed.client(), catalog,
                                 "postgresql" if metadata_url else "sqlite")
    finally:
        seaweed.stop()
