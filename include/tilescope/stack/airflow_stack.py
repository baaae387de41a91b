"""Airflow 3 as separate processes (api-server, scheduler, dag-processor, triggerer).

Separate processes rather than ``airflow standalone`` because each one then has its own
PID record, log file and health entry, the ports are ours to choose (standalone also starts
a log server bound to all interfaces), and a test can start the real scheduler path in a
temp directory. Scheduler and triggerer run with ``--skip-serve-logs``: with everything on
one machine the api-server reads task logs from the shared log folder, so no log-server port
is opened at all.

Configuration is passed as ``AIRFLOW__*`` environment variables (the generated airflow.cfg
is left alone), with the JWT and session secrets generated once into ``<home>`` so that all
components — which must agree on them — share them across restarts.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from tilescope.stack import celery_workers, procs
from tilescope.stack.api import AirflowApi, fetch_token, read_admin_password
from tilescope.stack.errors import StackError
from tilescope.stack.state import write_private

COMPONENTS: tuple[str, ...] = ("api-server", "scheduler", "dag-processor", "triggerer")
# With executor="CeleryExecutor", add workers as components named "celery-worker-NAME"
# (see tilescope.stack.celery_workers); broker and result backend come from extra_env.
# Names used by GET /api/v2/monitor/health for each component we start.
_HEALTH_KEYS = {"scheduler": "scheduler", "dag-processor": "dag_processor",
                "triggerer": "triggerer"}


def airflow_command() -> list[str]:
    """The ``airflow`` CLI of the running interpreter's environment."""
    beside = Path(sys.executable).parent / "airflow"
    if beside.is_file():
        return [str(beside)]
    return [sys.executable, "-m", "airflow"]


