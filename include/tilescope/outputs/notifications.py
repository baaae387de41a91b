"""What a finished image run tells the outside world: one JSON message per image.

Modelled on SageMaker asynchronous inference's ``SuccessTopic``/``ErrorTopic``: a run that
stored a result (``succeeded``, or ``partial`` when some regions failed) publishes to the
success topic, a run that did not (``failed``) to the error topic, each with the image, the
result keys, the counts, the duration and — when anything failed — the reason.

A **batch** run (many images in one run, :mod:`tilescope.tasks.batch`) sends the same
message once per image (:func:`batch_image_outcomes`), each with ``batch: {"index",
"images"}``; they go out ten to an SNS ``PublishBatch`` call (:func:`publish_batches`).

Pure: the Airflow side (``tilescope.airflow.callbacks``) gathers the pieces from XComs and
publishes through the amazon provider's SNS notifier; everything here is plain data, so
every message shape is unit-testable. Topics come from configuration only (an Airflow
Variable, else the environment): no topic configured means no message, and no error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tilescope.settings import ERROR_TOPIC_ARN, SUCCESS_TOPIC_ARN, Setting

SCHEMA = "tilescope.notification/1"
SUCCEEDED, PARTIAL, FAILED = "succeeded", "partial", "failed"
#: the pipeline's tasks in order (failures are reported in this order)
TASK_ORDER = ("preprocess", "analyze", "synthesize", "store", "finalize")
#: a message lists at most this many task failures (SNS caps a message at 256 KB)
MAX_FAILURES = 20

SUCCESS_TOPIC_VARIABLE = "tilescope_success_topic_arn"
ERROR_TOPIC_VARIABLE = "tilescope_error_topic_arn"
#: SNS ``PublishBatch``: at most 10 entries per call, 256 KiB for all of them together
#: (kept under it by a margin for the request's own encoding)
BATCH_ENTRIES = 10
BATCH_BYTES = 240 * 1024


@dataclass(frozen=True)
class TaskFailure:
    """One task instance that failed for good: what it was and the error it raised."""

    task_id: str
    error: str
    map_index: int = -1
    label: str | None = None
    try_number: int = 1

    def describe(self) -> str:
        """``analyze[3] (r1c1): ModelError: ...`` — the task, then the error."""
        where = self.task_id if self.map_index < 0 else f"{self.task_id}[{self.map_index}]"
        if self.label:
            where += f" ({self.label})"
        return f"{where}: {self.error}"

    def to_dict(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "map_index": self.map_index, "label": self.label,
                "try_number": self.try_number, "error": self.error}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskFailure:
        return cls(task_id=str(data["task_id"]), error=str(data.get("error") or "unknown error"),
                   map_index=int(data.get("map_index", -1)), label=data.get("label"),
                   try_number=int(data.get("try_number") or 1))


#: exceptions that only carry another error's description (tasks fail fast by raising
#: ``AirflowFailException("BadImageError: ...")``): their message is reported as is
_WRAPPERS = frozenset({"AirflowFailException"})


def describe_exception(error: BaseException | str | None) -> str:
    """``ClassName: message`` on one line (task errors may span lines), at most 1,000 chars."""
    if error is None:
        return "unknown error"
    if isinstance(error, BaseException):
        name, message = type(error).__name__, str(error)
        if not message:
            text = name
        elif name in _WRAPPERS or message.startswith(f"{name}:"):
            text = message
        else:
            text = f"{name}: {message}"
    else:
        text = str(error)
    text = " ".join(text.split())
    return text if len(text) <= 1000 else text[:999] + "…"


@dataclass(frozen=True)
class ImageOutcome:
    """How one image's run ended, as the notification and the image metrics report it."""

    status: str
    image_uri: str
    dag_id: str
    run_id: str
    finished_at: datetime
    started_at: datetime | None = None
    image_id: str | None = None
    result_keys: dict[str, str] = field(default_factory=dict)
    detections: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    regions: int | None = None
    failed_regions: list[str] = field(default_factory=list)
    model_share: float | None = None
    reason: str | None = None
    failures: list[TaskFailure] = field(default_factory=list)
    #: in a batch run: this image's place in the batch, and the batch's size
    batch_index: int | None = None
    batch_images: int | None = None

    @property
    def duration_seconds(self) -> float | None:
        """Run start → outcome, in seconds (``None`` when the run's start is unknown)."""
        if self.started_at is None:
            return None
        return max(0.0, (self.finished_at - self.started_at).total_seconds())

    def subject(self) -> str:
        """A short ASCII subject (SNS refuses non-ASCII and >100 characters)."""
        return f"tilescope {self.status}: image {self.image_id or 'unknown'}"[:100]

    def attributes(self) -> dict[str, str]:
        """SNS message attributes, so subscriptions can filter on status without parsing."""
        attributes = {"status": self.status}
        if self.image_id:
            attributes["image_id"] = self.image_id
        return attributes

    def to_message(self) -> dict[str, Any]:
        """The JSON message body."""
        duration = self.duration_seconds
        return {
            "schema": SCHEMA,
            "status": self.status,
            "image": {"uri": self.image_uri, "id": self.image_id},
            "dag_id": self.dag_id,
            "run_id": self.run_id,
            "result_keys": dict(self.result_keys),
            "detections": self.detections,
            "counts": dict(self.counts),
            "regions": self.regions,
            "failed_regions": list(self.failed_regions),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat(),
            "duration_seconds": round(duration, 3) if duration is not None else None,
            "model_share": self.model_share,
            "reason": self.reason,
            "failures": [f.to_dict() for f in self.failures[:MAX_FAILURES]],
            "failures_total": len(self.failures),
            "batch": None if self.batch_index is None else {
                "index": self.batch_index, "images": self.batch_images},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_message(), ensure_ascii=False, sort_keys=True)


