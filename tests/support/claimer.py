"""A claimer killed for real: the arrivals claim step (``take_arrivals``, what the
``s3_arrivals`` claim task calls) in a subprocess that SIGKILLs itself at a chosen point.

The library has no fault hook: the subprocess replaces one function of the intake module
with one that sends SIGKILL to its own process, then runs the real code. So the process dies
with whatever it committed by then — no ``finally``, no rollback, no exit handler — as a
worker killed by the OOM killer or a lost node would.

Points (in the order a tick reaches them):

* ``batching``: claims committed and screened, no batch run id stored yet (the claims are
  "loose": the next tick batches them anew);
* ``manifest``: batch run ids stored in the claim rows, no manifest written;
* ``trigger``: ``take_arrivals`` returned (manifests written), nothing triggered — the claim
  task dies before handing its batches to the trigger task.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

KILL_POINTS = ("batching", "manifest", "trigger")

SCRIPT = r"""
import json, os, signal, sys, threading

import boto3
from botocore.config import Config

from tilescope.intake.flow import IntakePolicy, take_arrivals
from tilescope.outputs.catalog import connect

args = json.loads(sys.argv[1])
intake = sys.modules[take_arrivals.__module__]
first = threading.Lock()  # manifests are written on several threads: one of them kills


def die(*_, **__):
    first.acquire()  # never released: the others wait here until the process is gone
    os.write(1, f"KILLED AT {args['kill_at']}\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)


if args["kill_at"] == "batching":
    intake.assign_batch = die
elif args["kill_at"] == "manifest":
    intake.write_manifest = die
client = boto3.client("s3", endpoint_url=args["endpoint"], region_name="us-east-1",
                      config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
got = take_arrivals(client, connect(args["catalog"]), args["bucket"],
                    IntakePolicy(**args["policy"]))
print("RETURNED", json.dumps([b.run_id for b in got.batches]), flush=True)
if args["kill_at"] == "trigger":
    die()
"""


@dataclass(frozen=True)
class KilledClaimer:
    returncode: int
    stdout: str
    stderr: str


def kill_claimer_at(kill_at: str, *, endpoint: str, catalog: str, bucket: str,
                    policy: dict[str, Any] | None = None, env: dict[str, str] | None = None,
                    timeout: float = 120) -> KilledClaimer:
    """Run one claim tick in a subprocess that SIGKILLs itself at ``kill_at``; asserts it
    died by SIGKILL there. ``catalog`` is a SQLAlchemy URL; S3 keys come from the
    environment (``AWS_ACCESS_KEY_ID``…)."""
    assert kill_at in KILL_POINTS, kill_at
    args = {"kill_at": kill_at, "endpoint": endpoint, "catalog": catalog, "bucket": bucket,
            "policy": policy or {}}
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(args)],
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == -signal.SIGKILL, \
        f"the claimer exited {done.returncode}, not killed:\n{done.stdout}\n{done.stderr[-3000:]}"
    assert f"KILLED AT {kill_at}" in done.stdout, done.stdout
    assert ("RETURNED" in done.stdout) == (kill_at == "trigger"), done.stdout
    return KilledClaimer(done.returncode, done.stdout, done.stderr)
