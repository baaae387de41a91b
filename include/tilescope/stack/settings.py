"""Settings of the embedded stack: where it keeps state and which ports it uses.

Flags beat environment variables (declared in :mod:`tilescope.settings`), which beat
defaults. Shared by every subcommand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tilescope import settings as env
from tilescope.errors import ConfigError
from tilescope.stack.airflow_stack import AirflowStack
from tilescope.stack.errors import StackError
from tilescope.stack.seaweed import SeaweedPorts
from tilescope.stack.state import REPO_ROOT, Registry, default_state_dir

DAG_ID = "tiled_inference"
OPTIONAL_DAGS = ("s3_arrivals",)
SEAWEED = "seaweedfs"


def env_value(setting: env.Setting) -> Any:
    """A :mod:`tilescope.settings` value; a bad one is a :class:`StackError` (the CLI's)."""
    try:
        return setting.get()
    except ConfigError as exc:
        raise StackError(str(exc)) from exc


def seaweed_port_overrides(items: Sequence[str] | None) -> dict[str, int]:
    """``TILESCOPE_SEAWEED_PORTS``'s ``("master=19333", "volume=19340")`` →
    ``{"master": 19333, "volume": 19340}`` (SeaweedFS's ports other than S3's)."""
    known = {f.name for f in fields(SeaweedPorts)} - {"s3"}
    out: dict[str, int] = {}
    for item in items or ():
        if not item.strip():
            continue
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in known or not value.strip().isdigit():
            raise StackError(f"{env.SEAWEED_PORTS.name}: {item.strip()!r} is not NAME=PORT with "
                             f"NAME one of {', '.join(sorted(known))} (the S3 port is "
                             f"--s3-port)")
        out[name] = int(value)
    return out


@dataclass
class Settings:
    """Where things live and which ports they use."""

    state_dir: Path
    api_port: int
    s3_port: int
    bucket: str
    pool_slots: int
    dags_folder: Path
    plugins_folder: Path
    sample: str = "kite"
    sample_key: str = "samples/kite.jpg"
    seaweed_extra_ports: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, state_dir: str | None = None, api_port: int | None = None,
             s3_port: int | None = None, dags_folder: str | None = None,
             sample: str = "kite", sample_key: str | None = None) -> Settings:
        return cls(
            state_dir=Path(state_dir).resolve() if state_dir else default_state_dir(),
            api_port=api_port or env_value(env.API_PORT),
            s3_port=s3_port or env_value(env.S3_PORT),
            bucket=env.BUCKET.get(),
            pool_slots=env_value(env.POOL_SLOTS),
            dags_folder=Path(dags_folder).resolve() if dags_folder else REPO_ROOT / "dags",
            plugins_folder=REPO_ROOT / "plugins",
            sample=sample,
            sample_key=sample_key or f"samples/{sample}.jpg",
            seaweed_extra_ports=seaweed_port_overrides(env_value(env.SEAWEED_PORTS)),
        )

    @property
    def airflow_home(self) -> Path:
        return self.state_dir / "airflow"

    @property
    def registry(self) -> Registry:
        return Registry(self.state_dir)

    def use_stored_ports(self) -> None:
        """A running stack keeps the ports it was started with, whatever the flags say."""
        stored = self.registry.load()["ports"]
        self.api_port = int(stored.get("api", self.api_port))
        self.s3_port = int(stored.get("s3", self.s3_port))

    def seaweed_ports(self) -> SeaweedPorts:
        return SeaweedPorts(s3=self.s3_port, **self.seaweed_extra_ports)

    def airflow(self) -> AirflowStack:
        return AirflowStack(self.airflow_home, self.dags_folder, self.api_port,
                            plugins_folder=self.plugins_folder, logs=self.state_dir / "logs")


def rel(path: Path) -> str:
    """A path relative to the current directory when it is below it (shorter messages)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
