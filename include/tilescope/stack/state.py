"""The state directory: data, logs, generated credentials and the PIDs of running services.

``<repo>/.state/`` unless ``TILESCOPE_STATE_DIR`` says otherwise. Everything the stack
creates lives there, so ``make run`` after ``make stop`` finds the same objects, DAG runs and
keys, and deleting the directory is a full reset.
"""

from __future__ import annotations

import json
import os
import secrets
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tilescope.settings import STATE_DIR
from tilescope.stack.errors import StackError
from tilescope.stack.procs import ProcessRecord, is_alive

# include/tilescope/stack/state.py → the repository root is three levels above the package.
REPO_ROOT = Path(__file__).resolve().parents[3]


def default_state_dir() -> Path:
    """``$TILESCOPE_STATE_DIR`` or ``<repo>/.state``."""
    override = STATE_DIR.get()
    return Path(override).resolve() if override else REPO_ROOT / ".state"


def write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only (0600 from creation, never briefly wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@dataclass(frozen=True)
class S3Credentials:
    """The S3 key pair SeaweedFS accepts and Airflow's ``aws_default`` connection uses."""

    access_key: str
    secret_key: str


def load_or_create_credentials(state_dir: Path) -> S3Credentials:
    """Generate the key pair on first start, then always reuse it (stored 0600).

    Generated rather than fixed so no key is ever in the code or the repository.
    """
    path = state_dir / "s3-credentials.json"
    if path.exists():
        try:
            data = json.loads(path.read_text())
            return S3Credentials(str(data["access_key"]), str(data["secret_key"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise StackError(f"{path} is not a valid credentials file: {exc}") from exc
    alphabet = string.ascii_uppercase + string.digits
    creds = S3Credentials("TS" + "".join(secrets.choice(alphabet) for _ in range(18)),
                          secrets.token_urlsafe(30))
    write_private(path, json.dumps({"access_key": creds.access_key,
                                    "secret_key": creds.secret_key}, indent=2) + "\n")
    return creds


class Registry:
    """``<state>/stack.json``: the running services' PID records and the ports they use."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "stack.json"

    def load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"processes": {}, "ports": {}}
        try:
            data = json.loads(self.path.read_text())
        except ValueError:
            return {"processes": {}, "ports": {}}
        data.setdefault("processes", {})
        data.setdefault("ports", {})
        return data

    def save(self, data: dict[str, Any]) -> None:
        write_private(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def records(self) -> dict[str, ProcessRecord]:
        return {name: ProcessRecord.from_json(rec)
                for name, rec in self.load()["processes"].items()}

    def running(self) -> dict[str, ProcessRecord]:
        return {name: rec for name, rec in self.records().items() if is_alive(rec)}

    def put(self, record: ProcessRecord, ports: dict[str, int] | None = None) -> None:
        data = self.load()
        data["processes"][record.name] = record.to_json()
        if ports:
            data["ports"].update(ports)
        self.save(data)

    def remove(self, names: list[str]) -> None:
        data = self.load()
        for name in names:
            data["processes"].pop(name, None)
        self.save(data)
