"""S3 event notifications (as delivered through SQS) → the object versions that arrived.

The ``s3_events`` DAG is scheduled on an asset whose watcher is the SQS message-queue
trigger. Each asset event's ``extra`` is ``{"from_trigger": True, "payload": {"status":
"success", "message_batch": [<SQS message>, ...]}}``, and each SQS message carries its
``Body`` as a JSON *string*: an S3 notification (``{"Records": [...]}``), the ``s3:TestEvent``
S3 sends when a notification configuration is saved, or the same wrapped in an SNS envelope
(S3 → SNS → SQS fan-out) or an EventBridge event (S3 → EventBridge → SQS).

Parsing is pure (no I/O) so every shape can be unit-tested; nothing here trusts a message
further than "this version was notified": the intake step re-reads each object with HEAD
before claiming it. A message that cannot be read is skipped with a reason rather than
failing the run — the trigger has already deleted it from the queue, so failing would only
make every retry fail the same way; the scheduled sweep (``s3_arrivals``) is the safety net.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus, unquote_plus

from tilescope.intake.arrivals import INCOMING, Arrival

CREATED = "ObjectCreated:"


@dataclass
class Notifications:
    """What a set of asset events announced: new versions (deduplicated, in order of
    notification) and, for the task log, why anything else was skipped."""

    arrivals: list[Arrival] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def s3_records_from_events(events: Iterable[Any], *, prefix: str = INCOMING,
                           buckets: Collection[str] | None = None) -> list[Arrival]:
    """The object versions created under ``prefix`` that these asset events announce.

    ``events``: asset events (anything with an ``.extra``) or their ``extra`` mappings.
    ``buckets``: accept only these buckets (``None``: any). Keys are URL-decoded (S3 encodes
    them with ``+`` for spaces); ``size`` is as notified (0 when absent — intake re-reads it).
    """
    return read_notifications(events, prefix=prefix, buckets=buckets).arrivals


def read_notifications(events: Iterable[Any], *, prefix: str = INCOMING,
                       buckets: Collection[str] | None = None) -> Notifications:
    """:func:`s3_records_from_events` plus the reasons for everything it skipped."""
    out = Notifications()
    seen: set[tuple[str, str, str]] = set()
    for event in events:
        extra = getattr(event, "extra", event)
        for message in _messages(extra):
            for record in _records(message, out.skipped):
                arrival = _arrival(record, out.skipped)
                if arrival is None:
                    continue
                if buckets is not None and arrival.bucket not in buckets:
                    out.skipped.append(f"{arrival.uri}: bucket not watched")
                    continue
                if not arrival.key.startswith(prefix):
                    out.skipped.append(f"{arrival.uri}: outside {prefix}")
                    continue
                if arrival.key.endswith("/"):
                    out.skipped.append(f"{arrival.uri}: folder marker")
                    continue
                version = (arrival.bucket, arrival.key, arrival.etag)
                if version in seen:  # SQS delivers at least once; S3 may also repeat itself
                    continue
                seen.add(version)
                out.arrivals.append(arrival)
    return out


def _messages(extra: Any) -> Iterator[Mapping[str, Any]]:
    """The SQS messages in one asset event's extra (none for events not from the trigger,
    e.g. the DAG's own "backlog left" event)."""
    if not isinstance(extra, Mapping):
        return
    payload = extra.get("payload", extra)
    if not isinstance(payload, Mapping):
        return
    batch = payload.get("message_batch")
    if batch is None and ("Body" in payload or "Records" in payload):
        batch = [payload]  # a single message (or bare notification) passed directly
    for message in batch or ():
        if isinstance(message, Mapping):
            yield message


def _records(message: Mapping[str, Any], skipped: list[str]) -> Iterator[Mapping[str, Any]]:
    """The S3 records in one SQS message, unwrapping SNS and recognising test events."""
    body: Any = message.get("Body", message)
    name = str(message.get("MessageId", "?"))
    for _ in range(3):  # body → (SNS envelope →) notification; never loops on odd input
        if isinstance(body, str | bytes):
            try:
                body = json.loads(body)
            except ValueError:
                skipped.append(f"message {name}: body is not JSON")
                return
        if not isinstance(body, Mapping):
            skipped.append(f"message {name}: body is not a JSON object")
            return
        if body.get("Type") == "Notification" and "Message" in body:  # SNS envelope
            body = body["Message"]
            continue
        break
    if not isinstance(body, Mapping):
        skipped.append(f"message {name}: nested too deeply")
        return
    if body.get("Event") == "s3:TestEvent":
        skipped.append(f"message {name}: s3:TestEvent")
        return
    if body.get("source") == "aws.s3" and isinstance(body.get("detail"), Mapping):
        yield _from_eventbridge(body)
        return
    records = body.get("Records")
    if not isinstance(records, list):
        skipped.append(f"message {name}: not an S3 notification")
        return
    for record in records:
        if isinstance(record, Mapping):
            yield record


def _from_eventbridge(body: Mapping[str, Any]) -> dict[str, Any]:
    """An EventBridge "Object Created" event as a notification record (its keys are *not*
    URL-encoded, so they are re-encoded here and decoded like any other)."""
    detail = body["detail"]
    obj = dict(detail.get("object") or {})
    if "key" in obj:
        obj["key"] = quote_plus(str(obj["key"]), safe="/")
    obj.setdefault("eTag", obj.get("etag"))
    created = str(body.get("detail-type", "")) == "Object Created"
    return {"eventName": f"{CREATED}{detail.get('reason', 'EventBridge')}" if created
            else str(body.get("detail-type", "")),
            "s3": {"bucket": detail.get("bucket") or {}, "object": obj}}


def _arrival(record: Mapping[str, Any], skipped: list[str]) -> Arrival | None:
    """One record → the created version, or ``None`` (with a reason) for anything else."""
    event = str(record.get("eventName", ""))
    event = event[3:] if event.startswith("s3:") else event
    s3: Any = record.get("s3")  # anything: a malformed record is skipped below
    try:
        bucket = str(s3["bucket"]["name"])
        obj = s3["object"]
        key = unquote_plus(str(obj["key"]))
    except (KeyError, TypeError):
        skipped.append(f"record {event or '?'}: no bucket or key")
        return None
    if not event.startswith(CREATED):
        skipped.append(f"s3://{bucket}/{key}: {event or 'no eventName'} is not a creation")
        return None
    etag = str(obj.get("eTag") or obj.get("etag") or "").strip('"')
    try:
        size = int(obj.get("size") or 0)
    except (TypeError, ValueError):
        size = 0
    return Arrival(bucket, key, etag, size)
