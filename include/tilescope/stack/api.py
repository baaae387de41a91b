"""A small client for Airflow's REST API (stdlib only, so the stack needs no extra package).

It speaks just what the stack needs: a bearer token from the simple auth manager, JSON in,
JSON out, and the HTTP status kept on errors so callers can tell "absent" (404) from "broken".
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Protocol

from tilescope.stack.errors import StackError


class ApiError(StackError):
    """A non-2xx answer: ``status`` is the HTTP code, the message includes Airflow's detail."""

    def __init__(self, method: str, url: str, status: int, detail: str) -> None:
        super().__init__(f"{method} {url} → HTTP {status}: {detail[:300]}")
        self.status = status


class Api(Protocol):
    """What provisioning needs from an API client (lets tests substitute a fake)."""

    def request(self, method: str, path: str, body: Any = None) -> Any: ...


#: Requests that may be sent again after a server error: they set or read state, so a second
#: one changes nothing. A POST (a new run, a new pool) is sent once.
RETRIED_METHODS = frozenset({"GET", "PATCH", "PUT", "DELETE"})


class AirflowApi:
    """``AirflowApi("http://127.0.0.1:8080", token).request("GET", "/api/v2/pools")``.

    A 5xx answer to an idempotent request is retried (``attempts`` in all, backing off from
    0.5 s): on SQLite a write waits at most 5 s for the lock, and a busy scheduler or task
    start after a restart can hold it longer — Airflow answers "Database error" (HTTP 500)
    and the same request succeeds a moment later (seen on ``make run`` after ``make stop``).
    """

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0,
                 attempts: int = 4) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.attempts = max(attempts, 1)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        tries = self.attempts if method.upper() in RETRIED_METHODS else 1
        attempt = 1
        while True:
            try:
                return self._send(method, path, body)
            except ApiError as exc:
                if exc.status < 500 or attempt >= tries:
                    raise
            time.sleep(0.5 * 2 ** (attempt - 1))
            attempt += 1

    def _send(self, method: str, path: str, body: Any) -> Any:
        url = self.base_url + path
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise ApiError(method, url, exc.code, detail) from exc
        return json.loads(payload) if payload else None


def read_admin_password(airflow_home: Path, user: str = "admin") -> str:
    """The simple auth manager's generated password (written by the api-server at start)."""
    path = password_file(airflow_home)
    try:
        passwords = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise StackError(f"{path} does not exist yet (is the api-server running?)") from exc
    if user not in passwords:
        raise StackError(f"{path} has no password for user {user!r}")
    return str(passwords[user])


def password_file(airflow_home: Path) -> Path:
    return airflow_home / "simple_auth_manager_passwords.json.generated"


def fetch_token(base_url: str, username: str, password: str) -> str:
    """``POST /auth/token`` → the JWT to send as ``Authorization: Bearer``."""
    answer = AirflowApi(base_url).request("POST", "/auth/token",
                                          {"username": username, "password": password})
    return str(answer["access_token"])
