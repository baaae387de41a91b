"""Fault injection on a real S3 server: SeaweedFS (``weed mini``, data on disk) killed with
SIGKILL and started again on the same ports and data, as a crashed server comes back."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tilescope.stack import procs
from tilescope.stack.seaweed import SeaweedPorts, SeaweedServer, find_weed, start_seaweed


def seaweed_or_skip() -> None:
    try:
        find_weed()
    except Exception as exc:
        pytest.skip(f"SeaweedFS binary unavailable: {exc}")


def start(state_dir, bucket: str) -> SeaweedServer:
    """A fresh SeaweedFS on free ports with ``bucket`` created."""
    seaweed_or_skip()
    server = start_seaweed(state_dir, SeaweedPorts.free())
    try:
        server.wait_ready(timeout=60)
        server.ensure_bucket(bucket)
    except BaseException:
        server.stop()
        raise
    return server


def crash(server: SeaweedServer) -> float:
    """SIGKILL every process of the server (no shutdown at all); returns when its S3 port
    refuses connections. Returns the monotonic time of the kill."""
    killed_at = time.monotonic()
    for pid in procs.session_members(server.record.pid):
        os.kill(pid, signal.SIGKILL)
    procs.wait_for(lambda: procs.port_is_free(server.ports.s3), 10, "SeaweedFS to die")
    return killed_at


def restart(server: SeaweedServer) -> SeaweedServer:
    """The same server again: same ports, data directory and keys; ready to serve."""
    again = start_seaweed(server.data_dir.parent, server.ports, server.credentials,
                          check_ports=False)
    again.wait_ready(timeout=60)
    return again
