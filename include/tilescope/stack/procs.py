"""Detached processes, found again by PID after the starting process has exited.

Every service is started as the leader of a new session (``setsid``), so all of its
descendants — forked executor workers, task runners that move to their own process group —
share the session id and can be found by scanning ``/proc``. Stopping sends SIGTERM to the
leader's group (a graceful shutdown), waits, then SIGKILLs whatever is left in the session.
A record keeps the leader's start time, so a recycled PID is never mistaken for ours.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tilescope.stack.errors import StackError

# Popen objects of children started by *this* Python process: they must be reaped, or a
# zombie leader would look alive to kill(pid, 0).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class ProcessRecord:
    """What we need to find a detached service again: its PID and the leader's start time."""

    name: str
    pid: int
    start_ticks: int
    argv: tuple[str, ...]
    log: str

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["argv"] = list(self.argv)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessRecord:
        return cls(str(data["name"]), int(data["pid"]), int(data["start_ticks"]),
                   tuple(str(a) for a in data["argv"]), str(data["log"]))


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, pgrp, session, start_ticks) of a process from /proc, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[2]), int(fields[3]), int(fields[19])


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)


def is_alive(record: ProcessRecord) -> bool:
    """True while the recorded leader runs (same PID *and* same start time, not a zombie)."""
    _reap(record.pid)
    stat = _stat(record.pid)
    return stat is not None and stat[0] != "Z" and stat[3] == record.start_ticks


def session_members(session: int) -> list[int]:
    """PIDs of the live (non-zombie) processes in a session: the leader and its descendants."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is not None and stat[2] == session and stat[0] != "Z":
            members.append(int(entry.name))
    return members


def spawn(name: str, argv: Sequence[str], env: Mapping[str, str], log: Path,
          cwd: Path | None = None) -> ProcessRecord:
    """Start ``argv`` detached in a new session, stdout+stderr appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        try:
            child = subprocess.Popen(
                list(argv), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        except FileNotFoundError as exc:
            raise StackError(f"{name}: cannot run {argv[0]}: not found") from exc
    _CHILDREN[child.pid] = child
    stat = _stat(child.pid)
    start_ticks = stat[3] if stat else 0
    return ProcessRecord(name, child.pid, start_ticks, tuple(argv), str(log))


#: seconds stop waits for SIGKILLed processes to be gone
KILL_WAIT = 5.0


def stop(records: Iterable[ProcessRecord], timeout: float = 20.0) -> list[str]:
    """Stop services together: SIGTERM each group, wait ``timeout`` s, SIGKILL the rest.

    Returns the names of the services that had to be killed. When a leader is already gone,
    the leftovers of its session (orphaned grandchildren) are still stopped.
    """
    sessions: dict[str, int] = {}
    for record in records:
        if is_alive(record):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record.pid, signal.SIGTERM)
            sessions[record.name] = record.pid
            continue
        current = _stat(record.pid)
        if current is None or current[0] == "Z":  # leader gone: orphans may remain
            for pid in session_members(record.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            sessions[record.name] = record.pid
        # else: the PID now belongs to an unrelated process, whose session is not ours.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in sessions.values():
            _reap(pid)
        if not any(session_members(pid) for pid in sessions.values()):
            break
        time.sleep(0.1)
    killed = []
    for name, session in sessions.items():
        left = session_members(session)
        if left:
            killed.append(name)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    # SIGKILL is delivered asynchronously: on a loaded machine a killed process can still be
    # running for a moment, so wait until the sessions are empty (their ports free) first.
    deadline = time.monotonic() + KILL_WAIT
    while killed and time.monotonic() < deadline:
        for pid in sessions.values():
            _reap(pid)
        if not any(session_members(pid) for pid in sessions.values()):
            break
        time.sleep(0.05)
    for session in sessions.values():
        child = _CHILDREN.pop(session, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)
    return killed


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if a server could listen on host:port now (SO_REUSEADDR, as the servers use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def require_free_ports(ports: Mapping[str, int], host: str = "127.0.0.1") -> None:
    """Raise a one-line StackError naming every busy port, before anything is started."""
    busy = [f"{port} ({what})" for what, port in ports.items() if not port_is_free(port, host)]
    if busy:
        raise StackError(f"port{'s' if len(busy) > 1 else ''} already in use on {host}: "
                         f"{', '.join(busy)} — stop whatever uses "
                         f"{'them' if len(busy) > 1 else 'it'} or choose other ports")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports the kernel says are free now (for tests and side services)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_for(check: Any, timeout: float, what: str, interval: float = 0.25,
             alive: Any = None) -> Any:
    """Poll ``check()`` until it returns a truthy value; StackError after ``timeout`` s.

    ``alive()`` (optional) is polled too: if the service died there is no point in waiting,
    and the error says so at once.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:
            last_error = exc
        if alive is not None and not alive():
            raise StackError(f"{what}: the process exited during start-up")
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise StackError(f"{what}: not ready after {timeout:.0f} s{detail}")
        time.sleep(interval)


def peak_rss_mb(pid: int | str = "self") -> float:
    """A process's own peak resident memory (``VmHWM``) in MiB.

    Not ``resource.getrusage(...).ru_maxrss``: Linux carries that figure across fork and exec,
    so a child started by a big parent reports the parent's peak as its own.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise StackError(f"no VmHWM in /proc/{pid}/status")
