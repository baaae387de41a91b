"""SageMaker endpoints as detectors: real-time (``sagemaker``) and asynchronous
(``sagemaker-async``).

Real-time: ``InvokeEndpoint`` with the slice as the body — the encoded image
(``body="image"``, the usual contract of vision containers) or JSON with the image in
base64 (``body="json"``) — and the JSON answer read by a
:class:`~tilescope.models.adapters.DetectionsAdapter` (option ``response``).

Asynchronous: every slice of a call is put to S3 under ``input_uri``, submitted with
``InvokeEndpointAsync``, and the call then waits until each invocation's ``OutputLocation``
(or ``FailureLocation``) object exists. :meth:`SageMakerAsyncModel.predict` polls S3 from
the caller (the CLI); in the DAG, ``analyze`` submits the slices and defers:
:class:`tilescope.airflow.triggers.AsyncInferenceTrigger` waits for the same objects
in Airflow's triggerer, so the wait holds no worker slot (see :mod:`tilescope.deferred`).

Errors: ``ValidationError`` and other 4xx fail fast; ``ModelError`` follows the container's
own status (4xx fail fast, 5xx retry); throttling, ``ServiceUnavailable``,
``InternalFailure``, ``ModelNotReadyException`` and timeouts retry. An asynchronous failure
object counts as the container's error: retried unless its text names a 4xx status.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tilescope.airflow.connections import aws_client
from tilescope.detections import Detections
from tilescope.errors import ConfigError, ModelOutputError, ModelRequestError
from tilescope.models.adapters import DetectionsAdapter
from tilescope.models.aws import classify_aws_error
from tilescope.models.remote import RawDetection, RemoteModel, throttled
from tilescope.models.retry import call_with_retry
from tilescope.storage import S3Client, parse_s3_uri

BODIES = ("image", "json")
_CLIENT_STATUS = re.compile(r"\b4\d\d\b")


class SageMakerModel(RemoteModel):
    """``InvokeEndpoint`` per slice.

    Options: ``endpoint_name`` (required), ``conn_id`` (Airflow AWS connection, default
    ``aws_default``), ``region_name``, ``body`` (``image`` or ``json``), ``image_field``,
    ``target_model``, ``target_variant``, ``inference_component``, ``custom_attributes``,
    ``response`` (adapter options).
    """

    name = "sagemaker"

    def __init__(self, *, endpoint_name: str = "", conn_id: str | None = "aws_default",
                 region_name: str | None = None, body: str = "image",
                 image_field: str = "image", target_model: str | None = None,
                 target_variant: str | None = None, inference_component: str | None = None,
                 custom_attributes: str | None = None,
                 response: Mapping[str, Any] | None = None, **options: Any) -> None:
        super().__init__(**options)
        if not endpoint_name:
            raise ConfigError(f"{self.name} needs endpoint_name")
        if body not in BODIES:
            raise ConfigError(f"body must be one of {BODIES}, got {body!r}")
        self.endpoint_name = endpoint_name
        self.body = body
        self.image_field = image_field
        self.adapter = DetectionsAdapter.from_options(response)
        self.routing = {k: v for k, v in (("TargetModel", target_model),
                                          ("TargetVariant", target_variant),
                                          ("InferenceComponentName", inference_component),
                                          ("CustomAttributes", custom_attributes)) if v}
        self.conn_id = conn_id
        self._client = aws_client("sagemaker-runtime", conn_id, timeout=self.timeout,
                                  region_name=region_name)

    def describe(self) -> str:
        return f"{self.name} ({self.endpoint_name})"

    def request_body(self, image: bytes, width: int, height: int) -> tuple[bytes, str]:
        """``(body, content type)`` for one slice."""
        if self.body == "image":
            return image, self.content_type
        document = {self.image_field: base64.b64encode(image).decode(), "width": width,
                    "height": height, "format": self.image_format}
        return json.dumps(document).encode(), "application/json"

    def read_answer(self, data: bytes, width: int, height: int) -> list[RawDetection]:
        """Detections from an endpoint's JSON answer (``ModelOutputError`` if unreadable)."""
        try:
            payload = json.loads(data)
        except ValueError as exc:
            raise ModelOutputError(f"{self.describe()}: the answer is not JSON: "
                                   f"{data[:200]!r}") from exc
        try:
            return self.adapter.parse(payload, width, height)
        except ValueError as exc:
            raise ModelOutputError(f"{self.describe()}: malformed detections: {exc}") from exc

    def detect(self, image: bytes, width: int, height: int) -> list[RawDetection]:
        body, content_type = self.request_body(image, width, height)
        try:
            response = self._client.invoke_endpoint(
                EndpointName=self.endpoint_name, Body=body, ContentType=content_type,
                Accept="application/json", **self.routing)
            data = response["Body"].read()
        except Exception as exc:
            raise classify_aws_error(exc, self.describe()) from exc
        return self.read_answer(data, width, height)


