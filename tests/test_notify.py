"""The per-image notification: outcome status and reason, message body, topic resolution."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tilescope.notify import (
    MAX_FAILURES,
    SCHEMA,
    TaskFailure,
    Topics,
    describe_exception,
    image_outcome,
    resolve_topics,
)

START = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
END = START + timedelta(seconds=42.5)
URI = "s3://tilescope/incoming/kite.jpg"
PREPARED = {"image": {"uri": URI, "image_id": "3f2a0b1c2d3e4f50"}, "plan": {"regions": 4}}


def stored(status: str = "complete", failed: list[str] | None = None) -> dict:
    """A store summary as ``steps.store`` returns it."""
    prefix = "s3://tilescope/results/3f2a0b1c2d3e4f50/abc/"
    return {"image_id": "3f2a0b1c2d3e4f50", "image_uri": URI, "status": status,
            "detections": 41, "counts": {"person": 35, "kite": 6},
            "failed_regions": failed or [], "regions": 4, "model_share": 0.42,
            "keys": {"result": f"{prefix}result.json", "coco": f"{prefix}coco.json",
                     "overlay": f"{prefix}overlay.png"}, "scratch_objects_deleted": 7}


def outcome(**kwargs):
    args = {"dag_id": "tiled_inference", "run_id": "manual__1", "image_uri": URI,
            "finished_at": END, "started_at": START, "prepared": PREPARED, "stored": None}
    return image_outcome(**{**args, **kwargs})


def failure(task: str, error: str, map_index: int = -1, label: str | None = None) -> dict:
    return TaskFailure(task, error, map_index, label).to_dict()


def test_a_stored_complete_result_succeeded():
    result = outcome(stored=stored())
    body = result.to_message()
    assert body["schema"] == SCHEMA and body["status"] == "succeeded"
    assert body["image"] == {"uri": URI, "id": "3f2a0b1c2d3e4f50"}
    assert body["result_keys"]["result"].endswith("/result.json")
    assert body["counts"] == {"person": 35, "kite": 6} and body["detections"] == 41
    assert body["duration_seconds"] == 42.5 and body["model_share"] == 0.42
    assert body["reason"] is None and body["failures"] == [] and body["regions"] == 4
    assert body["started_at"] == START.isoformat() and body["finished_at"] == END.isoformat()
    assert json.loads(result.to_json()) == body
    assert result.attributes() == {"status": "succeeded", "image_id": "3f2a0b1c2d3e4f50"}


def test_a_partial_result_names_its_failed_regions_and_the_first_error():
    result = outcome(stored=stored("partial", ["r1c1"]),
                     failures=[failure("analyze", "ModelError: timeout", 3, "r1c1"), None])
    assert result.status == "partial"
    assert result.reason == "1 region(s) failed (r1c1); first error: analyze[3] (r1c1): " \
                            "ModelError: timeout"
    assert Topics("ok-arn", "err-arn").for_status(result.status) == "ok-arn"


def test_a_failed_run_reports_why_the_image_failed_not_a_regions_error():
    result = outcome(last_task_ok=False, last_task_error="no result stored",
                     failures=[failure("synthesize", "RegionsFailedError: 2 of 4 failed"),
                               failure("analyze", "ModelError: a", 2, "r1c0"),
                               failure("analyze", "ModelError: b", 0, "r0c0")])
    assert result.status == "failed"
    assert result.reason == "synthesize: RegionsFailedError: 2 of 4 failed"
    assert [(f.task_id, f.map_index) for f in result.failures] == [
        ("analyze", 0), ("analyze", 2), ("synthesize", -1)]
    assert result.failed_regions == ["r0c0", "r1c0"]
    assert result.image_id == "3f2a0b1c2d3e4f50" and result.regions == 4  # from preprocess
    assert result.result_keys == {} and result.detections is None
    assert Topics("ok-arn", "err-arn").for_status(result.status) == "err-arn"


def test_a_failed_preprocess_is_the_reason_not_what_failed_after_it():
    result = outcome(prepared=None, last_task_ok=False,
                     failures=[failure("synthesize", "preprocess did not finish"),
                               failure("preprocess", "BadImageError: not an image")])
    assert result.reason == "preprocess: BadImageError: not an image"
    assert result.failed_regions == [] and result.regions is None


def test_failed_without_records_falls_back_to_the_last_task_error():
    result = outcome(prepared=None, last_task_ok=False, last_task_error="Boom: it broke")
    assert result.reason == "Boom: it broke" and result.image_id is None
    assert result.image_uri == URI and result.subject() == "tilescope failed: image unknown"
    assert outcome(prepared=None, last_task_ok=False).reason == \
        "the run failed without a recorded error"


def test_stored_but_the_last_task_failed_is_a_failure_with_its_error():
    result = outcome(stored=stored(), last_task_ok=False,
                     last_task_error="StorageError: could not move the original")
    assert result.status == "failed"
    assert result.reason == "StorageError: could not move the original"
    assert result.result_keys  # the result exists: its keys are still reported


def test_failures_are_capped_in_the_message_but_counted():
    many = [failure("analyze", "ModelError: x", i, f"r{i}") for i in range(MAX_FAILURES + 5)]
    body = outcome(last_task_ok=False, failures=many).to_message()
    assert len(body["failures"]) == MAX_FAILURES and body["failures_total"] == MAX_FAILURES + 5


def test_subject_is_short_ascii_whatever_the_key():
    result = outcome(stored={**stored(), "image_uri": "s3://tilescope/incoming/東京 タワー.jpg"})
    assert result.subject() == "tilescope succeeded: image 3f2a0b1c2d3e4f50"
    assert result.subject().isascii() and len(result.subject()) <= 100
    assert "東京" in result.to_json()  # the body keeps the key as it is


def test_unknown_start_gives_no_duration():
    assert outcome(started_at=None, stored=stored()).to_message()["duration_seconds"] is None


def test_describe_exception():
    class AirflowFailException(Exception):
        pass

    assert describe_exception(ValueError("bad\n  value")) == "ValueError: bad value"
    assert describe_exception(AirflowFailException("BadImageError: not an image")) == \
        "BadImageError: not an image"
    assert describe_exception(KeyError()) == "KeyError"
    assert describe_exception(None) == "unknown error"
    assert len(describe_exception(RuntimeError("x" * 5000))) == 1000


def test_task_failure_round_trip_and_description():
    record = TaskFailure("analyze", "ModelError: x", 3, "r1c1", 2)
    assert TaskFailure.from_dict(record.to_dict()) == record
    assert record.describe() == "analyze[3] (r1c1): ModelError: x"
    assert TaskFailure("store", "E: y").describe() == "store: E: y"


@pytest.mark.parametrize(("variables", "env", "expected"), [
    ({}, {}, Topics(None, None)),
    ({}, {"TILESCOPE_SUCCESS_TOPIC_ARN": "env-ok", "TILESCOPE_ERROR_TOPIC_ARN": " "},
     Topics("env-ok", None)),
    ({"tilescope_success_topic_arn": "var-ok"},
     {"TILESCOPE_SUCCESS_TOPIC_ARN": "env-ok", "TILESCOPE_ERROR_TOPIC_ARN": "env-err"},
     Topics("var-ok", "env-err")),
])
def test_topics_come_from_variables_then_environment(variables, env, expected):
    assert resolve_topics(variables.get, env) == expected


def test_no_topic_means_no_target():
    assert Topics().for_status("succeeded") is None and Topics().for_status("failed") is None
