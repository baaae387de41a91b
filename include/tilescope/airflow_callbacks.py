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
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import Any

from airflow.providers.amazon.aws.notifications.sns import SnsNotifier

from tilescope.airflow_adapters import AWS_CONN_ID
from tilescope.metrics import emit, image_metrics, region_failure_metrics
from tilescope.notify import (
    TASK_ORDER,
    ImageOutcome,
    TaskFailure,
    describe_exception,
    image_outcome,
    resolve_topics,
)

log = logging.getLogger(__name__)

#: the XCom key a failed task instance leaves its failure record under
FAILURE_XCOM = "failure"
#: the AWS connection SNS is reached with (by default the same as S3's)
SNS_CONN_ID = os.getenv("TILESCOPE_SNS_CONN_ID", AWS_CONN_ID)


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


def outcome_from_context(context: Any, *, last_task_ok: bool) -> ImageOutcome:
    """The image outcome of this run, read from the XComs its tasks left (one request for the
    store summary, one for preprocess's output, one per task for failure records)."""
    ti = context["ti"]
    dag_run = context["dag_run"]
    upstream = [t for t in TASK_ORDER if t != ti.task_id]
    failures = ti.xcom_pull(task_ids=upstream, key=FAILURE_XCOM) or []
    error = None if last_task_ok else describe_exception(context.get("exception"))
    return image_outcome(
        dag_id=dag_run.dag_id, run_id=dag_run.run_id,
        image_uri=str(context["params"].get("image_uri", "")),
        finished_at=datetime.now(UTC), started_at=dag_run.start_date,
        stored=ti.xcom_pull(task_ids="store"),
        prepared=ti.xcom_pull(task_ids="preprocess", key="prepared"),
        last_task_ok=last_task_ok, last_task_error=error, failures=failures)


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
        super().__init__(aws_conn_id=aws_conn_id or SNS_CONN_ID, target_arn="", message="")
        self.last_task_ok = last_task_ok

    def notify(self, context: Any) -> None:
        outcome = outcome_from_context(context, last_task_ok=self.last_task_ok)
        emit(image_metrics(outcome))
        topic = resolve_topics(_variable).for_status(outcome.status)
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


def _variable(name: str) -> str | None:
    from airflow.sdk import Variable

    return Variable.get(name, default=None)


def finalize_callbacks() -> dict[str, list[Any]]:
    """``on_success_callback``/``on_failure_callback`` for the run's last task: the image's
    metrics and its one notification."""
    return {"on_success_callback": [ImageOutcomeNotifier(last_task_ok=True)],
            "on_failure_callback": [ImageOutcomeNotifier(last_task_ok=False)]}
