"""Shared fixtures: real sample photos, a real S3 server (moto) on loopback."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Airflow reads its configuration when first imported: give the test session its own
# AIRFLOW_HOME (SQLite metadata DB) and point the DAGs and plugins folders at the repository's.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="tilescope-airflow-"))
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("TILESCOPE_RETRY_DELAY_SECONDS", "1")
os.environ.setdefault("TILESCOPE_REGION_RETRIES", "1")


@pytest.fixture(scope="session")
def sample():
    """``sample("kite")`` → path of a real photo (scikit-image wheel or Debian's darknet)."""
    from tilescope.samples import sample_path

    return sample_path


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (random port); yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_client(s3_server: str, monkeypatch: pytest.MonkeyPatch):
    """A boto3 client for the moto server, with the environment pointing at it too."""
    import boto3
    import requests
    from botocore.config import Config

    requests.post(f"{s3_server}/moto-api/reset", timeout=10)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    return boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                        config=Config(signature_version="s3v4",
                                      s3={"addressing_style": "path"}))


@pytest.fixture
def tmp_image(tmp_path: Path):
    """``tmp_image(array, "x.png", **save_options)`` → path of the array saved with Pillow."""
    import numpy as np
    from PIL import Image

    def save(array: np.ndarray, name: str = "image.png", mode: str | None = None,
             **options) -> Path:
        path = tmp_path / name
        Image.fromarray(array, mode=mode).save(path, **options) if mode else \
            Image.fromarray(array).save(path, **options)
        return path

    return save


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """A migrated Airflow metadata database for ``dag.test()`` (once per session)."""
    home = os.environ["AIRFLOW_HOME"]
    proc = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return home


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request, tmp_path) -> Iterator[str]:
    """A fresh SQL database: a SQLite file, and a database of its own on the machine's
    PostgreSQL (127.0.0.1:5432, created and dropped here; skipped where none runs)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.sqlite'}"
        return
    from tilescope.stack.postgres import ADMIN_URL, throwaway_database

    with throwaway_database("tilescope_test") as url:
        if url is None:
            pytest.skip(f"no PostgreSQL at {ADMIN_URL}")
        yield url


class StatsdServer:
    """A UDP socket on 127.0.0.1 read by a thread (a busy run sends more datagrams than a
    socket buffers): ``take()`` returns the StatsD lines received since the last call."""

    def __init__(self) -> None:
        import threading

        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.1)
        self.port = self.socket.getsockname()[1]
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.socket.recv(65535)
            except TimeoutError:
                continue
            with self._lock:
                self._lines.extend(line for line in data.decode().splitlines() if line)

    def take(self, settle: float = 0.3) -> list[str]:
        import time

        time.sleep(settle)  # let datagrams already sent arrive
        with self._lock:
            lines, self._lines = self._lines, []
        return lines

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.socket.close()


@pytest.fixture
def statsd_server() -> Iterator[StatsdServer]:
    """A StatsD server on 127.0.0.1, with Airflow's ``[metrics]`` (``statsd_on``,
    ``statsd_host``, ``statsd_port``, prefix ``airflow``) pointed at it.

    Airflow's stats client reads ``[metrics]`` once per process, when a component starts
    (``stats.initialize`` in the worker's task runner); this test process stands in for
    the worker (``dag.test()`` runs tasks in-process), so it initializes the client the same
    way after configuring it — and again afterwards, back to the session's settings.
    """
    from airflow.sdk.configuration import conf
    from airflow.sdk.observability import stats
    from airflow.sdk.observability.metrics import stats_utils

    def initialize() -> None:
        stats.initialize(factory=stats_utils.get_stats_factory(),
                         export_legacy_names=conf.getboolean("metrics", "legacy_names_on"))

    server = StatsdServer()
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("AIRFLOW__METRICS__STATSD_ON", "True")
            env.setenv("AIRFLOW__METRICS__STATSD_HOST", "127.0.0.1")
            env.setenv("AIRFLOW__METRICS__STATSD_PORT", str(server.port))
            env.setenv("AIRFLOW__METRICS__STATSD_PREFIX", "airflow")
            initialize()
            yield server
    finally:
        initialize()
        server.close()
