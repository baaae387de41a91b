"""``up``: start (or reuse) SeaweedFS and Airflow, provision them, trigger one run.

Everything that can be checked (binary, ports, DAGs folder) is checked before anything
starts. If a service fails to start, what this command started is stopped again; if a
later provisioning step fails, the services keep running so the UI shows what is wrong.
"""

from __future__ import annotations

import hashlib
import time

from tilescope.stack import procs, provision
from tilescope.stack.airflow_stack import COMPONENTS, AirflowStack
from tilescope.stack.api import password_file
from tilescope.stack.errors import StackError
from tilescope.stack.seaweed import SeaweedServer, find_weed, start_seaweed
from tilescope.stack.settings import DAG_ID, OPTIONAL_DAGS, SEAWEED, Settings, rel
from tilescope.stack.state import S3Credentials, load_or_create_credentials
from tilescope.viewer.links import run_tab


class _Clock:
    """Progress lines with the elapsed time: start-up takes tens of seconds."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, message: str) -> None:
        print(f"[{self.elapsed():5.1f} s] {message}", flush=True)


def cmd_up(settings: Settings, trigger: bool = True) -> int:
    clock = _Clock()
    running = settings.registry.running()
    if running:
        names = ", ".join(f"{n} (pid {r.pid})" for n, r in sorted(running.items()))
        print(f"tilescope stack already running: {names} — reusing it")
        settings.use_stored_ports()
    server, airflow, creds = start_services(settings, running, clock)
    try:
        provision_airflow(settings, server, airflow, creds, clock)
        show(settings, server, airflow, trigger, clock)
    except StackError as exc:
        raise StackError(f"{exc} — the stack is still running "
                         f"(logs in {rel(airflow.log_dir)}/; `make stop` stops it)") from exc
    return 0


def _check_before_start(settings: Settings, need_seaweed: bool,
                        missing_airflow: list[str]) -> None:
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


def start_services(settings: Settings, running: dict[str, procs.ProcessRecord],
                   clock: _Clock) -> tuple[SeaweedServer, AirflowStack, S3Credentials]:
    """Start whatever is not running yet; wait until S3 and Airflow answer."""
    registry = settings.registry
    airflow = settings.airflow()
    missing_airflow = [c for c in COMPONENTS if f"airflow-{c}" not in running]
    need_seaweed = SEAWEED not in running
    _check_before_start(settings, need_seaweed, missing_airflow)

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
            if airflow.needs_migration():
                clock.say("airflow db migrate ...")
                airflow.migrate(force=True)
            for record in airflow.start(missing_airflow, check_ports=False).values():
                registry.put(record, {"api": settings.api_port})
                started.append(record)
            clock.say(f"started airflow {', '.join(missing_airflow)}")
        for name in COMPONENTS:
            if f"airflow-{name}" in running:
                airflow.records[name] = running[f"airflow-{name}"]
        server.wait_ready()
        created = server.ensure_bucket(settings.bucket)
        clock.say(f"SeaweedFS S3 ready on {server.endpoint}"
                  + (f", created bucket s3://{settings.bucket}" if created else ""))
        airflow.wait_ready()
    except BaseException:
        if started:
            print("start-up failed: stopping what this command started", flush=True)
            procs.stop(started)
            registry.remove([r.name for r in started])
        raise
    clock.say(f"Airflow ready on {airflow.base_url}")
    return server, airflow, creds


def provision_airflow(settings: Settings, server: SeaweedServer, airflow: AirflowStack,
                      creds: S3Credentials, clock: _Clock) -> None:
    """Pool (read back: a missing pool must stop us), connections, unpaused DAGs."""
    api = airflow.api()
    provision.ensure_pool(api, provision.POOL, settings.pool_slots)
    provision.ensure_connection(
        api, "aws_default", "aws",
        **provision.aws_connection_fields(server.endpoint, creds.access_key, creds.secret_key))
    catalog = settings.state_dir / "catalog.sqlite"
    provision.ensure_connection(api, "tilescope_catalog", "sqlite",
                                **provision.sqlite_connection_fields(str(catalog)))
    clock.say(f"pool {provision.POOL!r} ({settings.pool_slots} slots) checked; connections "
              f"aws_default, tilescope_catalog set")
    if not any(DAG_ID in path.read_text(errors="replace")
               for path in settings.dags_folder.rglob("*.py")):
        raise StackError(f"no file in {rel(settings.dags_folder)}/ defines DAG {DAG_ID!r}")
    provision.wait_for_dag(api, DAG_ID)
    provision.unpause(api, DAG_ID)
    unpaused = [DAG_ID]
    for dag_id in OPTIONAL_DAGS:
        if provision.dag_exists(api, dag_id):
            provision.unpause(api, dag_id)
            unpaused.append(dag_id)
    clock.say(f"unpaused {', '.join(unpaused)}")


def show(settings: Settings, server: SeaweedServer, airflow: AirflowStack, trigger: bool,
         clock: _Clock) -> None:
    """Upload the sample and trigger a run (unless told not to); print where to look."""
    lines = [
        f"  Airflow UI    {airflow.base_url}   (user admin, password in "
        f"{rel(password_file(settings.airflow_home))})",
        f"  S3 endpoint   {server.endpoint}   (keys in "
        f"{rel(settings.state_dir / 's3-credentials.json')}; "
        f"eval \"$(.venv/bin/python -m tilescope.stack env)\" exports them)",
    ]
    if trigger:
        image_uri, image_id = upload_sample(server, settings)
        run = provision.trigger(airflow.api(), DAG_ID, {"image_uri": image_uri})
        run_id = str(run["dag_run_id"])
        lines += [
            f"  Sample        {image_uri}",
            f"  Run           {airflow.base_url}/dags/{DAG_ID}/runs/{run_id}",
            f"  Viewer        {airflow.base_url}{run_tab('', DAG_ID, run_id)}",
            f"  Results       s3://{settings.bucket}/results/{image_id}/   (list them: "
            f".venv/bin/python -m tilescope.stack ls results/{image_id}/)",
        ]
    lines += [
        f"  Logs          {rel(airflow.log_dir)}/ (services), "
        f"{rel(settings.airflow_home / 'logs')}/ (tasks)",
        "  Stop          make stop   (.venv/bin/python -m tilescope.stack down)",
    ]
    print()
    print("\n".join(lines))
    print()
    clock.say("up")


def upload_sample(server: SeaweedServer, settings: Settings) -> tuple[str, str]:
    """Put the sample photo in the bucket; returns (uri, image_id = sha256[:16])."""
    from tilescope.samples import sample_path

    data = sample_path(settings.sample).read_bytes()
    server.client().put_object(Bucket=settings.bucket, Key=settings.sample_key, Body=data,
                               ContentType="image/jpeg")
    return f"s3://{settings.bucket}/{settings.sample_key}", hashlib.sha256(data).hexdigest()[:16]
