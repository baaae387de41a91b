"""AWS errors mapped onto tilescope's error classes, for the AWS model backends.

Their clients come from :func:`tilescope.airflow.connections.aws_client` (an Airflow
connection holds credentials, region and ``endpoint_url``; botocore's own retries are off, so
:mod:`tilescope.models.retry` is the one place that retries).
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
