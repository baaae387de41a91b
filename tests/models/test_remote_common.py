"""What every remote backend shares: reading LLM JSON, the retry policy, and the mapping of
errors onto task outcomes (retry vs fail fast)."""

from __future__ import annotations

import random

import pytest

from tilescope.errors import (
    ModelOutputError,
    ModelRequestError,
    ModelThrottledError,
)
from tilescope.models.llm_json import extract_json, parse_detections
from tilescope.models.retry import RetryPolicy, call_with_retry


@pytest.mark.parametrize("text, expected", [
    ('{"detections": []}', {"detections": []}),
    ('Sure!\n```json\n[{"a": 1}]\n```\nAnything else?', [{"a": 1}]),
    ("```\n{\"x\": [1, 2]}", {"x": [1, 2]}),  # unterminated fence
])
def test_extract_json_complete(text, expected):
    assert extract_json(text) == (expected, False)


def test_extract_json_salvages_a_truncated_array():
    value, truncated = extract_json('{"objects": [{"car": [1, 2, 3, 4]}, {"bus": [5, 6,')
    assert truncated and value == [{"car": [1, 2, 3, 4]}]
    with pytest.raises(ValueError, match="no JSON"):
        extract_json("Nothing to report.")
    with pytest.raises(ValueError, match="cut off"):
        extract_json('{"note": "the image sho')


def test_parse_detections_shapes_and_coordinates():
    text = ('[{"person": [100, 200, 300, 400]}, '
            '{"name": "dog", "bounding_box": {"x": 10, "y": 20, "width": 30, "height": 40}, '
            '"confidence": "88"}, {"label": "cat"}, {"label": "cat", "box": [1, "a", 2, 3]}]')
    parsed = parse_detections(text, 500, 250, coordinates="per-mille")
    assert parsed.skipped == 2 and not parsed.truncated
    person, dog = parsed.detections
    assert (person.label, person.score, person.box) == ("person", 0.5, (50, 50, 150, 100))
    assert dog.label == "dog" and dog.score == pytest.approx(0.88)
    assert dog.box == pytest.approx((5, 5, 20, 15))
    single = parse_detections('{"label": "sign", "box": [1, 2, 3, 4], "score": 0.4}', 10, 10)
    assert [d.label for d in single.detections] == ["sign"]
    with pytest.raises(ValueError, match="no detections list"):
        parse_detections('{"summary": "two cars", "count": 2}', 10, 10)


def test_retry_policy_backoff_is_jittered_capped_and_honours_retry_after():
    policy = RetryPolicy(max_attempts=6, base_delay=1.0, max_delay=5.0)
    rng = random.Random(7)
    delays = [policy.delay(n, rng) for n in range(1, 6) for _ in range(200)]
    assert max(delays) <= 5.0 and min(delays) >= 0.0
    assert len({round(d, 6) for d in delays}) > 900  # jittered, not lockstep
    assert max(policy.delay(1, rng) for _ in range(200)) <= 1.0  # first retry ≤ base
    assert policy.delay(1, rng, at_least=3.0) == 3.0
    assert policy.delay(1, rng, at_least=60.0) == 5.0


def test_call_with_retry_retries_only_throttling():
    slept: list[float] = []
    calls = iter([ModelThrottledError("busy"), ModelThrottledError("busy"), "ok"])

    def flaky():
        outcome = next(calls)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert call_with_retry(flaky, RetryPolicy(4, 0.1, 1.0), sleep=slept.append) == "ok"
    assert len(slept) == 2
    for error in (ModelRequestError("400"), ModelOutputError("junk")):
        attempts = []

        def failing(error=error, attempts=attempts):
            attempts.append(1)
            raise error

        with pytest.raises(type(error)):
            call_with_retry(failing, RetryPolicy(4, 0.1, 1.0), sleep=slept.append)
        assert len(attempts) == 1


def test_request_errors_fail_the_task_without_retry_and_load_errors_retry():
    from airflow.sdk.exceptions import AirflowFailException

    from tilescope.airflow.adapters import task_outcome

    with pytest.raises(AirflowFailException, match="ModelRequestError: HTTP 400"), \
            task_outcome():
        raise ModelRequestError("HTTP 400: bad image")
    with pytest.raises(ModelThrottledError), task_outcome():
        raise ModelThrottledError("429")
    with pytest.raises(ModelOutputError), task_outcome():  # an LLM may answer better next time
        raise ModelOutputError("region r0c0: bedrock-converse (m): malformed output")