@dataclass(frozen=True)
class AsyncInvocation:
    """One submitted slice: where its input went and where its outcome will appear."""

    inference_id: str
    input_uri: str
    output_uri: str
    failure_uri: str | None
    width: int
    height: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AsyncInvocation:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class AsyncOutcome:
    """What appeared for an invocation: its output, or its failure object."""

    uri: str
    failed: bool


def object_exists(s3: S3Client, uri: str) -> bool:
    """Whether ``uri`` exists (a missing key is ``False``; other errors propagate)."""
    loc = parse_s3_uri(uri)
    try:
        s3.head_object(Bucket=loc.bucket, Key=loc.key)
    except Exception as exc:
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def poll_outcomes(s3: S3Client, invocations: Sequence[AsyncInvocation], *, poll_interval: float,
                  max_wait: float, sleep: Callable[[float], None] = time.sleep,
                  clock: Callable[[], float] = time.monotonic) -> list[AsyncOutcome]:
    """Wait until every invocation has an output or failure object (polling S3).

    Raises a retryable ``ModelThrottledError`` naming the pending outputs after ``max_wait``
    seconds: a busy endpoint's queue may drain on a later attempt.
    """
    deadline = clock() + max_wait
    outcomes: dict[int, AsyncOutcome] = {}
    while True:
        for index, call in enumerate(invocations):
            if index in outcomes:
                continue
            if object_exists(s3, call.output_uri):
                outcomes[index] = AsyncOutcome(call.output_uri, False)
            elif call.failure_uri and object_exists(s3, call.failure_uri):
                outcomes[index] = AsyncOutcome(call.failure_uri, True)
        if len(outcomes) == len(invocations):
            return [outcomes[i] for i in range(len(invocations))]
        if clock() >= deadline:
            pending = [c.output_uri for i, c in enumerate(invocations) if i not in outcomes]
            raise throttled(f"sagemaker-async: {len(pending)} of {len(invocations)} outputs "
                            f"not there after {max_wait:.0f} s, e.g. {pending[0]}")
        sleep(poll_interval)


