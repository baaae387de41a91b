"""``python -m tilescope.stack up|down|status|env|ls``: the embedded stack behind ``make run``.

``up`` starts SeaweedFS and Airflow (or reuses those already running), provisions the
bucket, pool and connections, uploads the sample photo and triggers one ``tiled_inference``
run. ``down`` stops everything ``up`` started, by the PIDs recorded in the state directory.
Errors are one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tilescope.stack import procs, provision
from tilescope.stack.airflow_stack import COMPONENTS, AirflowStack
from tilescope.stack.api import password_file
from tilescope.stack.errors import StackError
from tilescope.stack.seaweed import (
    SeaweedPorts,
    SeaweedServer,
    find_weed,
    s3_client,
    start_seaweed,
)
from tilescope.stack.state import (
    REPO_ROOT,
    Registry,
    load_or_create_credentials,
)

DAG_ID = "tiled_inference"
OPTIONAL_DAGS = ("s3_arrivals",)
SEAWEED = "seaweedfs"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise StackError(f"{name}={raw!r} is not an integer") from exc


@dataclass
class Settings:
    """Where things live and which ports they use (flags > environment > defaults)."""

    state_dir: Path
    api_port: int
    s3_port: int
    bucket: str
    pool_slots: int
    dags_folder: Path
    plugins_folder: Path
    sample: str
    sample_key: str

    @property
    def airflow_home(self) -> Path:
        return self.state_dir / "airflow"

    def seaweed_ports(self) -> SeaweedPorts:
        return SeaweedPorts(s3=self.s3_port)

    def airflow(self) -> AirflowStack:
        return AirflowStack(self.airflow_home, self.dags_folder, self.api_port,
                            plugins_folder=self.plugins_folder, logs=self.state_dir / "logs")


def _settings(args: argparse.Namespace) -> Settings:
    from tilescope.stack.state import default_state_dir

    state = Path(args.state_dir).resolve() if args.state_dir else default_state_dir()
    return Settings(
        state_dir=state,
        api_port=args.api_port or _env_int("TILESCOPE_API_PORT", 8080),
        s3_port=args.s3_port or _env_int("TILESCOPE_S3_PORT", 8333),
        bucket=os.environ.get("TILESCOPE_BUCKET", "tilescope"),
        pool_slots=_env_int("TILESCOPE_POOL_SLOTS", 4),
        dags_folder=Path(args.dags_folder).resolve() if args.dags_folder else REPO_ROOT / "dags",
        plugins_folder=REPO_ROOT / "plugins",
        sample=args.sample,
        sample_key=args.sample_key or f"samples/{args.sample}.jpg",
    )


def _rel(path: Path) -> str:
    """A path relative to the current directory when it is below it (shorter messages)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _stored_ports(registry: Registry) -> dict[str, int]:
    return {k: int(v) for k, v in registry.load()["ports"].items()}


