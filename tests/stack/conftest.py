"""Helpers for the stack tests: which TCP ports a set of processes listens on."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest


def _socket_inodes(pids: Iterable[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except (FileNotFoundError, PermissionError):
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def _decode(address: str) -> tuple[str, int]:
    """``0100007F:1F90`` → ("127.0.0.1", 8080); /proc stores 32-bit words little-endian."""
    host_hex, port_hex = address.split(":")
    raw = b"".join(bytes.fromhex(host_hex[i:i + 8])[::-1] for i in range(0, len(host_hex), 8))
    return str(ipaddress.ip_address(raw)), int(port_hex, 16)


def listening(pids: Iterable[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state owned by ``pids``."""
    inodes = _socket_inodes(pids)
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:  # 0A = LISTEN
                found.add(_decode(parts[1]))
    return found


@pytest.fixture
def listening_sockets() -> Callable[[Iterable[int]], set[tuple[str, int]]]:
    """``listening_sockets(pids)`` → {(address, port)} the processes listen on."""
    return listening