class SageMakerAsyncModel(SageMakerModel):
    """``InvokeEndpointAsync`` per slice, inputs staged in S3, outputs awaited in S3.

    Options (besides ``sagemaker``'s): ``input_uri`` (required, ``s3://bucket/prefix/`` for
    the staged slices), ``s3_conn_id`` (default: ``conn_id``), ``poll_interval`` (2 s),
    ``max_wait`` (900 s), ``invocation_timeout`` / ``request_ttl`` (seconds, passed to
    SageMaker), ``keep_objects`` (leave inputs and outputs in S3; default: delete once read),
    ``deferrable`` (default true: the DAG's ``analyze`` waits in the triggerer; false: it
    polls from the worker, for a deployment without a triggerer).
    """

    name = "sagemaker-async"

    def __init__(self, *, input_uri: str = "", s3_conn_id: str | None = None,
                 poll_interval: float = 2.0, max_wait: float = 900.0,
                 invocation_timeout: int | None = None, request_ttl: int | None = None,
                 keep_objects: bool = False, deferrable: bool = True, **options: Any) -> None:
        super().__init__(**options)
        if not input_uri.startswith("s3://"):
            raise ConfigError(f"{self.name} needs input_uri (s3://bucket/prefix/ for inputs)")
        self.input_uri = input_uri.rstrip("/") + "/"
        self.poll_interval = float(poll_interval)
        self.max_wait = float(max_wait)
        self.keep_objects = bool(keep_objects)
        self.deferrable = bool(deferrable)
        self.s3_conn_id = s3_conn_id or self.conn_id
        self.limits = {k: int(v) for k, v in (("InvocationTimeoutSeconds", invocation_timeout),
                                              ("RequestTTLSeconds", request_ttl)) if v}
        from tilescope.airflow.connections import s3_client

        self._s3 = s3_client(self.s3_conn_id) if self.s3_conn_id else _default_s3()

    def submit(self, pixels: np.ndarray) -> AsyncInvocation:
        """Stage one slice in S3 and submit it (throttling retried)."""
        height, width = pixels.shape[:2]
        body, content_type = self.request_body(self.encode(pixels), width, height)
        inference_id = uuid.uuid4().hex
        extension = "json" if self.body == "json" else self.image_format
        input_uri = f"{self.input_uri}{inference_id}.{extension}"
        loc = parse_s3_uri(input_uri)
        self._s3.put_object(Bucket=loc.bucket, Key=loc.key, Body=body, ContentType=content_type)

        def invoke() -> dict[str, Any]:
            try:
                return self._client.invoke_endpoint_async(
                    EndpointName=self.endpoint_name, InputLocation=input_uri,
                    ContentType=content_type, Accept="application/json",
                    InferenceId=inference_id, **self.limits, **self.routing)
            except Exception as exc:
                raise classify_aws_error(exc, self.describe()) from exc

        try:
            response = call_with_retry(invoke, self.retry)
        except BaseException:  # refused: its staged input would never be read or removed
            if not self.keep_objects:
                with contextlib.suppress(Exception):  # must not hide the refusal
                    self._s3.delete_object(Bucket=loc.bucket, Key=loc.key)
            raise
        if not response.get("OutputLocation"):
            raise ModelOutputError(f"{self.describe()}: InvokeEndpointAsync returned no "
                                   "OutputLocation")
        return AsyncInvocation(str(response.get("InferenceId") or inference_id), input_uri,
                               response["OutputLocation"], response.get("FailureLocation"),
                               width, height)

    def read_outcome(self, call: AsyncInvocation, outcome: AsyncOutcome) -> list[RawDetection]:
        """Detections of a finished invocation; a failure object becomes an error."""
        loc = parse_s3_uri(outcome.uri)
        data = self._s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
        if not outcome.failed:
            return self.read_answer(data, call.width, call.height)
        text = data[:500].decode(errors="replace")
        message = f"{self.describe()}: inference {call.inference_id} failed ({outcome.uri}): {text}"
        if _CLIENT_STATUS.search(text):
            raise ModelRequestError(message)
        raise throttled(message)

    def finish(self, calls: Sequence[AsyncInvocation],
               outcomes: Sequence[AsyncOutcome]) -> list[Detections]:
        """Per-slice detections from finished invocations; staged objects removed after."""
        try:
            return [self.to_detections(self.read_outcome(c, o), c.width, c.height)
                    for c, o in zip(calls, outcomes, strict=True)]
        finally:
            if not self.keep_objects:
                self.delete(calls, outcomes)

    def delete(self, calls: Sequence[AsyncInvocation],
               outcomes: Sequence[AsyncOutcome]) -> None:
        """Remove staged inputs and read outcomes (best effort: a leftover costs storage)."""
        for uri in [c.input_uri for c in calls] + [o.uri for o in outcomes]:
            loc = parse_s3_uri(uri)
            try:
                self._s3.delete_object(Bucket=loc.bucket, Key=loc.key)
            except Exception:  # clean-up must not hide the result
                continue

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        calls = [self.submit(image) for image in images]
        outcomes = poll_outcomes(self._s3, calls, poll_interval=self.poll_interval,
                                 max_wait=self.max_wait)
        return self.finish(calls, outcomes)


def _default_s3() -> S3Client:
    import boto3

    return boto3.client("s3")