def cmd_up(settings: Settings, trigger: bool = True) -> int:
    t0 = time.monotonic()
    registry = Registry(settings.state_dir)
    running = registry.running()
    stored = _stored_ports(registry)
    if running:
        names = ", ".join(f"{n} (pid {r.pid})" for n, r in sorted(running.items()))
        print(f"tilescope stack already running: {names} — reusing it")
        settings.api_port = stored.get("api", settings.api_port)
        settings.s3_port = stored.get("s3", settings.s3_port)
    airflow = settings.airflow()
    missing_airflow = [c for c in COMPONENTS if f"airflow-{c}" not in running]
    need_seaweed = SEAWEED not in running

    # Everything that can be checked is checked before anything starts.
    if need_seaweed:
        find_weed()
    ports: dict[str, int] = {}
    if need_seaweed:
        ports.update(settings.seaweed_ports().named())
    if "api-server" in missing_airflow:
        ports["airflow api-server"] = settings.api_port
    procs.require_free_ports(ports)
    if not settings.dags_folder.is_dir():
        raise StackError(f"DAGs folder {settings.dags_folder} does not exist")

    started: list[procs.ProcessRecord] = []
    try:
        creds = load_or_create_credentials(settings.state_dir)
        if need_seaweed:
            server = start_seaweed(settings.state_dir, settings.seaweed_ports(), creds,
                                   check_ports=False)
            registry.put(server.record, {"s3": settings.s3_port})
            started.append(server.record)
        else:
            server = SeaweedServer(running[SEAWEED], settings.seaweed_ports(), creds,
                                   settings.state_dir / "seaweed")
        if missing_airflow:
            _say(t0, "airflow db migrate ...")
            if not airflow.migrate():
                _say(t0, "metadata DB already migrated")
            for record in airflow.start(missing_airflow, check_ports=False).values():
                registry.put(record, {"api": settings.api_port})
                started.append(record)
            _say(t0, f"started airflow {', '.join(missing_airflow)}")
        for name in COMPONENTS:
            if f"airflow-{name}" in running:
                airflow.records[name] = running[f"airflow-{name}"]
        server.wait_ready()
        created = server.ensure_bucket(settings.bucket)
        _say(t0, f"SeaweedFS S3 ready on {server.endpoint}"
                 + (f", created bucket s3://{settings.bucket}" if created else ""))
        airflow.wait_ready()
        t_ready = time.monotonic() - t0
    except BaseException:
        if started:
            print("start-up failed: stopping what this command started", file=sys.stderr)
            procs.stop(started)
            registry.remove([r.name for r in started])
        raise

    api = airflow.api()
    provision.ensure_pool(api, provision.POOL, settings.pool_slots)
    provision.ensure_connection(
        api, "aws_default", "aws",
        **provision.aws_connection_fields(server.endpoint, creds.access_key, creds.secret_key))
    catalog = settings.state_dir / "catalog.sqlite"
    provision.ensure_connection(api, "tilescope_catalog", "sqlite",
                                **provision.sqlite_connection_fields(str(catalog)))
    _say(t0, f"Airflow ready at {t_ready:.1f} s: pool {provision.POOL!r} "
             f"({settings.pool_slots} slots), connections aws_default and tilescope_catalog set")

    provision.wait_for_dag(api, DAG_ID)
    _say(t0, f"DAG {DAG_ID} is parsed")
    provision.unpause(api, DAG_ID)
    for dag_id in OPTIONAL_DAGS:
        if provision.dag_exists(api, dag_id):
            provision.unpause(api, dag_id)
            print(f"unpaused {dag_id}")

    hint = f"password in {_rel(password_file(settings.airflow_home))}"
    print()
    print(f"  Airflow UI    {airflow.base_url}   (user admin, {hint})")
    print(f"  S3 endpoint   {server.endpoint}   (keys in "
          f"{_rel(settings.state_dir / 's3-credentials.json')}; "
          f"eval \"$(.venv/bin/python -m tilescope.stack env)\" exports them)")
    if trigger:
        image_uri, image_id = _upload_sample(server, settings)
        run = provision.trigger(api, DAG_ID, {"image_uri": image_uri})
        run_id = str(run["dag_run_id"])
        print(f"  Sample        {image_uri}")
        print(f"  Run           {airflow.base_url}/dags/{DAG_ID}/runs/{run_id}")
        print(f"  Results       s3://{settings.bucket}/results/{image_id}/   (list: "
              f".venv/bin/python -m tilescope.stack ls results/{image_id}/)")
    print(f"  Logs          {_rel(airflow.log_dir)}/ (services), "
          f"{_rel(settings.airflow_home / 'logs')}/ (tasks)")
    print("  Stop          make stop   (.venv/bin/python -m tilescope.stack down)")
    print(f"\nup in {time.monotonic() - t0:.1f} s")
    return 0


def _say(t0: float, message: str) -> None:
    """Progress on stdout with the elapsed time: start-up takes tens of seconds."""
    print(f"[{time.monotonic() - t0:5.1f} s] {message}", flush=True)


def _upload_sample(server: SeaweedServer, settings: Settings) -> tuple[str, str]:
    """Put the sample photo in the bucket; returns (uri, image_id = sha256[:16])."""
    from tilescope.samples import sample_path

    data = sample_path(settings.sample).read_bytes()
    server.client().put_object(Bucket=settings.bucket, Key=settings.sample_key, Body=data,
                               ContentType="image/jpeg")
    return f"s3://{settings.bucket}/{settings.sample_key}", hashlib.sha256(data).hexdigest()[:16]


def cmd_down(settings: Settings) -> int:
    registry = Registry(settings.state_dir)
    records = registry.records()
    alive = {n: r for n, r in records.items() if procs.is_alive(r)}
    if not alive:
        registry.remove(list(records))
        print("tilescope stack: nothing running")
        return 0
    t0 = time.monotonic()
    # Airflow first (tasks may still write to S3 while shutting down), then SeaweedFS.
    order = [[r for n, r in records.items() if n != SEAWEED],
             [r for n, r in records.items() if n == SEAWEED]]
    killed: list[str] = []
    for group in order:
        if group:
            killed += procs.stop(group, timeout=30.0)
    registry.remove(list(records))
    for name, rec in sorted(alive.items()):
        how = "killed after timeout" if name in killed else "stopped"
        print(f"{how}: {name} (pid {rec.pid})")
    print(f"down in {time.monotonic() - t0:.1f} s; data kept in {_rel(settings.state_dir)}")
    return 0


