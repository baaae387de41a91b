"""http and kserve-v2 against local model servers on 127.0.0.1 that run a real (small)
detector on the pixels they receive: the plain REST shape (base64 JSON or binary body) and
the Open Inference Protocol (KServe v2) shape, with their error statuses."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
from PIL import Image
from support.blob_model import BrightBlobModel, blob_image
from support.cloud_wire import LocalServer, Reply

from tilescope.errors import ConfigError, ModelOutputError, ModelRequestError, ModelThrottledError
from tilescope.models import load_model

pytestmark = pytest.mark.contract

FAST = {"base_delay": 0.01, "max_delay": 0.05}
PIXELS, TRUTH = blob_image(320, 240, 3, seed=4)
BLOBS = BrightBlobModel()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def rest_server(request) -> Reply:
    """``POST /predict``: JSON ``{"image": b64}`` or an image body → ``{"detections": [...]}``."""
    if request.path != "/predict":
        return Reply(404, {"error": "not found"})
    if request.header("content-type") == "application/json":
        pixels = decode(base64.b64decode(request.json()["image"]))
    else:
        pixels = decode(request.body)
    (dets,) = BLOBS.predict([pixels])
    return Reply(200, {"detections": [
        {"box": b, "score": s, "label": BrightBlobModel.CATEGORY_NAMES[c]}
        for b, s, c in zip(dets.boxes.tolist(), dets.scores.tolist(),
                           dets.category_ids.tolist(), strict=True)]})


@pytest.fixture
def server():
    with LocalServer(rest_server) as local:
        yield local


def boxes_by_name(detector, dets) -> dict[str, list[list[float]]]:
    names = detector.category_names
    out: dict[str, list[list[float]]] = {}
    for box, c in zip(dets.boxes.tolist(), dets.category_ids, strict=True):
        out.setdefault(names[c], []).append(box)
    return {k: sorted(v) for k, v in out.items()}


def expected() -> dict[str, list[list[float]]]:
    (dets,) = BrightBlobModel().predict([PIXELS])
    out: dict[str, list[list[float]]] = {}
    for box, c in zip(dets.boxes.tolist(), dets.category_ids, strict=True):
        out.setdefault(BrightBlobModel.CATEGORY_NAMES[c], []).append(box)
    return {k: sorted(v) for k, v in out.items()}


@pytest.mark.parametrize("body", ["json", "binary"])
def test_contract_rest_bodies(server, body):
    with load_model("http", url=server.url, path="predict", body=body) as detector:
        (dets,) = detector.predict([PIXELS])
        assert boxes_by_name(detector, dets) == expected()
    (request,) = server.requests
    if body == "json":
        sent = request.json()
        assert (sent["width"], sent["height"], sent["format"]) == (320, 240, "png")
    else:
        assert request.header("content-type") == "image/png"


def test_connection_supplies_url_and_credentials(server, monkeypatch):
    host, port = server.url.removeprefix("http://").split(":")
    monkeypatch.setenv("AIRFLOW_CONN_MODEL_SERVER", json.dumps({
        "conn_type": "http", "host": host, "port": int(port), "schema": "http",
        "password": "s3cr3t-test-token", "extra": {"headers": {"X-Tenant": "vision"}}}))
    with load_model("http", conn_id="model_server", path="/predict") as detector:
        detector.predict([PIXELS])
    (request,) = server.requests
    assert request.header("authorization") == "Bearer s3cr3t-test-token"
    assert request.header("x-tenant") == "vision"


def test_contract_rest_429_honours_retry_after_then_succeeds(server):
    server.queue += [Reply(429, {"error": "rate"}, headers={"Retry-After": "0.3"}),
                     Reply(503, "upstream down", content_type="text/plain")]
    started = time.perf_counter()
    with load_model("http", url=server.url + "/predict", max_delay=1.0,
                    base_delay=0.01) as detector:
        (dets,) = detector.predict([PIXELS])
    assert time.perf_counter() - started >= 0.3
    assert len(server.requests) == 3 and len(dets) == 3


def test_contract_rest_timeout_is_retried(server):
    calls = []

    def slow_first(request):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.6)
        return rest_server(request)

    server.handler = slow_first
    with load_model("http", url=server.url + "/predict", timeout=0.3, **FAST) as detector:
        (dets,) = detector.predict([PIXELS])
    assert len(dets) == 3 and len(calls) == 2


def test_contract_rest_400_fails_fast(server):
    server.queue.append(Reply(400, {"error": "image too small"}))
    with load_model("http", url=server.url + "/predict", **FAST) as detector, \
            pytest.raises(ModelRequestError, match=r"HTTP 400.*image too small"):
        detector.predict([PIXELS])
    assert len(server.requests) == 1


@pytest.mark.parametrize("reply, match", [
    (Reply(200, "<html>oops</html>", content_type="text/html"), "not JSON"),
    (Reply(200, {"detections": [{"box": [1, 2, 3], "label": "x"}]}), "not a list of 4"),
    (Reply(200, {"predictions": []}), "no 'detections'"),
])
def test_contract_rest_malformed_answers(server, reply, match):
    server.queue.append(reply)
    with load_model("http", url=server.url + "/predict", **FAST) as detector, \
            pytest.raises(ModelOutputError, match=match):
        detector.predict([PIXELS])


def test_response_adapter_columns_normalized_and_class_ids(server):
    server.queue.append(Reply(200, {"result": {
        "boxes": [[0.5, 0.5, 0.25, 0.5]], "scores": [0.75], "classes": [1]}}))
    response = {"path": "result", "layout": "columns", "box": "boxes", "label": "classes",
                "box_format": "cxcywh", "normalized": True, "labels": ["cat", "dog"]}
    with load_model("http", url=server.url, response=response) as detector:
        (dets,) = detector.predict([PIXELS])
        assert list(detector.category_names) == ["dog"]
    assert dets.boxes.tolist() == [[120, 60, 200, 180]]
    with pytest.raises(ConfigError, match="unknown response adapter"):
        load_model("http", url=server.url, response={"boxes": "b"})


def kserve_server(request) -> Reply:
    """The Open Inference Protocol's infer endpoint for model ``blobs`` version ``2``."""
    if request.path != "/v2/models/blobs/versions/2/infer":
        return Reply(404, {"error": f"model not found: {request.path}"})
    (tensor,) = request.json()["inputs"]
    if tensor["datatype"] == "BYTES":
        pixels = decode(base64.b64decode(tensor["data"][0]))
    elif tensor["datatype"] == "UINT8":
        pixels = np.array(tensor["data"], np.uint8).reshape(tensor["shape"][1:])
    else:
        return Reply(400, {"error": f"unsupported datatype {tensor['datatype']}"})
    (dets,) = BLOBS.predict([pixels])
    n = len(dets)
    return Reply(200, {"model_name": "blobs", "model_version": "2", "outputs": [
        {"name": "boxes", "shape": [n, 4], "datatype": "FP32",
         "data": dets.boxes.reshape(-1).tolist()},
        {"name": "scores", "shape": [n], "datatype": "FP32", "data": dets.scores.tolist()},
        {"name": "classes", "shape": [n], "datatype": "INT64",
         "data": dets.category_ids.tolist()}]})


