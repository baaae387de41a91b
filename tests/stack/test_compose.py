"""docker-compose.yaml is valid and safe, checked without a Docker engine.

Debian's ``docker-compose`` 1.29 is pure Python: its .deb and the python3-* packages it
really imports are fetched with ``apt-get download`` (not installed), unpacked with
``dpkg -x`` into a cache directory, and run with the system python3 as
``docker-compose config -q``, which interpolates variables and validates the file against
the compose schema. The YAML is also read directly to check that the expected services exist
and that every published port is bound to 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"

# What `docker-compose config` imports (found by running it with one package at a time
# added until no ModuleNotFoundError was left); Debian's other listed dependencies
# (python3-cached-property, python3-distutils, ...) are not needed by this command.
PACKAGES = (
    "docker-compose", "python3-docker", "python3-dockerpty", "python3-docopt",
    "python3-dotenv", "python3-jsonschema", "python3-attr", "python3-pyrsistent",
    "python3-requests", "python3-urllib3", "python3-idna", "python3-certifi",
    "python3-charset-normalizer", "python3-texttable", "python3-websocket",
    "python3-yaml", "python3-distro", "python3-six",
)

SERVICES = {
    "postgres", "redis", "seaweedfs", "airflow-init", "airflow-apiserver",
    "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker",
}

# Dummy values for the required variables (the file itself holds no secret).
REQUIRED_ENV = {
    "AIRFLOW_FERNET_KEY": "test-fernet", "AIRFLOW_API_SECRET_KEY": "test-api-secret",
    "AIRFLOW_JWT_SECRET": "test-jwt", "POSTGRES_PASSWORD": "test-pg",
    "TILESCOPE_S3_ACCESS_KEY": "test-ak", "TILESCOPE_S3_SECRET_KEY": "test-sk",
}

SYSTEM_PYTHON = Path("/usr/bin/python3")


def _cache_dir() -> Path:
    root = os.environ.get("TILESCOPE_CACHE_DIR") or Path.home() / ".cache" / "tilescope"
    return Path(root) / "compose"


def _installed(package: str) -> bool:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                          capture_output=True, text=True, check=False)
    return done.returncode == 0 and done.stdout.strip().endswith(" installed")


def _download(packages: list[str], dest: Path) -> None:
    """``apt-get download`` into ``dest``; ``apt-get update`` once only if that fails."""
    def fetch() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["apt-get", "download", "-q", *packages], cwd=dest,
                              capture_output=True, text=True, check=False, timeout=300)

    done = fetch()
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True,
                       check=False, timeout=300)
        done = fetch()
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()] or ["?"]
        pytest.skip(f"apt-get could not download docker-compose: {lines[-1]}")


def _docker_compose_root() -> Path:
    """The unpacked packages (cached; rebuilt when the package list changes)."""
    missing = [p for p in PACKAGES if p == "docker-compose" or not _installed(p)]
    key = hashlib.sha256(" ".join(missing).encode()).hexdigest()[:12]
    cache = _cache_dir()
    root = cache / f"root-{key}"
    if (root / "usr" / "bin" / "docker-compose").is_file():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / f"work-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    debs = work / "debs"
    debs.mkdir(parents=True)
    try:
        _download(missing, debs)
        unpacked = work / "root"
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(unpacked)], check=True,
                           capture_output=True, timeout=120)
        try:
            unpacked.rename(root)  # atomic: a concurrent test run may have won the race
        except OSError:
            if not (root / "usr" / "bin" / "docker-compose").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return root


@pytest.fixture(scope="module")
def compose_root() -> Path:
    if not (shutil.which("apt-get") and shutil.which("dpkg") and shutil.which("dpkg-query")):
        pytest.skip("apt-get/dpkg not available: Debian's docker-compose cannot be fetched")
    if not SYSTEM_PYTHON.is_file():
        pytest.skip("no system /usr/bin/python3 to run Debian's docker-compose with")
    return _docker_compose_root()


def start_compose(root: Path, args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """``docker-compose -f docker-compose.yaml ARGS`` with only ``env`` (plus basics) set."""
    full_env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "PYTHONWARNINGS": "ignore",
                "PYTHONPATH": str(root / "usr" / "lib" / "python3" / "dist-packages"), **env}
    return subprocess.Popen(
        [str(SYSTEM_PYTHON), str(root / "usr" / "bin" / "docker-compose"),
         "-f", str(COMPOSE_FILE), *args],
        cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_compose(root: Path, args: list[str], env: dict[str, str]) -> \
        subprocess.CompletedProcess[str]:
    return finish(start_compose(root, args, env))


def test_compose_config_validates(compose_root: Path) -> None:
    done = run_compose(compose_root, ["config", "-q"], REQUIRED_ENV)
    assert done.returncode == 0, done.stderr


def test_compose_refuses_to_run_without_the_secrets(compose_root: Path) -> None:
    runs = {name: start_compose(compose_root, ["config", "-q"],
                                {k: v for k, v in REQUIRED_ENV.items() if k != name})
            for name in REQUIRED_ENV}
    for name, proc in runs.items():
        done = finish(proc)
        assert done.returncode != 0, f"compose ran without {name}"
        assert name in done.stderr


def _published(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host_ip, spec) for each port entry, short ("ip:host:container") or long syntax."""
    out = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            out.append((str(entry.get("host_ip", "")), repr(entry)))
        else:  # "IP:HOST:CONTAINER"; HOST may be "${VAR:-8080}" in the raw file
            spec = str(entry)
            out.append(("127.0.0.1" if spec.startswith("127.0.0.1:") else "", spec))
    return out


