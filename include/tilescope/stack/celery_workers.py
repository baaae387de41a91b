"""Celery workers of an ``AirflowStack`` (CeleryExecutor): how each one is started, told
apart and known to be ready.

A component named ``celery-worker-NAME`` is ``airflow celery worker`` with Celery node name
``NAME``. Several workers on one machine share its FQDN, which is what Airflow records as
``task_instance.hostname``; :func:`worker_hostname`, set as ``[core] hostname_callable`` in
the workers' environment, records the worker's own name instead, so "which worker ran this
region?" is answered by the metadata DB and the UI. (In containers or pods every worker has
a hostname of its own and none of this is needed.)
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from tilescope.settings import WORKER_HOSTNAME
from tilescope.stack.errors import StackError

WORKER_PREFIX = "celery-worker-"
#: the variable :func:`worker_hostname` reads; set per worker process by ``worker_env``
HOSTNAME_ENV = WORKER_HOSTNAME.name
HOSTNAME_CALLABLE = "tilescope.stack.celery_workers.worker_hostname"


def worker_hostname() -> str:
    """``[core] hostname_callable``: this worker's name, or the FQDN outside a named worker."""
    return WORKER_HOSTNAME.get() or socket.getfqdn()


def is_worker(component: str) -> bool:
    return component.startswith(WORKER_PREFIX) and len(component) > len(WORKER_PREFIX)


def worker_name(component: str) -> str:
    """``celery-worker-w1`` → ``w1``."""
    if not is_worker(component):
        raise ValueError(f"not a Celery worker component: {component!r}")
    return component[len(WORKER_PREFIX):]


def worker_argv(airflow: Sequence[str], name: str) -> list[str]:
    """The worker's command line. ``--skip-serve-logs``: the api-server reads task logs from
    the shared log folder, and a second worker's log server would collide on port 8793."""
    return [*airflow, "celery", "worker", "--celery-hostname", name, "--skip-serve-logs"]


def worker_env(name: str) -> dict[str, str]:
    """What one worker's environment adds: its name, recorded as each task's hostname."""
    return {HOSTNAME_ENV: name, "AIRFLOW__CORE__HOSTNAME_CALLABLE": HOSTNAME_CALLABLE}


def broker_url(env: dict[str, str]) -> str:
    """The broker from the stack's environment; StackError if unset (Airflow's default,
    ``redis://redis:6379/0``, is a container name that does not resolve on a host)."""
    url = env.get("AIRFLOW__CELERY__BROKER_URL")
    if not url:
        raise StackError("Celery workers need AIRFLOW__CELERY__BROKER_URL "
                         "(e.g. redis://127.0.0.1:6379/1)")
    return url


def responding_workers(broker: str, timeout: float = 1.0) -> set[str]:
    """Names of the workers that answer a broadcast ping within ``timeout`` s: consuming
    from the broker, so a task queued now can be taken by any of them."""
    from celery import Celery

    app = Celery("tilescope-ping", broker=broker)
    try:
        replies = app.control.ping(timeout=timeout)
    finally:
        app.close()
    return {node.split("@", 1)[-1] for reply in replies for node in reply}
