"""The embedded stack for real: SeaweedFS from the wheel and Airflow's scheduler path.

Both start on free ports in a temp directory, so they run beside a ``make run`` stack.
Every process is stopped in ``finally`` (by session: grandchildren included) even when an
assertion fails, and the tests check that nothing is left and nothing listened beyond
127.0.0.1.
"""

from __future__ import annotations

import sqlite3
import stat
import textwrap
from datetime import datetime
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from support.intervals import max_overlap

from tilescope.stack import procs, provision
from tilescope.stack.airflow_stack import AirflowStack
from tilescope.stack.cli import main
from tilescope.stack.seaweed import SeaweedPorts, find_weed, s3_client, start_seaweed
from tilescope.stack.state import Registry, S3Credentials

pytestmark = pytest.mark.slow

BUCKET = "tilescope"


def _weed_or_skip() -> None:
    try:
        find_weed()
    except Exception as exc:
        pytest.skip(f"SeaweedFS binary unavailable: {exc}")


def test_seaweed_round_trip_auth_down_and_persistence(tmp_path: Path, listening_sockets,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _weed_or_skip()
    ports = SeaweedPorts.free()
    server = start_seaweed(tmp_path, ports)
    restarted = None
    try:
        server.wait_ready(timeout=60)
        creds_file = tmp_path / "s3-credentials.json"
        assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
        assert server.credentials.secret_key not in Path(__file__).read_text()

        assert server.ensure_bucket(BUCKET) is True
        assert server.ensure_bucket(BUCKET) is False
        client = server.client()
        client.put_object(Bucket=BUCKET, Key="incoming/a.bin", Body=b"\x00tilescope\xff")
        got = client.get_object(Bucket=BUCKET, Key="incoming/a.bin")["Body"].read()
        assert got == b"\x00tilescope\xff"

        wrong = s3_client(server.endpoint, S3Credentials(server.credentials.access_key,
                                                         "not-the-secret"), retries=1)
        with pytest.raises(ClientError, match="SignatureDoesNotMatch"):
            wrong.get_object(Bucket=BUCKET, Key="incoming/a.bin")
        stranger = s3_client(server.endpoint, S3Credentials("AKNOBODY", "x" * 30), retries=1)
        with pytest.raises(ClientError, match="InvalidAccessKeyId"):
            stranger.list_buckets()

        addresses = listening_sockets(procs.session_members(server.record.pid))
        assert {port for _, port in addresses} == set(ports.named().values())
        assert {host for host, _ in addresses} == {"127.0.0.1"}

        # `down` stops what the registry lists: the whole session, nothing left behind.
        Registry(tmp_path).put(server.record, {"s3": ports.s3})
        assert main(["--state-dir", str(tmp_path), "down"]) == 0
        assert "stopped: seaweedfs" in capsys.readouterr().out
        assert procs.session_members(server.record.pid) == []
        assert procs.port_is_free(ports.s3)

        # Same state dir again: same generated keys, same objects.
        restarted = start_seaweed(tmp_path, ports)
        restarted.wait_ready(timeout=60)
        assert restarted.credentials == server.credentials
        again = restarted.client().get_object(Bucket=BUCKET, Key="incoming/a.bin")
        assert again["Body"].read() == b"\x00tilescope\xff"
    finally:
        server.stop()
        if restarted is not None:
            restarted.stop()
    assert procs.session_members(server.record.pid) == []
    if restarted is not None:
        assert procs.session_members(restarted.record.pid) == []


POOL_PROBE_DAG = """
import time

from airflow.sdk import dag, task


@dag(schedule=None, max_active_tasks=16, catchup=False)
def pool_probe():
    @task
    def regions():
        return list(range(8))

    @task(pool="tilescope")
    def analyze(region):
        time.sleep(1.5)
        return region

    analyze.expand(region=regions())


pool_probe()
"""


def test_max_overlap() -> None:
    t = [datetime(2026, 1, 1, 0, 0, s) for s in range(6)]
    assert max_overlap([(t[0], t[2]), (t[1], t[3]), (t[2], t[4])]) == 2
    assert max_overlap([(t[0], t[1]), (t[1], t[2])]) == 1
    assert max_overlap([(t[0], t[5]), (t[1], t[4]), (t[2], t[3])]) == 3


def test_real_scheduler_pool_caps_mapped_concurrency(tmp_path: Path, listening_sockets) -> None:
    slots = 2
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "pool_probe.py").write_text(textwrap.dedent(POOL_PROBE_DAG))
    (port,) = procs.free_ports(1)
    stack = AirflowStack(tmp_path / "airflow", dags, port,
                         components=("api-server", "scheduler", "dag-processor"))
    sessions: list[int] = []
    try:
        stack.migrate()
        sessions = [rec.pid for rec in stack.start().values()]
        stack.wait_ready(timeout=240)
        addresses = set()
        for pid in sessions:
            addresses |= listening_sockets(procs.session_members(pid))
        assert addresses == {("127.0.0.1", port)}, "only the api-server listens, on loopback"

        api = stack.api()
        provision.ensure_pool(api, provision.POOL, slots)
        provision.wait_for_dag(api, "pool_probe", timeout=120)
        provision.unpause(api, "pool_probe")
        run = provision.trigger(api, "pool_probe", {"image_uri": "s3://tilescope/none.jpg"})
        state = provision.wait_for_run(api, "pool_probe", run["dag_run_id"], timeout=180)
        assert state == "success"
    finally:
        stack.stop()
    for pid in sessions:
        assert procs.session_members(pid) == [], "a process of the Airflow stack survived"

    with sqlite3.connect(stack.db_path) as db:
        rows = db.execute(
            "SELECT start_date, end_date, pool FROM task_instance WHERE dag_id = 'pool_probe' "
            "AND task_id = 'analyze' AND map_index >= 0").fetchall()
    assert len(rows) == 8
    assert {pool for _, _, pool in rows} == {provision.POOL}
    intervals = [(datetime.fromisoformat(s), datetime.fromisoformat(e)) for s, e, _ in rows]
    peak = max_overlap(intervals)
    assert 2 <= peak <= slots, f"peak concurrency {peak} with a {slots}-slot pool"
