"""sagemaker and sagemaker-async against moto's in-process server (InvokeEndpoint and
InvokeEndpointAsync are implemented there, answers queued through moto's API) and against a
local server speaking the SageMaker runtime's REST-JSON protocol for the error shapes
(``ModelError`` with the container's status, ``ValidationError``, ``ServiceUnavailable``)
and an asynchronous endpoint that really reads its input from S3 and writes its output
later."""

from __future__ import annotations

import asyncio
import io
import json
import uuid

import numpy as np
import pytest
import requests
from PIL import Image
from support.cloud_wire import AsyncInferenceEndpoint, LocalServer, Reply, aws_connection, aws_error

from tilescope.airflow.triggers import AsyncInferenceTrigger, outcomes_from_event
from tilescope.errors import ModelOutputError, ModelRequestError, ModelThrottledError
from tilescope.models import load_model
from tilescope.models.sagemaker import AsyncInvocation

pytestmark = pytest.mark.contract

FAST = {"base_delay": 0.01, "max_delay": 0.05}
SLICE = np.zeros((200, 300, 3), np.uint8)
SLICE[50:100, 60:160] = 255
INPUTS = "sm-inputs"


def answer(*boxes: tuple[list[float], float, str]) -> dict:
    return {"predictions": [{"bbox": b, "confidence": s, "class": n} for b, s, n in boxes]}


RESPONSE = {"path": "predictions", "box": "bbox", "score": "confidence", "label": "class",
            "box_format": "xywh"}


@pytest.fixture
def moto_aws(s3_server, s3_client, monkeypatch):
    """The connection ``moto_aws`` → the moto server (S3 and SageMaker runtime)."""
    monkeypatch.setenv("AIRFLOW_CONN_MOTO_AWS", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": s3_server, "region_name": "us-east-1"}}))
    s3_client.create_bucket(Bucket=INPUTS)
    return s3_client


def queue_moto(server: str, kind: str, results: list[dict]) -> None:
    requests.post(f"{server}/moto-api/static/sagemaker/{kind}",
                  json={"region": "us-east-1", "results": results}, timeout=10).raise_for_status()


def test_contract_moto_invoke_endpoint_with_adapter(moto_aws, s3_server):
    queue_moto(s3_server, "endpoint-results", [{
        "Body": json.dumps(answer(([60, 50, 100, 50], 0.93, "box"), ([290, 190, 40, 40], 0.5,
                                                                       "corner"))),
        "ContentType": "application/json", "InvokedProductionVariant": "AllTraffic",
        "CustomAttributes": ""}])
    # body="json": moto's server decodes request bodies as UTF-8, so it cannot take PNG bytes
    with load_model("sagemaker", endpoint_name=f"ep-{uuid.uuid4().hex[:8]}", conn_id="moto_aws",
                    body="json", response=RESPONSE, **FAST) as detector:
        (dets,) = detector.predict([SLICE])
        names = list(detector.category_names)
    assert [names[c] for c in dets.category_ids] == ["box", "corner"]
    assert dets.boxes.tolist() == [[60, 50, 160, 100], [290, 190, 300, 200]]  # clipped


def test_contract_moto_async_output_and_failure(moto_aws, s3_server):
    queue_moto(s3_server, "async-endpoint-results", [
        {"data": json.dumps(answer(([10, 10, 20, 20], 0.8, "thing")))},
        {"is_failure": True, "data": "Received server error (500) from primary: OOM"}])
    options = {"endpoint_name": f"async-{uuid.uuid4().hex[:8]}", "conn_id": "moto_aws",
               "body": "json",
               "input_uri": f"s3://{INPUTS}/in/", "response": RESPONSE, "poll_interval": 0.05,
               "max_wait": 5, **FAST}
    with load_model("sagemaker-async", **options) as detector:
        (dets,) = detector.predict([SLICE])
        assert dets.boxes.tolist() == [[10, 10, 30, 30]]
        with pytest.raises(ModelThrottledError, match=r"failed .*server error \(500\)"):
            detector.predict([SLICE])
    listing = moto_aws.list_objects_v2(Bucket=INPUTS)
    assert listing.get("KeyCount", 0) == 0  # staged inputs removed after reading


@pytest.fixture
def runtime(monkeypatch):
    with LocalServer(signing_service="sagemaker") as server:
        aws_connection(monkeypatch, "sagemaker_test", server.url)
        yield server
        getattr(server.handler, "close", lambda: None)()  # an async endpoint's writer


def realtime(**options):
    return load_model("sagemaker", endpoint_name="detector", conn_id="sagemaker_test",
                      response=RESPONSE, **{**FAST, **options})


def ok(payload: dict) -> Reply:
    return Reply(200, payload, headers={"x-Amzn-Invoked-Production-Variant": "AllTraffic"})


def test_contract_invoke_endpoint_request_shapes(runtime):
    runtime.queue += [ok(answer(([1, 2, 3, 4], 0.9, "a"))), ok(answer())]
    with realtime(target_variant="blue", custom_attributes="trace=1") as detector:
        detector.predict([SLICE])
    with realtime(body="json", image_format="jpeg") as detector:
        detector.predict([SLICE])
    image, document = runtime.requests
    assert image.path == "/endpoints/detector/invocations"
    assert image.header("content-type") == "image/png"
    assert image.header("x-amzn-sagemaker-target-variant") == "blue"
    assert image.header("x-amzn-sagemaker-custom-attributes") == "trace=1"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(image.body))), SLICE)
    assert document.header("content-type") == "application/json"
    body = document.json()
    assert (body["width"], body["height"], body["format"]) == (300, 200, "jpeg")
    assert not runtime.signature_problems