def _stage(failure: TaskFailure) -> int:
    try:
        return TASK_ORDER.index(failure.task_id)
    except ValueError:
        return len(TASK_ORDER)


def _records(failures: Iterable[Mapping[str, Any] | TaskFailure | None]) -> list[TaskFailure]:
    """Failure records in pipeline order (then map index); ``None`` entries dropped."""
    return sorted((f if isinstance(f, TaskFailure) else TaskFailure.from_dict(f)
                   for f in failures if f), key=lambda f: (_stage(f), f.map_index))


def run_failure_reason(records: Sequence[TaskFailure], last_task_error: str | None) -> str:
    """Why a run stored nothing: the first failure of a whole-image task (preprocess,
    synthesize, store — later ones are consequences), else the first region error, else
    the last task's own error."""
    if records:
        whole_image = [f for f in records if f.task_id != "analyze"]
        return (whole_image or records)[0].describe()
    return last_task_error or "the run failed without a recorded error"


def image_outcome(*, dag_id: str, run_id: str, image_uri: str, finished_at: datetime,
                  stored: Mapping[str, Any] | None, last_task_ok: bool = True,
                  last_task_error: str | None = None, started_at: datetime | None = None,
                  prepared: Mapping[str, Any] | None = None,
                  failures: Iterable[Mapping[str, Any] | TaskFailure | None] = ()
                  ) -> ImageOutcome:
    """Decide the outcome of one run from what its tasks left behind.

    ``stored``: the store task's summary (``None`` when nothing was stored);
    ``last_task_ok``/``last_task_error``: whether the run's last task (finalize) succeeded,
    and its error otherwise; ``prepared``: preprocess's output (for the image id when nothing
    was stored); ``failures``: the failure records of the run's failed tasks.

    The status is ``failed`` unless a result was stored *and* the last task succeeded; a
    stored ``partial`` result is ``partial``. The reason of a failed run is the first
    failure of a whole-image task (preprocess, synthesize, store): a region's error alone
    does not fail a run — synthesize's "3 of 4 regions failed (…)" says why it did — and
    later failures are consequences (synthesize fails when preprocess did). Failing that,
    the first region error, else the last task's own error.
    """
    records = _records(failures)
    image = dict((prepared or {}).get("image") or {})
    if stored is None or not last_task_ok:
        status = FAILED
    else:
        status = PARTIAL if stored.get("status") == "partial" else SUCCEEDED
    stored = stored or {}
    failed_regions = [str(r) for r in stored.get("failed_regions") or ()] if stored else [
        f.label or f"#{f.map_index}" for f in records if f.task_id == "analyze"]
    if status == FAILED:
        if stored and last_task_error:  # stored, then the last task failed (e.g. settling)
            reason = last_task_error
        else:
            reason = run_failure_reason(records, last_task_error)
    elif status == PARTIAL:
        shown = ", ".join(failed_regions[:10]) + (" …" if len(failed_regions) > 10 else "")
        reason = f"{len(failed_regions)} region(s) failed ({shown})"
        if records:
            reason += f"; first error: {records[0].describe()}"
    else:
        reason = None
    return ImageOutcome(
        status=status, image_uri=str(stored.get("image_uri") or image.get("uri") or image_uri),
        dag_id=dag_id, run_id=run_id, finished_at=finished_at, started_at=started_at,
        image_id=stored.get("image_id") or image.get("image_id"),
        result_keys={str(k): str(v) for k, v in (stored.get("keys") or {}).items()},
        detections=stored.get("detections"),
        counts={str(k): int(v) for k, v in (stored.get("counts") or {}).items()},
        regions=stored.get("regions") or ((prepared or {}).get("plan") or {}).get("regions"),
        failed_regions=failed_regions, model_share=stored.get("model_share"),
        reason=reason, failures=records)


