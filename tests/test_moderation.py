"""The moderation gate against local servers speaking Rekognition's and Bedrock's protocols:
verdicts, fail-closed / fail-open, and a blocked image stopping preprocess before anything is
staged, recorded as a ``blocked`` result and catalog row."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from support import cloud_wire as wire

from tilescope.errors import ConfigError, ImageBlockedError
from tilescope.moderation import ModerationPolicy, moderate
from tilescope.outputs.catalog import connect, find_results
from tilescope.params import InferenceParams
from tilescope.tasks.image import prepare, record_blocked

pytestmark = pytest.mark.contract
BUCKET = "moderated"
FAST = {"base_delay": 0.01, "max_delay": 0.05}
PICTURE = np.random.default_rng(3).integers(0, 255, (600, 900, 3), np.uint8)


def moderation_reply(*labels: tuple[str, str, float]) -> wire.Reply:
    return wire.Reply(200, {"ModerationLabels": [
        {"Name": n, "ParentName": p, "Confidence": c, "TaxonomyLevel": 2 if p else 1}
        for n, p, c in labels], "ModerationModelVersion": "7.0"},
        content_type="application/x-amz-json-1.1")


@pytest.fixture
def rekognition(monkeypatch):
    with wire.LocalServer(signing_service="rekognition") as server:
        wire.aws_connection(monkeypatch, "moderation_test", server.url)
        yield server


def policy(**options) -> ModerationPolicy:
    return ModerationPolicy.from_options("rekognition", {"conn_id": "moderation_test",
                                                         **FAST, **options})


def test_contract_rekognition_verdicts(rekognition):
    rekognition.queue += [
        moderation_reply(),
        moderation_reply(("Weapons", "Violence", 81.5), ("Violence", "", 81.5)),
        moderation_reply(("Alcohol", "Drugs & Tobacco", 97.0))]
    passed = moderate(PICTURE, policy(min_confidence=60))
    blocked = moderate(PICTURE, policy(min_confidence=60))
    allowed = moderate(PICTURE, policy(blocked_labels=["Violence", "Explicit"]))
    assert not passed.blocked and passed.labels == []
    assert blocked.blocked and blocked.reason.startswith("moderation labels: Weapons (81.5%)")
    assert not allowed.blocked and allowed.labels[0]["name"] == "Alcohol"
    first = rekognition.requests[0]
    assert first.header("x-amz-target") == "RekognitionService.DetectModerationLabels"
    body = first.json()
    assert body["MinConfidence"] == 60
    sent = Image.open(io.BytesIO(__import__("base64").b64decode(body["Image"]["Bytes"])))
    assert sent.format == "JPEG" and max(sent.size) <= 2048


def test_contract_failures_block_unless_fail_open(rekognition):
    rekognition.queue += [wire.aws_error(400, "InvalidImageFormatException", "bad format",
                                         protocol="json")]
    closed = moderate(PICTURE, policy())
    assert closed.blocked and "fail-closed" in closed.reason
    assert "InvalidImageFormat" in closed.error
    rekognition.queue += [wire.Reply(200, {"Unexpected": True},
                                     content_type="application/x-amz-json-1.1")]
    unreadable = moderate(PICTURE, policy())
    assert unreadable.blocked and "ModerationLabels" in unreadable.error
    rekognition.queue += [wire.aws_error(500, "ThrottlingException", "slow", protocol="json")] * 2
    opened = moderate(PICTURE, policy(fail_open=True, max_attempts=2))
    assert not opened.blocked and opened.fail_open and "ThrottlingException" in opened.error
    assert len(rekognition.requests) == 4  # throttling was retried before failing open


def test_contract_bedrock_verdicts(monkeypatch):
    def converse(text: str) -> wire.Reply:
        return wire.Reply(200, {"output": {"message": {"role": "assistant",
                                                       "content": [{"text": text}]}},
                                "stopReason": "end_turn",
                                "usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2},
                                "metrics": {"latencyMs": 1}})

    with wire.LocalServer(signing_service="bedrock") as server:
        wire.aws_connection(monkeypatch, "bedrock_mod", server.url)
        server.queue += [
            converse('{"safe": true, "categories": [], "reason": "a street scene"}'),
            converse('```json\n{"safe": false, "categories": ["weapons used to threaten"], '
                     '"reason": "a rifle aimed at a person"}\n```'),
            converse("I'd rather not say.")]
        options = {"conn_id": "bedrock_mod", "model_id": "amazon.nova-lite-v1:0", **FAST}
        gate = ModerationPolicy.from_options("bedrock-converse", options)
        assert moderate(PICTURE, gate).reason == "a street scene"
        unsafe = moderate(PICTURE, gate)
        assert unsafe.blocked and "weapons used to threaten" in unsafe.reason
        vague = moderate(PICTURE, gate)
        assert vague.blocked and "fail-closed" in vague.reason
        prompt = server.requests[0].json()["messages"][0]["content"][1]["text"]
        assert "explicit nudity" in prompt and '"safe"' in prompt


def test_misconfigured_gate_is_a_config_error():
    with pytest.raises(ConfigError, match="model_id"):
        ModerationPolicy.from_options("bedrock-converse", {})
    with pytest.raises(ConfigError, match="unknown moderation option"):
        ModerationPolicy.from_options("rekognition", {"treshold": 3})
    with pytest.raises(ConfigError, match="moderation must be one of"):
        ModerationPolicy.from_options("openai")
    assert not moderate(PICTURE, ModerationPolicy.from_options(None)).blocked


def test_blocked_image_is_not_staged_and_recorded(rekognition, s3_client, tmp_path):
    s3_client.create_bucket(Bucket=BUCKET)
    out = io.BytesIO()
    Image.fromarray(PICTURE).save(out, format="PNG")
    s3_client.put_object(Bucket=BUCKET, Key="incoming/pic.png", Body=out.getvalue())
    params = InferenceParams(slice_size=256, grid="2x2")
    rekognition.queue.append(moderation_reply(("Graphic Violence", "Violence", 99.0)))
    with pytest.raises(ImageBlockedError, match="Graphic Violence") as caught:
        prepare(f"s3://{BUCKET}/incoming/pic.png", params, client=s3_client, run="r1",
                model_slice_size=256, moderation=policy())
    assert s3_client.list_objects_v2(Bucket=BUCKET, Prefix="scratch/").get("KeyCount") == 0
    catalog = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    uri = record_blocked(caught.value, params, client=s3_client, catalog_url=catalog,
                         run_id="r1")
    doc = json.loads(s3_client.get_object(Bucket=BUCKET, Key=uri.split(f"{BUCKET}/", 1)[1])
                     ["Body"].read())
    assert doc["status"] == "blocked" and doc["detections"] == []
    assert doc["moderation"]["blocked"] and "Graphic Violence" in doc["moderation"]["reason"]
    assert doc["summary"]["description"].startswith("not analysed: moderation labels")
    (row,) = find_results(connect(catalog))
    assert row["status"] == "blocked" and row["result_keys"] == {"result": uri}

    rekognition.queue.append(moderation_reply())
    regions, prepared = prepare(f"s3://{BUCKET}/incoming/pic.png", params, client=s3_client,
                                run="r2", model_slice_size=256, moderation=policy())
    assert prepared.moderation["blocked"] is False and len(regions) == 4
