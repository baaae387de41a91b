"""AWS clients for model backends, and AWS errors mapped onto tilescope's error classes.

Clients come from the amazon provider's hooks, so credentials, region and ``endpoint_url``
live in an Airflow connection (``aws_conn_id``), never in code or options. botocore's own
retries are switched off: :mod:`tilescope.models.retry` is the one place that retries, so
attempts are counted and jittered once, not twice.
"""

from __future__ import annotations

from typing import Any

from tilescope.errors import ModelError, ModelRequestError
from tilescope.models.remote import TRANSIENT_STATUSES, throttled

#: error codes that mean "the service is busy or briefly broken", whatever the HTTP status
#: (Rekognition sends ThrottlingException with 500, ProvisionedThroughput... with 400)
TRANSIENT_CODES = frozenset({
    "ThrottlingException", "Throttling", "ThrottledException", "TooManyRequestsException",
    "ProvisionedThroughputExceededException", "RequestLimitExceeded", "LimitExceededException",
    "ServiceUnavailable", "ServiceUnavailableException", "InternalServerException",
    "InternalServerError", "InternalFailure", "ModelNotReadyException", "ModelTimeoutException",
    "RequestTimeout", "RequestTimeoutException", "SlowDown",
})


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


def classify_aws_error(exc: Exception, backend: str) -> Exception:
    """The tilescope error for an exception from a boto3 call (returned, not raised).

    Throttling, 5xx and timeouts → retryable ``ModelThrottledError``; validation, access,
    unknown resources and other 4xx → ``ModelRequestError`` (fail fast). SageMaker's
    ``ModelError`` (the container answered an error) follows the container's own status.
    Exceptions that are not AWS errors are returned unchanged.
    """
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        ConnectTimeoutError,
        EndpointConnectionError,
        ReadTimeoutError,
    )

    if isinstance(exc, ReadTimeoutError | ConnectTimeoutError | EndpointConnectionError |
                  ConnectionError):
        return throttled(f"{backend}: {type(exc).__name__}: {exc}")
    if not isinstance(exc, ClientError):
        return exc
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    message = str(error.get("Message", "") or exc)
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    text = f"{backend}: {code or 'error'} (HTTP {status}): {message[:300]}"
    if code in ("ModelError", "ModelErrorException"):  # the model container itself failed
        original = _original_status(exc.response) or 500
        text += f" [container status {original}]"
        if original in TRANSIENT_STATUSES or original >= 500:
            return throttled(text)
        return ModelRequestError(text)
    if code in TRANSIENT_CODES or status in TRANSIENT_STATUSES or status >= 500:
        return throttled(text)
    if 400 <= status < 500 or code:
        return ModelRequestError(text)
    return ModelError(text)


def _original_status(response: dict[str, Any]) -> int | None:
    """The container's status: SageMaker's ``OriginalStatusCode``, Bedrock's
    ``originalStatusCode`` (botocore puts modelled error members beside ``Error``)."""
    for source in (response, response.get("Error", {})):
        value = source.get("OriginalStatusCode", source.get("originalStatusCode"))
        if value is not None:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None