#: what a batch run's finalize fails with when some images were not stored (an expected
#: failure: each image's message gives its own reason); any other error of finalize is a
#: settling failure, which fails the stored images too
NOT_STORED_MARK = " images not stored"


def _with_class(error: str | None, error_class: str | None) -> str | None:
    """``BadImageError: …not an image`` — the class in front, once."""
    if not error:
        return error_class
    if not error_class or error.startswith(f"{error_class}:"):
        return error
    return f"{error_class}: {error}"


def batch_image_outcomes(*, dag_id: str, run_id: str, finished_at: datetime,
                         outcomes: Iterable[Mapping[str, Any]] | None,
                         items: Iterable[Mapping[str, Any]] = (),
                         started_at: datetime | None = None,
                         failures: Iterable[Mapping[str, Any] | TaskFailure | None] = (),
                         last_task_ok: bool = True, last_task_error: str | None = None
                         ) -> list[ImageOutcome]:
    """One :class:`ImageOutcome` per image of a batch run.

    ``outcomes``: the per-image outcomes ``store`` wrote (``outcomes.json``'s list: ``index,
    uri, status`` stored/bad/failed, ``image_id, keys, detections, counts, result_status,
    error, error_class``), or ``None`` when store never wrote them (the run failed before);
    then ``items`` (the batch plan's items: ``index, uri, image, bad, error_class``) give the
    images, every one ``failed`` — a bad one with its own reason, the others with the run's
    (:func:`run_failure_reason`). A stored image is ``succeeded`` (``partial`` for a partial
    result) → success topic; a bad or failed one ``failed`` → error topic with its reason.
    ``last_task_ok``/``last_task_error``: finalize's outcome; it fails whenever an image was
    not stored (its error holds :data:`NOT_STORED_MARK`: no one else's concern), any other
    error of it (settling the claims) fails the stored images too.
    """
    records = _records(failures)
    settle_error = None
    if not last_task_ok and NOT_STORED_MARK not in (last_task_error or ""):
        settle_error = last_task_error or "finalize failed"
    if outcomes is None:
        run_reason = run_failure_reason(records, last_task_error)
        entries: list[dict[str, Any]] = []
        for item in items:
            image = item.get("image") or {}
            entries.append({"index": item["index"], "uri": item["uri"],
                            "image_id": image.get("image_id"),
                            "status": "bad" if item.get("bad") else "failed",
                            "error": item.get("bad") or run_reason,
                            "error_class": item.get("error_class") if item.get("bad") else None})
    else:
        entries = [dict(o) for o in outcomes]
    total = len(entries)
    out = []
    for entry in entries:
        shown: list[TaskFailure] = []
        if entry["status"] == "stored":
            status = PARTIAL if entry.get("result_status") == "partial" else SUCCEEDED
            reason = None
            if status == PARTIAL:
                shown = records
                reason = "partial result: some of its regions failed" + (
                    f"; first error: {records[0].describe()}" if records else "")
            if settle_error:
                status, reason = FAILED, settle_error
        else:
            status = FAILED
            reason = _with_class(entry.get("error"), entry.get("error_class")) or (
                "bad input" if entry["status"] == "bad" else "not stored")
            if entry["status"] != "bad":  # a refused input is no task's failure
                shown = records
        out.append(ImageOutcome(
            status=status, image_uri=str(entry["uri"]), dag_id=dag_id, run_id=run_id,
            finished_at=finished_at, started_at=started_at, image_id=entry.get("image_id"),
            result_keys={str(k): str(v) for k, v in (entry.get("keys") or {}).items()},
            detections=entry.get("detections"),
            counts={str(k): int(v) for k, v in (entry.get("counts") or {}).items()},
            reason=reason, failures=list(shown), batch_index=int(entry["index"]),
            batch_images=total))
    return out


