"""The per-image notification: outcome status and reason, message body, topic resolution."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tilescope.outputs.notifications import (
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


# --- batch runs: one outcome per image, sent ten to a PublishBatch call ---------------------

BATCH_PREFIX = "s3://tilescope/results/"


def batch_entry(index: int, status: str, **extra) -> dict:
    """One entry of a batch run's outcomes.json (``tasks.batch.ItemOutcome``)."""
    entry = {"index": index, "uri": f"s3://tilescope/incoming/{index}.jpg", "status": status,
             "image_id": f"id{index}", "keys": {}, "detections": None, "counts": {},
             "result_status": None, "error": None, "error_class": None}
    if status == "stored":
        entry.update(keys={"result": f"{BATCH_PREFIX}id{index}/p/result.json"}, detections=3,
                     counts={"person": 2, "kite": 1}, result_status="complete")
    return {**entry, **extra}


def batch(**kwargs):
    from tilescope.outputs.notifications import batch_image_outcomes

    args = {"dag_id": "tiled_inference", "run_id": "manual__b", "finished_at": END,
            "started_at": START}
    return batch_image_outcomes(**{**args, **kwargs})


NOT_STORED = "AirflowFailException: 2 of 4 images not stored: s3://…"


def test_a_batch_gives_one_outcome_per_image_on_its_topic():
    outcomes = batch(outcomes=[
        batch_entry(0, "stored"), batch_entry(1, "stored", result_status="partial"),
        batch_entry(2, "bad", error="s3://tilescope/incoming/2.jpg is not an image",
                    error_class="BadImageError"),
        batch_entry(3, "failed", error="RegionsFailedError: 1 of 1 regions failed",
                    error_class="RegionsFailedError")],
        failures=[failure("analyze", "ModelError: boom", 1, "0.jpg … 3.jpg (4 images)")],
        last_task_ok=False, last_task_error=NOT_STORED)
    assert [(o.image_uri.rsplit("/", 1)[1], o.status) for o in outcomes] == [
        ("0.jpg", "succeeded"), ("1.jpg", "partial"), ("2.jpg", "failed"), ("3.jpg", "failed")]
    topics = Topics("ok-arn", "err-arn")
    assert [topics.for_status(o.status) for o in outcomes] == ["ok-arn", "ok-arn", "err-arn",
                                                               "err-arn"]
    ok, partial, bad, failed = (o.to_message() for o in outcomes)
    assert ok["reason"] is None and ok["failures"] == [] and ok["detections"] == 3
    assert ok["counts"] == {"person": 2, "kite": 1} and ok["image"] == {
        "uri": "s3://tilescope/incoming/0.jpg", "id": "id0"}
    assert ok["result_keys"]["result"] == f"{BATCH_PREFIX}id0/p/result.json"
    assert ok["batch"] == {"index": 0, "images": 4} and ok["run_id"] == "manual__b"
    assert ok["duration_seconds"] == 42.5
    assert partial["reason"].startswith("partial result") and "ModelError: boom" in \
        partial["reason"]
    # the refused input: its own reason with its class, no task failure of the run
    assert bad["reason"] == "BadImageError: s3://tilescope/incoming/2.jpg is not an image"
    assert bad["failures"] == [] and bad["result_keys"] == {}
    assert failed["reason"] == "RegionsFailedError: 1 of 1 regions failed"  # class once
    assert [f["task_id"] for f in failed["failures"]] == ["analyze"]
    assert {o.subject() for o in outcomes[2:]} == {"tilescope failed: image id2",
                                                   "tilescope failed: image id3"}
    # a single-image message says it is none of a batch
    assert outcome(stored=stored()).to_message()["batch"] is None


def test_a_batch_whose_finalize_failed_settling_fails_its_stored_images_too():
    error = "StorageError: could not move the original"
    outcomes = batch(outcomes=[batch_entry(0, "stored"), batch_entry(1, "bad", error="empty")],
                     last_task_ok=False, last_task_error=error)
    assert [(o.status, o.reason) for o in outcomes] == [("failed", error), ("failed", "empty")]
    assert outcomes[0].result_keys  # the result exists: its keys are still reported
    # ... while finalize's "images not stored" failure leaves a stored image succeeded
    (ok,) = batch(outcomes=[batch_entry(0, "stored")], last_task_ok=False,
                  last_task_error=NOT_STORED)
    assert ok.status == "succeeded"