def test_expected_services_and_loopback_ports_in_the_file() -> None:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    services = doc["services"]
    assert set(services) >= SERVICES
    published = {name: _published(svc) for name, svc in services.items()}
    for name, entries in published.items():
        for host_ip, spec in entries:
            assert host_ip == "127.0.0.1", f"{name} publishes {spec} beyond loopback"
    assert published["airflow-apiserver"] and published["seaweedfs"]
    for name in ("postgres", "redis", "airflow-worker", "airflow-scheduler"):
        assert not published[name], f"{name} should not be published"


def test_resolved_config_binds_loopback_only(compose_root: Path) -> None:
    done = run_compose(compose_root, ["config"], {**REQUIRED_ENV, "AIRFLOW_API_PORT": "18080"})
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert set(services) >= SERVICES
    ports = {name: _published(svc) for name, svc in services.items() if svc.get("ports")}
    assert ports["airflow-apiserver"] == [("127.0.0.1", "127.0.0.1:18080:8080/tcp")]
    assert all(ip == "127.0.0.1" for entries in ports.values() for ip, _ in entries)


def test_no_secret_literals_and_the_stack_is_wired() -> None:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    services = doc["services"]
    for name, svc in services.items():
        env = svc.get("environment") or {}
        for key, value in env.items():
            if any(word in key for word in ("PASSWORD", "SECRET", "FERNET", "ACCESS_KEY")):
                assert "${" in str(value) and ":?" in str(value), f"{name}.{key} is a literal"
    common = doc["x-airflow-common"]
    assert common["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    mounts = {str(v).split(":")[0] for v in common["volumes"]}
    assert {"./dags", "./plugins", "./include"} <= mounts
    init = services["airflow-init"]["command"][-1]
    for step in ("airflow db migrate", "airflow pools set tilescope",
                 "airflow pools get tilescope", "connections add aws_default",
                 "connections add tilescope_catalog", "pip install"):
        assert step in init
    seaweed = " ".join(services["seaweedfs"]["command"])
    assert "weed mini" in seaweed and "server -s3" not in seaweed
    for flag in ("-s3.autoCreateBucket=false", "-s3.allowDeleteBucketNotEmpty=false",
                 "-master.telemetry=false", "-webdav=false", "-admin.ui=false"):
        assert flag in seaweed


def test_generated_env_file_satisfies_compose(compose_root: Path, tmp_path: Path) -> None:
    from tilescope.stack.cli import main

    assert main(["--state-dir", str(tmp_path), "compose-env"]) == 0
    env_file = tmp_path / "compose.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    names = {line.split("=", 1)[0] for line in env_file.read_text().splitlines()}
    assert set(REQUIRED_ENV) <= names
    before = env_file.read_text()
    assert main(["--state-dir", str(tmp_path), "compose-env"]) == 0
    assert env_file.read_text() == before, "secrets are generated once"
    done = run_compose(compose_root, ["--env-file", str(env_file), "config", "-q"], {})
    assert done.returncode == 0, done.stderr


def test_celery_settings_are_those_the_celery_e2e_test_proves(compose_root: Path) -> None:
    """tests/dags/test_celery_e2e.py runs these on the host: PostgreSQL metadata DB and
    result backend, Redis broker, two or more workers without log servers (logs read from the
    shared volume) whose total task slots exceed the pool, so the pool caps the regions."""
    done = run_compose(compose_root, ["config"], REQUIRED_ENV)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    worker = services["airflow-worker"]
    env = worker["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql")
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379/")
    assert worker["command"] == "celery worker --skip-serve-logs"
    assert "ping" in " ".join(worker["healthcheck"]["test"])
    replicas = int(worker["deploy"]["replicas"])
    assert replicas >= 2
    slots = int(env["TILESCOPE_POOL_SLOTS"])
    assert replicas * int(env["AIRFLOW__CELERY__WORKER_CONCURRENCY"]) > slots
    logs = {name: [v for v in svc.get("volumes", []) if "/opt/airflow/logs" in str(v)]
            for name, svc in services.items() if name.startswith("airflow-")}
    assert all(logs.values()), f"every Airflow service mounts the shared log volume: {logs}"
