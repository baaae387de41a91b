"""``python -m tilescope.stack up|down|status|env|ls|compose-env``: the stack behind ``make run``.

``up`` starts SeaweedFS and Airflow (or reuses those already running), provisions the
bucket, pool and connections, uploads the sample photo and triggers one ``tiled_inference``
run. ``down`` stops everything ``up`` started, by the PIDs recorded in the state directory.
Errors are one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tilescope.stack import procs
from tilescope.stack.airflow_stack import COMPONENTS
from tilescope.stack.errors import StackError
from tilescope.stack.seaweed import s3_client
from tilescope.stack.settings import SEAWEED, Settings, rel
from tilescope.stack.state import load_or_create_credentials, write_private
from tilescope.stack.up import cmd_up

# `status` exit code when the stack is stopped or incomplete (as LSB init scripts do).
NOT_RUNNING = 3


def cmd_down(settings: Settings) -> int:
    registry = settings.registry
    records = registry.records()
    alive = {n: r for n, r in records.items() if procs.is_alive(r)}
    if not alive:
        registry.remove(list(records))
        print("tilescope stack: nothing running")
        return 0
    t0 = time.monotonic()
    # Airflow first (tasks may still write to S3 while shutting down), then SeaweedFS.
    killed = procs.stop([r for n, r in records.items() if n != SEAWEED], timeout=30.0)
    killed += procs.stop([r for n, r in records.items() if n == SEAWEED], timeout=30.0)
    registry.remove(list(records))
    for name, rec in sorted(alive.items()):
        how = "killed after timeout" if name in killed else "stopped"
        print(f"{how}: {name} (pid {rec.pid})")
    print(f"down in {time.monotonic() - t0:.1f} s; data kept in {rel(settings.state_dir)}")
    return 0


def cmd_status(settings: Settings) -> int:
    records = settings.registry.records()
    if not records:
        print(f"tilescope stack: not running (state dir {rel(settings.state_dir)})")
        return NOT_RUNNING
    settings.use_stored_ports()
    complete = True
    for name in [SEAWEED, *(f"airflow-{c}" for c in COMPONENTS)]:
        rec = records.get(name)
        up = rec is not None and procs.is_alive(rec)
        complete &= up
        where = ""
        if name == SEAWEED:
            where = f"  S3 http://127.0.0.1:{settings.s3_port}"
        elif name == "airflow-api-server":
            where = f"  http://127.0.0.1:{settings.api_port}"
        state = f"running (pid {rec.pid})" if up and rec else "stopped"
        print(f"{name:22} {state}{where}")
    api = records.get("airflow-api-server")
    if api is not None and procs.is_alive(api):
        try:
            health = settings.airflow().health()
            print("health: " + ", ".join(f"{k} {v}" for k, v in sorted(health.items())))
        except Exception as exc:
            print(f"health: the API does not answer ({str(exc).splitlines()[0]})")
    return 0 if complete else NOT_RUNNING


def cmd_env(settings: Settings) -> int:
    creds = load_or_create_credentials(settings.state_dir)
    settings.use_stored_ports()
    print(f"export AWS_ACCESS_KEY_ID={creds.access_key}")
    print(f"export AWS_SECRET_ACCESS_KEY={creds.secret_key}")
    print("export AWS_DEFAULT_REGION=us-east-1")
    print(f"export AWS_ENDPOINT_URL=http://127.0.0.1:{settings.s3_port}")
    return 0


def cmd_ls(settings: Settings, prefix: str) -> int:
    creds = load_or_create_credentials(settings.state_dir)
    settings.use_stored_ports()
    client = s3_client(f"http://127.0.0.1:{settings.s3_port}", creds, retries=1)
    count = 0
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket,
                                                                 Prefix=prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                count += 1
                print(f"{obj['Size']:>12}  {obj['LastModified']:%Y-%m-%d %H:%M:%S}  "
                      f"s3://{settings.bucket}/{obj['Key']}")
    except Exception as exc:
        raise StackError(f"cannot list s3://{settings.bucket}/{prefix} on port "
                         f"{settings.s3_port} (is the stack up?): "
                         f"{str(exc).splitlines()[0]}") from exc
    if not count:
        print(f"(no objects under s3://{settings.bucket}/{prefix})")
    return 0


def write_compose_env(state_dir: Path) -> Path:
    """``<state>/compose.env`` (0600): the secrets docker-compose.yaml requires, made once.

    The S3 keys are the embedded stack's, so ``env``/``ls`` work against either stack.
    """
    path = state_dir / "compose.env"
    if path.exists():
        return path
    creds = load_or_create_credentials(state_dir)
    values = {
        "AIRFLOW_UID": str(os.getuid()),
        "AIRFLOW_FERNET_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        "AIRFLOW_API_SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW_JWT_SECRET": secrets.token_urlsafe(48),
        "POSTGRES_PASSWORD": secrets.token_urlsafe(24),
        "TILESCOPE_S3_ACCESS_KEY": creds.access_key,
        "TILESCOPE_S3_SECRET_KEY": creds.secret_key,
    }
    write_private(path, "".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def cmd_compose_env(settings: Settings) -> int:
    path = write_compose_env(settings.state_dir)
    print(path)
    print(f"use: docker compose --env-file {rel(path)} up -d", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tilescope.stack",
        description="The embedded SeaweedFS (S3) + Airflow stack behind `make run`/`make stop`.")
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
    sub.add_parser("compose-env", help="write (once) and print the env file with the "
                                       "secrets docker-compose.yaml needs")
    ls = sub.add_parser("ls", help="list objects in the bucket")
    ls.add_argument("prefix", nargs="?", default="")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.load(
            args.state_dir, getattr(args, "api_port", None), getattr(args, "s3_port", None),
            getattr(args, "dags_folder", None), getattr(args, "sample", "kite"),
            getattr(args, "sample_key", None))
        if args.command == "up":
            return cmd_up(settings, trigger=not args.no_trigger)
        commands = {"down": cmd_down, "status": cmd_status, "env": cmd_env,
                    "compose-env": cmd_compose_env}
        if args.command in commands:
            return commands[args.command](settings)
        return cmd_ls(settings, args.prefix)
    except StackError as exc:
        print(f"tilescope stack: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tilescope stack: interrupted", file=sys.stderr)
        return 130
