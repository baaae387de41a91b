"""rekognition (DetectLabels) against moto's in-process server (its canned answer) and a
local server speaking Rekognition's JSON 1.1 protocol (``X-Amz-Target``, SigV4, real error
shapes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.cloud_wire import LocalServer, Reply, aws_connection, aws_error

from tilescope.errors import ModelOutputError, ModelRequestError, ModelThrottledError
from tilescope.models import load_model

pytestmark = pytest.mark.contract

FAST = {"base_delay": 0.01, "max_delay": 0.05}
SLICE = np.full((300, 400, 3), 90, np.uint8)


def labels_reply(labels: list[dict]) -> Reply:
    return Reply(200, {"Labels": labels, "LabelModelVersion": "3.0"},
                 content_type="application/x-amz-json-1.1")


def person(left: float, top: float, width: float, height: float, confidence: float) -> dict:
    return {"Name": "Person", "Confidence": confidence, "Parents": [], "Aliases": [],
            "Categories": [{"Name": "Person Description"}],
            "Instances": [{"BoundingBox": {"Left": left, "Top": top, "Width": width,
                                           "Height": height}, "Confidence": confidence}]}


@pytest.fixture
def rekognition(monkeypatch):
    with LocalServer(signing_service="rekognition") as server:
        aws_connection(monkeypatch, "rekognition_test", server.url)
        yield server


def model(**options):
    return load_model("rekognition", conn_id="rekognition_test", **{**FAST, **options})


def test_contract_moto_detect_labels_ratios_become_pixels(s3_server, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_MOTO_AWS", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": s3_server, "region_name": "us-east-1"}}))
    with load_model("rekognition", conn_id="moto_aws", lowercase=True) as detector:
        (dets,) = detector.predict([SLICE])
        names = list(detector.category_names)
    # moto's canned answer: one "Mobile Phone" instance at Left .3604 Top .0925 W .2678 H .8562
    assert names == ["mobile phone"]
    expected = [0.3604024350643158 * 400, 0.09245597571134567 * 300,
                (0.3604024350643158 + 0.26779675483703613) * 400,
                (0.09245597571134567 + 0.8562285900115967) * 300]
    assert np.allclose(dets.boxes[0], expected, atol=1e-3)
    assert dets.scores[0] == pytest.approx(0.999364, abs=1e-5)


def test_contract_request_shape_and_instances(rekognition):
    rekognition.queue.append(labels_reply([
        person(0.1, 0.2, 0.25, 0.5, 97.5),
        {"Name": "Outdoors", "Confidence": 99.0, "Instances": [], "Parents": []},
        person(0.9, 0.9, 0.3, 0.3, 60.0)]))  # overhangs the slice: clipped
    with model(min_confidence=55, max_labels=20, inclusion_filters=["Person"]) as detector:
        (dets,) = detector.predict([SLICE])
        assert list(detector.category_names) == ["Person"]
    (request,) = rekognition.requests
    assert request.header("x-amz-target") == "RekognitionService.DetectLabels"
    assert request.header("content-type") == "application/x-amz-json-1.1"
    body = request.json()
    assert body["MinConfidence"] == 55 and body["MaxLabels"] == 20
    assert body["Settings"] == {"GeneralLabels": {"LabelInclusionFilters": ["Person"]}}
    assert body["Image"]["Bytes"]  # base64 PNG
    assert np.allclose(dets.boxes, [[40, 60, 140, 210], [360, 270, 400, 300]], atol=1e-3)
    assert np.allclose(dets.scores, [0.975, 0.6])


def test_contract_throttling_codes_are_retried(rekognition):
    rekognition.queue += [
        aws_error(400, "ProvisionedThroughputExceededException", "over TPS", protocol="json"),
        aws_error(500, "ThrottlingException", "try again", protocol="json"),
        labels_reply([])]
    with model() as detector:
        (dets,) = detector.predict([SLICE])
    assert len(dets) == 0 and len(rekognition.requests) == 3


def test_contract_internal_error_exhausts_retries(rekognition):
    rekognition.queue += [aws_error(500, "InternalServerError", "oops", protocol="json")] * 3
    with model(max_attempts=2) as detector, pytest.raises(ModelThrottledError):
        detector.predict([SLICE])
    assert len(rekognition.requests) == 2


def test_contract_invalid_image_fails_fast(rekognition):
    rekognition.queue.append(aws_error(400, "InvalidImageFormatException",
                                       "Request has invalid image format", protocol="json"))
    with model() as detector, pytest.raises(ModelRequestError, match="InvalidImageFormat"):
        detector.predict([SLICE])
    assert len(rekognition.requests) == 1


def test_contract_malformed_answer(rekognition):
    broken = person(0.1, 0.1, 0.2, 0.2, 90.0)
    broken["Instances"][0]["BoundingBox"] = {"Left": 0.1, "Top": "up"}
    rekognition.queue.append(labels_reply([broken]))
    with model() as detector, pytest.raises(ModelOutputError, match="rekognition: malformed"):
        detector.predict([SLICE])