@dataclass
class AirflowStack:
    """One Airflow installation: a home directory (SQLite DB, logs, secrets) and its processes.

    ``AirflowStack(home, dags_folder, port=8080)``; ``migrate()`` then ``start()`` then
    ``wait_ready()``; ``api()`` gives an authenticated REST client; ``stop()`` ends every
    process it started (SIGTERM, then SIGKILL after a timeout).
    """

    home: Path
    dags_folder: Path
    port: int = 8080
    plugins_folder: Path | None = None
    components: tuple[str, ...] = COMPONENTS
    executor: str = "LocalExecutor"
    extra_env: Mapping[str, str] = field(default_factory=dict)
    logs: Path | None = None
    records: dict[str, procs.ProcessRecord] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.home / "airflow.db"

    @property
    def log_dir(self) -> Path:
        """Component stdout/stderr (task logs stay in ``<home>/logs``)."""
        return self.logs or self.home / "stack-logs"

    def _secrets(self) -> dict[str, str]:
        path = self.home / "stack-secrets.json"
        if path.exists():
            return dict(json.loads(path.read_text()))
        values = {"jwt_secret": secrets.token_urlsafe(48), "secret_key": secrets.token_urlsafe(32)}
        write_private(path, json.dumps(values) + "\n")
        return values

    def env(self) -> dict[str, str]:
        """The environment every component and CLI call gets.

        Inherited ``AIRFLOW*`` variables are dropped first: a test session or a shell with
        its own Airflow settings must not leak into this installation.
        """
        keys = self._secrets()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": self.executor,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.db_path}",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            # The task execution API URL derives from base_url: a non-default port needs it.
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API__SECRET_KEY": keys["secret_key"],
            "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"],
            # Release the executor slot 1 s after a task ends instead of 5 s (+30% throughput).
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            # Notice new DAG files within 30 s instead of 5 min.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            # After a scheduler crash, its running tasks (LocalExecutor: killed with it) keep
            # their pool slots until the next scheduler resets them as orphans: checked every
            # 5 min by default, which stalled a run for 5 min (measured); now ~30-60 s.
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "30",
        })
        if self.plugins_folder is not None:
            env["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(self.plugins_folder)
        # Tasks that run this environment's tools (airflow, tilescope, weed) find them even
        # when the venv is not activated.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent),
                                       env.get("PATH", "/usr/bin:/bin")])
        env.update(self.extra_env)
        return env

    def run_cli(self, args: Sequence[str], timeout: float = 300.0) -> str:
        """Run one ``airflow`` CLI command in this installation; StackError on failure."""
        self.home.mkdir(parents=True, exist_ok=True)
        argv = [*airflow_command(), *args]
        try:
            done = subprocess.run(argv, env=self.env(), cwd=self.home, capture_output=True,
                                  text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise StackError(f"airflow {' '.join(args)} timed out after {timeout:.0f} s") from exc
        log = self.log_dir / f"cli-{args[0]}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            lines = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
            last = lines[-1] if lines else f"exit code {done.returncode}"
            raise StackError(f"airflow {' '.join(args)} failed: {last} (full output: {log})")
        return done.stdout

    def migrate(self, force: bool = False) -> bool:
        """``airflow db migrate`` unless this Airflow version already migrated this DB.

        The stamp saves a full Airflow start-up (~5-10 s on 2 cores) on every restart;
        a different installed version runs the migration again. True if it ran.
        """
        if not force and not self.needs_migration():
            return False
        self.run_cli(["db", "migrate"])
        self._stamp.write_text(metadata.version("apache-airflow") + "\n")
        return True

    @property
    def _stamp(self) -> Path:
        return self.home / ".migrated-version"

    def needs_migration(self) -> bool:
        """True unless the installed Airflow version already migrated this DB."""
        if not self.db_path.exists() or not self._stamp.exists():
            return True
        return self._stamp.read_text().strip() != metadata.version("apache-airflow")

    def argv(self, component: str) -> list[str]:
        base = airflow_command()
        if component == "api-server":
            return [*base, "api-server", "--host", "127.0.0.1", "--port", str(self.port)]
        if component in ("scheduler", "triggerer"):
            return [*base, component, "--skip-serve-logs"]
        if component == "dag-processor":
            return [*base, "dag-processor"]
        if celery_workers.is_worker(component):
            return celery_workers.worker_argv(base, celery_workers.worker_name(component))
        raise ValueError(f"unknown Airflow component {component!r}")

    def start(self, components: Sequence[str] | None = None,
              check_ports: bool = True) -> dict[str, procs.ProcessRecord]:
        """Start the components (all of ``self.components`` by default), detached.

        Returns at once with the new PID records; call ``wait_ready()``.
        """
        wanted = list(components or self.components)
        if check_ports and "api-server" in wanted:
            procs.require_free_ports({"airflow api-server": self.port})
        env = self.env()
        started = {}
        for name in wanted:
            own_env = env
            if celery_workers.is_worker(name):
                own_env = {**env, **celery_workers.worker_env(celery_workers.worker_name(name))}
            record = procs.spawn(f"airflow-{name}", self.argv(name), own_env,
                                 self.log_dir / f"{name}.log", cwd=self.home)
            self.records[name] = record
            started[name] = record
        return started

    def alive(self) -> bool:
        """True while every started component's leader process runs."""
        return all(procs.is_alive(rec) for rec in self.records.values())

    def health(self) -> dict[str, str | None]:
        """Component → status from ``GET /api/v2/monitor/health`` (no auth needed)."""
        answer = AirflowApi(self.base_url, timeout=5).request("GET", "/api/v2/monitor/health")
        out: dict[str, str | None] = {}
        for key, value in (answer or {}).items():
            out[key] = value.get("status") if isinstance(value, dict) else None
        return out

    def wait_ready(self, timeout: float = 180.0, components: Sequence[str] | None = None) -> None:
        """Block until the API reports each started component healthy and tasks can start.

        The task execution API (``/execution``) builds itself on its first request, which
        takes ~13 s on 2 busy cores; a task starting meanwhile times out (5 s) and retries.
        So readiness includes one request to it, sent in the background as soon as the
        api-server answers (overlapping the other components' start-up).
        """
        wanted = list(components or self.records or self.components)
        deadline = time.monotonic() + timeout
        # Workers are not in the health endpoint; ready = answering a ping over the broker.
        workers = {celery_workers.worker_name(c) for c in wanted if celery_workers.is_worker(c)}
        broker = celery_workers.broker_url(self.env()) if workers else ""
        warmup: list[threading.Thread] = []
        warm = threading.Event()

        def warm_execution_api() -> None:
            with contextlib.suppress(Exception):
                remaining = max(deadline - time.monotonic(), 1.0)
                AirflowApi(self.base_url, timeout=remaining).request("GET", "/execution/health")
                warm.set()

        def ready() -> bool:
            status = self.health()
            if "api-server" in wanted and not warmup:
                warmup.append(threading.Thread(target=warm_execution_api, daemon=True))
                warmup[0].start()
            if status.get("metadatabase") != "healthy":
                return False
            return all(status.get(_HEALTH_KEYS[c]) == "healthy" for c in wanted
                       if c in _HEALTH_KEYS)

        def running() -> bool:
            return all(procs.is_alive(self.records[c]) for c in wanted if c in self.records)

        def execution_api() -> bool:
            if warmup and warmup[0].is_alive():
                warmup[0].join(timeout=1.0)
                return warm.is_set()
            if not warm.is_set():
                warm_execution_api()
            return warm.is_set()

        try:
            procs.wait_for(ready, timeout, f"Airflow on {self.base_url}", interval=0.5,
                           alive=running)
            if workers:
                procs.wait_for(lambda: workers <= celery_workers.responding_workers(broker),
                               max(deadline - time.monotonic(), 1.0),
                               f"Celery workers {sorted(workers)}", interval=0.5,
                               alive=running)
            if "api-server" in wanted:
                procs.wait_for(execution_api, max(deadline - time.monotonic(), 1.0),
                               f"Airflow execution API on {self.base_url}", interval=0.1,
                               alive=running)
        except StackError as exc:
            dead = [c for c in wanted if c in self.records
                    and not procs.is_alive(self.records[c])]
            if dead:
                logs = ", ".join(str(self.log_dir / f"{c}.log") for c in dead)
                raise StackError(f"Airflow {', '.join(dead)} exited during start-up; "
                                 f"see {logs}") from exc
            raise

    def token(self, user: str = "admin") -> str:
        """A REST API token for ``user`` (simple auth manager, generated password)."""
        return fetch_token(self.base_url, user, read_admin_password(self.home, user))

    def api(self, token: str | None = None) -> AirflowApi:
        """An authenticated REST client (fetches a token unless one is given)."""
        return AirflowApi(self.base_url, token or self.token())

    def stop(self, timeout: float = 30.0,
             components: Sequence[str] | None = None) -> list[str]:
        """Stop the components started through this object (all, or just ``components``,
        e.g. to restart the scheduler); returns those that had to be killed."""
        names = [n for n in (components or list(self.records)) if n in self.records]
        killed = procs.stop([self.records[n] for n in names], timeout)
        for name in names:
            del self.records[name]
        return killed
