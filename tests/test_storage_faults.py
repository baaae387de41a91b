"""S3 faults at the library level, on real servers: a crashed-and-restarted S3 server is ridden
out by botocore retries with backoff; an outage beyond the retry budget is a clear, retryable
:class:`StorageError`."""

from __future__ import annotations

import json
import logging
import threading
import time

import boto3
import pytest
from botocore.config import Config

from tilescope.errors import StorageError
from tilescope.stack import procs
from tilescope.storage import (
    S3_CONNECT_TIMEOUT,
    default_s3_client,
    log_retries,
    read_bytes,
    resilient_config,
    write_bytes,
)

BUCKET = "faults"


def aws_connection(endpoint: str, **extra) -> str:
    return json.dumps({"conn_type": "aws", "login": "testing", "password": "testing",
                       "extra": {"endpoint_url": endpoint, "region_name": "us-east-1", **extra}})


def test_s3_clients_retry_with_backoff(monkeypatch):
    """The CLI's client and the DAG's (from an Airflow connection) both use botocore's
    standard mode — connection errors, 5xx and throttling retried with jittered backoff —
    10 attempts, 5 s connect timeout; a connection's own ``config_kwargs`` win."""
    from tilescope.airflow.connections import s3_client

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AIRFLOW_CONN_FAULTS_PLAIN", aws_connection("http://127.0.0.1:9"))
    monkeypatch.setenv("AIRFLOW_CONN_FAULTS_TUNED", aws_connection(
        "http://127.0.0.1:9", config_kwargs={"retries": {"max_attempts": 2}, "read_timeout": 7}))
    for client in (default_s3_client(), s3_client("faults_plain")):
        assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 10}
        assert client.meta.config.connect_timeout == S3_CONNECT_TIMEOUT
    tuned = s3_client("faults_tuned")
    assert tuned.meta.config.retries == {"mode": "standard", "total_max_attempts": 3}
    assert tuned.meta.config.read_timeout == 7
    assert tuned.meta.endpoint_url == "http://127.0.0.1:9"


def test_an_outage_beyond_the_retry_budget_is_a_retryable_storage_error(caplog):
    (port,) = procs.free_ports(1)  # nothing listens: every attempt is refused
    client = log_retries(boto3.client(
        "s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=resilient_config(Config(retries={"total_max_attempts": 3}))))
    caplog.set_level(logging.WARNING, logger="tilescope.storage")
    for call in (lambda: read_bytes(f"s3://{BUCKET}/a.json", client),
                 lambda: write_bytes(f"s3://{BUCKET}/a.json", b"{}", client=client)):
        with pytest.raises(StorageError, match=f"s3://{BUCKET}/a.json") as caught:
            call()
        assert caught.value.retryable  # the task fails for Airflow to retry, not for good
    attempts = [r.getMessage() for r in caplog.records if r.name == "tilescope.storage"]
    assert len(attempts) == 6 and all("EndpointConnectionError" in m for m in attempts)
    assert sum(m.endswith("giving up") for m in attempts) == 2


@pytest.mark.slow
def test_reads_and_writes_ride_out_an_s3_crash_and_restart(tmp_path, caplog):
    """SeaweedFS is SIGKILLed and comes back 4 s later on the same ports and data: a write
    and a read issued while it is down succeed once it is back, without the caller seeing an
    error, and every failed attempt is logged."""
    from support.s3_faults import crash, restart, start

    server = start(tmp_path, BUCKET)
    servers = [server]
    try:
        # default_s3_client's config and logging, with this server's keys (the default
        # boto3 session caches the first keys it resolved in this test process).
        client = log_retries(boto3.session.Session().client(
            "s3", endpoint_url=server.endpoint, region_name="us-east-1",
            aws_access_key_id=server.credentials.access_key,
            aws_secret_access_key=server.credentials.secret_key,
            config=resilient_config(Config(s3={"addressing_style": "path"}))))
        before = bytes(range(256)) * 4096  # 1 MiB written before the crash
        write_bytes(f"s3://{BUCKET}/before.bin", before, client=client)

        down_at = crash(server)
        back = threading.Timer(4.0, lambda: servers.append(restart(server)))
        back.start()
        caplog.set_level(logging.WARNING, logger="tilescope.storage")
        write_bytes(f"s3://{BUCKET}/during.json", b'{"written": "while S3 was down"}',
                    "application/json", client=client)
        assert read_bytes(f"s3://{BUCKET}/before.bin", client) == before
        waited = time.monotonic() - down_at
        back.join()
        assert read_bytes(f"s3://{BUCKET}/during.json", client) == \
            b'{"written": "while S3 was down"}'
        failed = [r.getMessage() for r in caplog.records if r.name == "tilescope.storage"]
        assert waited >= 4.0 and failed, "the outage must have been hit"
        assert all(m.startswith("S3 PutObject attempt") for m in failed)
        assert not any("giving up" in m for m in failed)
        print(f"S3 down 4 s: the write retried {len(failed)} times, done after {waited:.1f} s")
    finally:
        for each in servers:
            each.stop()
