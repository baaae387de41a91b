"""bedrock-converse against a local server speaking the Bedrock runtime's REST-JSON protocol:
botocore (through the amazon provider's BedrockRuntimeHook and an Airflow connection) signs
real requests; the server checks the signature, the path and the Converse body."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image
from support.cloud_wire import LocalServer, Reply, aws_connection, aws_error

from tilescope.errors import ModelOutputError, ModelRequestError, ModelThrottledError
from tilescope.models import load_model
from tilescope.params import InferenceParams
from tilescope.pipeline import analyze_region, plan_image
from tilescope.readers import reader_for_bytes

pytestmark = pytest.mark.contract

MODEL_ID = "amazon.nova-lite-v1:0"
FAST = {"base_delay": 0.01, "max_delay": 0.05}


def converse_reply(text: str, stop: str = "end_turn") -> Reply:
    """A Converse response exactly as the service shapes it."""
    return Reply(200, {"output": {"message": {"role": "assistant",
                                              "content": [{"text": text}]}},
                       "stopReason": stop,
                       "usage": {"inputTokens": 1500, "outputTokens": 80, "totalTokens": 1580},
                       "metrics": {"latencyMs": 420}})


@pytest.fixture
def bedrock(monkeypatch):
    with LocalServer(signing_service="bedrock") as server:
        aws_connection(monkeypatch, "bedrock_test", server.url)
        yield server


@pytest.fixture
def photo(sample) -> np.ndarray:
    return np.asarray(Image.open(sample("kite")).convert("RGB"))[100:400, 200:600]


def model(**options):
    return load_model("bedrock-converse", model_id=MODEL_ID, conn_id="bedrock_test",
                      **{**FAST, **options})


def test_contract_converse_request_and_answer(bedrock, photo):
    bedrock.queue.append(converse_reply(
        "Here you go:\n```json\n{\"detections\": ["
        "{\"label\": \"person\", \"box\": [10, 20, 110, 220], \"score\": 0.9},"
        "{\"label\": \"kite surfer\", \"bbox\": [350, -15, 450, 80], \"confidence\": 71},"
        "{\"label\": \"person\", \"box\": [300, 290, 290, 250]},"
        "{\"label\": \"ghost\", \"box\": [500, 500, 600, 600], \"score\": 0.8}]}\n```"))
    with model() as detector:
        (dets,) = detector.predict([photo])
        names = list(detector.category_names)
    (request,) = bedrock.requests
    assert request.path == "/model/amazon.nova-lite-v1%3A0/converse"
    assert not bedrock.signature_problems
    body = request.json()
    image, text = body["messages"][0]["content"]
    assert image["image"]["format"] == "png"
    sent = np.asarray(Image.open(io.BytesIO(base64.b64decode(image["image"]["source"]["bytes"]))))
    assert np.array_equal(sent, photo)  # the slice's exact pixels (PNG is lossless)
    assert "400 pixels wide and 300 pixels high" in text["text"]
    assert body["inferenceConfig"] == {"maxTokens": 2048, "temperature": 0.0}
    assert "JSON only" in body["system"][0]["text"]

    by_name = {names[c]: [] for c in dets.category_ids}
    for box, score, c in zip(dets.boxes.tolist(), dets.scores.tolist(), dets.category_ids,
                                strict=True):
        by_name[names[c]].append((box, round(score, 3)))
    assert by_name["person"] == [([10, 20, 110, 220], 0.9), ([290, 250, 300, 290], 0.5)]
    assert by_name["kite surfer"] == [([350, 0, 400, 80], 0.71)]  # clipped to the slice
    assert "ghost" not in by_name  # entirely outside the slice: no box left


def test_contract_truncated_answer_keeps_complete_entries(bedrock, photo):
    bedrock.queue.append(converse_reply(
        '{"detections": [{"label": "car", "box": [0, 0, 50, 40], "score": 0.8}, '
        '{"label": "car", "box": [60, 0, 120, 40], "score": 0.7}, {"label": "ca',
        stop="max_tokens"))
    with model() as detector:
        (dets,) = detector.predict([photo])
    assert dets.boxes.tolist() == [[0, 0, 50, 40], [60, 0, 120, 40]]


def test_contract_throttling_is_retried_with_backoff(bedrock, photo):
    bedrock.queue += [aws_error(429, "ThrottlingException", "Too many requests"),
                      aws_error(503, "ServiceUnavailableException", "busy"),
                      converse_reply('{"detections": []}')]
    with model() as detector:
        (dets,) = detector.predict([photo])
    assert len(dets) == 0 and len(bedrock.requests) == 3


def test_contract_throttling_gives_up_after_max_attempts(bedrock, photo):
    bedrock.queue += [aws_error(429, "ThrottlingException", "slow down")] * 5
    with model(max_attempts=3) as detector, \
            pytest.raises(ModelThrottledError, match="gave up after 3 attempts") as caught:
        detector.predict([photo])
    assert caught.value.retryable and len(bedrock.requests) == 3


def test_contract_validation_error_fails_fast(bedrock, photo):
    bedrock.queue.append(aws_error(400, "ValidationException", "image exceeds max pixels"))
    with model() as detector, pytest.raises(ModelRequestError, match="image exceeds") as caught:
        detector.predict([photo])
    assert not caught.value.retryable and len(bedrock.requests) == 1


def test_contract_bad_signature_is_refused_not_retried(bedrock, photo, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_BEDROCK_TEST", json.dumps({
        "conn_type": "aws", "login": "AKIDTILESCOPETEST", "password": "wrong-test-secret",
        "extra": {"endpoint_url": bedrock.url, "region_name": "eu-west-1"}}))
    with model() as detector, pytest.raises(ModelRequestError, match="InvalidSignature"):
        detector.predict([photo])
    assert bedrock.signature_problems == ["signature mismatch"]


def test_contract_malformed_output_names_backend_and_region(bedrock, photo):
    bedrock.handler = lambda request: converse_reply("I cannot see any objects, sorry.")
    out = io.BytesIO()
    Image.fromarray(photo).save(out, format="PNG")
    reader = reader_for_bytes(out.getvalue())
    params = InferenceParams(model="bedrock-converse", slice_size=256, grid="1x2")
    region = plan_image(reader.width, reader.height, params, 256).regions[1]
    with model() as detector, pytest.raises(ModelOutputError) as caught:
        analyze_region(reader, region, detector, params)
    message = str(caught.value)
    assert message.startswith(f"region {region.name}: bedrock-converse ({MODEL_ID})")
    assert "no JSON" in message


def test_unreadable_entries_only_is_malformed(bedrock, photo):
    bedrock.queue.append(converse_reply('{"detections": [{"what": "car"}, {"box": 3}]}'))
    with model() as detector, pytest.raises(ModelOutputError, match="none of 2 entries"):
        detector.predict([photo])