def cmd_status(settings: Settings) -> int:
    registry = Registry(settings.state_dir)
    records = registry.records()
    ports = _stored_ports(registry)
    if not records:
        print(f"tilescope stack: not running (state dir {_rel(settings.state_dir)})")
        return 3
    all_up = True
    for name, rec in sorted(records.items()):
        up = procs.is_alive(rec)
        all_up &= up
        extra = ""
        if name == SEAWEED:
            extra = f"  S3 http://127.0.0.1:{ports.get('s3', '?')}"
        elif name == "airflow-api-server":
            extra = f"  http://127.0.0.1:{ports.get('api', '?')}"
        state = f"running (pid {rec.pid})" if up else "stopped"
        print(f"{name:22} {state}{extra}")
    missing = [c for c in COMPONENTS if f"airflow-{c}" not in records]
    for name in missing:
        all_up = False
        print(f"airflow-{name:14} not started")
    if "api" in ports and procs.is_alive(records.get("airflow-api-server", _DEAD)):
        settings.api_port = ports["api"]
        try:
            health = settings.airflow().health()
            print("health: " + ", ".join(f"{k} {v}" for k, v in sorted(health.items())))
        except Exception as exc:
            print(f"health: API not answering ({exc})")
    return 0 if all_up else 3


_DEAD = procs.ProcessRecord("none", 0, -1, (), "")


def cmd_env(settings: Settings) -> int:
    registry = Registry(settings.state_dir)
    creds = load_or_create_credentials(settings.state_dir)
    port = _stored_ports(registry).get("s3", settings.s3_port)
    print(f"export AWS_ACCESS_KEY_ID={creds.access_key}")
    print(f"export AWS_SECRET_ACCESS_KEY={creds.secret_key}")
    print("export AWS_DEFAULT_REGION=us-east-1")
    print(f"export AWS_ENDPOINT_URL=http://127.0.0.1:{port}")
    return 0


def cmd_ls(settings: Settings, prefix: str) -> int:
    registry = Registry(settings.state_dir)
    creds = load_or_create_credentials(settings.state_dir)
    port = _stored_ports(registry).get("s3", settings.s3_port)
    client = s3_client(f"http://127.0.0.1:{port}", creds, retries=1)
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket,
                                                                 Prefix=prefix)
        count = 0
        for page in pages:
            for obj in page.get("Contents", []):
                count += 1
                print(f"{obj['Size']:>12}  {obj['LastModified']:%Y-%m-%d %H:%M:%S}  "
                      f"s3://{settings.bucket}/{obj['Key']}")
    except Exception as exc:
        raise StackError(f"cannot list s3://{settings.bucket}/{prefix} on port {port} "
                         f"(is the stack up?): {str(exc).splitlines()[0]}") from exc
    if not count:
        print(f"(no objects under s3://{settings.bucket}/{prefix})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tilescope.stack", description=__doc__)
    parser.add_argument("--state-dir", help="default: $TILESCOPE_STATE_DIR or <repo>/.state")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start (or reuse) SeaweedFS + Airflow and trigger a run")
    up.add_argument("--api-port", type=int, help="default: $TILESCOPE_API_PORT or 8080")
    up.add_argument("--s3-port", type=int, help="default: $TILESCOPE_S3_PORT or 8333")
    up.add_argument("--dags-folder", help="default: <repo>/dags")
    up.add_argument("--sample", default="kite", help="sample photo to upload (default kite)")
    up.add_argument("--sample-key", help="object key (default samples/<sample>.jpg)")
    up.add_argument("--no-trigger", action="store_true",
                    help="start and provision only: no upload, no DAG run")
    sub.add_parser("down", help="stop everything 'up' started (data is kept)")
    sub.add_parser("status", help="what runs, its ports and health")
    sub.add_parser("env", help="print export lines for the S3 endpoint and keys")
    ls = sub.add_parser("ls", help="list objects in the bucket")
    ls.add_argument("prefix", nargs="?", default="")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for attr in ("api_port", "s3_port", "dags_folder", "sample_key"):
        if not hasattr(args, attr):
            setattr(args, attr, None)
    if not hasattr(args, "sample"):
        args.sample = "kite"
    try:
        settings = _settings(args)
        if args.command == "up":
            return cmd_up(settings, trigger=not args.no_trigger)
        if args.command == "down":
            return cmd_down(settings)
        if args.command == "status":
            return cmd_status(settings)
        if args.command == "env":
            return cmd_env(settings)
        return cmd_ls(settings, args.prefix)
    except StackError as exc:
        print(f"tilescope stack: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tilescope stack: interrupted", file=sys.stderr)
        return 130
