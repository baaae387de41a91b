"""The synthesis model: a Bedrock-written scene description (against a local Bedrock runtime
server), the deterministic summary without one, and the fallback when the call fails."""

from __future__ import annotations

import numpy as np
import pytest
from support.cloud_wire import LocalServer, Reply, aws_connection, aws_error

from tilescope.describe import position_name, scene_facts
from tilescope.detections import Detections
from tilescope.errors import ConfigError
from tilescope.params import InferenceParams
from tilescope.pipeline import synthesize
from tilescope.results import ImageInfo, RegionFinding, Result
from tilescope.slicing import plan_slices

pytestmark = pytest.mark.contract
IMAGE = ImageInfo("s3://b/street.jpg", 1200, 900, "a" * 64, "JPEG", 1)
PLAN = plan_slices(1200, 900, 600, 450, 0, 0, grid=(1, 1))
FINDING = RegionFinding(0, "r0c0", 0, 0, [0, 0, 1200, 900], 4, Detections(
    np.array([[10, 10, 110, 210], [900, 600, 1000, 800], [500, 400, 700, 500]], np.float32),
    np.array([0.9, 0.8, 0.7]), np.array([0, 0, 1])))
NAMES = ["person", "car"]
DESCRIPTION = "Two people stand at the left and right edges while a car sits in the centre."


def answer(text: str) -> Reply:
    return Reply(200, {"output": {"message": {"role": "assistant", "content": [{"text": text}]}},
                       "stopReason": "end_turn",
                       "usage": {"inputTokens": 300, "outputTokens": 20, "totalTokens": 320},
                       "metrics": {"latencyMs": 200}})


def result(**params) -> Result:
    return synthesize(IMAGE, PLAN, [FINDING], InferenceParams(**params), model_name="m",
                      category_names=NAMES)


@pytest.fixture
def bedrock(monkeypatch):
    with LocalServer(signing_service="bedrock") as server:
        aws_connection(monkeypatch, "describer", server.url)
        yield server


def synthesis(**options):
    return {"synthesis_model": "bedrock-converse",
            "synthesis_options": {"conn_id": "describer", "model_id": "anthropic.claude-x",
                                  "base_delay": 0.01, "max_delay": 0.02, **options}}


def test_without_a_synthesis_model_the_summary_is_deterministic():
    summary = result().summary()
    assert summary["description"] == "2 persons, 1 car"
    assert "description_source" not in summary


def test_contract_bedrock_writes_the_description(bedrock):
    bedrock.queue += [aws_error(429, "ThrottlingException", "slow down"), answer(DESCRIPTION)]
    doc = result(**synthesis()).to_dict()
    assert doc["summary"]["description"] == DESCRIPTION
    assert doc["summary"]["description_source"] == {"model": "bedrock-converse",
                                                    "model_id": "anthropic.claude-x"}
    assert doc["summary"]["counts"] == {"person": 2, "car": 1}  # detections untouched
    prompt = bedrock.requests[-1].json()["messages"][0]["content"][0]["text"]
    assert '{"person": 2, "car": 1}' in prompt and "1200 x 900" in prompt
    assert '["person", 0.9, [10, 10, 100, 200], "top left"]' in prompt
    assert "image" not in bedrock.requests[-1].json()["messages"][0]["content"][0]


def test_contract_failed_description_falls_back_and_says_why(bedrock):
    bedrock.queue.append(aws_error(403, "AccessDeniedException", "no access to the model"))
    summary = result(**synthesis()).summary()
    assert summary["description"] == "2 persons, 1 car"
    assert "AccessDeniedException" in summary["description_source"]["error"]
    assert len(bedrock.requests) == 1


def test_misconfigured_synthesis_fails():
    with pytest.raises(ConfigError, match="model_id"):
        result(synthesis_model="bedrock-converse", synthesis_options={"conn_id": "x"})
    with pytest.raises(ConfigError, match="unknown synthesis_model"):
        result(synthesis_model="gpt")
    with pytest.raises(ConfigError, match="unknown synthesis_options"):
        result(**synthesis(temprature=1))
    with pytest.raises(ConfigError, match="looks like a credential"):
        InferenceParams(synthesis_options={"api_key": "sk-..."})


def test_scene_facts_positions():
    facts = scene_facts(result())
    assert [d[3] for d in facts["detections"]] == ["top left", "bottom right", "centre"]
    assert position_name(0, 899, 1200, 900) == "bottom left"