def test_contract_model_error_follows_the_container_status(runtime):
    runtime.queue += [
        aws_error(424, "ModelError", "container failed", OriginalStatusCode=503,
                  OriginalMessage="warming up", LogStreamArn="arn:aws:logs:x"),
        aws_error(429, "ModelNotReadyException", "not ready"),
        aws_error(503, "ServiceUnavailable", "busy"),
        ok(answer())]
    with realtime() as detector:
        assert len(detector.predict([SLICE])[0]) == 0
    assert len(runtime.requests) == 4
    runtime.queue.append(aws_error(424, "ModelError", "bad input", OriginalStatusCode=400,
                                   OriginalMessage="cannot decode image"))
    with realtime() as detector, pytest.raises(ModelRequestError, match="container status 400"):
        detector.predict([SLICE])
    assert len(runtime.requests) == 5  # not retried


def test_contract_validation_error_fails_fast(runtime):
    runtime.queue.append(aws_error(400, "ValidationError", "Endpoint detector not found"))
    with realtime() as detector, pytest.raises(ModelRequestError, match="not found"):
        detector.predict([SLICE])
    assert len(runtime.requests) == 1


@pytest.mark.parametrize("body", [b"<html>502</html>", b'{"predictions": [{"bbox": [1, 2]}]}'])
def test_contract_malformed_answer(runtime, body):
    runtime.queue.append(Reply(200, body))
    with realtime() as detector, pytest.raises(ModelOutputError, match=r"sagemaker \(detector\)"):
        detector.predict([SLICE])


def bright_box(pixels: np.ndarray) -> dict:
    """A real (tiny) detector: the box around the bright pixels."""
    ys, xs = np.nonzero(pixels.max(axis=2) > 128)
    box = [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]
    return answer((box, 0.99, "bright"))


def async_endpoint(s3, **options) -> AsyncInferenceEndpoint:
    """An asynchronous endpoint over moto's S3 that writes its outputs to ``INPUTS``."""
    return AsyncInferenceEndpoint(s3, INPUTS, bright_box, **options)


def async_model(**options):
    return load_model("sagemaker-async", endpoint_name="slow", conn_id="sagemaker_test",
                      s3_conn_id="moto_aws", input_uri=f"s3://{INPUTS}/staged",
                      response=RESPONSE, poll_interval=0.05, **{**FAST, **options})


def test_contract_async_waits_for_the_output_object(runtime, moto_aws):
    runtime.handler = async_endpoint(moto_aws, delay=0.3)
    with async_model() as detector:
        (dets,) = detector.predict([SLICE])
    assert dets.boxes.tolist() == [[60, 50, 160, 100]]
    (request,) = runtime.requests
    assert request.path == "/endpoints/slow/async-invocations"
    assert request.header("x-amzn-sagemaker-content-type") == "image/png"
    assert moto_aws.list_objects_v2(Bucket=INPUTS).get("KeyCount", 0) == 0  # cleaned up


def test_contract_async_client_failure_fails_fast_and_timeout_is_retryable(runtime, moto_aws):
    runtime.handler = async_endpoint(moto_aws, delay=0.05,
                                    fail_with="Received client error (400) from primary")
    with async_model() as detector, pytest.raises(ModelRequestError, match="client error"):
        detector.predict([SLICE])
    runtime.handler = async_endpoint(moto_aws, delay=30)
    with async_model(max_wait=0.3) as detector, \
            pytest.raises(ModelThrottledError, match="not there after"):
        detector.predict([SLICE])
    runtime.handler.close()


def test_contract_async_throttled_submission_is_retried(runtime, moto_aws):
    runtime.handler = async_endpoint(moto_aws, delay=0.05)
    runtime.queue.append(aws_error(500, "InternalFailure", "hiccup"))
    with async_model() as detector:
        (dets,) = detector.predict([SLICE])
    assert len(dets) == 1 and len(runtime.requests) == 2


def run_trigger(trigger: AsyncInferenceTrigger) -> list:
    """Every event of the trigger, run to completion in an event loop (as the triggerer)."""

    async def collect() -> list:
        return [event async for event in trigger.run()]

    return asyncio.run(collect())


def test_trigger_fires_when_outputs_appear(runtime, moto_aws):
    """The deferrable path: submit, then wait in an event loop (as the triggerer does)."""
    runtime.handler = async_endpoint(moto_aws, delay=0.4)
    with async_model() as detector:
        calls = [detector.submit(SLICE), detector.submit(SLICE[:, ::-1].copy())]
        trigger = AsyncInferenceTrigger([c.to_dict() for c in calls], "moto_aws",
                                        poll_interval=0.1, max_wait=10)
        classpath, kwargs = trigger.serialize()
        assert classpath == "tilescope.airflow.triggers.AsyncInferenceTrigger"
        (event,) = run_trigger(AsyncInferenceTrigger(**kwargs))
        outcomes = outcomes_from_event(event.payload)
        dets = detector.finish([AsyncInvocation.from_dict(c.to_dict()) for c in calls],
                               outcomes)
    assert [d.boxes.tolist() for d in dets] == [[[60, 50, 160, 100]], [[140, 50, 240, 100]]]

    late = AsyncInferenceTrigger([calls[0].to_dict() | {"output_uri": f"s3://{INPUTS}/never",
                                                         "failure_uri": None}],
                                 "moto_aws", poll_interval=0.05, max_wait=0.2)
    (event,) = run_trigger(late)
    assert event.payload["status"] == "timeout"
    with pytest.raises(ModelThrottledError, match="did not appear"):
        outcomes_from_event(event.payload)
