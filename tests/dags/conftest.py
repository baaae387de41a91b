"""Fixtures shared by the ``dag.test()`` modules: the parsed ``tiled_inference`` DAG and the
connections it runs with (``aws_default`` → the moto server, ``tilescope_catalog`` → a
SQLite file), set the same way the real stacks set them (``airflow_support.connection_env``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.airflow_support import connection_env

DAGS = Path(__file__).resolve().parents[2] / "dags"
BUCKET = "tilescope"


@pytest.fixture(scope="module")
def dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert not bag.import_errors
    return bag.dags["tiled_inference"]


@pytest.fixture
def airflow_env(s3_client, s3_server, tmp_path, monkeypatch):
    """Connections for the DAG, and its bucket on the moto server."""
    catalog = tmp_path / "catalog.sqlite"
    for name, value in connection_env(s3_server, catalog).items():
        monkeypatch.setenv(name, value)
    s3_client.create_bucket(Bucket=BUCKET)
    return {"client": s3_client, "catalog": f"sqlite:///{catalog}"}