def test_a_batch_that_failed_before_store_fails_every_image_of_its_plan():
    items = [{"index": 0, "uri": "s3://tilescope/incoming/0.jpg",
              "image": {"image_id": "id0"}, "plan": {"regions": 1}},
             {"index": 1, "uri": "s3://tilescope/incoming/1.jpg", "bad": "x is not an image",
              "error_class": "BadImageError"},
             {"index": 2, "uri": "s3://tilescope/incoming/2.jpg"}]
    outcomes = batch(outcomes=None, items=items, last_task_ok=False,
                     last_task_error="AirflowFailException: 3 of 3 images not stored: …",
                     failures=[failure("store", "StorageError: S3 is down"),
                               failure("analyze", "ModelError: a", 0, "0.jpg")])
    assert [o.status for o in outcomes] == ["failed"] * 3
    assert [o.reason for o in outcomes] == ["store: StorageError: S3 is down",
                                            "BadImageError: x is not an image",
                                            "store: StorageError: S3 is down"]
    assert outcomes[0].image_id == "id0" and outcomes[2].image_id is None
    assert [len(o.failures) for o in outcomes] == [2, 0, 2]
    assert [o.batch_index for o in outcomes] == [0, 1, 2] and outcomes[0].batch_images == 3
    # no failure records: the last task's own error
    (only,) = batch(outcomes=None, items=items[:1], last_task_ok=False,
                    last_task_error="Boom: x")
    assert only.reason == "Boom: x"


def test_publish_batches_ten_per_call_per_topic_and_under_the_size_cap():
    from tilescope.outputs.notifications import BATCH_BYTES, BATCH_ENTRIES, publish_batches

    entries = [batch_entry(i, "stored") for i in range(23)] + [
        batch_entry(23 + i, "bad", error="not an image") for i in range(3)]
    outcomes = batch(outcomes=entries)
    calls = publish_batches(outcomes, Topics("ok-arn", "err-arn"))
    assert [(topic, len(chunk)) for topic, chunk in calls] == [
        ("ok-arn", 10), ("ok-arn", 10), ("ok-arn", 3), ("err-arn", 3)]
    ids = [e["Id"] for _, chunk in calls for e in chunk]
    assert sorted(ids, key=int) == [str(i) for i in range(26)]  # each image once
    first = calls[0][1][0]
    assert json.loads(first["Message"]) == outcomes[0].to_message()
    assert first["Subject"] == outcomes[0].subject()
    assert first["MessageAttributes"] == {
        "status": {"DataType": "String", "StringValue": "succeeded"},
        "image_id": {"DataType": "String", "StringValue": "id0"}}
    # no error topic: the bad images are left out, nothing else changes
    assert [t for t, _ in publish_batches(outcomes, Topics("ok-arn", None))] == ["ok-arn"] * 3
    assert publish_batches(outcomes, Topics()) == []
    # big messages: a call holds fewer than ten, never more than the byte cap
    reason = "x" * 3000
    heavy = batch(outcomes=[batch_entry(i, "failed", error="e") for i in range(30)],
                  failures=[failure("analyze", reason, i, f"u{i}") for i in range(20)])
    calls = publish_batches(heavy, Topics("ok-arn", "err-arn"))
    assert sum(len(chunk) for _, chunk in calls) == 30
    assert all(len(chunk) <= BATCH_ENTRIES for _, chunk in calls)
    assert all(sum(len(e["Message"].encode()) for e in chunk) <= BATCH_BYTES
               for _, chunk in calls)
    assert len(calls) > 3  # ~60 KB each: fewer than ten fit


class FakeSns:
    """A boto3 SNS client's publish_batch: records calls; fails entry "1" once (SNS's side)
    and entry "2" always (the sender's)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def publish_batch(self, TopicArn, PublishBatchRequestEntries):  # boto3 names
        ids = [e["Id"] for e in PublishBatchRequestEntries]
        self.calls.append((TopicArn, ids))
        failed = [{"Id": "2", "Code": "InvalidParameter", "Message": "no", "SenderFault": True}
                  ] if "2" in ids else []
        if "1" in ids and len(self.calls) == 1:
            failed.append({"Id": "1", "Code": "InternalError", "Message": "try again",
                           "SenderFault": False})
        return {"Successful": [{"Id": i} for i in ids if i not in {f["Id"] for f in failed}],
                "Failed": failed}


def test_the_notifier_sends_a_batch_in_publish_batch_calls_and_retries_sns_side_failures():
    from types import SimpleNamespace

    from tilescope.airflow.callbacks import ImageOutcomeNotifier

    notifier = ImageOutcomeNotifier(last_task_ok=True)
    fake = FakeSns()
    notifier.__dict__["hook"] = SimpleNamespace(conn=fake)  # the cached SnsHook
    outcomes = batch(outcomes=[batch_entry(i, "stored") for i in range(12)])
    refused = notifier._publish_many(outcomes, Topics("ok-arn", "err-arn"))
    first_calls = sorted(ids for _, ids in fake.calls if len(ids) > 1)
    assert sorted(map(len, first_calls)) == [2, 10]
    assert ("ok-arn", ["1"]) in fake.calls  # retried once, alone
    assert len(fake.calls) == 3  # the sender's fault ("2") is not retried
    assert refused == ["ok-arn #2: InvalidParameter no"]