@pytest.mark.parametrize("input_format", ["bytes", "tensor"])
def test_contract_kserve_v2(input_format):
    with LocalServer(kserve_server) as server, load_model(
            "kserve-v2", url=server.url, model_name="blobs", model_version="2",
            input_format=input_format, outputs={"labels": "classes"},
            labels=list(BrightBlobModel.CATEGORY_NAMES)) as detector:
        (dets,) = detector.predict([PIXELS])
        assert boxes_by_name(detector, dets) == expected()
        (tensor,) = server.requests[0].json()["inputs"]
    assert tensor["name"] == "image"
    assert tensor["shape"] == ([1] if input_format == "bytes" else [1, 240, 320, 3])


def test_contract_kserve_errors():
    with LocalServer(kserve_server) as server:
        server.queue += [Reply(503, {"error": "model blobs is not ready"}),
                         Reply(200, {"outputs": [{"name": "boxes", "shape": [1, 4],
                                                  "datatype": "FP32", "data": [1, 2, 3]}]})]
        with load_model("kserve-v2", url=server.url, model_name="blobs", model_version="2",
                        **FAST) as detector, \
                pytest.raises(ModelOutputError, match=r"shape \[1, 4\] but 3 values"):
            detector.predict([PIXELS])
        assert len(server.requests) == 2  # 503 retried, then the malformed answer
        with load_model("kserve-v2", url=server.url, model_name="nope", **FAST) as detector, \
                pytest.raises(ModelRequestError, match="HTTP 404"):
            detector.predict([PIXELS])
    with pytest.raises(ModelThrottledError, match="ConnectionError"), load_model(
            "kserve-v2", url=server.url, model_name="blobs", max_attempts=2,
            **FAST) as detector:
        detector.predict([PIXELS])  # the server is gone: connection refused, retried
