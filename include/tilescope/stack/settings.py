"""Settings of the embedded stack: where it keeps state and which ports it uses.

Flags beat environment variables, which beat defaults. Shared by every subcommand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tilescope.stack.airflow_stack import AirflowStack
from tilescope.stack.errors import StackError
from tilescope.stack.seaweed import SeaweedPorts
from tilescope.stack.state import REPO_ROOT, Registry, default_state_dir

DAG_ID = "tiled_inference"
OPTIONAL_DAGS = ("s3_arrivals",)
SEAWEED = "seaweedfs"


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise StackError(f"{name}={raw!r} is not an integer") from exc


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

    @classmethod
    def load(cls, state_dir: str | None = None, api_port: int | None = None,
             s3_port: int | None = None, dags_folder: str | None = None,
             sample: str = "kite", sample_key: str | None = None) -> Settings:
        return cls(
            state_dir=Path(state_dir).resolve() if state_dir else default_state_dir(),
            api_port=api_port or env_int("TILESCOPE_API_PORT", 8080),
            s3_port=s3_port or env_int("TILESCOPE_S3_PORT", 8333),
            bucket=os.environ.get("TILESCOPE_BUCKET", "tilescope"),
            pool_slots=env_int("TILESCOPE_POOL_SLOTS", 4),
            dags_folder=Path(dags_folder).resolve() if dags_folder else REPO_ROOT / "dags",
            plugins_folder=REPO_ROOT / "plugins",
            sample=sample,
            sample_key=sample_key or f"samples/{sample}.jpg",
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
        return SeaweedPorts(s3=self.s3_port)

    def airflow(self) -> AirflowStack:
        return AirflowStack(self.airflow_home, self.dags_folder, self.api_port,
                            plugins_folder=self.plugins_folder, logs=self.state_dir / "logs")


def rel(path: Path) -> str:
    """A path relative to the current directory when it is below it (shorter messages)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
