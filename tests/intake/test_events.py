"""S3 event notifications → claims: the parser (pure), the intake against a real S3 server and
a SQLite catalog, and the ``s3_events`` DAG file with and without its queue configured."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tilescope.intake.arrivals import Arrival
from tilescope.intake.claims import all_claims, unfinished
from tilescope.intake.events import read_notifications, s3_records_from_events
from tilescope.intake.flow import (
    IntakePolicy,
    batch_requests,
    claim_notified,
    mark_batches_triggered,
    mark_triggered,
    trigger_requests,
)

BUCKET = "tilescope"
DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "s3_events.py"
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 100


def record(key: str, *, bucket: str = BUCKET, etag: str = "abc", size: int | None = 10,
           event: str = "ObjectCreated:Put", encode: bool = True) -> dict[str, Any]:
    """One S3 notification record; keys URL-encoded the way S3 does (``+`` for spaces)."""
    obj: dict[str, Any] = {"key": quote_plus(key, safe="/") if encode else key, "eTag": etag}
    if size is not None:
        obj["size"] = size
    return {"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": event,
            "s3": {"bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                   "object": obj}}


def message(body: Any, message_id: str = "m1") -> dict[str, Any]:
    """An SQS message as the SQS trigger passes it on: ``Body`` is a JSON string."""
    return {"MessageId": message_id, "ReceiptHandle": "rh", "MD5OfBody": "x",
            "Body": body if isinstance(body, str) else json.dumps(body)}


def event_extra(*messages: dict[str, Any]) -> dict[str, Any]:
    """An asset event's extra as the triggerer records it for a watcher's TriggerEvent."""
    return {"from_trigger": True,
            "payload": {"status": "success", "message_batch": list(messages)}}


def keys_of(arrivals: list[Arrival]) -> list[str]:
    return [a.key for a in arrivals]


# --- the parser ---------------------------------------------------------------------------

@pytest.mark.parametrize("key", [
    "incoming/kite 1.jpg", "incoming/ünïcode kite.jpg", "incoming/a+b=c&d.jpg",
    "incoming/東京/タワー (2).png", "incoming/100% sure?.jpg", "incoming/~tilde/#hash.jpg"])
def test_keys_are_url_decoded(key):
    extra = event_extra(message({"Records": [record(key)]}))
    assert keys_of(s3_records_from_events([extra])) == [key]


def test_plus_is_a_space_and_encoded_plus_is_a_plus():
    raw = {"Records": [record("incoming/a+b%2Bc.jpg", encode=False)]}
    assert keys_of(s3_records_from_events([event_extra(message(raw))])) == ["incoming/a b+c.jpg"]


def test_encoded_slashes_are_decoded_too():
    """moto (unlike AWS) also encodes ``/`` as ``%2F``."""
    raw = {"Records": [record(quote("incoming/ü k+x.jpg", safe=" ").replace(" ", "+"),
                              encode=False)]}
    assert keys_of(s3_records_from_events([event_extra(message(raw))])) == ["incoming/ü k+x.jpg"]


@given(st.text(min_size=1, max_size=60).filter(lambda s: "\x00" not in s))
def test_any_key_round_trips(name):
    key = f"incoming/{name}"
    extra = event_extra(message({"Records": [record(key)]}))
    found = s3_records_from_events([extra])
    assert keys_of(found) == ([] if key.endswith("/") else [key])


def test_etag_size_and_bucket_are_carried():
    extra = event_extra(message({"Records": [record("incoming/a.jpg", etag='"e1-3"', size=123),
                                             record("incoming/b.jpg", size=None)]}))
    assert s3_records_from_events([extra]) == [Arrival(BUCKET, "incoming/a.jpg", "e1-3", 123),
                                               Arrival(BUCKET, "incoming/b.jpg", "abc", 0)]


def test_test_events_are_ignored():
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent",
                  "Time": "2026-01-01T00:00:00.000Z", "Bucket": BUCKET}
    notes = read_notifications([event_extra(message(test_event, "t1"))])
    assert notes.arrivals == [] and notes.skipped == ["message t1: s3:TestEvent"]


def test_many_records_messages_and_events_in_order_without_duplicates():
    first = event_extra(message({"Records": [record("incoming/1.jpg"),
                                             record("incoming/2.jpg")]}, "m1"),
                        message({"Records": [record("incoming/3.jpg")]}, "m2"))
    # SQS is at-least-once: the same record may come again, in the same batch or the next.
    again = event_extra(message({"Records": [record("incoming/2.jpg"),
                                             record("incoming/4.jpg"),
                                             record("incoming/4.jpg", etag="new")]}, "m3"))
    found = s3_records_from_events([first, again])
    assert [(a.key, a.etag) for a in found] == [
        ("incoming/1.jpg", "abc"), ("incoming/2.jpg", "abc"), ("incoming/3.jpg", "abc"),
        ("incoming/4.jpg", "abc"), ("incoming/4.jpg", "new")]


def test_keys_outside_incoming_other_buckets_removals_and_folders_are_ignored():
    extra = event_extra(message({"Records": [
        record("processed/a.jpg"), record("incomingx/b.jpg"), record("c.jpg"),
        record("incoming/d.jpg", bucket="elsewhere"),
        record("incoming/e.jpg", event="ObjectRemoved:Delete"),
        record("incoming/folder/", size=0),
        record("incoming/ok.jpg", event="s3:ObjectCreated:CompleteMultipartUpload")]}))
    notes = read_notifications([extra], buckets={BUCKET})
    assert keys_of(notes.arrivals) == ["incoming/ok.jpg"]
    assert len(notes.skipped) == 6
    assert "s3://tilescope/processed/a.jpg: outside incoming/" in notes.skipped
    assert "s3://elsewhere/incoming/d.jpg: bucket not watched" in notes.skipped
    # Without a bucket filter any bucket counts; another prefix can be watched.
    assert keys_of(s3_records_from_events([extra], prefix="processed/")) == ["processed/a.jpg"]
    assert "incoming/d.jpg" in keys_of(s3_records_from_events([extra]))


def test_sns_envelope_and_eventbridge_event():
    sns = {"Type": "Notification", "MessageId": "sns1", "TopicArn": "arn:aws:sns:x",
           "Message": json.dumps({"Records": [record("incoming/via sns.jpg")]})}
    bridge = {"version": "0", "source": "aws.s3", "detail-type": "Object Created",
              "detail": {"bucket": {"name": BUCKET}, "reason": "PutObject",
                         "object": {"key": "incoming/via bridge+1.jpg", "size": 5,
                                    "etag": "e2"}}}
    extra = event_extra(message(sns, "a"), message(bridge, "b"))
    assert s3_records_from_events([extra]) == [
        Arrival(BUCKET, "incoming/via sns.jpg", "abc", 10),
        Arrival(BUCKET, "incoming/via bridge+1.jpg", "e2", 5)]  # EventBridge keys: not encoded


def test_unreadable_messages_are_skipped_not_fatal():
    extra = event_extra(message("not json", "bad1"), message([1, 2], "bad2"),
                        message({"hello": "world"}, "bad3"),
                        message({"Records": [{"eventName": "ObjectCreated:Put"}, "junk",
                                             record("incoming/fine.jpg")]}, "m"))
    notes = read_notifications([extra, {"payload": "odd"}, "odder", None])
    assert keys_of(notes.arrivals) == ["incoming/fine.jpg"]
    assert notes.skipped == ["message bad1: body is not JSON",
                             "message bad2: body is not a JSON object",
                             "message bad3: not an S3 notification",
                             "record ObjectCreated:Put: no bucket or key"]


def test_asset_event_objects_and_events_without_payload():
    """The task passes the context's asset events (``.extra``); the DAG's own backlog event
    has an empty extra and announces nothing."""
    events = [SimpleNamespace(extra=event_extra(message({"Records": [record("incoming/x.jpg")]}))),
              SimpleNamespace(extra={}), {"from_trigger": True, "payload": {}}]
    assert keys_of(s3_records_from_events(events)) == ["incoming/x.jpg"]
    assert keys_of(s3_records_from_events([{"Records": [record("incoming/y.jpg")]}])) == [
        "incoming/y.jpg"]  # a bare notification body also reads


# --- the intake: claim, screen, quarantine against S3 and the catalog ---------------------

@pytest.fixture
def engine(tmp_path):
    from tilescope.outputs.catalog import connect

    return connect(f"sqlite:///{tmp_path / 'catalog.sqlite'}")


@pytest.fixture
def s3(s3_client):
    s3_client.create_bucket(Bucket=BUCKET)
    return s3_client


def upload(s3, key: str, body: bytes) -> Arrival:
    etag = s3.put_object(Bucket=BUCKET, Key=key, Body=body)["ETag"].strip('"')
    return Arrival(BUCKET, key, etag, len(body))


def claims_by_key(engine) -> dict[str, str]:
    return {row["key"]: row["status"] for row in all_claims(engine)}


def test_intake_claims_images_quarantines_the_rest_and_ignores_redelivery(s3, engine):
    image = upload(s3, "incoming/ünï kite+1.jpg", JPEG)
    notes = upload(s3, "incoming/notes.txt", b"hello")
    got = claim_notified(s3, engine, [image, notes], IntakePolicy(), run_id="r1")
    assert [c.key for c in got.claims] == [image.key] and got.backlog == 0
    assert got.rejected == [{"key": notes.key, "reason": got.rejected[0]["reason"]}]
    assert "suffix" in got.rejected[0]["reason"]
    error = json.loads(s3.get_object(Bucket=BUCKET, Key="quarantine/notes.txt.error.json")[
        "Body"].read())
    assert error["run_id"] == "r1" and error["error_class"] == "NotAnImage"
    request = trigger_requests(got.claims)[0]
    assert request["conf"]["image_uri"] == f"s3://{BUCKET}/{image.key}"

    # The same notifications again (at-least-once delivery): nothing new to start — the
    # image's claim is still 'claimed' (not yet triggered), so it is only re-offered once.
    again = claim_notified(s3, engine, [image, notes], IntakePolicy())
    assert [c.run_id for c in again.claims] == [got.claims[0].run_id]
    assert [s["reason"] for s in again.skipped] == ["already quarantined"]
    assert mark_triggered(engine, got.claims) == 1
    third = claim_notified(s3, engine, [image], IntakePolicy())
    assert third.claims == [] and third.skipped[0]["reason"] == "already triggered"
    assert claims_by_key(engine) == {image.key: "triggered", notes.key: "quarantined"}


def test_intake_skips_gone_and_superseded_versions(s3, engine):
    old = upload(s3, "incoming/a.jpg", JPEG)
    new = upload(s3, "incoming/a.jpg", JPEG + b"\x01")  # replaced before the event was read
    gone = upload(s3, "incoming/b.jpg", JPEG)
    s3.delete_object(Bucket=BUCKET, Key=gone.key)
    got = claim_notified(s3, engine, [old, gone, new], IntakePolicy())
    assert [(c.key, c.etag) for c in got.claims] == [(new.key, new.etag)]
    reasons = [s["reason"] for s in got.skipped]
    assert reasons[0].startswith(f"superseded by version {new.etag}")
    assert reasons[1] == "gone since notified (moved or deleted)"


def test_intake_without_notified_etag_or_size_uses_head(s3, engine):
    real = upload(s3, "incoming/c.jpg", JPEG)
    got = claim_notified(s3, engine, [Arrival(BUCKET, real.key, "", 0)], IntakePolicy())
    assert [(c.etag, c.size) for c in got.claims] == [(real.etag, len(JPEG))]


def test_intake_reoffers_only_abandoned_claims_of_other_runs(s3, engine):
    """With overlapping runs, a fresh unfinished claim belongs to a run that is triggering it
    right now; only an old one (its claimer died) is re-offered — and a notified version that
    is still unfinished (this task's own earlier try) always is."""
    from tilescope.intake.claims import claim

    other = upload(s3, "incoming/other.jpg", JPEG)
    mine = upload(s3, "incoming/mine.jpg", JPEG + b"\x02")
    assert claim(engine, BUCKET, other.key, other.etag, other.size) is not None
    assert claim(engine, BUCKET, mine.key, mine.etag, mine.size) is not None
    got = claim_notified(s3, engine, [mine], IntakePolicy(), reoffer_after_seconds=600)
    assert [c.key for c in got.claims] == [mine.key]
    got = claim_notified(s3, engine, [], IntakePolicy(), reoffer_after_seconds=0)
    assert sorted(c.key for c in got.claims) == [mine.key, other.key]


def test_intake_caps_each_run_and_leaves_a_backlog(s3, engine):
    arrivals = [upload(s3, f"incoming/{i}.jpg", JPEG + bytes([i])) for i in range(5)]
    policy = IntakePolicy(per_tick_limit=2)
    first = claim_notified(s3, engine, arrivals, policy)
    assert len(first.claims) == 2 and first.backlog == 3
    assert len(unfinished(engine)) == 5  # every notified version is claimed at once
    mark_triggered(engine, first.claims)
    second = claim_notified(s3, engine, [], policy)  # the backlog run: no new events
    assert len(second.claims) == 2 and second.backlog == 1
    assert {c.key for c in first.claims}.isdisjoint(c.key for c in second.claims)


def test_intake_batches_notified_images_into_few_runs(s3, engine):
    """A message naming many images starts a few batch runs (bounded by images per run),
    each with its run id stored in the claims and its manifest written; the run's requests
    stay small."""
    arrivals = [upload(s3, f"incoming/n/{i:02d}.jpg", JPEG + bytes([i])) for i in range(25)]
    got = claim_notified(s3, engine, arrivals, IntakePolicy(images_per_run=10))
    assert [len(b.claims) for b in got.batches] == [10, 10, 5] and got.backlog == 0
    rows = {r["key"]: r["run_id"] for r in all_claims(engine)}
    for batch in got.batches:
        assert {rows[c.key] for c in batch.claims} == {batch.run_id}
        manifest = json.loads(s3.get_object(
            Bucket=BUCKET, Key=f"manifests/{batch.run_id}.json")["Body"].read())
        assert sorted(i["claim"]["key"] for i in manifest["images"]) == sorted(
            c.key for c in batch.claims)
    requests = batch_requests(got.batches)
    assert [r["conf"] for r in requests] == [{"manifest": b.manifest_uri} for b in got.batches]
    assert len(json.dumps(requests)) < 2048


def test_intake_reoffers_a_stored_batch_whole_when_one_member_is_redelivered(s3, engine,
                                                                             monkeypatch):
    """The run died after storing its batch ids, before the trigger. SQS redelivers one of
    the messages: that version is re-offered at once — as its whole stored batch, under the
    same run id, with the same manifest a backlog run would write."""
    import tilescope.intake.flow as intake

    arrivals = [upload(s3, f"incoming/r{i}.jpg", JPEG + bytes([i])) for i in range(4)]
    monkeypatch.setattr(intake, "write_manifest", lambda client, batch: (_ for _ in ()).throw(
        SystemExit("killed")))
    with pytest.raises(SystemExit):
        claim_notified(s3, engine, arrivals, IntakePolicy())
    monkeypatch.undo()
    (stored,) = {r["run_id"] for r in all_claims(engine)}
    got = claim_notified(s3, engine, [arrivals[2]], IntakePolicy(), reoffer_after_seconds=600)
    assert [b.run_id for b in got.batches] == [stored]
    assert sorted(c.key for c in got.claims) == sorted(a.key for a in arrivals)
    backlog_run = claim_notified(s3, engine, [], IntakePolicy(), reoffer_after_seconds=0)
    assert [(b.run_id, b.manifest_bytes()) for b in backlog_run.batches] == [
        (stored, got.batches[0].manifest_bytes())]
    assert mark_batches_triggered(engine, [stored]) == 4
    assert claim_notified(s3, engine, arrivals, IntakePolicy()).batches == []


# --- the DAG file --------------------------------------------------------------------------

def load(monkeypatch, queue_url: str | None):
    from airflow.dag_processing.dagbag import DagBag

    if queue_url is None:
        monkeypatch.delenv("TILESCOPE_SQS_QUEUE_URL", raising=False)
    else:
        monkeypatch.setenv("TILESCOPE_SQS_QUEUE_URL", queue_url)
    return DagBag(dag_folder=str(DAG_FILE))


def test_dag_file_defines_nothing_without_a_queue(airflow_db, monkeypatch):
    bag = load(monkeypatch, None)
    assert bag.import_errors == {} and bag.dags == {}


def test_dag_watches_the_queue_with_the_sqs_trigger(airflow_db, monkeypatch):
    url = "http://127.0.0.1:9/123456789012/tilescope-arrivals"
    bag = load(monkeypatch, url)
    assert bag.import_errors == {}
    dag = bag.dags["s3_events"]
    assert dag.tags and dag.doc_md and dag.max_active_runs == 4
    assert all(t.retries >= 1 for t in dag.tasks)
    assert {t.task_id for t in dag.tasks} == {"claim_events", "start_pipelines",
                                              "mark_triggered", "continue_backlog"}
    (asset,) = [a for a in dag.schedule]
    assert asset.uri == "s3://tilescope/incoming"
    assert [o.uri for o in dag.get_task("continue_backlog").outlets] == [asset.uri]
    (watcher,) = asset.watchers
    classpath, kwargs = watcher.trigger.serialize()
    assert classpath == "airflow.providers.amazon.aws.triggers.sqs.SqsSensorTrigger"
    assert kwargs["sqs_queue"] == url and kwargs["aws_conn_id"] == "aws_default"
    assert kwargs["delete_message_on_reception"] is True and kwargs["max_messages"] == 10
    assert kwargs["wait_time_seconds"] == 20 and kwargs["waiter_delay"] == 0
