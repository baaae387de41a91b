"""Celery worker components and the throwaway broker database, without starting Airflow:
naming, command lines, per-worker hostname, and claims on the machine's real Redis."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tilescope.stack import broker, celery_workers
from tilescope.stack.airflow_stack import AirflowStack
from tilescope.stack.errors import StackError


def test_worker_components_are_named_celery_worker_name() -> None:
    assert celery_workers.is_worker("celery-worker-w1")
    assert not celery_workers.is_worker("celery-worker-")
    assert not celery_workers.is_worker("scheduler")
    assert celery_workers.worker_name("celery-worker-gpu-1") == "gpu-1"
    with pytest.raises(ValueError):
        celery_workers.worker_name("triggerer")


def test_stack_starts_each_worker_with_its_name_and_no_log_server(tmp_path: Path) -> None:
    stack = AirflowStack(tmp_path, tmp_path / "dags", 18080, executor="CeleryExecutor",
                         extra_env={"AIRFLOW__CELERY__BROKER_URL": "redis://127.0.0.1:1/3"})
    argv = stack.argv("celery-worker-w2")
    assert argv[-5:] == ["celery", "worker", "--celery-hostname", "w2", "--skip-serve-logs"]
    assert stack.env()["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert AirflowStack(tmp_path, tmp_path).env()["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    env = celery_workers.worker_env("w2")
    assert env[celery_workers.HOSTNAME_ENV] == "w2"
    assert env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == celery_workers.HOSTNAME_CALLABLE


def test_worker_hostname_is_the_workers_name_else_the_fqdn(monkeypatch) -> None:
    monkeypatch.setenv(celery_workers.HOSTNAME_ENV, "w1")
    assert celery_workers.worker_hostname() == "w1"
    monkeypatch.delenv(celery_workers.HOSTNAME_ENV)
    assert celery_workers.worker_hostname() == socket.getfqdn()


def test_workers_without_a_broker_url_are_refused() -> None:
    with pytest.raises(StackError, match="AIRFLOW__CELERY__BROKER_URL"):
        celery_workers.broker_url({})


def test_no_redis_gives_none(monkeypatch) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(broker, "SERVER_URL", f"redis://127.0.0.1:{port}")
    with broker.throwaway_redis_db() as url:
        assert url is None


@pytest.fixture
def redis_server() -> str:
    import redis

    try:
        redis.Redis.from_url(broker.SERVER_URL, socket_timeout=2).ping()
    except Exception:
        pytest.skip(f"needs Redis at {broker.SERVER_URL} (the Celery broker); none answered")
    return broker.SERVER_URL


def test_throwaway_databases_are_distinct_empty_and_flushed(redis_server: str) -> None:
    import redis

    with broker.throwaway_redis_db("a") as first, broker.throwaway_redis_db("b") as second:
        assert first and second and first != second
        assert not first.endswith("/0") and not second.endswith("/0")
        client = redis.Redis.from_url(first)
        assert client.dbsize() == 1  # only the claim
        client.set("queue-item", "x")
        # a database holding someone's data, without a claim, is not taken
        busy = redis.Redis.from_url(second)
        busy.delete(broker.CLAIM_KEY)
        busy.set("foreign", "y")
        with broker.throwaway_redis_db("c") as third:
            assert third not in (first, second)
        busy.delete("foreign")
    assert client.dbsize() == 0


def test_no_worker_answers_on_an_empty_broker(redis_server: str) -> None:
    with broker.throwaway_redis_db("ping") as url:
        assert celery_workers.responding_workers(url, timeout=0.5) == set()
