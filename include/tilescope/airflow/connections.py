"""Airflow connections as plain clients: the one door from the core to Airflow.

A model backend, the moderation gate or the scene description given a ``conn_id`` asks this
module for its client, lazily, inside the call that needs it; nothing else below
:mod:`tilescope.tasks` imports Airflow (``tests/test_layers.py`` checks it). Credentials,
region and ``endpoint_url`` therefore live in Airflow connections, never in code or options.
"""

from __future__ import annotations

import base64
from typing import Any

from tilescope.errors import ConfigError
from tilescope.settings import AWS_CONN_ID
from tilescope.storage import S3Client


def s3_client(conn_id: str | None = None) -> S3Client:
    """A boto3 S3 client from an Airflow AWS connection (default ``TILESCOPE_AWS_CONN_ID``;
    endpoint_url in its extra), retrying
    with backoff (:func:`tilescope.storage.resilient_config`; the connection's
    ``config_kwargs`` win) and logging each failed attempt."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from tilescope.storage import log_retries, resilient_config

    hook = S3Hook(aws_conn_id=conn_id or AWS_CONN_ID.get())
    return log_retries(hook.get_client_type(region_name=hook.region_name,
                                            config=resilient_config(hook.config)))


def aws_client(client_type: str, conn_id: str | None, *, timeout: float = 60.0,
               region_name: str | None = None) -> Any:
    """A boto3 client from the Airflow AWS connection ``conn_id`` (``None``: boto3's default
    credential chain), with botocore retries off and ``timeout`` seconds to connect and read.

    The connection's own ``config_kwargs`` (proxies, signature version...) are kept; only
    retries and timeouts are overridden.
    """
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    from botocore.config import Config

    if client_type == "bedrock-runtime":
        from airflow.providers.amazon.aws.hooks.bedrock import BedrockRuntimeHook

        hook: AwsBaseHook = BedrockRuntimeHook(aws_conn_id=conn_id, region_name=region_name)
    else:
        hook = AwsBaseHook(aws_conn_id=conn_id, client_type=client_type,
                           region_name=region_name)
    ours = Config(retries={"total_max_attempts": 1, "mode": "standard"},
                  connect_timeout=timeout, read_timeout=timeout)
    return hook.get_client_type(region_name=hook.region_name, config=hook.config.merge(ours))


def http_endpoint(conn_id: str) -> tuple[str, dict[str, str]]:
    """``(base URL, headers)`` from an Airflow HTTP connection."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    host = (conn.host or "").rstrip("/")
    if not host:
        raise ConfigError(f"connection {conn_id!r} has no host")
    if "://" not in host:
        host = f"{conn.schema or 'http'}://{host}"
    if conn.port:
        host = f"{host}:{conn.port}"
    extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else {}
    headers = {str(k): str(v) for k, v in (extra.get("headers") or {}).items()}
    if conn.login:
        token = base64.b64encode(f"{conn.login}:{conn.password or ''}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    elif conn.password:
        headers["Authorization"] = f"Bearer {conn.password}"
    return host, headers