def publish_entry(entry_id: str, outcome: ImageOutcome) -> dict[str, Any]:
    """One ``PublishBatchRequestEntries`` item: the message, subject and attributes."""
    return {"Id": entry_id, "Message": outcome.to_json(), "Subject": outcome.subject(),
            "MessageAttributes": {k: {"DataType": "String", "StringValue": v}
                                  for k, v in outcome.attributes().items()}}


def _entry_bytes(entry: Mapping[str, Any]) -> int:
    attributes = entry.get("MessageAttributes") or {}
    return (len(entry["Message"].encode()) + len(entry.get("Subject") or "")
            + sum(len(k) + len(v["StringValue"].encode()) + len(v["DataType"])
                  for k, v in attributes.items()))


def publish_batches(outcomes: Sequence[ImageOutcome], topics: Topics
                    ) -> list[tuple[str, list[dict[str, Any]]]]:
    """The ``PublishBatch`` calls that send ``outcomes``: ``(topic, entries)``, each at most
    :data:`BATCH_ENTRIES` entries and :data:`BATCH_BYTES` bytes, entry ids unique (the
    outcome's position). Outcomes whose topic is not configured are left out."""
    calls: list[tuple[str, list[dict[str, Any]]]] = []
    open_call: dict[str, tuple[list[dict[str, Any]], list[int]]] = {}
    for position, outcome in enumerate(outcomes):
        topic = topics.for_status(outcome.status)
        if not topic:
            continue
        entry = publish_entry(str(position), outcome)
        size = _entry_bytes(entry)
        current = open_call.get(topic)
        if current is None or len(current[0]) >= BATCH_ENTRIES or \
                current[1][0] + size > BATCH_BYTES:
            current = ([], [0])
            open_call[topic] = current
            calls.append((topic, current[0]))
        current[0].append(entry)
        current[1][0] += size
    return calls


@dataclass(frozen=True)
class Topics:
    """The SNS topics (or endpoint ARNs) outcomes go to; ``None`` = do not notify."""

    success: str | None = None
    error: str | None = None

    def for_status(self, status: str) -> str | None:
        """``succeeded``/``partial`` (a result exists) → success topic; ``failed`` → error."""
        return self.error if status == FAILED else self.success


def resolve_topics(variable: Callable[[str], str | None] | None = None,
                   env: Mapping[str, str] | None = None) -> Topics:
    """The topics from the Airflow Variables ``tilescope_success_topic_arn`` /
    ``tilescope_error_topic_arn`` (changeable at run time, no restart), else the
    environment's ``TILESCOPE_SUCCESS_TOPIC_ARN`` / ``TILESCOPE_ERROR_TOPIC_ARN``.
    Blank values count as unset."""

    def pick(variable_name: str, setting: Setting) -> str | None:
        value = ((variable(variable_name) if variable else None) or "").strip()
        return value or setting.get(env)

    return Topics(success=pick(SUCCESS_TOPIC_VARIABLE, SUCCESS_TOPIC_ARN),
                  error=pick(ERROR_TOPIC_VARIABLE, ERROR_TOPIC_ARN))
