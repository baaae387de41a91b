"""tiled_inference's task callbacks: failure records, image metrics, SNS notifications.

**Where the message comes from.** One message per image, from the callbacks of the run's
last task, ``finalize`` (``on_success_callback`` when a result was stored, else
``on_failure_callback``) — not from DAG-level callbacks. ``finalize`` runs whatever happened
upstream (``all_done``), its state *is* the run's state (it is the only leaf), it fails
without retries (``AirflowFailException``) when nothing was stored, and Airflow fires
``on_failure_callback`` only after the last try: exactly one callback per run outcome. Task
callbacks run in the worker right after the task, with XCom access and the worker's
connections; DAG-level callbacks run in the dag-processor, which must re-parse the file
first and would need the connection there too. (``dag.test()`` in Airflow 3.3 runs both
kinds, in-process.) Clearing a failed region re-runs ``finalize`` and so sends a new
message with the new outcome.

**Where the failure reason comes from.** Every task's ``on_failure_callback``
(:func:`record_failure`, set in ``default_args``) pushes ``{"task_id", "map_index",
"error", ...}`` as the XCom ``failure`` of the failed task instance; ``finalize``'s
callbacks read them back in one request per task. Airflow clears a task's XComs when it is
retried or cleared, so only standing failures are reported.

**Batch runs** (``images``/``manifest``: many images in one run) send one message *per
image* and emit each image's metrics: the outcomes come from the run's ``outcomes.json``
(``prepared["batch"]["outcomes_uri"]``, written by ``store``); when it is missing (the run
failed before store) every image of the batch plan gets a ``failed`` message — a bad input
with its own reason, the others with the run's. Finalize fails a batch run whenever an image
was not stored; that alone does not turn the stored images' messages into failures. The
messages go ten per SNS ``PublishBatch`` call (the provider's ``SnsHook`` has no batch
method: its boto3 client's), the calls a few at a time: 1,000 images are 100 requests, not
1,000 one after the other. An endpoint ARN (not a topic: no ``PublishBatch``) gets one
``publish_to_target`` per image from the same small thread pool.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from airflow.providers.amazon.aws.notifications.sns import SnsNotifier

from tilescope.airflow.metrics import emit
from tilescope.outputs.metrics import image_metrics, region_failure_metrics
from tilescope.outputs.notifications import (
    TASK_ORDER,
    ImageOutcome,
    TaskFailure,
    Topics,
    batch_image_outcomes,
    describe_exception,
    image_outcome,
    publish_batches,
    resolve_topics,
)
from tilescope.settings import AWS_CONN_ID, SNS_CONN_ID

log = logging.getLogger(__name__)

#: the XCom key a failed task instance leaves its failure record under
FAILURE_XCOM = "failure"
#: SNS requests of one callback at once (batch runs)
PUBLISH_THREADS = 4


def sns_conn_id() -> str:
    """The AWS connection SNS is reached with (by default the same as S3's)."""
    return SNS_CONN_ID.get() or AWS_CONN_ID.get()


def record_failure(context: Any) -> None:
    """``on_failure_callback`` of every task: leave the reason where finalize can read it,
    and count a failed region."""
    ti = context["ti"]
    # analyze's region: an attribute of AnalyzeRegionOperator (op_kwargs of a @task)
    region = getattr(ti.task, "region", None) or \
        (getattr(ti.task, "op_kwargs", None) or {}).get("region")
    label = region.get("name") if isinstance(region, dict) else None
    failure = TaskFailure(task_id=ti.task_id, error=describe_exception(context.get("exception")),
                          map_index=int(ti.map_index if ti.map_index is not None else -1),
                          label=label or getattr(ti, "rendered_map_index", None),
                          try_number=int(ti.try_number or 1))
    ti.xcom_push(key=FAILURE_XCOM, value=failure.to_dict())
    if ti.task_id == "analyze":
        emit(region_failure_metrics())


def outcome_from_context(context: Any, *, last_task_ok: bool,
                         prepared: Mapping[str, Any] | None = None,
                         image_uri: str | None = None) -> ImageOutcome:
    """The image outcome of this run, read from the XComs its tasks left (one request for the
    store summary, one for preprocess's output, one per task for failure records)."""
    ti = context["ti"]
    dag_run = context["dag_run"]
    if prepared is None:
        prepared = ti.xcom_pull(task_ids="preprocess", key="prepared")
    error = None if last_task_ok else describe_exception(context.get("exception"))
    return image_outcome(
        dag_id=dag_run.dag_id, run_id=dag_run.run_id,
        image_uri=image_uri or str(context["params"].get("image_uri", "")),
        finished_at=datetime.now(UTC), started_at=dag_run.start_date,
        stored=ti.xcom_pull(task_ids="store"), prepared=prepared,
        last_task_ok=last_task_ok, last_task_error=error, failures=_failures(context))


def _failures(context: Any) -> list[Any]:
    ti = context["ti"]
    upstream = [t for t in TASK_ORDER if t != ti.task_id]
    return ti.xcom_pull(task_ids=upstream, key=FAILURE_XCOM) or []


def batch_outcomes_from_context(context: Any, prepared: Mapping[str, Any], *,
                                last_task_ok: bool) -> list[ImageOutcome]:
    """Every image's outcome in a batch run: from ``outcomes.json``, else (store never wrote
    it) from the batch plan, else (preprocess never planned the batch) from the batch's
    entries; when not even those can be read, one failed outcome for the whole run."""
    from tilescope.airflow.connections import s3_client

    dag_run = context["dag_run"]
    error = None if last_task_ok else describe_exception(context.get("exception"))
    common = {"dag_id": dag_run.dag_id, "run_id": dag_run.run_id,
              "finished_at": datetime.now(UTC), "started_at": dag_run.start_date,
              "failures": _failures(context), "last_task_ok": last_task_ok,
              "last_task_error": error}
    try:
        client = s3_client()
        if prepared.get("batch"):
            from dataclasses import asdict

            from tilescope.handoffs import BatchPrepared
            from tilescope.tasks.batch import load_items, load_outcomes

            batch = BatchPrepared.from_dict(prepared)
            outcomes = load_outcomes(batch, client)
            if outcomes is not None:
                return batch_image_outcomes(outcomes=[asdict(o) for o in outcomes], **common)
            return batch_image_outcomes(
                outcomes=None, items=[i.to_dict() for i in load_items(batch, client)],
                **common)
        from tilescope.tasks.batch import batch_entries

        entries = batch_entries(context["params"], client=client)
        return batch_image_outcomes(
            outcomes=None, items=[{"index": n, "uri": e["uri"]} for n, e in enumerate(entries)],
            **common)
    except Exception:
        log.exception("could not read the batch's images; reporting the run as one outcome")
        params = context["params"]
        return [outcome_from_context(context, last_task_ok=last_task_ok, prepared=prepared,
                                     image_uri=str(params.get("manifest") or "batch run"))]


class ImageOutcomeNotifier(SnsNotifier):
    """The amazon provider's SNS notifier, reporting the image outcome of the run: its
    metrics to Airflow's stats client (always, before anything can fail) and its message to
    the success or error topic.

    The message is built when the callback fires (it depends on the run), so nothing is
    templated: ``template_fields`` is empty — an image key containing ``{{`` must stay data.
    The topic is resolved then too (Variable, else environment); none → nothing is sent.
    """

    template_fields = ()

    def __init__(self, *, last_task_ok: bool, aws_conn_id: str | None = None) -> None:
        super().__init__(aws_conn_id=aws_conn_id or sns_conn_id(), target_arn="", message="")
        self.last_task_ok = last_task_ok

    def notify(self, context: Any) -> None:
        from tilescope.params import is_batch

        prepared = context["ti"].xcom_pull(task_ids="preprocess", key="prepared") or {}
        if prepared.get("batch") or is_batch(context["params"]):
            outcomes = batch_outcomes_from_context(context, prepared,
                                                   last_task_ok=self.last_task_ok)
        else:
            outcomes = [outcome_from_context(context, last_task_ok=self.last_task_ok,
                                             prepared=prepared)]
        for outcome in outcomes:
            emit(image_metrics(outcome))
        topics = resolve_topics(_variable)
        if len(outcomes) == 1 and outcomes[0].batch_index is None:
            self._publish_one(outcomes[0], topics)
        else:
            self._publish_many(outcomes, topics)

    def _publish_one(self, outcome: ImageOutcome, topics: Topics) -> None:
        topic = topics.for_status(outcome.status)
        if not topic:
            log.info("image %s %s; no %s topic configured, no notification",
                     outcome.image_id or outcome.image_uri, outcome.status,
                     "error" if outcome.status == "failed" else "success")
            return
        response = self.hook.publish_to_target(
            target_arn=topic, message=outcome.to_json(), subject=outcome.subject(),
            message_attributes=outcome.attributes())
        log.info("image %s %s: notified %s (message %s)", outcome.image_id or outcome.image_uri,
                 outcome.status,
                 topic, (response or {}).get("MessageId"))

    def _publish_many(self, outcomes: Sequence[ImageOutcome], topics: Topics) -> list[str]:
        """A batch's messages: ``PublishBatch`` calls (ten messages each) to topics, single
        publishes to endpoint ARNs, a few requests at a time. A message SNS refuses is
        logged with its reason (and returned); the others still go."""
        calls = publish_batches(outcomes, topics)
        unsent = len(outcomes) - sum(len(entries) for _, entries in calls)
        if unsent:
            log.info("%d of %d images have no topic configured for their status: "
                     "not notified", unsent, len(outcomes))
        if not calls:
            return []
        client = self.hook.conn

        def send(call: tuple[str, list[dict[str, Any]]]) -> list[str]:
            topic, entries = call
            if ":endpoint/" in topic:  # a platform endpoint: no PublishBatch
                errors = []
                for entry in entries:
                    try:
                        self.hook.publish_to_target(
                            target_arn=topic, message=entry["Message"],
                            subject=entry["Subject"],
                            message_attributes={k: v["StringValue"] for k, v
                                                in entry["MessageAttributes"].items()})
                    except Exception as exc:
                        errors.append(f"{topic} #{entry['Id']}: {describe_exception(exc)}")
                return errors
            refused: list[dict[str, Any]] = []
            for attempt in (1, 2):  # once more for what SNS failed on its side
                try:
                    reply = client.publish_batch(TopicArn=topic,
                                                 PublishBatchRequestEntries=entries)
                except Exception as exc:  # botocore has retried already
                    refused += [{"Id": e["Id"], "Code": type(exc).__name__,
                                 "Message": str(exc)} for e in entries]
                    break
                failed = reply.get("Failed") or []
                retry = {f["Id"] for f in failed if not f.get("SenderFault")} \
                    if attempt == 1 else set()
                refused += [f for f in failed if f["Id"] not in retry]
                entries = [e for e in entries if e["Id"] in retry]
                if not entries:
                    break
            return [f"{topic} #{f['Id']}: {f.get('Code')} {f.get('Message')}" for f in refused]

        with ThreadPoolExecutor(max_workers=PUBLISH_THREADS,
                                thread_name_prefix="sns") as pool:
            refused = [line for lines in pool.map(send, calls) for line in lines]
        sent = sum(len(entries) for _, entries in calls) - len(refused)
        log.info("batch of %d images: %d messages sent in %d requests (%s)", len(outcomes),
                 sent, len(calls), ", ".join(sorted({t for t, _ in calls})))
        if refused:
            log.error("SNS refused %d messages: %s", len(refused), "; ".join(refused[:20]))
        return refused


def _variable(name: str) -> str | None:
    from airflow.sdk import Variable

    return Variable.get(name, default=None)


def finalize_callbacks() -> dict[str, list[Any]]:
    """``on_success_callback``/``on_failure_callback`` for the run's last task: the image's
    metrics and its one notification."""
    return {"on_success_callback": [ImageOutcomeNotifier(last_task_ok=True)],
            "on_failure_callback": [ImageOutcomeNotifier(last_task_ok=False)]}
